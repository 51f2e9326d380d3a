package subnettest_test

import (
	"context"
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/weft-net/weft/subnet"
	"github.com/weft-net/weft/subnet/subnettest"
)

var t0 = time.Date(2026, 8, 1, 0, 0, 0, 0, time.UTC)

func attrs(ip string) subnet.Attrs { return subnet.Attrs{PublicIP: netip.MustParseAddr(ip)} }

func TestClock(t *testing.T) {
	c := subnettest.NewClock(t0)
	if !c.Now().Equal(t0) {
		t.Fatalf("Now %v", c.Now())
	}
	select {
	case <-c.After(0):
	default:
		t.Fatal("After(0) did not fire at once")
	}
	late, early := c.After(2*time.Second), c.After(time.Second)
	if c.Waiters() != 2 {
		t.Fatalf("%d waiters, want 2", c.Waiters())
	}
	c.Advance(999 * time.Millisecond)
	select {
	case <-early:
		t.Fatal("fired early")
	default:
	}
	c.Advance(time.Millisecond)
	if got := <-early; !got.Equal(t0.Add(time.Second)) {
		t.Errorf("fired with %v", got)
	}
	if c.Waiters() != 1 {
		t.Errorf("%d waiters, want 1", c.Waiters())
	}
	c.Advance(time.Hour)
	if got := <-late; !got.Equal(t0.Add(time.Hour + time.Second)) {
		t.Errorf("fired with %v", got)
	}

	done := make(chan struct{})
	go func() {
		c.BlockUntil(1)
		close(done)
	}()
	select {
	case <-done:
		t.Fatal("BlockUntil returned with no waiter")
	case <-time.After(20 * time.Millisecond):
	}
	c.After(time.Minute)
	<-done

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	if err := c.BlockUntilContext(ctx, 5); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("BlockUntilContext = %v", err)
	}
}

