package route

import (
	"cmp"
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"slices"
	"strings"

	"github.com/vishvananda/netlink"
)

// Selector chooses the underlay interface the way flanneld's -iface,
// -iface-regex and -iface-can-reach flags do: Ifaces in order, then Regexes
// in order, then CanReach; the first match wins. An empty Selector picks the
// interface of the IPv4 default route.
type Selector struct {
	Ifaces   []string   // interface name or one of its IPv4 addresses
	Regexes  []string   // matched against every IPv4 address first, then every name
	CanReach netip.Addr // the interface the kernel would use to reach this address
}

func (s Selector) empty() bool {
	return len(s.Ifaces) == 0 && len(s.Regexes) == 0 && !s.CanReach.IsValid()
}

// String renders s as the flags that produced it, for error messages.
func (s Selector) String() string {
	var parts []string
	for _, i := range s.Ifaces {
		parts = append(parts, "-iface="+i)
	}
	for _, r := range s.Regexes {
		parts = append(parts, "-iface-regex="+r)
	}
	if s.CanReach.IsValid() {
		parts = append(parts, "-iface-can-reach="+s.CanReach.String())
	}
	return strings.Join(parts, " ")
}

// Iface is the chosen underlay interface.
type Iface struct {
	Name  string
	Index int
	MTU   int
	Addr  netip.Addr // the IPv4 address weft binds to and publishes
}

// candidate is an interface that is up and has at least one IPv4 address;
// only candidates can be chosen.
type candidate struct {
	name  string
	index int
	mtu   int
	addrs []netlink.Addr // IPv4, kernel order
}

func (c candidate) iface(a netip.Addr) Iface {
	return Iface{Name: c.name, Index: c.index, MTU: c.mtu, Addr: a}
}

// firstAddr returns the first global address, else the first one (lo has
// only host-scope addresses).
func (c candidate) firstAddr() netip.Addr {
	i := slices.IndexFunc(c.addrs, func(a netlink.Addr) bool { return a.Scope == int(netlink.SCOPE_UNIVERSE) })
	if i < 0 {
		i = 0
	}
	p, _ := prefixOf(c.addrs[i].IPNet)
	return p.Addr()
}

func (c candidate) has(a netip.Addr) bool {
	return slices.ContainsFunc(c.addrs, func(x netlink.Addr) bool {
		p, ok := prefixOf(x.IPNet)
		return ok && p.Addr() == a
	})
}

// FindInterface returns the interface selected by s. Interfaces that are
// down or have no IPv4 address are never chosen; errors list the ones that
// could have been.
func FindInterface(h *netlink.Handle, s Selector) (Iface, error) {
	res := make([]*regexp.Regexp, len(s.Regexes))
	for i, r := range s.Regexes {
		re, err := regexp.Compile(r)
		if err != nil {
			return Iface{}, fmt.Errorf("parse -iface-regex=%s: %w", r, err)
		}
		res[i] = re
	}
	if s.CanReach.IsValid() && !s.CanReach.Is4() {
		return Iface{}, fmt.Errorf("-iface-can-reach=%s: not an IPv4 address", s.CanReach)
	}
	cands, err := candidates(h)
	if err != nil {
		return Iface{}, err
	}
	if s.empty() {
		return defaultIface(h, cands)
	}

	for _, want := range s.Ifaces {
		ip, perr := netip.ParseAddr(want)
		byIP := perr == nil
		for _, c := range cands {
			if byIP && c.has(ip) {
				return c.iface(ip), nil
			}
			if !byIP && c.name == want {
				return c.iface(c.firstAddr()), nil
			}
		}
	}
	for _, re := range res {
		if ifc, ok := matchRegex(cands, re); ok {
			return ifc, nil
		}
	}
	var reachErr error
	if s.CanReach.IsValid() {
		ifc, err := canReach(h, cands, s.CanReach)
		if err == nil {
			return ifc, nil
		}
		reachErr = err
	}
	if reachErr != nil {
		return Iface{}, fmt.Errorf("no interface matches %s (%w); candidates: %s", s, reachErr, listCandidates(cands))
	}
	return Iface{}, fmt.Errorf("no interface matches %s; candidates: %s", s, listCandidates(cands))
}

