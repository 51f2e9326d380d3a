package route

import (
	"fmt"
	"net"
	"os"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

var nsCounter atomic.Int64

// testNS is a fresh, named network namespace and a netlink handle into it.
type testNS struct {
	h  *netlink.Handle
	ns netns.NsHandle
}

// newTestNS creates a namespace that is deleted when the test ends, even on
// failure. The test goroutine never enters it: only the handle's sockets live
// there.
func newTestNS(t *testing.T) testNS {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: needs root (CAP_NET_ADMIN) to create network namespaces; run go test as root")
	}
	name := fmt.Sprintf("weft-route-%d-%d", os.Getpid(), nsCounter.Add(1))
	type result struct {
		ns  netns.NsHandle
		err error
	}
	ch := make(chan result)
	go func() {
		// NewNamed moves this thread into the new namespace. The thread stays
		// locked until the goroutine exits, so Go discards it instead of
		// reusing it for other goroutines.
		runtime.LockOSThread()
		ns, err := netns.NewNamed(name)
		ch <- result{ns, err}
	}()
	r := <-ch
	if r.err != nil {
		t.Fatalf("create netns %s: %v", name, r.err)
	}
	t.Cleanup(func() {
		r.ns.Close()
		if err := netns.DeleteNamed(name); err != nil {
			t.Errorf("delete netns %s: %v", name, err)
		}
	})
	h, err := netlink.NewHandleAt(r.ns)
	if err != nil {
		t.Fatalf("netlink handle in %s: %v", name, err)
	}
	t.Cleanup(h.Close)
	lo, err := h.LinkByName("lo")
	if err != nil {
		t.Fatalf("find lo: %v", err)
	}
	if err := h.LinkSetUp(lo); err != nil {
		t.Fatalf("set lo up: %v", err)
	}
	return testNS{h: h, ns: r.ns}
}

// addLink creates a veth pair (this kernel has no dummy driver) named name
// and name+"p", optionally both up, with IPv4 address cidr on name.
func (n testNS) addLink(t *testing.T, name string, up bool, cidr string) netlink.Link {
	t.Helper()
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: name + "p"}
	if err := n.h.LinkAdd(veth); err != nil {
		t.Fatalf("add veth %s: %v", name, err)
	}
	link, err := n.h.LinkByName(name)
	if err != nil {
		t.Fatalf("find %s: %v", name, err)
	}
	if up {
		for _, l := range []string{name, name + "p"} {
			ll, err := n.h.LinkByName(l)
			if err != nil {
				t.Fatalf("find %s: %v", l, err)
			}
			if err := n.h.LinkSetUp(ll); err != nil {
				t.Fatalf("set %s up: %v", l, err)
			}
		}
	}
	if cidr != "" {
		n.addAddr(t, link, cidr)
	}
	return link
}

func (n testNS) addAddr(t *testing.T, link netlink.Link, cidr string) {
	t.Helper()
	a, err := netlink.ParseAddr(cidr)
	if err != nil {
		t.Fatal(err)
	}
	if err := n.h.AddrAdd(link, a); err != nil {
		t.Fatalf("add %s to %s: %v", cidr, link.Attrs().Name, err)
	}
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
	if err := netlink.AddrSubscribeAt(n.ns, addrs, done); err != nil {
		t.Fatalf("subscribe to addresses: %v", err)
	}
	if err := netlink.RouteSubscribeAt(n.ns, routes, done); err != nil {
		t.Fatalf("subscribe to routes: %v", err)
	}

	f()

	// A marker change after f: every IPv4 event before the marker's own
	// events came from f, since each subscription sees events in order.
	id := nsCounter.Add(1)
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
