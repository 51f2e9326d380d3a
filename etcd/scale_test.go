package etcd

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"testing"

	"github.com/weft-net/weft/etcd/etcdtest"
	"github.com/weft-net/weft/subnet"
)

// TestNoExpirations: a daemon's store reads and watches leases without one
// TimeToLive per lease (at 5,000 nodes that would be 5,000 requests per
// daemon per list), and the request counter shows it.
func TestNoExpirations(t *testing.T) {
	ep := etcdtest.Start(t)
	ctx := testCtx(t)
	full, _ := newStore(t, ep)
	const n = 20
	for i := range n {
		sn := netip.MustParsePrefix(fmt.Sprintf("198.19.%d.0/24", i))
		if _, err := full.CreateLease(ctx, sn, attrs(t, fmt.Sprintf(`{"PublicIP":"198.18.0.%d"}`, i+1)), subnet.LeaseTTL); err != nil {
			t.Fatal(err)
		}
	}

	lean, err := New(Config{Endpoints: []string{ep}, Logger: slog.New(slog.DiscardHandler), NoExpirations: true})
	if err != nil {
		t.Fatal(err)
	}
	defer lean.Close()

	before := full.Requests()["LeaseTimeToLive"]
	leases, rev, err := full.ListLeases(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := full.Requests()["LeaseTimeToLive"] - before; got != n {
		t.Errorf("full store: %d TimeToLive requests for a list of %d leases, want %d", got, n, n)
	}
	for _, l := range leases {
		if l.Expiration.IsZero() {
			t.Errorf("full store: lease %s without expiration", l.Subnet)
		}
	}

	leanLeases, _, err := lean.ListLeases(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(leanLeases) != n {
		t.Fatalf("lean store listed %d leases, want %d", len(leanLeases), n)
	}
	for _, l := range leanLeases {
		if !l.Expiration.IsZero() || l.ID == 0 {
			t.Errorf("lean store: lease %s has expiration %v, ID %d; want zero expiration, the etcd lease ID", l.Subnet, l.Expiration, l.ID)
		}
	}

	// A watched PUT costs no lookup either.
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	batches, _ := startWatch(wctx, lean, rev)
	l, err := full.CreateLease(ctx, netip.MustParsePrefix("198.19.200.0/24"), attrs(t, `{"PublicIP":"198.18.1.1"}`), subnet.LeaseTTL)
	if err != nil {
		t.Fatal(err)
	}
	_, rev2, err := lean.ListLeases(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got := collect(t, batches, rev2)
	if e := got[len(got)-1].events; len(e) != 1 || e[0].Lease.Subnet != l.Subnet || !e[0].Lease.Expiration.IsZero() {
		t.Errorf("watched events %+v, want one add of %s without expiration", e, l.Subnet)
	}
	reqs := lean.Requests()
	if reqs["LeaseTimeToLive"] != 0 {
		t.Errorf("lean store made %d TimeToLive requests, want 0", reqs["LeaseTimeToLive"])
	}
	if reqs["Range"] != 2 || reqs["Watch"] == 0 {
		t.Errorf("lean store requests %v, want 2 Range (two lists) and a Watch", reqs)
	}
}
