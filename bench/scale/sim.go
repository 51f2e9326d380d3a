package scale

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/bench/lab"
	"github.com/weft-net/weft/subnet"
)

// simTTL is the simulated nodes' lease TTL: flannel's 24 h, so that
// nothing expires during a run; leaves are explicit.
const simTTL = 24 * 60 * 60

// op is one simulated lease change, with when it was sent and the etcd
// revision that made it.
type op struct {
	kind string // "join", "renew" or "leave"
	t0   time.Time
	rev  int64
}

// sims are the simulated nodes: leases written straight to etcd the way a
// node writes its own (grant, then a create-only transaction), renewed the
// way stock flanneld renews (a PUT of the same value, which every watcher
// sees) and left by revoking the etcd lease (as an expiry looks).
type sims struct {
	cli    *clientv3.Client
	prefix string
	avoid  netip.Prefix // the lab's underlay /24: no simulated PublicIP in it

	mu     sync.Mutex
	free   []netip.Prefix // subnets nobody holds
	held   map[netip.Prefix]simLease
	nextIP uint32
	rng    *rand.Rand
}

type simLease struct {
	id    clientv3.LeaseID
	value string
}

// newSims prepares the /29s of network minus taken (the real daemons').
func newSims(cli *clientv3.Client, prefix string, network netip.Prefix, subnetLen int, taken []netip.Prefix, avoid netip.Prefix) (*sims, error) {
	if !network.Addr().Is4() || subnetLen <= network.Bits() || subnetLen > 30 {
		return nil, fmt.Errorf("scale: network %s with subnet length %d", network, subnetLen)
	}
	isTaken := map[netip.Prefix]bool{}
	for _, p := range taken {
		isTaken[p] = true
	}
	s := &sims{cli: cli, prefix: prefix, avoid: avoid, held: map[netip.Prefix]simLease{}, rng: rand.New(rand.NewPCG(1, 2))}
	base := addrU32(network.Addr())
	step := uint32(1) << (32 - subnetLen)
	count := uint32(1) << (subnetLen - network.Bits())
	// flannel's default SubnetMin skips the network's first subnet.
	for i := uint32(1); i < count; i++ {
		p := netip.PrefixFrom(u32Addr(base+i*step), subnetLen)
		if !isTaken[p] {
			s.free = append(s.free, p)
		}
	}
	return s, nil
}

func addrU32(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

func u32Addr(v uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// publicIP hands out simulated nodes' addresses from 198.18.100.1 up,
// outside the lab's underlay: nothing is ever sent to them.
func (s *sims) publicIP() netip.Addr {
	for {
		n := s.nextIP
		s.nextIP++
		a := u32Addr(addrU32(netip.MustParseAddr("198.18.100.0")) + n%(100*256))
		if b := a.As4(); b[3] == 0 || b[3] == 255 || s.avoid.Contains(a) {
			continue
		}
		return a
	}
}

func (s *sims) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.held)
}

// take removes a random free subnet and picks a PublicIP for it.
func (s *sims) take() (netip.Prefix, string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.free) == 0 {
		return netip.Prefix{}, "", errors.New("scale: no free subnet left for a simulated node")
	}
	i := s.rng.IntN(len(s.free))
	p := s.free[i]
	s.free[i] = s.free[len(s.free)-1]
	s.free = s.free[:len(s.free)-1]
	value, err := subnet.Attrs{PublicIP: s.publicIP(), BackendType: "udp"}.MarshalJSON()
	if err != nil {
		return netip.Prefix{}, "", err
	}
	return p, string(value), nil
}

func (s *sims) key(p netip.Prefix) string {
	return s.prefix + "/subnets/" + lab.SubnetKey(p)
}

// join creates one simulated node's lease.
func (s *sims) join(ctx context.Context) (op, error) {
	p, value, err := s.take()
	if err != nil {
		return op{}, err
	}
	o := op{kind: "join", t0: time.Now()}
	g, err := s.cli.Grant(ctx, simTTL)
	if err != nil {
		s.release(p)
		return op{}, fmt.Errorf("scale: grant for %s: %w", p, err)
	}
	key := s.key(p)
	resp, err := s.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, value, clientv3.WithLease(g.ID))).
		Commit()
	if err != nil || !resp.Succeeded {
		_, _ = s.cli.Revoke(context.WithoutCancel(ctx), g.ID)
		s.release(p)
		if err == nil {
			err = errors.New("subnet already taken")
		}
		return op{}, fmt.Errorf("scale: create %s: %w", key, err)
	}
	o.rev = resp.Header.Revision
	s.mu.Lock()
	s.held[p] = simLease{id: g.ID, value: value}
	s.mu.Unlock()
	return o, nil
}

func (s *sims) release(p netip.Prefix) {
	s.mu.Lock()
	s.free = append(s.free, p)
	s.mu.Unlock()
}

// pick returns a random held subnet.
func (s *sims) pick() (netip.Prefix, simLease, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.held) == 0 {
		return netip.Prefix{}, simLease{}, false
	}
	// Map order is random enough for churn; a bounded walk keeps it cheap.
	n := s.rng.IntN(min(len(s.held), 64))
	for p, l := range s.held {
		if n == 0 {
			return p, l, true
		}
		n--
	}
	return netip.Prefix{}, simLease{}, false
}

// renew re-PUTs a held lease unchanged, as stock flanneld renews.
func (s *sims) renew(ctx context.Context) (op, error) {
	p, l, ok := s.pick()
	if !ok {
		return s.join(ctx)
	}
	o := op{kind: "renew", t0: time.Now()}
	resp, err := s.cli.Put(ctx, s.key(p), l.value, clientv3.WithLease(l.id))
	if err != nil {
		return op{}, fmt.Errorf("scale: renew %s: %w", s.key(p), err)
	}
	o.rev = resp.Header.Revision
	return o, nil
}

// leave revokes a held lease: its key goes, as when a node's lease expires.
func (s *sims) leave(ctx context.Context) (op, error) {
	s.mu.Lock()
	var p netip.Prefix
	var l simLease
	for p, l = range s.held {
		break
	}
	if len(s.held) == 0 {
		s.mu.Unlock()
		return op{}, errors.New("scale: no simulated node to leave")
	}
	delete(s.held, p)
	s.mu.Unlock()
	o := op{kind: "leave", t0: time.Now()}
	resp, err := s.cli.Revoke(ctx, l.id)
	if err != nil {
		return op{}, fmt.Errorf("scale: revoke the lease of %s: %w", p, err)
	}
	s.release(p)
	o.rev = resp.Header.Revision
	return o, nil
}

// parallel runs n calls of f on workers goroutines and returns the highest
// revision made, or the first error.
func parallel(ctx context.Context, n, workers int, f func(context.Context) (op, error)) (int64, error) {
	var (
		mu     sync.Mutex
		maxRev int64
		first  error
		wg     sync.WaitGroup
	)
	work := make(chan struct{})
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for range workers {
		wg.Go(func() {
			for range work {
				o, err := f(ctx)
				mu.Lock()
				if err != nil && first == nil {
					first = err
					cancel()
				}
				maxRev = max(maxRev, o.rev)
				mu.Unlock()
			}
		})
	}
feed:
	for range n {
		select {
		case work <- struct{}{}:
		case <-ctx.Done():
			break feed
		}
	}
	close(work)
	wg.Wait()
	if first == nil {
		first = ctx.Err()
	}
	return maxRev, first
}
