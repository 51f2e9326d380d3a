package firewall

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/internal/netnstest"
)

// Addresses of the traffic test. Overlay 198.19.0.0/16: this node's subnet
// 198.19.7.0/24 on bridge pod0, a pod at .2 behind it, and a "remote pod"
// 198.19.9.5 reached over the underlay (standing in for udp0). Underlay:
// node 198.18.0.1, outside host 198.18.0.2.
var (
	nodeBridge = netip.MustParseAddr("198.19.7.1")
	podAddr    = netip.MustParseAddr("198.19.7.2")
	remotePod  = netip.MustParseAddr("198.19.9.5")
	nodeOut    = netip.MustParseAddr("198.18.0.1")
	outsideIP  = netip.MustParseAddr("198.18.0.2")
)

// probeSeq tells one probe's payload from a stray earlier one.
var probeSeq atomic.Int64

// topology builds pod ⇄ node ⇄ outside and returns the three namespaces.
func topology(t *testing.T) (pod, node, outside *testNS) {
	t.Helper()
	pod, node, outside = newTestNS(t), newTestNS(t), newTestNS(t)

	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "pod0"}}
	if err := node.Netlink.LinkAdd(br); err != nil {
		t.Fatalf("add bridge pod0: %v", err)
	}
	node.LinkUp(t, "pod0")
	node.AddAddr(t, "pod0", "198.19.7.1/24")
	vpod := netnstest.Veth{A: netnstest.End{NS: node.NS, Name: "vpod"},
		B: netnstest.End{NS: pod.NS, Name: "eth0", Addr: "198.19.7.2/24"}}.Add(t)
	if err := node.Netlink.LinkSetMaster(vpod, node.Link(t, "pod0")); err != nil {
		t.Fatalf("enslave vpod to pod0: %v", err)
	}
	pod.route(t, "default", "198.19.7.1")

	netnstest.Veth{A: netnstest.End{NS: node.NS, Name: "up0", Addr: "198.18.0.1/24"},
		B: netnstest.End{NS: outside.NS, Name: "up0", Addr: "198.18.0.2/24"}}.Add(t)
	outside.AddAddr(t, "up0", "198.19.9.5/32")
	// The overlay route, and the way back to this node's pods for traffic
	// that keeps its pod source.
	node.route(t, "198.19.9.0/24", "198.18.0.2")
	outside.route(t, "198.19.7.0/24", "198.18.0.1")

	node.sysctl(t, "/proc/sys/net/ipv4/ip_forward", "1")
	return pod, node, outside
}

// probe sends one UDP datagram and opens one TCP connection from src (in
// ns from; src invalid = any) to dst (in ns to), returning the source
// address the receiver saw for each. mark, if non-zero, is set on the
// sending sockets (SO_MARK).
func probe(t *testing.T, from *testNS, src netip.Addr, mark int, to *testNS, dst netip.Addr) (udpSrc, tcpSrc netip.Addr) {
	t.Helper()
	var uc *net.UDPConn
	var ln *net.TCPListener
	err := to.Do(func() error {
		var err error
		if uc, err = net.ListenUDP("udp4", &net.UDPAddr{IP: dst.AsSlice()}); err != nil {
			return err
		}
		ln, err = net.ListenTCP("tcp4", &net.TCPAddr{IP: dst.AsSlice()})
		return err
	})
	if err != nil {
		t.Fatalf("listen on %s in %s: %v", dst, to.Name, err)
	}
	defer uc.Close()
	defer ln.Close()

	d := net.Dialer{Timeout: 3 * time.Second}
	if src.IsValid() {
		d.LocalAddr = &net.TCPAddr{IP: src.AsSlice()}
	}
	if mark != 0 {
		d.Control = func(_, _ string, c syscall.RawConn) error {
			var serr error
			if err := c.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, mark) }); err != nil {
				return err
			}
			return serr
		}
	}
	payload := []byte(fmt.Sprintf("weft-probe-%d", probeSeq.Add(1)))

	// UDP: one datagram; the receiver reports its source.
	var udpErr error
	err = from.Do(func() error {
		ud := d
		if src.IsValid() {
			ud.LocalAddr = &net.UDPAddr{IP: src.AsSlice()}
		}
		c, err := ud.Dial("udp4", uc.LocalAddr().String())
		if err != nil {
			return err
		}
		defer c.Close()
		_, udpErr = c.Write(payload)
		return nil
	})
	if err != nil || udpErr != nil {
		t.Fatalf("UDP send %s → %s: %v %v", src, dst, err, udpErr)
	}
	buf := make([]byte, 256)
	if err := uc.SetReadDeadline(time.Now().Add(3 * time.Second)); err != nil {
		t.Fatal(err)
	}
	for {
		n, a, err := uc.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatalf("UDP %s → %s: nothing received: %v", src, dst, err)
		}
		if bytes.Equal(buf[:n], payload) {
			udpSrc = a.Addr().Unmap()
			break
		}
	}

	// TCP: a full handshake, so the reply path works too.
	accepted := make(chan netip.Addr, 1)
	go func() {
		if err := ln.SetDeadline(time.Now().Add(3 * time.Second)); err != nil {
			accepted <- netip.Addr{}
			return
		}
		c, err := ln.AcceptTCP()
		if err != nil {
			accepted <- netip.Addr{}
			return
		}
		defer c.Close()
		accepted <- c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap()
	}()
	var conn net.Conn
	err = from.Do(func() error {
		var err error
		conn, err = d.DialContext(context.Background(), "tcp4", ln.Addr().String())
		return err
	})
	if err != nil {
		t.Fatalf("TCP connect %s → %s: %v", src, dst, err)
	}
	conn.Close()
	tcpSrc = <-accepted
	if !tcpSrc.IsValid() {
		t.Fatalf("TCP %s → %s: the listener accepted nothing", src, dst)
	}
	return udpSrc, tcpSrc
}

