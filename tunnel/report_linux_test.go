package tunnel_test

import (
	"context"
	"net/netip"
	"slices"
	"testing"

	"github.com/weft-net/weft/dataplane"
	"github.com/weft-net/weft/tunnel"
	"github.com/weft-net/weft/tunnel/tuntest"
)

// The forwarder as the node sees it through the data-plane seam: a
// snapshot, then a change, then its report with every drop reason named
// and the peers' counters.
func TestForwarderReport(t *testing.T) {
	dev := tuntest.NewDevice("udp0", 1472)
	conn, _ := tuntest.NewConnPair(netip.MustParseAddrPort("198.18.0.2:8285"), netip.MustParseAddrPort("198.18.0.3:8285"))
	var plane dataplane.Plane = tunnel.NewForwarder(tunnel.Config{Device: dev, Conn: conn})
	peerC := netip.MustParsePrefix("198.19.3.0/24")
	plane.UpdatePeers(subnetA, []dataplane.Peer{{Subnet: subnetB, Addr: netip.MustParseAddr("198.18.0.3")}})
	plane.ApplyPeers(subnetA, []dataplane.PeerChange{{Peer: dataplane.Peer{Subnet: peerC, Addr: netip.MustParseAddr("198.18.0.4")}}})

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- plane.Run(ctx) }()
	dev.Inject(tuntest.IPv4UDP(hostA, netip.MustParseAddr("198.19.9.9"), []byte("nowhere")))
	eventually(t, "no_route counted", func() bool { return plane.Report(false).Counters.Drops["no_route"] == 1 })
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run after cancel: %v", err)
	}

	r := plane.Report(true)
	if r.Peers != 2 || len(r.PeerTraffic) != 2 || r.PeerTraffic[0].Subnet != subnetB || r.PeerTraffic[1].Subnet != peerC {
		t.Errorf("report peers %d, traffic %+v; want 198.19.2.0/24 and 198.19.3.0/24 in order", r.Peers, r.PeerTraffic)
	}
	var names []string
	for name := range r.Counters.Drops {
		names = append(names, name)
	}
	slices.Sort(names)
	want := tunnel.DropReasonNames()
	slices.Sort(want)
	if !slices.Equal(names, want) {
		t.Errorf("drop reasons reported %v, want every reason %v", names, want)
	}
	if r.Offloads.Any() {
		t.Errorf("offloads %+v from fakes that have none", r.Offloads)
	}
	if len(plane.Report(false).PeerTraffic) != 0 {
		t.Error("Report(false) lists peers")
	}
}
