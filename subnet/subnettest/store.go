// Package subnettest provides in-memory fakes of subnet.Store and
// subnet.Clock for tests. It is not for production code.
package subnettest

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/weft-net/weft/subnet"
)

// ErrUnavailable is returned by every call while the store is SetDown, and
// ends active watches.
var ErrUnavailable = errors.New("subnettest: store unavailable")

// ErrWatchBroken ends active watches on BreakWatches(nil).
var ErrWatchBroken = errors.New("subnettest: watch broken")

// Op names a Store method, for FailNext and Calls.
type Op string

// The Store methods.
const (
	OpAny       Op = ""
	OpGetConfig Op = "GetNetworkConfig"
	OpList      Op = "ListLeases"
	OpCreate    Op = "CreateLease"
	OpRenew     Op = "RenewLease"
	OpWatch     Op = "WatchLeases"
)

// Store is an in-memory subnet.Store with etcd's semantics where weft
// relies on them: a revision bumped by every key change, a change log that
// watches replay from any revision not compacted, TTLs that expire against
// an injected clock (deleting their key, as etcd does), and reservations
// (keys without a TTL). It also injects faults. It is safe for concurrent
// use.
type Store struct {
	mu      sync.Mutex
	clock   subnet.Clock
	config  []byte
	rev     int64
	compact int64 // revisions below this are gone
	keys    map[netip.Prefix]*entry
	ttls    map[int64]*ttl
	nextID  int64
	log     []change
	notify  chan struct{} // closed and replaced on every change
	brk     *breaker      // closed to end active watches
	down    bool
	faults  []fault
	calls   map[Op]int
	watches int
}

type entry struct {
	value []byte // the JSON as stored, as etcd holds it
	id    int64  // 0: a reservation
}

type ttl struct {
	d       time.Duration
	expires time.Time
}

type change struct {
	rev int64
	ev  subnet.Event
}

type breaker struct {
	ch  chan struct{}
	err error
}

type fault struct {
	op  Op
	err error
}

var _ subnet.Store = (*Store)(nil)

// NewStore returns an empty store on the wall clock, with no network
// config, at revision 1.
func NewStore() *Store {
	return &Store{
		clock:  subnet.RealClock{},
		rev:    1,
		nextID: 0x1000,
		keys:   make(map[netip.Prefix]*entry),
		ttls:   make(map[int64]*ttl),
		notify: make(chan struct{}),
		brk:    &breaker{ch: make(chan struct{})},
		calls:  make(map[Op]int),
	}
}

// SetClock makes TTLs count on c (typically a *Clock).
func (s *Store) SetClock(c subnet.Clock) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.clock = c
}

// SetConfig stores the network config JSON; nil removes it.
func (s *Store) SetConfig(data []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.config = slices.Clone(data)
}

// PutReservation writes a lease key with no TTL, replacing any lease on
// that subnet.
func (s *Store) PutReservation(p netip.Prefix, a subnet.Attrs) error {
	if !p.IsValid() || !p.Addr().Is4() || p.Masked() != p {
		return fmt.Errorf("put reservation %s: not a masked IPv4 subnet", p)
	}
	v, err := a.MarshalJSON()
	if err != nil {
		return fmt.Errorf("put reservation %s: %w", p, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.expireLocked()
	s.putLocked(p, v, 0)
	return nil
}

// DeleteLease deletes the key of subnet p, as `etcdctl del` does; its TTL,
// if any, stays granted. It reports whether the key existed.
func (s *Store) DeleteLease(p netip.Prefix) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.expireLocked()
	if _, ok := s.keys[p]; !ok {
		return false
	}
	s.deleteLocked(p)
	return true
}

// Expire deletes every key whose TTL has passed on the store's clock. Each
// call also does this first, so Expire is needed only to make watches see
// expiries without other traffic.
func (s *Store) Expire() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.expireLocked()
}

// Compact discards the change log below rev: watches from revisions before
// it fail with subnet.ErrCompacted. rev is capped at the current revision.
func (s *Store) Compact(rev int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.compact = min(max(rev, s.compact), s.rev)
	i := sort.Search(len(s.log), func(i int) bool { return s.log[i].rev >= s.compact })
	s.log = slices.Delete(s.log, 0, i)
}

