package node

import (
	"bytes"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/weft-net/weft/internal/netnstest"
	"github.com/weft-net/weft/route"
)

// underlayWatch against a real interface: an address removed and put back
// within one check only warns; gone at two checks in a row, it is an
// error that names what the interface has now.
func TestUnderlayWatch(t *testing.T) {
	nl := netnstest.New(t).Netlink
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "ul0"}, PeerName: "ul1"}
	if err := nl.LinkAdd(veth); err != nil {
		t.Fatal(err)
	}
	addr := func(s string) *netlink.Addr {
		p := netip.MustParsePrefix(s)
		return &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), 32)}}
	}
	link, err := nl.LinkByName("ul0")
	if err != nil {
		t.Fatal(err)
	}
	iface := route.Iface{Name: "ul0", Addr: netip.MustParseAddr("198.18.5.10")}
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	var w underlayWatch
	step := func(what string, change func(*netlink.Addr) error, a string, wantErr bool) {
		t.Helper()
		if change != nil {
			if err := change(addr(a)); err != nil {
				t.Fatalf("%s: %v", what, err)
			}
		}
		err := w.check(nl, iface, log)
		if (err != nil) != wantErr {
			t.Fatalf("%s: check = %v, want error %v\n%s", what, err, wantErr, logs.String())
		}
		if err != nil && !strings.Contains(err.Error(), "underlay address 198.18.5.10 is gone from the node (ul0 now has 198.18.5.110)") {
			t.Errorf("%s: %v", what, err)
		}
	}
	add := func(a *netlink.Addr) error { return nl.AddrAdd(link, a) }
	del := func(a *netlink.Addr) error { return nl.AddrDel(link, a) }
	step("present", add, "198.18.5.10/24", false)
	step("removed once", del, "198.18.5.10/24", false)
	step("back", add, "198.18.5.10/24", false)
	step("removed again", del, "198.18.5.10/24", false)
	step("renumbered", add, "198.18.5.110/24", true)
	for _, want := range []string{"underlay address is gone from the node", "underlay address is back"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, logs.String())
		}
	}
}

// ip_forward off is warned of once, with the fix, and its return is logged.
func TestForwardingWatch(t *testing.T) {
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	var w forwardingWatch
	value := "1\n"
	read := func() ([]byte, error) { return []byte(value), nil }
	w.check(read, log)
	if logs.Len() != 0 {
		t.Errorf("ip_forward 1: logged %q", logs.String())
	}
	value = "0\n"
	w.check(read, log)
	w.check(read, log)
	if n := strings.Count(logs.String(), "net.ipv4.ip_forward is 0"); n != 1 || !strings.Contains(logs.String(), "sysctl -w net.ipv4.ip_forward=1") {
		t.Errorf("ip_forward 0 twice: %d warnings, want one with the fix:\n%s", n, logs.String())
	}
	value = "1\n"
	w.check(read, log)
	if !strings.Contains(logs.String(), "ip_forward is 1 again") {
		t.Errorf("return not logged:\n%s", logs.String())
	}
}
