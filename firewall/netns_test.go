package firewall

import (
	"fmt"
	"net"
	"os"
	"runtime"
	"sync/atomic"
	"testing"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

var nsCounter atomic.Int64

// testNS is a fresh, named network namespace with a netlink handle and an
// nftables conn into it. The test goroutine never enters it.
type testNS struct {
	name string
	ns   netns.NsHandle
	h    *netlink.Handle
	nft  *nftables.Conn
}

func skipUnlessRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: needs root (CAP_NET_ADMIN) to create network namespaces and nftables tables; run go test as root")
	}
}

// newTestNS creates a namespace that is deleted when the test ends, even on
// failure; its nftables ruleset goes with it.
func newTestNS(t *testing.T, role string) *testNS {
	t.Helper()
	skipUnlessRoot(t)
	name := fmt.Sprintf("weft-fw-%s-%d-%d", role, os.Getpid(), nsCounter.Add(1))
	type result struct {
		ns  netns.NsHandle
		err error
	}
	ch := make(chan result)
	go func() {
		// NewNamed moves this thread into the namespace; the thread stays
		// locked until the goroutine exits, so Go discards it.
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
	n := &testNS{name: name, ns: r.ns, h: h}
	n.nft, err = nftables.New(nftables.WithNetNSFd(int(r.ns)))
	if err != nil {
		t.Fatalf("nftables conn in %s: %v", name, err)
	}
	n.up(t, "lo")
	return n
}

// do runs f on a thread inside the namespace. Sockets f creates stay in
// the namespace; the thread is thrown away afterwards.
func (n *testNS) do(f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: Go discards the thread
		if err := netns.Set(n.ns); err != nil {
			errc <- fmt.Errorf("enter netns %s: %w", n.name, err)
			return
		}
		errc <- f()
	}()
	return <-errc
}

func (n *testNS) link(t *testing.T, name string) netlink.Link {
	t.Helper()
	l, err := n.h.LinkByName(name)
	if err != nil {
		t.Fatalf("%s: find %s: %v", n.name, name, err)
	}
	return l
}

func (n *testNS) up(t *testing.T, name string) {
	t.Helper()
	if err := n.h.LinkSetUp(n.link(t, name)); err != nil {
		t.Fatalf("%s: set %s up: %v", n.name, name, err)
	}
}

func (n *testNS) addr(t *testing.T, name, cidr string) {
	t.Helper()
	a, err := netlink.ParseAddr(cidr)
	if err != nil {
		t.Fatal(err)
	}
	if err := n.h.AddrAdd(n.link(t, name), a); err != nil {
		t.Fatalf("%s: add %s to %s: %v", n.name, cidr, name, err)
	}
}

func (n *testNS) route(t *testing.T, dst, via string) {
	t.Helper()
	var d *net.IPNet
	if dst != "default" {
		_, d, _ = net.ParseCIDR(dst)
	}
	if err := n.h.RouteAdd(&netlink.Route{Dst: d, Gw: net.ParseIP(via)}); err != nil {
		t.Fatalf("%s: route %s via %s: %v", n.name, dst, via, err)
	}
}

// veth creates name here and peer in other, both up.
func (n *testNS) veth(t *testing.T, name string, other *testNS, peer string) {
	t.Helper()
	v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: peer, PeerNamespace: netlink.NsFd(int(other.ns))}
	if err := n.h.LinkAdd(v); err != nil {
		t.Fatalf("%s: add veth %s/%s: %v", n.name, name, peer, err)
	}
	n.up(t, name)
	other.up(t, peer)
}

func (n *testNS) sysctl(t *testing.T, path, value string) {
	t.Helper()
	// /proc/sys/net resolves to the namespace of the thread that opens it.
	if err := n.do(func() error { return os.WriteFile(path, []byte(value), 0o644) }); err != nil {
		t.Fatalf("%s: write %s: %v", n.name, path, err)
	}
}
