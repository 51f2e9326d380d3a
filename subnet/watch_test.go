package subnet_test

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/subnet"
	"github.com/weft-net/weft/subnet/subnettest"
)

type change struct {
	current map[netip.Prefix]subnet.Lease // Initial with every event so far applied
	events  []subnet.Event
	rev     int64
}

type watchRun struct {
	changes  chan change
	restarts chan string
	done     chan error
	cancel   context.CancelFunc
	logs     *logBuffer
}

// startWatch lists s and watches from there, as the daemon does.
func startWatch(t *testing.T, s subnet.Store, clk subnet.Clock) *watchRun {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	leases, rev, err := s.ListLeases(ctx)
	if err != nil {
		t.Fatal(err)
	}
	log, logs := newLogger()
	cur := make(map[netip.Prefix]subnet.Lease, len(leases))
	for _, l := range leases {
		cur[l.Subnet] = l
	}
	w := &watchRun{changes: make(chan change, 100), restarts: make(chan string, 100), done: make(chan error, 1), cancel: cancel, logs: logs}
	go func() {
		w.done <- subnet.Watch(ctx, subnet.WatchOptions{
			Store: s, Clock: clk, Logger: log, Initial: leases, Rev: rev,
			OnChange: func(ev []subnet.Event, rev int64) {
				// Events alone must be enough to follow the set: the
				// daemon updates its table from them.
				for _, e := range ev {
					if e.Type == subnet.EventRemoved {
						delete(cur, e.Lease.Subnet)
					} else {
						cur[e.Lease.Subnet] = e.Lease
					}
				}
				w.changes <- change{maps.Clone(cur), ev, rev}
			},
			OnRestart: func(reason string) { w.restarts <- reason },
		})
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-w.done:
			if err != nil {
				t.Errorf("Watch returned %v on cancel, want nil", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Watch did not return after cancel")
		}
	})
	return w
}

// describe renders events compactly: "+198.19.1.0/24@198.18.0.1 -198.19.2.0/24".
func describe(events []subnet.Event) string {
	var parts []string
	for _, e := range events {
		switch e.Type {
		case subnet.EventAdded:
			parts = append(parts, fmt.Sprintf("+%s@%s", e.Lease.Subnet, e.Lease.Attrs.PublicIP))
		case subnet.EventRemoved:
			parts = append(parts, fmt.Sprintf("-%s", e.Lease.Subnet))
		}
	}
	return strings.Join(parts, " ")
}

// collect receives changes until their events add up to want.
func (w *watchRun) collect(t *testing.T, want string) change {
	t.Helper()
	var got []subnet.Event
	var last change
	for describe(got) != want {
		if len(describe(got)) > len(want) {
			t.Fatalf("events %q, want %q", describe(got), want)
		}
		last = recv(t, w.changes, fmt.Sprintf("events %q (have %q)", want, describe(got)))
		got = append(got, last.events...)
	}
	return last
}

// sameSet asserts that cur matches the store's leases.
func sameSet(t *testing.T, cur map[netip.Prefix]subnet.Lease, s *subnettest.Store) {
	t.Helper()
	want := s.Leases()
	if len(cur) != len(want) {
		t.Fatalf("watched set has %d leases %v, store has %d", len(cur), slices.Collect(maps.Keys(cur)), len(want))
	}
	for _, l := range want {
		c, ok := cur[l.Subnet]
		if !ok || c.ID != l.ID || !c.Attrs.Equal(l.Attrs) {
			t.Fatalf("watched %s = %+v, store has %+v", l.Subnet, c, l)
		}
	}
}

// waitWatching waits until a watch is active on s, so that BreakWatches
// and SetDown reach it.
func waitWatching(t *testing.T, s *subnettest.Store) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for s.ActiveWatches() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no active watch")
		}
		time.Sleep(time.Millisecond)
	}
}

