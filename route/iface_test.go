package route

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
)

func TestFindInterface(t *testing.T) {
	n := newTestNS(t)
	h := n.Netlink
	ul0 := n.addLink(t, "ul0", true, "198.18.1.2/24")
	n.AddAddr(t, "ul0", "198.18.1.3/24")
	ul1 := n.addLink(t, "ul1", true, "198.18.2.2/24")
	n.addLink(t, "ul2", false, "198.18.3.2/24") // down: never chosen
	ul3 := n.addLink(t, "ul3", true, "")        // no IPv4: never chosen
	lo, err := h.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}

	addDefault := func(t *testing.T, link netlink.Link, gw string, metric int) *netlink.Route {
		t.Helper()
		r := &netlink.Route{LinkIndex: link.Attrs().Index, Dst: mustIPNet(t, "0.0.0.0/0"), Priority: metric}
		if gw == "" {
			r.Scope = netlink.SCOPE_LINK
		} else {
			r.Gw = netip.MustParseAddr(gw).AsSlice()
		}
		if err := h.RouteAdd(r); err != nil {
			t.Fatalf("add default route dev %s: %v", link.Attrs().Name, err)
		}
		return r
	}
	viaUl0 := addDefault(t, ul0, "198.18.1.1", 100)

	const cands = "candidates: lo (127.0.0.1), ul0 (198.18.1.2 198.18.1.3), ul1 (198.18.2.2)"
	ip := netip.MustParseAddr
	find := func(t *testing.T, s Selector, want Iface) {
		t.Helper()
		got, err := FindInterface(h, s)
		if err != nil {
			t.Fatalf("FindInterface(%s): %v", s, err)
		}
		if got != want {
			t.Fatalf("FindInterface(%s) = %+v; want %+v", s, got, want)
		}
	}
	findErr := func(t *testing.T, s Selector, want string) {
		t.Helper()
		got, err := FindInterface(h, s)
		if err == nil {
			t.Fatalf("FindInterface(%s) = %+v; want error %q", s, got, want)
		}
		if err.Error() != want {
			t.Fatalf("FindInterface(%s) error:\n got %q\nwant %q", s, err, want)
		}
	}
	iface := func(l netlink.Link, addr string) Iface {
		return Iface{Name: l.Attrs().Name, Index: l.Attrs().Index, MTU: l.Attrs().MTU, Addr: ip(addr)}
	}

	for _, tc := range []struct {
		name string
		s    Selector
		want Iface
	}{
		{"default route", Selector{}, iface(ul0, "198.18.1.2")},
		{"by name", Selector{Ifaces: []string{"ul1"}}, iface(ul1, "198.18.2.2")},
		{"by IP", Selector{Ifaces: []string{"198.18.2.2"}}, iface(ul1, "198.18.2.2")},
		{"by secondary IP", Selector{Ifaces: []string{"198.18.1.3"}}, iface(ul0, "198.18.1.3")},
		{"host-scope only", Selector{Ifaces: []string{"lo"}}, iface(lo, "127.0.0.1")},
		{"first match wins", Selector{Ifaces: []string{"eth9", "ul2", "ul3", "ul1", "ul0"}}, iface(ul1, "198.18.2.2")},
		{"iface before regex", Selector{Ifaces: []string{"ul0"}, Regexes: []string{"^ul1$"}}, iface(ul0, "198.18.1.2")},
		{"regex after no iface", Selector{Ifaces: []string{"eth9"}, Regexes: []string{"^ul1$"}}, iface(ul1, "198.18.2.2")},
		{"regex on IP", Selector{Regexes: []string{`^198\.18\.2\.`}}, iface(ul1, "198.18.2.2")},
		{"regex on name", Selector{Regexes: []string{"^ul1$"}}, iface(ul1, "198.18.2.2")},
		{"regex IPs before names", Selector{Regexes: []string{`^ul0$|^198\.18\.2\.2$`}}, iface(ul1, "198.18.2.2")},
		{"regexes in order", Selector{Regexes: []string{"^nomatch$", "^ul"}}, iface(ul0, "198.18.1.2")},
		{"can reach connected", Selector{CanReach: ip("198.18.2.77")}, iface(ul1, "198.18.2.2")},
		{"can reach via default", Selector{CanReach: ip("198.18.99.1")}, iface(ul0, "198.18.1.2")},
		{"iface before can reach", Selector{Ifaces: []string{"ul1"}, CanReach: ip("198.18.99.1")}, iface(ul1, "198.18.2.2")},
	} {
		t.Run(tc.name, func(t *testing.T) { find(t, tc.s, tc.want) })
	}

	t.Run("no match", func(t *testing.T) {
		findErr(t, Selector{Ifaces: []string{"eth9"}}, "no interface matches -iface=eth9; "+cands)
		findErr(t, Selector{Ifaces: []string{"ul2", "198.18.3.2"}, Regexes: []string{"^ul3$"}},
			"no interface matches -iface=ul2 -iface=198.18.3.2 -iface-regex=^ul3$; "+cands)
		if _, err := FindInterface(h, Selector{Regexes: []string{"("}}); err == nil || !strings.HasPrefix(err.Error(), "parse -iface-regex=(: ") {
			t.Errorf("bad regex: %v", err)
		}
		if _, err := FindInterface(h, Selector{CanReach: ip("2001:db8::1")}); err == nil || !strings.Contains(err.Error(), "not an IPv4 address") {
			t.Errorf("IPv6 can-reach: %v", err)
		}
	})

	t.Run("can reach via unusable link", func(t *testing.T) {
		r := &netlink.Route{LinkIndex: ul3.Attrs().Index, Dst: mustIPNet(t, "198.18.77.0/24"), Scope: netlink.SCOPE_LINK}
		if err := h.RouteAdd(r); err != nil {
			t.Fatal(err)
		}
		defer func() { _ = h.RouteDel(r) }() // gone with its link in some cases
		findErr(t, Selector{CanReach: ip("198.18.77.5")},
			"no interface matches -iface-can-reach=198.18.77.5 (route to 198.18.77.5 uses ul3, which is down or has no IPv4 address); "+cands)
	})

	t.Run("lowest metric default", func(t *testing.T) {
		r := addDefault(t, ul1, "198.18.2.1", 50)
		defer func() { _ = h.RouteDel(r) }() // gone with its link in some cases
		find(t, Selector{}, iface(ul1, "198.18.2.2"))
	})

	t.Run("default via unusable link", func(t *testing.T) {
		r := addDefault(t, ul3, "", 10)
		defer func() { _ = h.RouteDel(r) }() // gone with its link in some cases
		findErr(t, Selector{}, "default route uses ul3, which is down or has no IPv4 address; "+cands)
	})

	t.Run("no default route", func(t *testing.T) {
		if err := h.RouteDel(viaUl0); err != nil {
			t.Fatal(err)
		}
		findErr(t, Selector{}, "no default route: pass -iface, -iface-regex or -iface-can-reach; "+cands)
		findErr(t, Selector{CanReach: ip("198.18.99.1")},
			"no interface matches -iface-can-reach=198.18.99.1 (route to 198.18.99.1: network is unreachable); "+cands)
		// Explicit selectors still work without a default route.
		find(t, Selector{Ifaces: []string{"ul0"}}, iface(ul0, "198.18.1.2"))
	})
}

func TestListCandidatesEmpty(t *testing.T) {
	if got := listCandidates(nil); !strings.HasPrefix(got, "none") {
		t.Errorf("listCandidates(nil) = %q", got)
	}
}
