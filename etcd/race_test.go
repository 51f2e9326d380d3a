package etcd

import (
	"net/netip"
	"sync"
	"testing"

	"github.com/weft-net/weft/etcd/etcdtest"
	"github.com/weft-net/weft/subnet"
)

// TestFiftyNodesRaceForSubnets: 50 daemons start at once against one real
// etcd, each with its own client as separate processes would have. Every
// one gets a subnet, all distinct, and etcd holds exactly 50 leases with
// 50 etcd leases behind them (lost races leave no orphan).
func TestFiftyNodesRaceForSubnets(t *testing.T) {
	const nodes = 50
	ep := etcdtest.Start(t)
	cfg, err := subnet.ParseConfig([]byte(`{"Network":"198.19.0.0/16","SubnetLen":24,"Backend":{"Type":"udp"}}`))
	if err != nil {
		t.Fatal(err)
	}
	stores := make([]*Store, nodes)
	for i := range stores {
		stores[i], _ = newStore(t, ep)
	}
	ctx := testCtx(t)
	leases := make([]subnet.Lease, nodes)
	errs := make([]error, nodes)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range nodes {
		wg.Go(func() {
			<-start
			leases[i], errs[i] = subnet.Acquire(ctx, stores[i], subnet.AcquireOptions{
				Config: cfg,
				Attrs:  subnet.Attrs{PublicIP: netip.AddrFrom4([4]byte{198, 18, 0, byte(10 + i)})},
			})
		})
	}
	close(start)
	wg.Wait()

	seen := map[netip.Prefix]int{}
	for i, err := range errs {
		if err != nil {
			t.Errorf("node %d: %v", i, err)
			continue
		}
		if j, dup := seen[leases[i].Subnet]; dup {
			t.Errorf("nodes %d and %d both got %v", j, i, leases[i].Subnet)
		}
		seen[leases[i].Subnet] = i
	}
	listed, _, err := stores[0].ListLeases(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(listed) != nodes {
		t.Errorf("%d leases in etcd, want %d", len(listed), nodes)
	}
	for _, l := range listed {
		i, ok := seen[l.Subnet]
		if !ok || l.Attrs.PublicIP != leases[i].Attrs.PublicIP || l.Reserved() {
			t.Errorf("lease %v = %+v, not the one node %d acquired", l.Subnet, l.Attrs, i)
		}
	}
	if n := len(etcdLeases(t, ctx, rawClient(t, ep))); n != nodes {
		t.Errorf("%d etcd leases, want %d: lost races must revoke theirs", n, nodes)
	}
	t.Logf("%d nodes got %d distinct subnets", nodes, len(seen))
}
