package subnet

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"time"
)

const (
	watchBackoffMin = 100 * time.Millisecond
	watchBackoffMax = 5 * time.Second
)

// WatchOptions parameterises Watch.
type WatchOptions struct {
	Store  LeaseWatcher
	Clock  Clock // nil means RealClock
	Logger *slog.Logger
	// Initial and Rev are a ListLeases result: the set to start from and
	// the revision it was read at. Changes after Rev are watched.
	Initial []Lease
	Rev     int64
	// OnChange is called, never concurrently, after each batch of
	// changes with its events and the store revision they bring the reader
	// to. Applied in order to Initial, the events give the current set
	// (after a compaction they are the difference to the re-listed set), so
	// a caller updates its state in proportion to the change, not to the
	// cluster's size. It is not called for batches without events. Events
	// include this node's own lease: filtering it out is the caller's
	// business.
	OnChange func(events []Event, rev int64)
	// OnRestart, if set, is called each time a watch attempt ends and a
	// new one is made: reason is "compacted" (re-listed) or "broken".
	OnRestart func(reason string)
	// Retry, if set, cuts a backoff short: the caller signals it when it
	// knows the store is back (its connection came up), so changes made
	// meanwhile arrive at once instead of after up to 5 s more.
	Retry <-chan struct{}
}

// Watch follows lease changes until ctx is done, then returns nil.
//
// A broken watch is resumed from the last revision seen after a backoff of
// 100 ms doubling up to 5 s; the backoff resets once a watch has delivered
// a batch or lasted 5 s. When the revision has been compacted, Watch lists
// the leases again and reports the difference from the known set as
// synthesized events. It logs when the watch breaks and when it resumes,
// not on every retry.
func Watch(ctx context.Context, o WatchOptions) error {
	if o.Store == nil {
		return errors.New("watch leases: no store")
	}
	w := &watcher{
		o:       o,
		log:     o.Logger,
		clock:   o.Clock,
		rev:     o.Rev,
		current: make(map[netip.Prefix]Lease, len(o.Initial)),
	}
	if w.log == nil {
		w.log = slog.New(slog.DiscardHandler)
	}
	if w.clock == nil {
		w.clock = RealClock{}
	}
	for _, l := range o.Initial {
		w.current[l.Subnet] = l
	}
	return w.run(ctx)
}

type watcher struct {
	o       WatchOptions
	log     *slog.Logger
	clock   Clock
	rev     int64
	current map[netip.Prefix]Lease

	broken   bool // a break was logged and no recovery yet
	progress bool // the current attempt delivered a batch
}

func (w *watcher) run(ctx context.Context) error {
	var backoff time.Duration
	// relisted: the last attempt ended in a successful re-list and no
	// watch has been healthy since.
	relisted := false
	for {
		start := w.clock.Now()
		w.progress = false
		err := w.o.Store.WatchLeases(ctx, w.rev, w.handle)
		if ctx.Err() != nil {
			return nil
		}
		if err == nil {
			err = errors.New("watch ended without error")
		}
		if w.progress || w.clock.Now().Sub(start) >= watchBackoffMax {
			backoff, relisted = 0, false
		}

		if w.o.OnRestart != nil {
			reason := "broken"
			if errors.Is(err, ErrCompacted) {
				reason = "compacted"
			}
			w.o.OnRestart(reason)
		}
		if errors.Is(err, ErrCompacted) {
			// A normal compaction costs one re-list and no wait. If the
			// store reports compaction again right after a re-list, the
			// watch is treated as broken, so a bad store cannot spin us.
			again := relisted
			if lerr := w.relist(ctx, again); lerr == nil {
				relisted = true
				if !again {
					continue
				}
				err = fmt.Errorf("%w again right after a re-list", err)
			} else {
				if ctx.Err() != nil {
					return nil
				}
				relisted, err = false, lerr
			}
		}

		if backoff == 0 {
			backoff = watchBackoffMin
		} else {
			backoff = min(2*backoff, watchBackoffMax)
		}
		if !w.broken {
			w.broken = true
			w.log.Warn("lease watch broken, retrying", "rev", w.rev, "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-w.clock.After(backoff):
		case <-w.o.Retry:
		}
	}
}

// handle applies one batch from the store.
func (w *watcher) handle(events []Event, rev int64) {
	w.progress = true
	if rev > w.rev {
		w.rev = rev
	}
	if w.broken {
		w.broken = false
		w.log.Info("lease watch resumed", "rev", w.rev)
	}
	if len(events) == 0 {
		return
	}
	for _, e := range events {
		switch e.Type {
		case EventAdded:
			w.current[e.Lease.Subnet] = e.Lease
		case EventRemoved:
			delete(w.current, e.Lease.Subnet)
		}
	}
	w.notify(events)
}

// relist replaces the known set with a fresh list and reports the
// difference: removals, then additions and changes, each in subnet order.
//
// With quiet set nothing is logged; events are still reported.
func (w *watcher) relist(ctx context.Context, quiet bool) error {
	leases, rev, err := w.o.Store.ListLeases(ctx)
	if err != nil {
		return fmt.Errorf("re-list leases after compaction: %w", err)
	}
	fresh := make(map[netip.Prefix]Lease, len(leases))
	for _, l := range leases {
		fresh[l.Subnet] = l
	}
	var removed, added []Lease
	for p, l := range w.current {
		if _, ok := fresh[p]; !ok {
			removed = append(removed, l)
		}
	}
	for p, l := range fresh {
		// Expiration alone is not a change: stores may compute it afresh
		// on every read.
		if old, ok := w.current[p]; !ok || old.ID != l.ID || !old.Attrs.Equal(l.Attrs) {
			added = append(added, l)
		}
	}
	sortLeases(removed)
	sortLeases(added)
	events := make([]Event, 0, len(removed)+len(added))
	for _, l := range removed {
		events = append(events, Event{Type: EventRemoved, Lease: Lease{Subnet: l.Subnet}})
	}
	for _, l := range added {
		events = append(events, Event{Type: EventAdded, Lease: l})
	}

	w.current, w.rev = fresh, rev
	// When the store keeps compacting right after re-lists, run reports
	// that once as a broken watch; stay quiet here.
	if !quiet {
		w.log.Info("lease watch revision compacted, re-listed leases",
			"rev", rev, "leases", len(fresh), "added_or_changed", len(added), "removed", len(removed))
		if w.broken {
			w.broken = false
			w.log.Info("lease watch resumed", "rev", w.rev)
		}
	}
	if len(events) > 0 {
		w.notify(events)
	}
	return nil
}

func (w *watcher) notify(events []Event) {
	if w.o.OnChange != nil {
		w.o.OnChange(slices.Clip(events), w.rev)
	}
}
