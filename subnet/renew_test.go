package subnet_test

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/weft-net/weft/subnet"
	"github.com/weft-net/weft/subnet/subnettest"
)

type keepAlive struct {
	renewed chan subnet.Lease
	failed  chan error
	done    chan error
	cancel  context.CancelFunc
}

func startKeepAlive(t *testing.T, s subnet.Store, clk subnet.Clock, l subnet.Lease, margin time.Duration) (*keepAlive, *logBuffer) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	log, logs := newLogger()
	k := &keepAlive{renewed: make(chan subnet.Lease, 16), failed: make(chan error, 64), done: make(chan error, 1), cancel: cancel}
	go func() {
		k.done <- subnet.KeepAlive(ctx, s, clk, log, l, margin,
			func(l subnet.Lease) { k.renewed <- l },
			func(err error) {
				select {
				case k.failed <- err:
				default: // long outages report more failures than tests count
				}
			})
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-k.done:
			if err != nil {
				t.Errorf("KeepAlive after cancel: %v; want nil, a clean stop", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("KeepAlive did not return after cancel")
		}
	})
	return k, logs
}

func TestKeepAliveRenewsBeforeExpiry(t *testing.T) {
	s, clk := newStore()
	l, err := s.CreateLease(context.Background(), pfx("198.19.7.0/24"), attrs("198.18.0.2"), subnet.LeaseTTL)
	if err != nil {
		t.Fatal(err)
	}
	k, _ := startKeepAlive(t, s, clk, l, time.Hour)

	for round := range 3 {
		blockUntil(t, clk, 1)
		if p := clk.Pending(); !slices.Equal(p, []time.Duration{23 * time.Hour}) {
			t.Fatalf("round %d: sleeping %v, want 23h (expiry - margin)", round, p)
		}
		clk.Advance(23*time.Hour - time.Second)
		none(t, k.renewed, "renewal before expiry - margin")
		clk.Advance(time.Second)
		r := recv(t, k.renewed, "renewal")
		if r.ID != l.ID || r.Subnet != l.Subnet {
			t.Fatalf("renewed %s id %x, want the same lease %s id %x", r.Subnet, r.ID, l.Subnet, l.ID)
		}
		if want := clk.Now().Add(subnet.LeaseTTL); !r.Expiration.Equal(want) {
			t.Fatalf("Expiration %v, want %v", r.Expiration, want)
		}
	}
	if n := s.Calls(subnettest.OpCreate); n != 1 {
		t.Errorf("%d CreateLease calls: renewal must not create leases", n)
	}
	if ls := s.Leases(); len(ls) != 1 || ls[0].ID != l.ID {
		t.Errorf("store holds %+v, want the one original lease", ls)
	}
}

