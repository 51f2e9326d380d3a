package firewall

import (
	"net"
	"os"
	"testing"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"

	"github.com/weft-net/weft/internal/netnstest"
)

// testNS is a namespace with an nftables conn into it. The test goroutine
// never enters it.
type testNS struct {
	*netnstest.NS
	nft *nftables.Conn
}

// newTestNS creates a namespace that is deleted when the test ends, even on
// failure; its nftables ruleset goes with it.
func newTestNS(t *testing.T) *testNS {
	t.Helper()
	n := &testNS{NS: netnstest.New(t)}
	var err error
	n.nft, err = nftables.New(nftables.WithNetNSFd(int(n.Handle)))
	if err != nil {
		t.Fatalf("nftables conn in netns %s: %v", n.Name, err)
	}
	return n
}

func (n *testNS) route(t *testing.T, dst, via string) {
	t.Helper()
	var d *net.IPNet
	if dst != "default" {
		_, d, _ = net.ParseCIDR(dst)
	}
	if err := n.Netlink.RouteAdd(&netlink.Route{Dst: d, Gw: net.ParseIP(via)}); err != nil {
		t.Fatalf("netns %s: route %s via %s: %v", n.Name, dst, via, err)
	}
}

func (n *testNS) sysctl(t *testing.T, path, value string) {
	t.Helper()
	// /proc/sys/net resolves to the namespace of the thread that opens it.
	if err := n.Do(func() error { return os.WriteFile(path, []byte(value), 0o644) }); err != nil {
		t.Fatalf("netns %s: write %s: %v", n.Name, path, err)
	}
}
