package route

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
)

// linkState is what Set controls, read back from the kernel.
type linkState struct {
	MTU     int
	TxQLen  int
	GSOSegs int
	Up      bool
	Addrs   []string // IPv4, sorted
	Routes  []string // main-table IPv4 routes, sorted
}

func readState(t *testing.T, h *netlink.Handle, name string) linkState {
	t.Helper()
	link, err := h.LinkByName(name)
	if err != nil {
		t.Fatalf("find %s: %v", name, err)
	}
	a := link.Attrs()
	s := linkState{MTU: a.MTU, TxQLen: a.TxQLen, GSOSegs: int(a.GSOMaxSegs), Up: a.Flags&net.FlagUp != 0}
	addrs, err := h.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		t.Fatalf("list addresses: %v", err)
	}
	for _, ad := range addrs {
		s.Addrs = append(s.Addrs, ad.IPNet.String())
	}
	routes, err := h.RouteList(link, netlink.FAMILY_V4)
	if err != nil {
		t.Fatalf("list routes: %v", err)
	}
	for _, r := range routes {
		s.Routes = append(s.Routes, fmt.Sprintf("%s scope %s proto %s metric %d", r.Dst, r.Scope, r.Protocol, r.Priority))
	}
	slices.Sort(s.Addrs)
	slices.Sort(s.Routes)
	return s
}

func mustApply(t *testing.T, h *netlink.Handle, d Desired) []string {
	t.Helper()
	changes, err := Apply(h, d)
	if err != nil {
		t.Fatalf("Apply: %v (changes so far: %q)", err, changes)
	}
	return changes
}

func wantState(t *testing.T, h *netlink.Handle, want linkState) {
	t.Helper()
	if got := readState(t, h, "udp0"); !reflect.DeepEqual(got, want) {
		t.Fatalf("kernel state of udp0:\n got %+v\nwant %+v", got, want)
	}
}

func TestSet(t *testing.T) {
	n := newTestNS(t)
	h := n.Netlink
	udp0 := n.addLink(t, "udp0", false, "")
	d := Desired{
		Link:       "udp0",
		Addr:       netip.MustParsePrefix("198.19.7.0/32"),
		MTU:        1472,
		TxQueueLen: 2000,
		GSOMaxSegs: 44,
		Routes:     []netip.Prefix{netip.MustParsePrefix("198.19.0.0/16")},
	}
	want := linkState{
		MTU: 1472, TxQLen: 2000, GSOSegs: 44, Up: true,
		Addrs:  []string{"198.19.7.0/32"},
		Routes: []string{"198.19.0.0/16 scope link proto boot metric 0"},
	}

	// A new veth starts down with MTU 1500, txqueuelen 1000, gso_max_segs
	// 65535 and no address: everything changes.
	changes := mustApply(t, h, d)
	if len(changes) != 6 {
		t.Errorf("first Set: want 6 changes (mtu, txqueuelen, gso_max_segs, address, up, route), got %q", changes)
	}
	wantState(t, h, want)

	t.Run("idempotent", func(t *testing.T) {
		n.assertQuiet(t, func() {
			if changes := mustApply(t, h, d); len(changes) != 0 {
				t.Errorf("second Apply changed %q", changes)
			}
			if err := Set(h, d); err != nil {
				t.Errorf("Set: %v", err)
			}
		})
		wantState(t, h, want)
	})

	t.Run("removes leftovers", func(t *testing.T) {
		// An address from an earlier lease, a foreign route, and the right
		// destination with the wrong metric.
		n.AddAddr(t, "udp0", "198.19.9.0/32")
		for _, r := range []netlink.Route{
			{LinkIndex: udp0.Attrs().Index, Dst: mustIPNet(t, "198.19.200.0/24"), Scope: netlink.SCOPE_LINK},
			{LinkIndex: udp0.Attrs().Index, Dst: mustIPNet(t, "198.19.0.0/16"), Scope: netlink.SCOPE_LINK, Priority: 100},
		} {
			if err := h.RouteAdd(&r); err != nil {
				t.Fatalf("add stale route %s: %v", r.Dst, err)
			}
		}
		changes := mustApply(t, h, d)
		if len(changes) != 3 {
			t.Errorf("want 3 deletions, got %q", changes)
		}
		for _, c := range changes {
			if !strings.HasPrefix(c, "delete ") {
				t.Errorf("unexpected change %q", c)
			}
		}
		wantState(t, h, want)
	})

	t.Run("repairs tampering", func(t *testing.T) {
		if err := h.LinkSetMTU(udp0, 1500); err != nil {
			t.Fatal(err)
		}
		if err := h.LinkSetGSOMaxSegs(udp0, 100); err != nil {
			t.Fatal(err)
		}
		if err := h.RouteDel(&netlink.Route{LinkIndex: udp0.Attrs().Index, Dst: mustIPNet(t, "198.19.0.0/16"), Scope: netlink.SCOPE_LINK}); err != nil {
			t.Fatal(err)
		}
		changes := mustApply(t, h, d)
		if !slices.Equal(changes, []string{"set mtu 1472 on udp0 (was 1500)", "set gso_max_segs 44 on udp0 (was 100)", "add route 198.19.0.0/16 dev udp0"}) {
			t.Errorf("changes = %q", changes)
		}
		wantState(t, h, want)

		// Down drops the link's routes; Set brings both back.
		if err := h.LinkSetDown(udp0); err != nil {
			t.Fatal(err)
		}
		if got := readState(t, h, "udp0"); len(got.Routes) != 0 {
			t.Fatalf("routes survived link down: %q", got.Routes)
		}
		mustApply(t, h, d)
		wantState(t, h, want)
	})

	t.Run("new lease and network", func(t *testing.T) {
		d2 := d
		d2.Addr = netip.MustParsePrefix("198.19.8.0/32")
		d2.Routes = []netip.Prefix{netip.MustParsePrefix("198.19.0.0/17"), netip.MustParsePrefix("198.19.128.0/17")}
		mustApply(t, h, d2)
		want2 := want
		want2.Addrs = []string{"198.19.8.0/32"}
		want2.Routes = []string{
			"198.19.0.0/17 scope link proto boot metric 0",
			"198.19.128.0/17 scope link proto boot metric 0",
		}
		wantState(t, h, want2)
		mustApply(t, h, d)
		wantState(t, h, want)
	})

	t.Run("desired address was a secondary", func(t *testing.T) {
		// Deleting a primary takes its secondaries along unless
		// promote_secondaries is set; Set must end with the address either way.
		d3 := d
		d3.Addr = netip.MustParsePrefix("198.19.7.9/24")
		n.AddAddr(t, "udp0", "198.19.7.5/24")
		n.AddAddr(t, "udp0", "198.19.7.9/24")
		mustApply(t, h, d3)
		want3 := want
		want3.Addrs = []string{"198.19.7.9/24"}
		// The kernel's own route for the /24 is left alone.
		want3.Routes = []string{
			"198.19.0.0/16 scope link proto boot metric 0",
			"198.19.7.0/24 scope link proto kernel metric 0",
		}
		wantState(t, h, want3)
		n.assertQuiet(t, func() {
			if changes := mustApply(t, h, d3); len(changes) != 0 {
				t.Errorf("repeat Set changed %q", changes)
			}
		})
		mustApply(t, h, d)
		wantState(t, h, want)
	})

	t.Run("LinkMTU", func(t *testing.T) {
		if mtu, err := LinkMTU(h, "udp0"); err != nil || mtu != 1472 {
			t.Errorf("LinkMTU(udp0) = %d, %v; want 1472", mtu, err)
		}
		if _, err := LinkMTU(h, "nosuch0"); err == nil || !strings.Contains(err.Error(), "nosuch0") {
			t.Errorf("LinkMTU(nosuch0) error = %v; want one naming the link", err)
		}
	})

	t.Run("missing link", func(t *testing.T) {
		d4 := d
		d4.Link = "nosuch0"
		err := Set(h, d4)
		var nf netlink.LinkNotFoundError
		if !errors.As(err, &nf) || !strings.Contains(err.Error(), "find link nosuch0") {
			t.Errorf("Set on a missing link: %v", err)
		}
	})

	t.Run("RemoveLink", func(t *testing.T) {
		if err := RemoveLink(h, "udp0"); err != nil {
			t.Fatalf("RemoveLink: %v", err)
		}
		if _, err := h.LinkByName("udp0"); !errors.As(err, &netlink.LinkNotFoundError{}) {
			t.Fatalf("udp0 still present after RemoveLink: %v", err)
		}
		if err := RemoveLink(h, "udp0"); err != nil {
			t.Fatalf("RemoveLink of an absent link: %v", err)
		}
	})
}

