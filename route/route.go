// Package route owns the kernel state weft needs: the tunnel device's MTU,
// queue length, address, link state and the overlay route, plus discovery of
// the underlay interface. Every call takes an explicit *netlink.Handle so the
// caller (and tests) decide which network namespace is touched. Linux only.
package route

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Desired is the complete state of one link as weft wants it. Set makes the
// kernel match it and removes IPv4 addresses and routes on the link that it
// does not list.
type Desired struct {
	Link       string       // device name, e.g. udp0
	Addr       netip.Prefix // IPv4 address of the link, e.g. 198.19.7.0/32
	MTU        int          // 0 = leave unchanged
	TxQueueLen int          // 0 = leave unchanged
	// GSOMaxSegs caps the segments of a super-packet the kernel hands the
	// link (gso_max_segs); 0 = leave unchanged.
	GSOMaxSegs int
	Routes     []netip.Prefix // IPv4 networks routed to the link, e.g. 198.19.0.0/16
}

func (d Desired) validate() error {
	if d.Link == "" {
		return errors.New("no link name")
	}
	if !d.Addr.IsValid() || !d.Addr.Addr().Is4() {
		return fmt.Errorf("address %v is not an IPv4 prefix", d.Addr)
	}
	if d.MTU != 0 && (d.MTU < 68 || d.MTU > 65535) {
		return fmt.Errorf("mtu %d out of range 68..65535", d.MTU)
	}
	if d.TxQueueLen < 0 {
		return fmt.Errorf("txqueuelen %d is negative", d.TxQueueLen)
	}
	if d.GSOMaxSegs < 0 || d.GSOMaxSegs > 65535 {
		return fmt.Errorf("gso_max_segs %d out of range 1..65535", d.GSOMaxSegs)
	}
	for _, r := range d.Routes {
		// The kernel rejects host bits in a route; say so before touching it.
		if !r.IsValid() || !r.Addr().Is4() || r != r.Masked() {
			return fmt.Errorf("route %v is not an IPv4 network prefix", r)
		}
	}
	return nil
}

// Set makes the kernel state of d.Link equal to d. It is idempotent: when
// the state already matches it only reads, so callers can re-run it on a
// timer to repair tampering. See Apply for the changes it makes.
func Set(h *netlink.Handle, d Desired) error {
	_, err := Apply(h, d)
	return err
}

// Apply is Set, returning a description of each change it made; an empty
// result means the state already matched, so a periodic re-run can log only
// repairs. On error, the changes made before the failure are returned with it.
//
// Apply only reads and writes IPv4 addresses and main-table routes of d.Link;
// routes the kernel derives from addresses (proto kernel) are left alone.
// Stale addresses are removed before the desired one is added, because
// removing a primary address also removes its secondaries.
func Apply(h *netlink.Handle, d Desired) ([]string, error) {
	if err := d.validate(); err != nil {
		return nil, fmt.Errorf("set link %q: %w", d.Link, err)
	}
	link, err := h.LinkByName(d.Link)
	if err != nil {
		return nil, fmt.Errorf("find link %s: %w", d.Link, err)
	}
	attrs := link.Attrs()
	var changes []string

	if d.MTU != 0 && attrs.MTU != d.MTU {
		if err := h.LinkSetMTU(link, d.MTU); err != nil {
			return changes, fmt.Errorf("set mtu %d on %s: %w", d.MTU, d.Link, err)
		}
		changes = append(changes, fmt.Sprintf("set mtu %d on %s (was %d)", d.MTU, d.Link, attrs.MTU))
	}
	if d.TxQueueLen != 0 && attrs.TxQLen != d.TxQueueLen {
		if err := h.LinkSetTxQLen(link, d.TxQueueLen); err != nil {
			return changes, fmt.Errorf("set txqueuelen %d on %s: %w", d.TxQueueLen, d.Link, err)
		}
		changes = append(changes, fmt.Sprintf("set txqueuelen %d on %s (was %d)", d.TxQueueLen, d.Link, attrs.TxQLen))
	}
	if d.GSOMaxSegs != 0 && int(attrs.GSOMaxSegs) != d.GSOMaxSegs {
		if err := h.LinkSetGSOMaxSegs(link, d.GSOMaxSegs); err != nil {
			return changes, fmt.Errorf("set gso_max_segs %d on %s: %w", d.GSOMaxSegs, d.Link, err)
		}
		changes = append(changes, fmt.Sprintf("set gso_max_segs %d on %s (was %d)", d.GSOMaxSegs, d.Link, attrs.GSOMaxSegs))
	}

	changes, err = setAddr(h, link, d, changes)
	if err != nil {
		return changes, err
	}

	// Routes through a down link are refused or flushed, so bring it up first.
	if attrs.Flags&net.FlagUp == 0 {
		if err := h.LinkSetUp(link); err != nil {
			return changes, fmt.Errorf("set link %s up: %w", d.Link, err)
		}
		changes = append(changes, fmt.Sprintf("set link %s up", d.Link))
	}

	return setRoutes(h, link, d, changes)
}

