package subnet

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"slices"
	"time"
)

const (
	// acquireAttempts bounds how many lost CreateLease races Acquire accepts
	// before giving up.
	acquireAttempts = 10
	// freeCandidates is how many free subnets from SubnetMin upward the
	// random choice is made among (flanneld: 100).
	freeCandidates = 100
)

// AcquireOptions parameterises Acquire.
type AcquireOptions struct {
	Config *Config
	// Attrs is the value written to a new lease; Attrs.PublicIP also finds
	// this node's existing lease.
	Attrs Attrs
	// Previous is the subnet from the subnet file (FLANNEL_SUBNET); it is
	// masked to its length. Zero or invalid means none.
	Previous netip.Prefix
	// TTL of a new lease; 0 means LeaseTTL.
	TTL time.Duration
	// Rand picks among free subnets; nil means a randomly seeded source.
	Rand   *rand.Rand
	Logger *slog.Logger
}

// Acquire finds or creates this node's lease, in flanneld's order:
//
//  1. the lease whose PublicIP is ours, if it is in range: a reservation is
//     used as is (never given a TTL), a normal lease is renewed in place;
//  2. the Previous subnet, if in range and free;
//  3. a random one among the first 100 free subnets from SubnetMin.
//
// It never takes a subnet held by another node or by a reservation. A lost
// creation race is retried with another subnet, up to 10 times. Store
// errors are returned as they come: retrying while etcd is unreachable is
// the caller's policy.
func Acquire(ctx context.Context, s Store, o AcquireOptions) (Lease, error) {
	a, err := newAcquirer(s, o)
	if err != nil {
		return Lease{}, err
	}
	for range acquireAttempts {
		l, done, err := a.attempt(ctx)
		if err != nil {
			return Lease{}, err
		}
		if done {
			return l, nil
		}
	}
	return Lease{}, fmt.Errorf("acquire subnet: lost the creation race %d times in a row in %s; giving up", acquireAttempts, a.cfg.RangeString())
}

// acquirer is one Acquire call: its options with the defaults filled in,
// and what it learnt across attempts.
type acquirer struct {
	s        Store
	cfg      *Config
	log      *slog.Logger
	attrs    Attrs
	me       netip.Addr // attrs.PublicIP
	previous netip.Prefix
	ttl      time.Duration
	rng      *rand.Rand
	// lost are the subnets we lost a race for: someone holds them even if
	// a later list (read before their create) does not show it yet.
	lost map[netip.Prefix]bool
}

// newAcquirer checks o and fills in its defaults.
func newAcquirer(s Store, o AcquireOptions) (*acquirer, error) {
	if o.Config == nil {
		return nil, errors.New("acquire subnet: no network config")
	}
	if !o.Attrs.PublicIP.Is4() {
		return nil, fmt.Errorf("acquire subnet: PublicIP %q: not an IPv4 address", o.Attrs.PublicIP)
	}
	a := &acquirer{s: s, cfg: o.Config, log: o.Logger, attrs: o.Attrs, me: o.Attrs.PublicIP,
		previous: o.Previous, ttl: o.TTL, rng: o.Rand, lost: make(map[netip.Prefix]bool)}
	if a.log == nil {
		a.log = slog.New(slog.DiscardHandler)
	}
	if a.ttl <= 0 {
		a.ttl = LeaseTTL
	}
	if a.rng == nil {
		a.rng = rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))
	}
	return a, nil
}

// attempt is one pass over the current leases: it reports done with the
// lease acquired, or not done after losing a creation race.
func (a *acquirer) attempt(ctx context.Context) (Lease, bool, error) {
	if err := ctx.Err(); err != nil {
		return Lease{}, false, fmt.Errorf("acquire subnet: %w", err)
	}
	leases, _, err := a.s.ListLeases(ctx)
	if err != nil {
		return Lease{}, false, fmt.Errorf("acquire subnet: list leases: %w", err)
	}
	// Deterministic order, so that with several leases of ours the same
	// one wins every time.
	sortLeases(leases)
	held := make(map[netip.Prefix]Lease, len(leases))
	for _, l := range leases {
		held[l.Subnet] = l
	}
	if l, ok, err := a.reuseOwn(ctx, leases, held); err != nil || ok {
		return l, ok, err
	}
	return a.create(ctx, held)
}