func TestSetRejectsInvalid(t *testing.T) {
	good := Desired{
		Link:   "udp0",
		Addr:   netip.MustParsePrefix("198.19.7.0/32"),
		MTU:    1472,
		Routes: []netip.Prefix{netip.MustParsePrefix("198.19.0.0/16")},
	}
	for name, tc := range map[string]struct {
		mod  func(*Desired)
		want string
	}{
		"no link":       {func(d *Desired) { d.Link = "" }, "no link name"},
		"no address":    {func(d *Desired) { d.Addr = netip.Prefix{} }, "not an IPv4 prefix"},
		"ipv6 address":  {func(d *Desired) { d.Addr = netip.MustParsePrefix("2001:db8::1/128") }, "not an IPv4 prefix"},
		"tiny mtu":      {func(d *Desired) { d.MTU = 67 }, "mtu 67 out of range"},
		"huge mtu":      {func(d *Desired) { d.MTU = 65536 }, "mtu 65536 out of range"},
		"negative qlen": {func(d *Desired) { d.TxQueueLen = -1 }, "txqueuelen -1"},
		"huge gso segs": {func(d *Desired) { d.GSOMaxSegs = 70000 }, "gso_max_segs 70000 out of range"},
		"host bits": {func(d *Desired) {
			d.Routes = append(d.Routes, netip.MustParsePrefix("198.19.1.0/15"))
		}, "route 198.19.1.0/15 is not an IPv4 network prefix"},
		"ipv6 route": {func(d *Desired) {
			d.Routes = []netip.Prefix{netip.MustParsePrefix("2001:db8::/32")}
		}, "not an IPv4 network prefix"},
	} {
		t.Run(name, func(t *testing.T) {
			d := good
			tc.mod(&d)
			// A nil handle proves validation happens before any netlink call.
			err := Set(nil, d)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Set(%+v) error = %v; want it to contain %q", d, err, tc.want)
			}
		})
	}
}