func TestKeepAliveRenewsAtOnceWhenPastMargin(t *testing.T) {
	s, clk := newStore()
	l, err := s.CreateLease(context.Background(), pfx("198.19.7.0/24"), attrs("198.18.0.2"), 30*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	k, _ := startKeepAlive(t, s, clk, l, time.Hour)
	r := recv(t, k.renewed, "immediate renewal")
	if r.ID != l.ID {
		t.Fatalf("renewed id %x, want %x", r.ID, l.ID)
	}
	// The margin exceeds the TTL: renewing at once again would spin, so
	// the next renewal is at half the remaining life.
	blockUntil(t, clk, 1)
	if p := clk.Pending(); !slices.Equal(p, []time.Duration{15 * time.Minute}) {
		t.Fatalf("sleeping %v, want 15m", p)
	}
	if n := s.Calls(subnettest.OpRenew); n != 1 {
		t.Errorf("%d renewals, want 1", n)
	}
}

func TestKeepAliveLostLease(t *testing.T) {
	s, clk := newStore()
	l, err := s.CreateLease(context.Background(), pfx("198.19.7.0/24"), attrs("198.18.0.2"), subnet.LeaseTTL)
	if err != nil {
		t.Fatal(err)
	}
	k, _ := startKeepAlive(t, s, clk, l, time.Hour)
	blockUntil(t, clk, 1)
	s.DeleteLease(l.Subnet) // an operator's etcdctl del
	clk.Advance(23 * time.Hour)
	err = recv(t, k.done, "KeepAlive to return")
	k.done <- nil // for the cleanup
	if !errors.Is(err, subnet.ErrLeaseNotFound) {
		t.Fatalf("err = %v, want ErrLeaseNotFound", err)
	}
	if want := "renew lease 198.19.7.0/24: "; len(err.Error()) < len(want) || err.Error()[:len(want)] != want {
		t.Errorf("err %q does not name the lease", err)
	}
}

func TestKeepAliveExpiredLease(t *testing.T) {
	s, clk := newStore()
	l, err := s.CreateLease(context.Background(), pfx("198.19.7.0/24"), attrs("198.18.0.2"), subnet.LeaseTTL)
	if err != nil {
		t.Fatal(err)
	}
	// The store is down through the renewal window and the lease expires.
	s.SetDown(true)
	k, logs := startKeepAlive(t, s, clk, l, time.Hour)
	blockUntil(t, clk, 1)
	clk.Advance(23 * time.Hour)
	for clk.Now().Before(l.Expiration.Add(time.Minute)) {
		blockUntil(t, clk, 1)
		clk.Advance(clk.Pending()[0])
	}
	blockUntil(t, clk, 1) // the next retry is scheduled
	s.SetDown(false)
	clk.Advance(clk.Pending()[0])
	err = recv(t, k.done, "KeepAlive to return")
	k.done <- nil
	if !errors.Is(err, subnet.ErrLeaseNotFound) {
		t.Fatalf("err = %v, want ErrLeaseNotFound", err)
	}
	if n := logs.count("lease renewal failing"); n != 1 {
		t.Errorf("%d failure log lines over the outage, want 1:\n%s", n, logs)
	}
}

func TestKeepAliveRetriesTransientErrors(t *testing.T) {
	s, clk := newStore()
	l, err := s.CreateLease(context.Background(), pfx("198.19.7.0/24"), attrs("198.18.0.2"), subnet.LeaseTTL)
	if err != nil {
		t.Fatal(err)
	}
	k, logs := startKeepAlive(t, s, clk, l, time.Hour)
	blockUntil(t, clk, 1)
	s.SetDown(true)
	clk.Advance(23 * time.Hour)

	// 1 s doubling, capped at 1 min.
	want := []time.Duration{1, 2, 4, 8, 16, 32, 60, 60, 60}
	for i, w := range want {
		w *= time.Second
		blockUntil(t, clk, 1)
		if p := clk.Pending(); !slices.Equal(p, []time.Duration{w}) {
			t.Fatalf("retry %d: sleeping %v, want %v", i, p, w)
		}
		if i == len(want)-1 {
			s.SetDown(false)
		}
		clk.Advance(w)
	}
	r := recv(t, k.renewed, "renewal after recovery")
	if r.ID != l.ID {
		t.Errorf("renewed id %x, want %x", r.ID, l.ID)
	}
	if n := s.Calls(subnettest.OpRenew); n != len(want)+1 {
		t.Errorf("%d renewal attempts, want %d", n, len(want)+1)
	}
	// Every failed attempt was reported, not only logged once.
	if n := len(k.failed); n != len(want) {
		t.Errorf("failed called %d times, want %d", n, len(want))
	}
	if f, r := logs.count("lease renewal failing"), logs.count("lease renewal recovered"); f != 1 || r != 1 {
		t.Errorf("%d failure and %d recovery log lines, want 1 each:\n%s", f, r, logs)
	}
	// Back to the normal schedule.
	blockUntil(t, clk, 1)
	if p := clk.Pending(); !slices.Equal(p, []time.Duration{23 * time.Hour}) {
		t.Errorf("after recovery sleeping %v, want 23h", p)
	}
	none(t, k.done, "KeepAlive return")
}

func TestKeepAliveReservation(t *testing.T) {
	s, clk := newStore()
	p := pfx("198.19.7.0/24")
	if err := s.PutReservation(p, attrs("198.18.0.2")); err != nil {
		t.Fatal(err)
	}
	res := s.Leases()[0]
	k, _ := startKeepAlive(t, s, clk, res, time.Hour)
	clk.Advance(1000 * time.Hour)
	none(t, k.done, "KeepAlive return")
	if n, w := s.Calls(subnettest.OpRenew), clk.Waiters(); n != 0 || w != 0 {
		t.Errorf("%d renewals, %d timers: a reservation must be left alone", n, w)
	}
	k.cancel()
	if err := recv(t, k.done, "KeepAlive to return"); err != nil {
		t.Errorf("err = %v, want nil on cancel", err)
	}
	k.done <- nil
}

func TestKeepAliveCancel(t *testing.T) {
	s, clk := newStore()
	l, err := s.CreateLease(context.Background(), pfx("198.19.7.0/24"), attrs("198.18.0.2"), subnet.LeaseTTL)
	if err != nil {
		t.Fatal(err)
	}
	k, _ := startKeepAlive(t, s, clk, l, time.Hour)
	blockUntil(t, clk, 1)
	k.cancel()
	if err := recv(t, k.done, "KeepAlive to return"); err != nil {
		t.Errorf("err = %v, want nil on cancel", err)
	}
	k.done <- nil
	if n := s.Calls(subnettest.OpRenew); n != 0 {
		t.Errorf("%d renewals after cancel", n)
	}
}
