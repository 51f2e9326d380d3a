package route

import (
	"fmt"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/weft-net/weft/internal/netnstest"
)

// markSeq numbers assertQuiet's marker devices.
var markSeq atomic.Int64

// testNS is a namespace with route's own helpers.
type testNS struct{ *netnstest.NS }

func newTestNS(t *testing.T) testNS { return testNS{netnstest.New(t)} }

// addLink creates a veth pair named name and name+"p", optionally both up,
// with IPv4 address cidr on name.
func (n testNS) addLink(t *testing.T, name string, up bool, cidr string) netlink.Link {
	t.Helper()
	return netnstest.Veth{A: netnstest.End{NS: n.NS, Name: name, Addr: cidr}, B: netnstest.End{NS: n.NS, Name: name + "p"},
		Down: !up}.Add(t)
}

func mustIPNet(t *testing.T, cidr string) *net.IPNet {
	t.Helper()
	_, n, err := net.ParseCIDR(cidr)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// assertQuiet fails if f makes the kernel emit any IPv4 address or route
// notification in the namespace. It is stronger than comparing state before
// and after: a delete followed by an identical re-add also counts.
func (n testNS) assertQuiet(t *testing.T, f func()) {
	t.Helper()
	done := make(chan struct{})
	defer close(done)
	addrs := make(chan netlink.AddrUpdate, 64)
	routes := make(chan netlink.RouteUpdate, 64)
	if err := netlink.AddrSubscribeAt(n.Handle, addrs, done); err != nil {
		t.Fatalf("subscribe to addresses: %v", err)
	}
	if err := netlink.RouteSubscribeAt(n.Handle, routes, done); err != nil {
		t.Fatalf("subscribe to routes: %v", err)
	}

	f()

	// A marker change after f: every IPv4 event before the marker's own
	// events came from f, since each subscription sees events in order.
	id := markSeq.Add(1)
	marker := n.addLink(t, fmt.Sprintf("mark%d", id), true, fmt.Sprintf("198.18.254.%d/32", id%250+1))
	idx := marker.Attrs().Index
	drainUntil(t, addrs, "address", func(a netlink.AddrUpdate) bool { return a.LinkIndex == idx },
		func(a netlink.AddrUpdate) string {
			if a.LinkAddress.IP.To4() == nil {
				return ""
			}
			return fmt.Sprintf("new=%v %s on index %d", a.NewAddr, a.LinkAddress.String(), a.LinkIndex)
		})
	drainUntil(t, routes, "route", func(r netlink.RouteUpdate) bool { return r.LinkIndex == idx },
		func(r netlink.RouteUpdate) string {
			if r.Family != netlink.FAMILY_V4 {
				return ""
			}
			return fmt.Sprintf("type=%d %s", r.Type, r.Route)
		})
}

// drainUntil reads ch until marker matches, reporting every event for which
// unexpected returns a description.
func drainUntil[T any](t *testing.T, ch <-chan T, what string, marker func(T) bool, unexpected func(T) string) {
	t.Helper()
	timeout := time.After(5 * time.Second)
	for {
		select {
		case ev, ok := <-ch:
			if !ok {
				t.Fatalf("%s subscription closed before the marker event", what)
			}
			if marker(ev) {
				return
			}
			if msg := unexpected(ev); msg != "" {
				t.Errorf("unexpected %s event: %s", what, msg)
			}
		case <-timeout:
			t.Fatalf("no marker %s event within 5s", what)
		}
	}
}