// Rev is the current revision.
func (s *Store) Rev() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rev
}

// Leases returns the current leases in subnet order, without counting as a
// call.
func (s *Store) Leases() []subnet.Lease {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.expireLocked()
	return s.leasesLocked()
}

// FailNext makes the next call of op (any method for OpAny) return err.
// Queued faults are used in order.
func (s *Store) FailNext(op Op, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = append(s.faults, fault{op, err})
}

// SetDown makes every call fail with ErrUnavailable while down is true,
// and ends active watches, as an etcd outage does.
func (s *Store) SetDown(down bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.down = down
	if down {
		s.breakLocked(ErrUnavailable)
	}
}

// BreakWatches ends every active watch with err (ErrWatchBroken if nil).
func (s *Store) BreakWatches(err error) {
	if err == nil {
		err = ErrWatchBroken
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.breakLocked(err)
}

// Calls is how many times op was called (all methods for OpAny), failed
// calls included.
func (s *Store) Calls(op Op) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if op == OpAny {
		n := 0
		for _, c := range s.calls {
			n += c
		}
		return n
	}
	return s.calls[op]
}

// ActiveWatches is the number of WatchLeases calls in progress.
func (s *Store) ActiveWatches() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.watches
}

// GetNetworkConfig implements subnet.Store.
func (s *Store) GetNetworkConfig(ctx context.Context) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.enterLocked(ctx, OpGetConfig); err != nil {
		return nil, err
	}
	if s.config == nil {
		return nil, fmt.Errorf("get network config: %w", subnet.ErrNoConfig)
	}
	return slices.Clone(s.config), nil
}

// ListLeases implements subnet.Store.
func (s *Store) ListLeases(ctx context.Context) ([]subnet.Lease, int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.enterLocked(ctx, OpList); err != nil {
		return nil, 0, err
	}
	return s.leasesLocked(), s.rev, nil
}

// CreateLease implements subnet.Store.
func (s *Store) CreateLease(ctx context.Context, p netip.Prefix, a subnet.Attrs, d time.Duration) (subnet.Lease, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.enterLocked(ctx, OpCreate); err != nil {
		return subnet.Lease{}, err
	}
	if !p.IsValid() || !p.Addr().Is4() || p.Masked() != p {
		return subnet.Lease{}, fmt.Errorf("create lease %s: not a masked IPv4 subnet", p)
	}
	if d < time.Second {
		return subnet.Lease{}, fmt.Errorf("create lease %s: TTL %v below 1s", p, d)
	}
	v, err := a.MarshalJSON()
	if err != nil {
		return subnet.Lease{}, fmt.Errorf("create lease %s: %w", p, err)
	}
	if _, ok := s.keys[p]; ok {
		return subnet.Lease{}, fmt.Errorf("create lease %s: %w", p, subnet.ErrLeaseTaken)
	}
	s.nextID++
	id := s.nextID
	s.ttls[id] = &ttl{d: d, expires: s.clock.Now().Add(d)}
	s.putLocked(p, v, id)
	return s.leaseLocked(p), nil
}

// RenewLease implements subnet.Store: the TTL restarts at its granted
// length, the key and its revision are untouched.
func (s *Store) RenewLease(ctx context.Context, l subnet.Lease) (subnet.Lease, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.enterLocked(ctx, OpRenew); err != nil {
		return subnet.Lease{}, err
	}
	if l.Reserved() {
		return subnet.Lease{}, fmt.Errorf("renew lease %s: a reservation has no TTL", l.Subnet)
	}
	e, ok := s.keys[l.Subnet]
	t, alive := s.ttls[l.ID]
	if !ok || !alive || e.id != l.ID {
		return subnet.Lease{}, fmt.Errorf("renew lease %s (id %x): %w", l.Subnet, l.ID, subnet.ErrLeaseNotFound)
	}
	t.expires = s.clock.Now().Add(t.d)
	return s.leaseLocked(l.Subnet), nil
}