// reuseOwn is step 1: our own lease, found by PublicIP. A lease of ours
// that vanished while renewing it is deleted from held, as it is free now.
func (a *acquirer) reuseOwn(ctx context.Context, leases []Lease, held map[netip.Prefix]Lease) (Lease, bool, error) {
	for _, l := range leases {
		if l.Attrs.PublicIP != a.me {
			continue
		}
		if !a.cfg.InRange(l.Subnet) {
			a.log.Warn("ignoring lease of this node outside the configured range",
				"subnet", l.Subnet, "public_ip", a.me, "range", a.cfg.RangeString())
			continue
		}
		if l.Reserved() {
			a.log.Info("subnet acquired", "subnet", l.Subnet, "reason", "reservation for this PublicIP", "public_ip", a.me)
			return l, true, nil
		}
		r, err := a.s.RenewLease(ctx, l)
		if err == nil {
			a.log.Info("subnet acquired", "subnet", r.Subnet, "reason", "reused by PublicIP",
				"public_ip", a.me, "lease_id", r.ID, "expires", r.Expiration)
			return r, true, nil
		}
		if !errors.Is(err, ErrLeaseNotFound) {
			return Lease{}, false, fmt.Errorf("acquire subnet: renew lease %s: %w", l.Subnet, err)
		}
		// It expired or was deleted since the list: it is free now, and
		// usually also the Previous subnet, so step 2 can take it back.
		a.log.Info("lease of this node vanished while renewing it", "subnet", l.Subnet, "public_ip", a.me)
		delete(held, l.Subnet)
	}
	return Lease{}, false, nil
}

// create is steps 2 and 3: it chooses a free subnet and creates our lease
// there. Losing the race for it is not done, and not an error: the subnet
// is remembered as lost and the caller tries again.
func (a *acquirer) create(ctx context.Context, held map[netip.Prefix]Lease) (Lease, bool, error) {
	subnet, reason, err := choose(a.cfg, a.previous, held, a.lost, a.rng, a.log)
	if err != nil {
		return Lease{}, false, err
	}
	l, err := a.s.CreateLease(ctx, subnet, a.attrs, a.ttl)
	if err == nil {
		a.log.Info("subnet acquired", "subnet", l.Subnet, "reason", reason,
			"public_ip", a.me, "lease_id", l.ID, "expires", l.Expiration)
		return l, true, nil
	}
	if !errors.Is(err, ErrLeaseTaken) {
		return Lease{}, false, fmt.Errorf("acquire subnet: create lease %s: %w", subnet, err)
	}
	a.log.Info("lost the race for a subnet, trying another", "subnet", subnet)
	a.lost[subnet] = true
	return Lease{}, false, nil
}

// choose picks the subnet to create: Previous if usable, else a random one
// of the first free subnets.
func choose(cfg *Config, previous netip.Prefix, held map[netip.Prefix]Lease, lost map[netip.Prefix]bool, rng *rand.Rand, log *slog.Logger) (netip.Prefix, string, error) {
	if previous.IsValid() {
		p := previous.Masked()
		switch other, taken := held[p]; {
		case !cfg.InRange(p):
			log.Info("previous subnet is outside the configured range, not reusing it", "subnet", p, "range", cfg.RangeString())
		case taken:
			log.Info("previous subnet is held by another node, not reusing it", "subnet", p, "holder", other.Attrs.PublicIP)
		case lost[p]:
			// Lost a race for it already; logged then.
		default:
			return p, "previous subnet", nil
		}
	}

	free := make([]netip.Prefix, 0, min(freeCandidates, cfg.SubnetCount()))
	for p := range cfg.Subnets() {
		if _, taken := held[p]; taken || lost[p] {
			continue
		}
		if free = append(free, p); len(free) == freeCandidates {
			break
		}
	}
	if len(free) == 0 {
		return netip.Prefix{}, "", fmt.Errorf("acquire subnet: %w: all %d subnets in %s are leased or reserved",
			ErrOutOfSubnets,
			cfg.SubnetCount(), cfg.RangeString())
	}
	return free[rng.IntN(len(free))], "new", nil
}

// sortLeases orders leases by subnet.
func sortLeases(ls []Lease) {
	slices.SortFunc(ls, func(a, b Lease) int {
		return cmp.Or(a.Subnet.Addr().Compare(b.Subnet.Addr()), cmp.Compare(a.Subnet.Bits(), b.Subnet.Bits()))
	})
}
