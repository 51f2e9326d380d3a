package lab

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
)

// LinkStats are one device's settings and counters in a node namespace.
type LinkStats struct {
	Name       string
	MTU        int
	TxQLen     int
	GSOMaxSize uint32
	GROMaxSize uint32

	RxPackets, TxPackets uint64
	RxBytes, TxBytes     uint64
	RxDropped, TxDropped uint64
}

// Link reads device name's settings and counters in node i (netlink, so
// nothing is spawned).
func (l *Lab) Link(i int, name string) (LinkStats, error) {
	n, err := l.node(i)
	if err != nil {
		return LinkStats{}, err
	}
	link, err := n.handle.LinkByName(name)
	if err != nil {
		return LinkStats{}, fmt.Errorf("lab: find %s in %s: %w", name, n.NS, err)
	}
	a := link.Attrs()
	s := LinkStats{Name: a.Name, MTU: a.MTU, TxQLen: a.TxQLen, GSOMaxSize: a.GSOMaxSize, GROMaxSize: a.GROMaxSize}
	if st := a.Statistics; st != nil {
		s.RxPackets, s.TxPackets = st.RxPackets, st.TxPackets
		s.RxBytes, s.TxBytes = st.RxBytes, st.TxBytes
		s.RxDropped, s.TxDropped = st.RxDropped, st.TxDropped
	}
	return s, nil
}

// RouteDev is the device node i routes dst through (`ip route get`).
func (l *Lab) RouteDev(i int, dst netip.Addr) (string, error) {
	n, err := l.node(i)
	if err != nil {
		return "", err
	}
	routes, err := n.handle.RouteGet(net.IP(dst.AsSlice()))
	if err != nil {
		return "", fmt.Errorf("lab: route get %s in %s: %w", dst, n.NS, err)
	}
	if len(routes) == 0 {
		return "", fmt.Errorf("lab: route get %s in %s: no route", dst, n.NS)
	}
	link, err := n.handle.LinkByIndex(routes[0].LinkIndex)
	if err != nil {
		return "", fmt.Errorf("lab: route get %s in %s: device %d: %w", dst, n.NS, routes[0].LinkIndex, err)
	}
	return link.Attrs().Name, nil
}

// SNMP is /proc/net/snmp: protocol ("Udp") → field ("RcvbufErrors") → value.
type SNMP map[string]map[string]int64

// Get returns one counter, 0 when absent.
func (s SNMP) Get(proto, field string) int64 { return s[proto][field] }

// SNMP reads /proc/net/snmp as node i's namespace sees it.
func (l *Lab) SNMP(i int) (SNMP, error) {
	n, err := l.node(i)
	if err != nil {
		return nil, err
	}
	var s SNMP
	// /proc/thread-self/net follows the calling thread's namespace, which
	// inNetns switched; /proc/self/net would follow the main thread's.
	err = inNetns(n.ns, func() error {
		f, err := os.Open("/proc/thread-self/net/snmp")
		if err != nil {
			return err
		}
		defer f.Close()
		s, err = ParseSNMP(f)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("lab: read /proc/net/snmp in %s: %w", n.NS, err)
	}
	return s, nil
}

// ParseSNMP parses /proc/net/snmp (or /proc/net/netstat): pairs of lines,
// "Proto: name name ..." then "Proto: value value ...".
func ParseSNMP(r io.Reader) (SNMP, error) {
	out := SNMP{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	var header []string
	var proto string
	for line := 1; sc.Scan(); line++ {
		text := strings.TrimSpace(sc.Text())
		if text == "" {
			continue
		}
		p, rest, ok := strings.Cut(text, ":")
		if !ok || p == "" {
			return nil, fmt.Errorf("line %d: no \"Proto:\" prefix", line)
		}
		fields := strings.Fields(rest)
		if header == nil {
			header, proto = fields, p
			continue
		}
		if p != proto {
			return nil, fmt.Errorf("line %d: values for %q after the header of %q", line, p, proto)
		}
		if len(fields) != len(header) {
			return nil, fmt.Errorf("line %d: %d values for %d %s fields", line, len(fields), len(header), p)
		}
		m := out[p]
		if m == nil {
			m = map[string]int64{}
			out[p] = m
		}
		for k, f := range fields {
			v, err := strconv.ParseInt(f, 10, 64)
			if err != nil {
				return nil, fmt.Errorf("line %d: %s %s: %w", line, p, header[k], err)
			}
			m[header[k]] = v
		}
		header = nil
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if header != nil {
		return nil, errors.New("header without a values line at the end")
	}
	return out, nil
}