// WatchLeases implements subnet.Store. Each batch holds every change not
// yet delivered, with the revision of the last one.
func (s *Store) WatchLeases(ctx context.Context, fromRev int64, handle func([]subnet.Event, int64)) error {
	s.mu.Lock()
	if err := s.enterLocked(ctx, OpWatch); err != nil {
		s.mu.Unlock()
		return err
	}
	if fromRev+1 < s.compact {
		compact := s.compact
		s.mu.Unlock()
		return fmt.Errorf("watch leases from revision %d (compacted at %d): %w", fromRev+1, compact, subnet.ErrCompacted)
	}
	brk := s.brk
	s.watches++
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.watches--
		s.mu.Unlock()
	}()

	cursor := fromRev
	for {
		s.mu.Lock()
		if cursor+1 < s.compact {
			// Fell behind a compaction while handling; etcd cancels such a
			// watch the same way.
			s.mu.Unlock()
			return fmt.Errorf("watch leases from revision %d: %w", cursor+1, subnet.ErrCompacted)
		}
		i := sort.Search(len(s.log), func(i int) bool { return s.log[i].rev > cursor })
		var batch []subnet.Event
		for _, c := range s.log[i:] {
			batch = append(batch, c.ev)
			cursor = c.rev
		}
		notify := s.notify
		s.mu.Unlock()

		if len(batch) > 0 {
			handle(batch, cursor)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-brk.ch:
			return brk.err
		case <-notify:
		}
	}
}

// enterLocked counts the call and applies faults, outage and expiry.
func (s *Store) enterLocked(ctx context.Context, op Op) error {
	s.calls[op]++
	if err := ctx.Err(); err != nil {
		return err
	}
	if s.down {
		return fmt.Errorf("%s: %w", op, ErrUnavailable)
	}
	for i, f := range s.faults {
		if f.op == OpAny || f.op == op {
			s.faults = slices.Delete(s.faults, i, i+1)
			return f.err
		}
	}
	s.expireLocked()
	return nil
}

func (s *Store) expireLocked() {
	now := s.clock.Now()
	var gone []int64
	for id, t := range s.ttls {
		if !t.expires.After(now) {
			gone = append(gone, id)
		}
	}
	if len(gone) == 0 {
		return
	}
	slices.Sort(gone) // deterministic event order
	for _, id := range gone {
		delete(s.ttls, id)
		for _, p := range s.sortedKeysLocked() {
			if s.keys[p].id == id {
				s.deleteLocked(p)
			}
		}
	}
}

func (s *Store) putLocked(p netip.Prefix, v []byte, id int64) {
	s.keys[p] = &entry{value: v, id: id}
	s.changeLocked(subnet.Event{Type: subnet.EventAdded, Lease: s.leaseLocked(p)})
}

func (s *Store) deleteLocked(p netip.Prefix) {
	delete(s.keys, p)
	s.changeLocked(subnet.Event{Type: subnet.EventRemoved, Lease: subnet.Lease{Subnet: p}})
}

func (s *Store) changeLocked(ev subnet.Event) {
	s.rev++
	s.log = append(s.log, change{rev: s.rev, ev: ev})
	close(s.notify)
	s.notify = make(chan struct{})
}

func (s *Store) breakLocked(err error) {
	s.brk.err = err
	close(s.brk.ch)
	s.brk = &breaker{ch: make(chan struct{})}
}

// leaseLocked decodes the stored value afresh, so callers never share
// memory with the store (values were validated when written).
func (s *Store) leaseLocked(p netip.Prefix) subnet.Lease {
	e := s.keys[p]
	a, err := subnet.ParseAttrs(e.value)
	if err != nil {
		panic(fmt.Sprintf("subnettest: stored lease %s does not parse: %v", p, err))
	}
	l := subnet.Lease{Subnet: p, Attrs: a, ID: e.id}
	if t, ok := s.ttls[e.id]; ok && e.id != 0 {
		l.Expiration = t.expires
	}
	return l
}

func (s *Store) leasesLocked() []subnet.Lease {
	keys := s.sortedKeysLocked()
	ls := make([]subnet.Lease, len(keys))
	for i, p := range keys {
		ls[i] = s.leaseLocked(p)
	}
	return ls
}

func (s *Store) sortedKeysLocked() []netip.Prefix {
	keys := make([]netip.Prefix, 0, len(s.keys))
	for p := range s.keys {
		keys = append(keys, p)
	}
	slices.SortFunc(keys, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
	return keys
}