func TestMasqueradeTraffic(t *testing.T) {
	netnstest.SkipUnlessRoot(t)
	hostForward, err := os.ReadFile("/proc/sys/net/ipv4/ip_forward")
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		now, err := os.ReadFile("/proc/sys/net/ipv4/ip_forward")
		if err != nil || !bytes.Equal(now, hostForward) {
			t.Errorf("the test's own ip_forward changed: %q → %q (%v)", hostForward, now, err)
		}
	}()
	pod, node, outside := topology(t)

	expect := func(what string, from *testNS, src netip.Addr, mark int, to *testNS, dst, want netip.Addr) {
		t.Helper()
		u, c := probe(t, from, src, mark, to, dst)
		if u != want || c != want {
			t.Errorf("%s: receiver saw UDP from %s, TCP from %s; want %s", what, u, c, want)
		}
	}

	// Without weft's rules nothing is translated: the rules, not the
	// topology, do what the checks below see.
	expect("no rules: pod → outside", pod, netip.Addr{}, 0, outside, outsideIP, podAddr)

	r := Rules{
		Network:     netip.MustParsePrefix("198.19.0.0/16"),
		Subnet:      netip.MustParsePrefix("198.19.7.0/24"),
		Masquerade:  true,
		FullyRandom: true,
		Forward:     true,
	}
	if _, err := Apply(node.nft, r); err != nil {
		t.Fatalf("Apply: %v", err)
	}

	expect("pod → outside (forwarded)", pod, netip.Addr{}, 0, outside, outsideIP, nodeOut)
	expect("node's pod address → outside (local)", node, nodeBridge, 0, outside, outsideIP, nodeOut)
	expect("pod → remote pod (stays in the overlay)", pod, netip.Addr{}, 0, outside, remotePod, podAddr)
	expect("kube-proxy-marked → outside (left to kube-proxy)", node, nodeBridge, int(KubeProxyMark|0x1), outside, outsideIP, nodeBridge)

	// Without masquerading (forward rules only), the pod's source is kept.
	r.Masquerade = false
	if _, err := Apply(node.nft, r); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	expect("masquerade off: pod → outside", pod, netip.Addr{}, 0, outside, outsideIP, podAddr)
}

// TestForwardDropTraffic backs the warning weft gives (see ForwardDrops):
// with weft's forward accepts in place, a drop policy in another table's
// forward chain still cuts pod traffic through the node, for Docker's
// FORWARD chain in iptables-nft and in iptables-legacy alike, and the fix
// the warning names (accepts for the network in that chain) restores it.
func TestForwardDropTraffic(t *testing.T) {
	netnstest.SkipUnlessRoot(t)
	for _, bin := range []string{"iptables-nft", "iptables-legacy"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("skipping: needs %s (Debian: apt-get install iptables)", bin)
		}
	}
	for _, bin := range []string{"iptables-nft", "iptables-legacy"} {
		t.Run(bin, func(t *testing.T) {
			pod, node, outside := topology(t)
			if _, err := Apply(node.nft, Rules{Network: netip.MustParsePrefix("198.19.0.0/16"), Forward: true}); err != nil {
				t.Fatalf("Apply: %v", err)
			}
			iptables := func(args ...string) {
				t.Helper()
				if _, err := node.Run("", bin, args...); err != nil {
					t.Fatal(err)
				}
			}
			if !reachable(t, pod, outside, remotePod) {
				t.Fatal("pod → remote pod fails with only weft's rules")
			}
			iptables("-P", "FORWARD", "DROP") // what Docker does
			if reachable(t, pod, outside, remotePod) {
				t.Fatalf("pod → remote pod passes a FORWARD drop policy of %s: weft's warning would be wrong", bin)
			}
			// ... and weft sees the chain that cut it.
			drops, err := ForwardDrops(node.nft)
			if err != nil {
				t.Fatal(err)
			}
			var legacy bool
			if err := node.Do(func() (err error) { legacy, err = LegacyForwardDrop(); return err }); err != nil {
				t.Fatal(err)
			}
			if nft := slices.Contains(drops, "table ip filter chain FORWARD"); nft != (bin == "iptables-nft") || legacy != (bin == "iptables-legacy") {
				t.Errorf("after %s -P FORWARD DROP: ForwardDrops %q, LegacyForwardDrop %v", bin, drops, legacy)
			}
			iptables("-I", "FORWARD", "-s", "198.19.0.0/16", "-j", "ACCEPT") // the warning's fix
			iptables("-I", "FORWARD", "-d", "198.19.0.0/16", "-j", "ACCEPT")
			if !reachable(t, pod, outside, remotePod) {
				t.Fatal("pod → remote pod still fails after the fix the warning names")
			}
		})
	}
}

// reachable reports whether a TCP connection from ns from reaches a
// listener on dst in ns to within a second.
func reachable(t *testing.T, from, to *testNS, dst netip.Addr) bool {
	t.Helper()
	var ln *net.TCPListener
	if err := to.Do(func() (err error) {
		ln, err = net.ListenTCP("tcp4", &net.TCPAddr{IP: dst.AsSlice()})
		return err
	}); err != nil {
		t.Fatalf("listen on %s in %s: %v", dst, to.Name, err)
	}
	defer ln.Close()
	go func() {
		if c, err := ln.Accept(); err == nil {
			c.Close()
		}
	}()
	err := from.Do(func() error {
		c, err := net.DialTimeout("tcp4", ln.Addr().String(), time.Second)
		if err == nil {
			c.Close()
		}
		return err
	})
	return err == nil
}