func setAddr(h *netlink.Handle, link netlink.Link, d Desired, changes []string) ([]string, error) {
	addrs, err := listAddrs(h, link)
	if err != nil {
		return changes, fmt.Errorf("list addresses of %s: %w", d.Link, err)
	}
	have, deleted := false, false
	for _, a := range addrs {
		if p, ok := prefixOf(a.IPNet); ok && p == d.Addr {
			have = true
			continue
		}
		// EADDRNOTAVAIL: already gone with a primary we deleted just before.
		if err := h.AddrDel(link, &a); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
			return changes, fmt.Errorf("delete address %s from %s: %w", a.IPNet, d.Link, err)
		}
		deleted = true
		changes = append(changes, fmt.Sprintf("delete address %s from %s", a.IPNet, d.Link))
	}
	if have && deleted {
		// The desired address may have been a secondary of one we deleted.
		if addrs, err = listAddrs(h, link); err != nil {
			return changes, fmt.Errorf("list addresses of %s: %w", d.Link, err)
		}
		have = slices.ContainsFunc(addrs, func(a netlink.Addr) bool {
			p, ok := prefixOf(a.IPNet)
			return ok && p == d.Addr
		})
	}
	if !have {
		if err := h.AddrAdd(link, &netlink.Addr{IPNet: ipNet(d.Addr)}); err != nil {
			return changes, fmt.Errorf("add address %s to %s: %w", d.Addr, d.Link, err)
		}
		changes = append(changes, fmt.Sprintf("add address %s to %s", d.Addr, d.Link))
	}
	return changes, nil
}

func setRoutes(h *netlink.Handle, link netlink.Link, d Desired, changes []string) ([]string, error) {
	routes, err := dump(func() ([]netlink.Route, error) { return h.RouteList(link, netlink.FAMILY_V4) })
	if err != nil {
		return changes, fmt.Errorf("list routes of %s: %w", d.Link, err)
	}
	present := map[netip.Prefix]bool{}
	for _, r := range routes {
		if r.Protocol == unix.RTPROT_KERNEL {
			continue
		}
		dst, ok := prefixOf(r.Dst)
		if ok && isPlainLinkRoute(r) && slices.Contains(d.Routes, dst) {
			present[dst] = true
			continue
		}
		// Delete before adding: a leftover can share the kernel's key
		// (dst, tos, metric) with the route we add, and must not take it along.
		if err := h.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
			return changes, fmt.Errorf("delete route %s dev %s: %w", describeDst(r.Dst), d.Link, err)
		}
		changes = append(changes, fmt.Sprintf("delete route %s dev %s", describeDst(r.Dst), d.Link))
	}
	for _, dst := range d.Routes {
		if present[dst] {
			continue
		}
		r := &netlink.Route{LinkIndex: link.Attrs().Index, Dst: ipNet(dst), Scope: netlink.SCOPE_LINK}
		if err := h.RouteReplace(r); err != nil {
			return changes, fmt.Errorf("add route %s dev %s: %w", dst, d.Link, err)
		}
		present[dst] = true
		changes = append(changes, fmt.Sprintf("add route %s dev %s", dst, d.Link))
	}
	return changes, nil
}

// isPlainLinkRoute reports whether r has exactly the shape Set creates, so a
// route with the right destination but another metric, gateway or source is
// replaced rather than kept.
func isPlainLinkRoute(r netlink.Route) bool {
	return r.Scope == netlink.SCOPE_LINK && r.Gw == nil && r.Src == nil && r.Priority == 0 &&
		r.Type == unix.RTN_UNICAST && len(r.MultiPath) == 0 && r.Table == unix.RT_TABLE_MAIN
}

// RemoveLink deletes the named link; a link that does not exist is not an error.
func RemoveLink(h *netlink.Handle, name string) error {
	link, err := h.LinkByName(name)
	if errors.As(err, &netlink.LinkNotFoundError{}) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("find link %s: %w", name, err)
	}
	if err := h.LinkDel(link); err != nil && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("delete link %s: %w", name, err)
	}
	return nil
}

// LinkMTU returns the MTU of the named link.
func LinkMTU(h *netlink.Handle, name string) (int, error) {
	link, err := h.LinkByName(name)
	if err != nil {
		return 0, fmt.Errorf("find link %s: %w", name, err)
	}
	return link.Attrs().MTU, nil
}

// dump retries a netlink dump a few times when the kernel reports that the
// table changed while it was being read, since a partial list would make Set
// delete too little or add needlessly.
func dump[T any](list func() ([]T, error)) ([]T, error) {
	for i := 0; ; i++ {
		v, err := list()
		if errors.Is(err, netlink.ErrDumpInterrupted) && i < 4 {
			continue
		}
		return v, err
	}
}

func listAddrs(h *netlink.Handle, link netlink.Link) ([]netlink.Addr, error) {
	return dump(func() ([]netlink.Addr, error) { return h.AddrList(link, netlink.FAMILY_V4) })
}

// prefixOf converts an IPv4 net.IPNet to a netip.Prefix, keeping host bits.
func prefixOf(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	ip4 := n.IP.To4()
	ones, bits := n.Mask.Size()
	if ip4 == nil || bits != 32 {
		return netip.Prefix{}, false
	}
	return netip.PrefixFrom(netip.AddrFrom4([4]byte(ip4)), ones), true
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func describeDst(n *net.IPNet) string {
	if n == nil {
		return "default"
	}
	return n.String()
}