func TestStoreCreateRenewExpire(t *testing.T) {
	ctx := context.Background()
	clk := subnettest.NewClock(t0)
	s := subnettest.NewStore()
	s.SetClock(clk)
	p := netip.MustParsePrefix("198.19.7.0/24")

	l, err := s.CreateLease(ctx, p, attrs("198.18.0.2"), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if l.ID == 0 || !l.Expiration.Equal(t0.Add(time.Hour)) {
		t.Fatalf("lease %+v", l)
	}
	if _, err := s.CreateLease(ctx, p, attrs("198.18.0.3"), time.Hour); !errors.Is(err, subnet.ErrLeaseTaken) {
		t.Fatalf("second create: %v", err)
	}
	if _, err := s.CreateLease(ctx, netip.MustParsePrefix("198.19.7.1/24"), attrs("198.18.0.3"), time.Hour); err == nil {
		t.Fatal("unmasked subnet accepted")
	}

	clk.Advance(50 * time.Minute)
	r, err := s.RenewLease(ctx, l)
	if err != nil || r.ID != l.ID || !r.Expiration.Equal(t0.Add(110*time.Minute)) {
		t.Fatalf("renew = %+v, %v", r, err)
	}
	rev := s.Rev()
	clk.Advance(59 * time.Minute)
	if ls, lrev, _ := s.ListLeases(ctx); len(ls) != 1 || lrev != rev {
		t.Fatalf("list after renew: %+v at %d, want 1 lease at %d (renewal changes no key)", ls, lrev, rev)
	}
	clk.Advance(time.Minute)
	if ls, _, _ := s.ListLeases(ctx); len(ls) != 0 {
		t.Fatalf("lease survived its TTL: %+v", ls)
	}
	if _, err := s.RenewLease(ctx, l); !errors.Is(err, subnet.ErrLeaseNotFound) {
		t.Fatalf("renew expired: %v", err)
	}

	// A reservation never expires and cannot be renewed.
	if err := s.PutReservation(p, attrs("198.18.0.9")); err != nil {
		t.Fatal(err)
	}
	clk.Advance(1000 * time.Hour)
	ls := s.Leases()
	if len(ls) != 1 || !ls[0].Reserved() || !ls[0].Expiration.IsZero() {
		t.Fatalf("reservation: %+v", ls)
	}
	if _, err := s.RenewLease(ctx, ls[0]); err == nil {
		t.Fatal("renewed a reservation")
	}
}

func TestStoreFaults(t *testing.T) {
	ctx := context.Background()
	s := subnettest.NewStore()
	if _, err := s.GetNetworkConfig(ctx); !errors.Is(err, subnet.ErrNoConfig) {
		t.Fatalf("no config: %v", err)
	}
	s.SetConfig([]byte(`{"Network":"198.19.0.0/16"}`))
	if b, err := s.GetNetworkConfig(ctx); err != nil || string(b) != `{"Network":"198.19.0.0/16"}` {
		t.Fatalf("config = %s, %v", b, err)
	}

	boom := errors.New("boom")
	s.FailNext(subnettest.OpCreate, boom)
	if _, _, err := s.ListLeases(ctx); err != nil {
		t.Fatalf("list hit a create fault: %v", err)
	}
	if _, err := s.CreateLease(ctx, netip.MustParsePrefix("198.19.1.0/24"), attrs("198.18.0.1"), time.Hour); !errors.Is(err, boom) {
		t.Fatalf("create = %v, want boom", err)
	}
	if _, err := s.CreateLease(ctx, netip.MustParsePrefix("198.19.1.0/24"), attrs("198.18.0.1"), time.Hour); err != nil {
		t.Fatalf("fault used twice: %v", err)
	}
	s.FailNext(subnettest.OpAny, boom)
	if _, err := s.GetNetworkConfig(ctx); !errors.Is(err, boom) {
		t.Fatalf("any fault: %v", err)
	}

	s.SetDown(true)
	if _, _, err := s.ListLeases(ctx); !errors.Is(err, subnettest.ErrUnavailable) {
		t.Fatalf("down: %v", err)
	}
	s.SetDown(false)
	if _, _, err := s.ListLeases(ctx); err != nil {
		t.Fatalf("up again: %v", err)
	}
	if n := s.Calls(subnettest.OpList); n != 3 {
		t.Errorf("%d list calls counted, want 3", n)
	}
}

func TestStoreWatch(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := subnettest.NewStore()
	_, rev0, _ := s.ListLeases(ctx)
	a := netip.MustParsePrefix("198.19.1.0/24")
	b := netip.MustParsePrefix("198.19.2.0/24")
	if _, err := s.CreateLease(ctx, a, attrs("198.18.0.1"), time.Hour); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateLease(ctx, b, attrs("198.18.0.2"), time.Hour); err != nil {
		t.Fatal(err)
	}
	s.DeleteLease(a)

	type batch struct {
		events []subnet.Event
		rev    int64
	}
	got := make(chan batch, 10)
	done := make(chan error, 1)
	go func() {
		done <- s.WatchLeases(ctx, rev0+1, func(ev []subnet.Event, rev int64) { got <- batch{ev, rev} })
	}()
	// Changes after rev0+1: the create of b and the delete of a.
	bt := <-got
	if len(bt.events) != 2 || bt.events[0].Lease.Subnet != b || bt.events[0].Type != subnet.EventAdded ||
		bt.events[1].Lease.Subnet != a || bt.events[1].Type != subnet.EventRemoved || bt.rev != s.Rev() {
		t.Fatalf("batch %+v", bt)
	}
	s.BreakWatches(nil)
	if err := <-done; !errors.Is(err, subnettest.ErrWatchBroken) {
		t.Fatalf("broken watch returned %v", err)
	}

	// Compaction: revisions before the compaction point are gone; a watch
	// from just below it still works.
	s.Compact(s.Rev())
	if err := s.WatchLeases(ctx, s.Rev()-2, func([]subnet.Event, int64) {}); !errors.Is(err, subnet.ErrCompacted) {
		t.Fatalf("watch below compaction: %v", err)
	}
	cctx, ccancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer ccancel()
	n := 0
	if err := s.WatchLeases(cctx, s.Rev()-1, func(ev []subnet.Event, _ int64) { n += len(ev) }); !errors.Is(err, context.DeadlineExceeded) || n != 1 {
		t.Fatalf("watch at compaction point: %v, %d events", err, n)
	}
}
