// Package subnet is flannel's lease logic: the network config, lease keys
// and values, subnet allocation, renewal timing and the watch that turns
// etcd changes into peer-table updates. It is pure logic behind the Store
// interface and an injected Clock, so it is tested without etcd or time.
package subnet

import (
	"context"
	"errors"
	"net/netip"
	"time"
)

// LeaseTTL is the TTL flanneld attaches to every lease it creates (24 h).
const LeaseTTL = 24 * time.Hour

var (
	// ErrNoConfig: <prefix>/config does not exist.
	ErrNoConfig = errors.New("network config not found")
	// ErrLeaseTaken: CreateLease lost the race, the key already exists.
	ErrLeaseTaken = errors.New("subnet already leased")
	// ErrLeaseNotFound: the lease key, or its etcd lease, is gone.
	ErrLeaseNotFound = errors.New("lease not found")
	// ErrCompacted: a watch asked for a revision the store no longer has.
	ErrCompacted = errors.New("watch revision compacted")
	// ErrOutOfSubnets: every subnet in SubnetMin..SubnetMax is held.
	ErrOutOfSubnets = errors.New("out of subnets")
)

// Lease is one key under <prefix>/subnets.
type Lease struct {
	Subnet netip.Prefix // IPv4 subnet, masked (e.g. 198.19.7.0/24)
	Attrs  Attrs
	// Expiration is when the store will drop the lease; zero for a
	// reservation (a key with no etcd lease attached).
	Expiration time.Time
	// ID is the store's handle for the lease's TTL (the etcd lease ID);
	// 0 for a reservation.
	ID int64
}

// Reserved reports whether the lease is an operator-made reservation: a key
// with no TTL, never renewed and never expiring.
func (l Lease) Reserved() bool { return l.ID == 0 }

// EventType says what happened to a lease.
type EventType int

const (
	// EventAdded: a lease was created or its value changed.
	EventAdded EventType = iota
	// EventRemoved: a lease was deleted, revoked or expired.
	EventRemoved
)

func (t EventType) String() string {
	switch t {
	case EventAdded:
		return "added"
	case EventRemoved:
		return "removed"
	}
	return "unknown"
}

// Event is one change of one lease. For EventRemoved only Lease.Subnet is
// meaningful.
type Event struct {
	Type  EventType
	Lease Lease
}

// Store is what weft needs from etcd (or from a fake in tests).
type Store interface {
	// GetNetworkConfig returns the raw JSON at <prefix>/config, or an error
	// wrapping ErrNoConfig.
	GetNetworkConfig(ctx context.Context) ([]byte, error)
	// CreateLease atomically creates the lease key only if absent, attached
	// to a fresh TTL of ttl, and returns it with ID and Expiration set. If
	// the key exists it returns an error wrapping ErrLeaseTaken and leaves
	// nothing behind (no orphan etcd lease).
	CreateLease(ctx context.Context, subnet netip.Prefix, attrs Attrs, ttl time.Duration) (Lease, error)
	// RenewLease extends l's TTL in place (same ID, no new etcd lease) and
	// returns l with the new Expiration. It returns an error wrapping
	// ErrLeaseNotFound if the key or its TTL are gone.
	RenewLease(ctx context.Context, l Lease) (Lease, error)
	LeaseWatcher
}

// LeaseWatcher is the part of a store that Watch reads: every lease store
// has it, etcd and the Kubernetes API alike.
type LeaseWatcher interface {
	// ListLeases returns every parsable lease and the store revision they
	// were read at. Keys that do not parse are skipped (and logged by the
	// implementation).
	ListLeases(ctx context.Context) (leases []Lease, rev int64, err error)
	// WatchLeases streams lease changes after revision fromRev to handle,
	// in order, each batch with the revision it brings the reader to. It
	// blocks until ctx is done (returning ctx.Err()) or the watch breaks
	// (returning the error; ErrCompacted when fromRev is gone). One call is
	// one attempt: retry policy belongs to the caller.
	WatchLeases(ctx context.Context, fromRev int64, handle func(events []Event, rev int64)) error
}

// Clock is the time source, injected so tests control renewal and backoff.
type Clock interface {
	Now() time.Time
	// After behaves as time.After.
	After(d time.Duration) <-chan time.Time
}

// RealClock is the wall clock.
type RealClock struct{}

func (RealClock) Now() time.Time                         { return time.Now() }
func (RealClock) After(d time.Duration) <-chan time.Time { return time.After(d) }