func mustCreate(t *testing.T, s subnet.Store, p, ip string) subnet.Lease {
	t.Helper()
	l, err := s.CreateLease(context.Background(), pfx(p), attrs(ip), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func TestWatchAddRemove(t *testing.T) {
	s, clk := newStore()
	mustCreate(t, s, "198.19.1.0/24", "198.18.0.1")
	w := startWatch(t, s, clk)

	mustCreate(t, s, "198.19.2.0/24", "198.18.0.2")
	c := w.collect(t, "+198.19.2.0/24@198.18.0.2")
	sameSet(t, c.current, s)

	s.DeleteLease(pfx("198.19.1.0/24"))
	rev := c.rev
	c = w.collect(t, "-198.19.1.0/24")
	sameSet(t, c.current, s)
	if _, storeRev, _ := s.ListLeases(context.Background()); c.rev <= rev || c.rev != storeRev {
		t.Errorf("revision after the delete %d, want > %d and the store's %d", c.rev, rev, storeRev)
	}

	// Expiry looks like a delete.
	clk.Advance(time.Hour)
	s.Expire()
	c = w.collect(t, "-198.19.2.0/24")
	if len(c.current) != 0 {
		t.Errorf("set %v after expiry, want empty", c.current)
	}

	// A changed value is an add.
	mustCreate(t, s, "198.19.3.0/24", "198.18.0.3")
	if err := s.PutReservation(pfx("198.19.3.0/24"), attrs("198.18.0.4")); err != nil {
		t.Fatal(err)
	}
	c = w.collect(t, "+198.19.3.0/24@198.18.0.3 +198.19.3.0/24@198.18.0.4")
	sameSet(t, c.current, s)
	if !c.current[pfx("198.19.3.0/24")].Reserved() {
		t.Error("reservation not reflected")
	}
}

func TestWatchSnapshotsAreIndependent(t *testing.T) {
	s, clk := newStore()
	w := startWatch(t, s, clk)
	mustCreate(t, s, "198.19.1.0/24", "198.18.0.1")
	first := w.collect(t, "+198.19.1.0/24@198.18.0.1").current
	mustCreate(t, s, "198.19.2.0/24", "198.18.0.2")
	w.collect(t, "+198.19.2.0/24@198.18.0.2")
	if len(first) != 1 {
		t.Errorf("an earlier snapshot changed to %v", first)
	}
}

func TestWatchResumesAfterBreak(t *testing.T) {
	s, clk := newStore()
	mustCreate(t, s, "198.19.1.0/24", "198.18.0.1")
	w := startWatch(t, s, clk)
	mustCreate(t, s, "198.19.2.0/24", "198.18.0.2")
	w.collect(t, "+198.19.2.0/24@198.18.0.2")

	s.BreakWatches(nil)
	blockUntil(t, clk, 1)
	if p := clk.Pending(); !slices.Equal(p, []time.Duration{100 * time.Millisecond}) {
		t.Fatalf("backoff %v, want 100ms", p)
	}
	// Changes while the watch is down must not be lost.
	mustCreate(t, s, "198.19.3.0/24", "198.18.0.3")
	s.DeleteLease(pfx("198.19.1.0/24"))
	calls := s.Calls(subnettest.OpWatch)
	clk.Advance(99 * time.Millisecond)
	none(t, w.changes, "change before the backoff ended")
	if n := s.Calls(subnettest.OpWatch); n != calls {
		t.Fatalf("watch retried before the backoff ended")
	}
	clk.Advance(time.Millisecond)
	c := w.collect(t, "+198.19.3.0/24@198.18.0.3 -198.19.1.0/24")
	sameSet(t, c.current, s)
	if n := s.Calls(subnettest.OpList); n != 1 {
		t.Errorf("%d lists, want only the initial one: a break resumes from the revision", n)
	}
	if b, r := w.logs.count("lease watch broken"), w.logs.count("lease watch resumed"); b != 1 || r != 1 {
		t.Errorf("%d broken and %d resumed log lines, want 1 each:\n%s", b, r, w.logs)
	}
	if got := drain(w.restarts); got != "broken" {
		t.Errorf("restarts reported: %q, want one broken", got)
	}
}

func drain(c chan string) string {
	var out []string
	for {
		select {
		case s := <-c:
			out = append(out, s)
		default:
			return strings.Join(out, " ")
		}
	}
}

func TestWatchBackoff(t *testing.T) {
	s, clk := newStore()
	w := startWatch(t, s, clk)
	waitWatching(t, s)
	s.SetDown(true)
	ms := time.Millisecond
	for i, want := range []time.Duration{100 * ms, 200 * ms, 400 * ms, 800 * ms, 1600 * ms, 3200 * ms, 5000 * ms, 5000 * ms} {
		blockUntil(t, clk, 1)
		if p := clk.Pending(); !slices.Equal(p, []time.Duration{want}) {
			t.Fatalf("retry %d: backoff %v, want %v", i, p, want)
		}
		clk.Advance(want)
	}
	blockUntil(t, clk, 1)
	s.SetDown(false)
	clk.Advance(5 * time.Second)
	mustCreate(t, s, "198.19.1.0/24", "198.18.0.1")
	w.collect(t, "+198.19.1.0/24@198.18.0.1")
	if b, r := w.logs.count("lease watch broken"), w.logs.count("lease watch resumed"); b != 1 || r != 1 {
		t.Errorf("%d broken and %d resumed log lines over 9 failures, want 1 each:\n%s", b, r, w.logs)
	}

	// A healthy watch resets the backoff.
	s.BreakWatches(nil)
	blockUntil(t, clk, 1)
	if p := clk.Pending(); !slices.Equal(p, []time.Duration{100 * ms}) {
		t.Fatalf("backoff after a healthy watch %v, want 100ms", p)
	}
	clk.Advance(100 * ms)
	mustCreate(t, s, "198.19.2.0/24", "198.18.0.2")
	w.collect(t, "+198.19.2.0/24@198.18.0.2")
}

func TestWatchCompactionRelists(t *testing.T) {
	s, clk := newStore()
	mustCreate(t, s, "198.19.1.0/24", "198.18.0.1") // will be deleted
	mustCreate(t, s, "198.19.2.0/24", "198.18.0.2") // will change owner
	mustCreate(t, s, "198.19.3.0/24", "198.18.0.3") // stays
	w := startWatch(t, s, clk)

	waitWatching(t, s)
	s.BreakWatches(nil)
	blockUntil(t, clk, 1)
	s.DeleteLease(pfx("198.19.1.0/24"))
	s.DeleteLease(pfx("198.19.2.0/24"))
	mustCreate(t, s, "198.19.2.0/24", "198.18.0.22")
	mustCreate(t, s, "198.19.4.0/24", "198.18.0.4")
	mustCreate(t, s, "198.19.5.0/24", "198.18.0.5")
	s.DeleteLease(pfx("198.19.5.0/24")) // came and went: no event
	s.Compact(s.Rev())
	clk.Advance(100 * time.Millisecond)

	c := recv(t, w.changes, "re-list events")
	if got, want := describe(c.events), "-198.19.1.0/24 +198.19.2.0/24@198.18.0.22 +198.19.4.0/24@198.18.0.4"; got != want {
		t.Errorf("events %q, want %q", got, want)
	}
	sameSet(t, c.current, s)
	if n := s.Calls(subnettest.OpList); n != 2 {
		t.Errorf("%d lists, want the initial one and one re-list", n)
	}
	// The watch continues from the re-list's revision.
	mustCreate(t, s, "198.19.6.0/24", "198.18.0.6")
	c = w.collect(t, "+198.19.6.0/24@198.18.0.6")
	sameSet(t, c.current, s)
	if n := w.logs.count("re-listed leases"); n != 1 {
		t.Errorf("%d re-list log lines, want 1", n)
	}
	if got := drain(w.restarts); got != "broken compacted" {
		t.Errorf("restarts reported: %q, want broken then compacted", got)
	}
}

// compactingStore reports every watch as compacted.
type compactingStore struct{ *subnettest.Store }

func (compactingStore) WatchLeases(context.Context, int64, func([]subnet.Event, int64)) error {
	return fmt.Errorf("watch: %w", subnet.ErrCompacted)
}

func TestWatchRepeatedCompactionDoesNotSpin(t *testing.T) {
	s, clk := newStore()
	w := startWatch(t, compactingStore{s}, clk)
	blockUntil(t, clk, 1)
	if n := s.Calls(subnettest.OpList); n != 3 {
		t.Errorf("%d lists, want the initial one and two re-lists before backing off", n)
	}
	if p := clk.Pending(); !slices.Equal(p, []time.Duration{100 * time.Millisecond}) {
		t.Errorf("backoff %v, want 100ms", p)
	}
	clk.Advance(100 * time.Millisecond)
	blockUntil(t, clk, 1)
	if p := clk.Pending(); !slices.Equal(p, []time.Duration{200 * time.Millisecond}) {
		t.Errorf("backoff %v, want 200ms", p)
	}
	if n := w.logs.count("lease watch broken"); n != 1 {
		t.Errorf("%d broken log lines, want 1:\n%s", n, w.logs)
	}
}

func TestWatchRelistFailure(t *testing.T) {
	s, clk := newStore()
	mustCreate(t, s, "198.19.1.0/24", "198.18.0.1")
	w := startWatch(t, s, clk)
	waitWatching(t, s)
	s.BreakWatches(nil)
	blockUntil(t, clk, 1)
	mustCreate(t, s, "198.19.2.0/24", "198.18.0.2")
	mustCreate(t, s, "198.19.3.0/24", "198.18.0.3")
	s.Compact(s.Rev()) // drops the first of the two changes
	s.FailNext(subnettest.OpList, fmt.Errorf("etcd unreachable"))
	clk.Advance(100 * time.Millisecond) // watch → compacted → re-list fails
	blockUntil(t, clk, 1)
	if p := clk.Pending(); !slices.Equal(p, []time.Duration{200 * time.Millisecond}) {
		t.Fatalf("backoff %v, want 200ms", p)
	}
	clk.Advance(200 * time.Millisecond)
	c := w.collect(t, "+198.19.2.0/24@198.18.0.2 +198.19.3.0/24@198.18.0.3")
	sameSet(t, c.current, s)
	if n := s.Calls(subnettest.OpList); n != 3 {
		t.Errorf("%d lists, want the initial one, the failed and the good re-list", n)
	}
	// The watch is back at once, without another backoff.
	mustCreate(t, s, "198.19.4.0/24", "198.18.0.4")
	c = w.collect(t, "+198.19.4.0/24@198.18.0.4")
	sameSet(t, c.current, s)
	if b, r := w.logs.count("lease watch broken"), w.logs.count("lease watch resumed"); b != 1 || r != 1 {
		t.Errorf("%d broken and %d resumed log lines, want 1 each:\n%s", b, r, w.logs)
	}
	// Broken, then compacted with the re-list failing, then compacted again.
	if got := drain(w.restarts); got != "broken compacted compacted" {
		t.Errorf("restarts reported: %q", got)
	}
}

func TestWatchCancel(t *testing.T) {
	s, clk := newStore()
	w := startWatch(t, s, clk)
	waitWatching(t, s)
	w.cancel()
	// startWatch's cleanup checks the nil return.
}

// A Retry signal ends the backoff at once: the caller knows the store is back.
func TestWatchRetryCutsBackoff(t *testing.T) {
	s, clk := newStore()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	leases, rev, err := s.ListLeases(ctx)
	if err != nil {
		t.Fatal(err)
	}
	retry := make(chan struct{}, 1)
	changes := make(chan []subnet.Event, 10)
	done := make(chan error, 1)
	go func() {
		done <- subnet.Watch(ctx, subnet.WatchOptions{Store: s, Clock: clk, Initial: leases, Rev: rev, Retry: retry,
			OnChange: func(ev []subnet.Event, _ int64) { changes <- ev }})
	}()
	waitWatching(t, s)
	s.BreakWatches(nil)
	blockUntil(t, clk, 1) // backing off
	mustCreate(t, s, "198.19.2.0/24", "198.18.0.2")
	retry <- struct{}{} // no clock advance: only the signal can end the wait
	ev := recv(t, changes, "the change, right after the retry signal")
	if got := describe(ev); got != "+198.19.2.0/24@198.18.0.2" {
		t.Errorf("events %q", got)
	}
	cancel()
	if err := recv(t, done, "Watch to return"); err != nil {
		t.Errorf("Watch after cancel: %v; want nil, a clean stop", err)
	}
}
