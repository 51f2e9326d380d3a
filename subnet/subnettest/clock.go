package subnettest

import (
	"context"
	"slices"
	"sync"
	"time"

	"github.com/weft-net/weft/subnet"
)

// Clock is a fake subnet.Clock. Time moves only with Advance, which fires
// due After channels in deadline order; BlockUntil lets a test wait until
// the code under test is sleeping in After.
type Clock struct {
	mu      sync.Mutex
	now     time.Time
	waiters []waiter
	changed chan struct{} // closed and replaced when waiters change
}

type waiter struct {
	deadline time.Time
	d        time.Duration
	ch       chan time.Time
}

var _ subnet.Clock = (*Clock)(nil)

// NewClock returns a fake clock set to start.
func NewClock(start time.Time) *Clock {
	return &Clock{now: start, changed: make(chan struct{})}
}

// Now returns the fake time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// After returns a channel that receives the fake time once it has advanced
// by d. For d <= 0 it fires at once and does not count as a waiter.
func (c *Clock) After(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	ch := make(chan time.Time, 1)
	if d <= 0 {
		ch <- c.now
		return ch
	}
	c.waiters = append(c.waiters, waiter{deadline: c.now.Add(d), d: d, ch: ch})
	c.signalLocked()
	return ch
}

// Advance moves the clock forward by d, firing every After that falls due,
// earliest first.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	slices.SortStableFunc(c.waiters, func(a, b waiter) int { return a.deadline.Compare(b.deadline) })
	n := 0
	for _, w := range c.waiters {
		if w.deadline.After(c.now) {
			break
		}
		w.ch <- c.now
		n++
	}
	if n > 0 {
		c.waiters = slices.Delete(c.waiters, 0, n)
		c.signalLocked()
	}
}

// Waiters is the number of pending After calls. An After abandoned by its
// caller (for example on context cancellation) stays pending until the
// clock passes its deadline.
func (c *Clock) Waiters() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.waiters)
}

// Pending returns the durations asked of the pending After calls, in
// deadline order, so tests can check backoff schedules.
func (c *Clock) Pending() []time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	ws := slices.Clone(c.waiters)
	slices.SortStableFunc(ws, func(a, b waiter) int { return a.deadline.Compare(b.deadline) })
	ds := make([]time.Duration, len(ws))
	for i, w := range ws {
		ds[i] = w.d
	}
	return ds
}

// BlockUntil waits until at least n After calls are pending.
func (c *Clock) BlockUntil(n int) {
	_ = c.BlockUntilContext(context.Background(), n)
}

// BlockUntilContext waits until at least n After calls are pending or ctx
// is done, and then returns ctx.Err().
func (c *Clock) BlockUntilContext(ctx context.Context, n int) error {
	for {
		c.mu.Lock()
		ok, changed := len(c.waiters) >= n, c.changed
		c.mu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-changed:
		}
	}
}

func (c *Clock) signalLocked() {
	close(c.changed)
	c.changed = make(chan struct{})
}