// matchRegex tries all addresses before any name, as flanneld does, so a
// regex that happens to match both an IP and another interface's name picks
// the IP.
func matchRegex(cands []candidate, re *regexp.Regexp) (Iface, bool) {
	for _, c := range cands {
		for _, a := range c.addrs {
			if p, ok := prefixOf(a.IPNet); ok && re.MatchString(p.Addr().String()) {
				return c.iface(p.Addr()), true
			}
		}
	}
	for _, c := range cands {
		if re.MatchString(c.name) {
			return c.iface(c.firstAddr()), true
		}
	}
	return Iface{}, false
}

func canReach(h *netlink.Handle, cands []candidate, dst netip.Addr) (Iface, error) {
	routes, err := h.RouteGet(dst.AsSlice())
	if err != nil {
		return Iface{}, fmt.Errorf("route to %s: %w", dst, err)
	}
	if len(routes) == 0 || routes[0].LinkIndex == 0 {
		return Iface{}, fmt.Errorf("route to %s: no outgoing interface", dst)
	}
	return pick(h, cands, routes[0].LinkIndex, routes[0].Src, "route to "+dst.String())
}

func defaultIface(h *netlink.Handle, cands []candidate) (Iface, error) {
	routes, err := dump(func() ([]netlink.Route, error) { return h.RouteList(nil, netlink.FAMILY_V4) })
	if err != nil {
		return Iface{}, fmt.Errorf("list routes: %w", err)
	}
	var best *netlink.Route
	for i, r := range routes {
		if p, ok := prefixOf(r.Dst); r.Dst != nil && (!ok || p.Bits() != 0) {
			continue
		}
		if best == nil || r.Priority < best.Priority {
			best = &routes[i]
		}
	}
	if best == nil {
		return Iface{}, fmt.Errorf("no default route: pass -iface, -iface-regex or -iface-can-reach; candidates: %s", listCandidates(cands))
	}
	index := best.LinkIndex
	if index == 0 && len(best.MultiPath) > 0 {
		index = best.MultiPath[0].LinkIndex
	}
	ifc, err := pick(h, cands, index, best.Src, "default route")
	if err != nil {
		return Iface{}, fmt.Errorf("%w; candidates: %s", err, listCandidates(cands))
	}
	return ifc, nil
}

// pick returns the candidate with the given index, using src as its address
// when the route names one of the candidate's addresses.
func pick(h *netlink.Handle, cands []candidate, index int, src net.IP, what string) (Iface, error) {
	for _, c := range cands {
		if c.index != index {
			continue
		}
		if a, ok := netip.AddrFromSlice(src); ok && c.has(a.Unmap()) {
			return c.iface(a.Unmap()), nil
		}
		return c.iface(c.firstAddr()), nil
	}
	name := fmt.Sprintf("index %d", index)
	if l, err := h.LinkByIndex(index); err == nil {
		name = l.Attrs().Name
	}
	return Iface{}, fmt.Errorf("%s uses %s, which is down or has no IPv4 address", what, name)
}

// candidates returns the interfaces that are up and have an IPv4 address,
// sorted by name.
func candidates(h *netlink.Handle) ([]candidate, error) {
	links, err := dump(h.LinkList)
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	addrs, err := dump(func() ([]netlink.Addr, error) { return h.AddrList(nil, netlink.FAMILY_V4) })
	if err != nil {
		return nil, fmt.Errorf("list addresses: %w", err)
	}
	var cands []candidate
	for _, l := range links {
		a := l.Attrs()
		if a.Flags&net.FlagUp == 0 {
			continue
		}
		c := candidate{name: a.Name, index: a.Index, mtu: a.MTU}
		for _, ad := range addrs {
			if _, ok := prefixOf(ad.IPNet); ok && ad.LinkIndex == a.Index {
				c.addrs = append(c.addrs, ad)
			}
		}
		if len(c.addrs) > 0 {
			cands = append(cands, c)
		}
	}
	slices.SortFunc(cands, func(a, b candidate) int { return cmp.Compare(a.name, b.name) })
	return cands, nil
}

// listCandidates renders candidates as "eth0 (198.18.0.2), lo (127.0.0.1)".
func listCandidates(cands []candidate) string {
	if len(cands) == 0 {
		return "none (no interface is up with an IPv4 address)"
	}
	var b strings.Builder
	for i, c := range cands {
		if i > 0 {
			b.WriteString(", ")
		}
		ips := make([]string, 0, len(c.addrs))
		for _, a := range c.addrs {
			p, _ := prefixOf(a.IPNet)
			ips = append(ips, p.Addr().String())
		}
		fmt.Fprintf(&b, "%s (%s)", c.name, strings.Join(ips, " "))
	}
	return b.String()
}
