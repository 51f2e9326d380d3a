package subnet_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/subnet"
	"github.com/weft-net/weft/subnet/subnettest"
)

const net16 = `{"Network":"198.19.0.0/16"}`

func seeded(n uint64) *rand.Rand { return rand.New(rand.NewPCG(n, n)) }

func TestAcquireReusesLeaseByPublicIP(t *testing.T) {
	ctx := context.Background()
	s, clk := newStore()
	me := attrs("198.18.0.2")
	if _, err := s.CreateLease(ctx, pfx("198.19.9.0/24"), attrs("198.18.0.3"), time.Hour); err != nil {
		t.Fatal(err)
	}
	old, err := s.CreateLease(ctx, pfx("198.19.7.0/24"), me, subnet.LeaseTTL)
	if err != nil {
		t.Fatal(err)
	}
	clk.Advance(3 * time.Hour)
	log, logs := newLogger()

	// Previous points elsewhere: the PublicIP match wins.
	l, err := subnet.Acquire(ctx, s, subnet.AcquireOptions{
		Config: mustConfig(t, net16), Attrs: me, Previous: pfx("198.19.42.1/24"), Rand: seeded(1), Logger: log,
	})
	if err != nil {
		t.Fatal(err)
	}
	if l.Subnet != old.Subnet || l.ID != old.ID {
		t.Errorf("got %s id %x, want the existing lease %s id %x", l.Subnet, l.ID, old.Subnet, old.ID)
	}
	if want := t0.Add(3*time.Hour + subnet.LeaseTTL); !l.Expiration.Equal(want) {
		t.Errorf("Expiration %v, want renewed to %v", l.Expiration, want)
	}
	if n := s.Calls(subnettest.OpCreate); n != 2 {
		t.Errorf("%d CreateLease calls, want only the 2 of the setup", n)
	}
	if n := s.Calls(subnettest.OpRenew); n != 1 {
		t.Errorf("%d RenewLease calls, want 1", n)
	}
	if !strings.Contains(logs.String(), `reason="reused by PublicIP"`) {
		t.Errorf("log lacks the reason:\n%s", logs)
	}
}

func TestAcquireHonoursReservation(t *testing.T) {
	ctx := context.Background()
	s, _ := newStore()
	me := attrs("198.18.0.2")
	if err := s.PutReservation(pfx("198.19.200.0/24"), me); err != nil {
		t.Fatal(err)
	}
	log, logs := newLogger()
	l, err := subnet.Acquire(ctx, s, subnet.AcquireOptions{Config: mustConfig(t, net16), Attrs: me, Rand: seeded(1), Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	if l.Subnet != pfx("198.19.200.0/24") || !l.Reserved() || !l.Expiration.IsZero() {
		t.Errorf("got %+v, want the reservation as is", l)
	}
	if c, r := s.Calls(subnettest.OpCreate), s.Calls(subnettest.OpRenew); c != 0 || r != 0 {
		t.Errorf("%d creates and %d renewals, want none: a reservation must not get a TTL", c, r)
	}
	if ls := s.Leases(); len(ls) != 1 || !ls[0].Reserved() {
		t.Errorf("store holds %+v, want the untouched reservation", ls)
	}
	if !strings.Contains(logs.String(), `reason="reservation for this PublicIP"`) {
		t.Errorf("log lacks the reason:\n%s", logs)
	}
}

func TestAcquireNeverTakesOthersReservationOrLease(t *testing.T) {
	ctx := context.Background()
	s, _ := newStore()
	cfg := mustConfig(t, `{"Network":"198.19.0.0/16","SubnetMin":"198.19.1.0","SubnetMax":"198.19.3.0"}`)
	if err := s.PutReservation(pfx("198.19.1.0/24"), attrs("198.18.0.9")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateLease(ctx, pfx("198.19.3.0/24"), attrs("198.18.0.8"), time.Hour); err != nil {
		t.Fatal(err)
	}
	for seed := range uint64(20) {
		// Previous asks for the reserved one; it must not be taken.
		l, err := subnet.Acquire(ctx, s, subnet.AcquireOptions{
			Config: cfg, Attrs: attrs("198.18.0.2"), Previous: pfx("198.19.1.0/24"), Rand: seeded(seed),
		})
		if err != nil {
			t.Fatal(err)
		}
		if l.Subnet != pfx("198.19.2.0/24") {
			t.Fatalf("seed %d: got %s, want the only free subnet 198.19.2.0/24", seed, l.Subnet)
		}
		if !s.DeleteLease(l.Subnet) {
			t.Fatal("lease not in store")
		}
	}
}

func TestAcquirePreviousSubnet(t *testing.T) {
	ctx := context.Background()
	cfg := mustConfig(t, net16)
	tests := []struct {
		name     string
		previous netip.Prefix
		other    netip.Prefix // held by another node, if valid
		wantPrev bool
		wantLog  string
	}{
		{"reused, masked to its length", pfx("198.19.42.1/24"), netip.Prefix{}, true, `reason="previous subnet"`},
		{"held by another node", pfx("198.19.42.1/24"), pfx("198.19.42.0/24"), false, "previous subnet is held by another node"},
		{"wrong length", pfx("198.19.42.0/25"), netip.Prefix{}, false, "previous subnet is outside the configured range"},
		{"outside the network", pfx("198.18.42.0/24"), netip.Prefix{}, false, "previous subnet is outside the configured range"},
		{"the skipped first subnet", pfx("198.19.0.1/24"), netip.Prefix{}, false, "previous subnet is outside the configured range"},
		{"none", netip.Prefix{}, netip.Prefix{}, false, `reason=new`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, clk := newStore()
			if tt.other.IsValid() {
				if _, err := s.CreateLease(ctx, tt.other, attrs("198.18.0.3"), time.Hour); err != nil {
					t.Fatal(err)
				}
			}
			log, logs := newLogger()
			l, err := subnet.Acquire(ctx, s, subnet.AcquireOptions{
				Config: cfg, Attrs: attrs("198.18.0.2"), Previous: tt.previous, TTL: 2 * time.Hour, Rand: seeded(7), Logger: log,
			})
			if err != nil {
				t.Fatal(err)
			}
			if got := l.Subnet == tt.previous.Masked(); got != tt.wantPrev {
				t.Errorf("got %s, previous %s: reused = %v, want %v", l.Subnet, tt.previous, got, tt.wantPrev)
			}
			if !cfg.InRange(l.Subnet) || l.Subnet == tt.other {
				t.Errorf("got %s: out of range or held by another node", l.Subnet)
			}
			if l.Reserved() || !l.Expiration.Equal(clk.Now().Add(2*time.Hour)) {
				t.Errorf("lease %+v: want a TTL of 2h", l)
			}
			if !strings.Contains(logs.String(), tt.wantLog) {
				t.Errorf("log lacks %q:\n%s", tt.wantLog, logs)
			}
			// The lease is in the store with our value.
			found := false
			for _, sl := range s.Leases() {
				if sl.Subnet == l.Subnet && sl.ID == l.ID && sl.Attrs.Equal(attrs("198.18.0.2")) {
					found = true
				}
			}
			if !found {
				t.Errorf("lease %s not in the store: %+v", l.Subnet, s.Leases())
			}
		})
	}
}

func TestAcquireRandomAmongFirstFree(t *testing.T) {
	ctx := context.Background()
	cfg := mustConfig(t, net16)
	// Other nodes hold 198.19.1.0 .. 198.19.5.0 and 198.19.50.0; the first
	// 100 free subnets are then 198.19.6.0 .. 198.19.106.0 minus .50.
	held := []netip.Prefix{pfx("198.19.50.0/24")}
	for i := 1; i <= 5; i++ {
		held = append(held, netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 19, byte(i), 0}), 24))
	}
	seen := make(map[netip.Prefix]int)
	for seed := range uint64(400) {
		s, _ := newStore()
		for i, p := range held {
			if _, err := s.CreateLease(ctx, p, attrs(fmt.Sprintf("198.18.1.%d", i+1)), time.Hour); err != nil {
				t.Fatal(err)
			}
		}
		l, err := subnet.Acquire(ctx, s, subnet.AcquireOptions{Config: cfg, Attrs: attrs("198.18.0.2"), Rand: seeded(seed)})
		if err != nil {
			t.Fatal(err)
		}
		third := l.Subnet.Addr().As4()[2]
		if l.Subnet.Bits() != 24 || third < 6 || third > 106 || third == 50 {
			t.Fatalf("seed %d: got %s, not among the first 100 free subnets", seed, l.Subnet)
		}
		seen[l.Subnet]++
	}
	// 400 draws from 100: all but a handful should appear.
	if len(seen) < 90 {
		t.Errorf("only %d distinct subnets in 400 draws: not random among the first 100", len(seen))
	}

	// Same seed, same choice.
	var got []netip.Prefix
	for range 2 {
		s, _ := newStore()
		l, err := subnet.Acquire(ctx, s, subnet.AcquireOptions{Config: cfg, Attrs: attrs("198.18.0.2"), Rand: seeded(99)})
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, l.Subnet)
	}
	if got[0] != got[1] {
		t.Errorf("same seed chose %s then %s", got[0], got[1])
	}
}

// racingStore loses the next races CreateLease calls to a rival node, which
// creates the same subnet just before us.
type racingStore struct {
	*subnettest.Store
	races int
	taken []netip.Prefix
}

func (r *racingStore) CreateLease(ctx context.Context, p netip.Prefix, a subnet.Attrs, ttl time.Duration) (subnet.Lease, error) {
	if r.races > 0 {
		r.races--
		if _, err := r.Store.CreateLease(ctx, p, attrs("198.18.0.66"), ttl); err != nil {
			return subnet.Lease{}, err
		}
		r.taken = append(r.taken, p)
	}
	return r.Store.CreateLease(ctx, p, a, ttl)
}

func TestAcquireLostRace(t *testing.T) {
	ctx := context.Background()
	base, _ := newStore()
	s := &racingStore{Store: base, races: 3}
	log, logs := newLogger()
	l, err := subnet.Acquire(ctx, s, subnet.AcquireOptions{
		Config: mustConfig(t, net16), Attrs: attrs("198.18.0.2"), Previous: pfx("198.19.42.0/24"), Rand: seeded(3), Logger: log,
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(s.taken) != 3 || s.taken[0] != pfx("198.19.42.0/24") {
		t.Fatalf("races lost on %v, want 3 starting with the previous subnet", s.taken)
	}
	for _, p := range s.taken {
		if l.Subnet == p {
			t.Fatalf("got %s, which the rival holds", l.Subnet)
		}
	}
	if len(s.taken) != 3 || s.taken[0] == s.taken[1] || s.taken[1] == s.taken[2] || s.taken[0] == s.taken[2] {
		t.Errorf("retried the same subnet: %v", s.taken)
	}
	ls := base.Leases()
	if len(ls) != 4 {
		t.Fatalf("store holds %d leases, want 3 rivals and ours", len(ls))
	}
	for _, sl := range ls {
		want := "198.18.0.66"
		if sl.Subnet == l.Subnet {
			want = "198.18.0.2"
		}
		if sl.Attrs.PublicIP != netip.MustParseAddr(want) {
			t.Errorf("lease %s held by %s, want %s", sl.Subnet, sl.Attrs.PublicIP, want)
		}
	}
	if n := logs.count("lost the race for a subnet"); n != 3 {
		t.Errorf("%d lost-race log lines, want 3", n)
	}
}

func TestAcquireGivesUpAfterRepeatedRaces(t *testing.T) {
	base, _ := newStore()
	s := &racingStore{Store: base, races: 1000}
	_, err := subnet.Acquire(context.Background(), s, subnet.AcquireOptions{
		Config: mustConfig(t, net16), Attrs: attrs("198.18.0.2"), Rand: seeded(3),
	})
	if err == nil || !strings.Contains(err.Error(), "lost the creation race 10 times") {
		t.Fatalf("err = %v, want giving up after 10 lost races", err)
	}
	if len(s.taken) != 10 {
		t.Errorf("%d attempts, want 10", len(s.taken))
	}
}

func TestAcquireOutOfSubnets(t *testing.T) {
	ctx := context.Background()
	s, _ := newStore()
	cfg := mustConfig(t, `{"Network":"198.19.0.0/16","SubnetMin":"198.19.1.0","SubnetMax":"198.19.2.0"}`)
	if err := s.PutReservation(pfx("198.19.1.0/24"), attrs("198.18.0.9")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateLease(ctx, pfx("198.19.2.0/24"), attrs("198.18.0.8"), time.Hour); err != nil {
		t.Fatal(err)
	}
	_, err := subnet.Acquire(ctx, s, subnet.AcquireOptions{Config: cfg, Attrs: attrs("198.18.0.2"), Previous: pfx("198.19.2.0/24")})
	want := "acquire subnet: out of subnets: all 2 subnets in 198.19.1.0/24..198.19.2.0/24 of Network 198.19.0.0/16 are leased or reserved"
	if err == nil || err.Error() != want {
		t.Fatalf("err = %v, want %q", err, want)
	}
	if n := s.Calls(subnettest.OpCreate); n != 1 {
		t.Errorf("CreateLease called %d times, want only the setup's", n)
	}
}

func TestAcquireOwnLeaseOutOfRange(t *testing.T) {
	ctx := context.Background()
	s, _ := newStore()
	me := attrs("198.18.0.2")
	// The config changed: our old lease is now below SubnetMin.
	if _, err := s.CreateLease(ctx, pfx("198.19.1.0/24"), me, time.Hour); err != nil {
		t.Fatal(err)
	}
	cfg := mustConfig(t, `{"Network":"198.19.0.0/16","SubnetMin":"198.19.10.0"}`)
	log, logs := newLogger()
	l, err := subnet.Acquire(ctx, s, subnet.AcquireOptions{Config: cfg, Attrs: me, Previous: pfx("198.19.1.0/24"), Rand: seeded(1), Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	if !cfg.InRange(l.Subnet) {
		t.Errorf("got %s, outside the range", l.Subnet)
	}
	if s.Calls(subnettest.OpRenew) != 0 {
		t.Error("renewed the out-of-range lease")
	}
	if !strings.Contains(logs.String(), "ignoring lease of this node outside the configured range") {
		t.Errorf("log lacks the warning:\n%s", logs)
	}
}

// vanishingStore deletes the key just before renewing it, as if it expired
// between the list and the renewal.
type vanishingStore struct{ *subnettest.Store }

func (v vanishingStore) RenewLease(ctx context.Context, l subnet.Lease) (subnet.Lease, error) {
	v.DeleteLease(l.Subnet)
	return v.Store.RenewLease(ctx, l)
}

func TestAcquireOwnLeaseVanishesDuringRenewal(t *testing.T) {
	ctx := context.Background()
	base, _ := newStore()
	me := attrs("198.18.0.2")
	old, err := base.CreateLease(ctx, pfx("198.19.7.0/24"), me, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	l, err := subnet.Acquire(ctx, vanishingStore{base}, subnet.AcquireOptions{
		Config: mustConfig(t, net16), Attrs: me, Previous: pfx("198.19.7.1/24"), Rand: seeded(1),
	})
	if err != nil {
		t.Fatal(err)
	}
	if l.Subnet != old.Subnet || l.ID == old.ID {
		t.Errorf("got %s id %x; want %s recreated under a new TTL (old id %x)", l.Subnet, l.ID, old.Subnet, old.ID)
	}
}

func TestAcquireStoreErrors(t *testing.T) {
	ctx := context.Background()
	boom := errors.New("etcd unreachable")
	cfg := mustConfig(t, net16)
	me := attrs("198.18.0.2")

	s, _ := newStore()
	s.FailNext(subnettest.OpList, boom)
	if _, err := subnet.Acquire(ctx, s, subnet.AcquireOptions{Config: cfg, Attrs: me}); !errors.Is(err, boom) ||
		!strings.Contains(err.Error(), "list leases") {
		t.Errorf("list failure: err = %v", err)
	}

	s.FailNext(subnettest.OpCreate, boom)
	if _, err := subnet.Acquire(ctx, s, subnet.AcquireOptions{Config: cfg, Attrs: me}); !errors.Is(err, boom) ||
		!strings.Contains(err.Error(), "create lease 198.19.") {
		t.Errorf("create failure: err = %v", err)
	}

	if _, err := s.CreateLease(ctx, pfx("198.19.7.0/24"), me, time.Hour); err != nil {
		t.Fatal(err)
	}
	s.FailNext(subnettest.OpRenew, boom)
	if _, err := subnet.Acquire(ctx, s, subnet.AcquireOptions{Config: cfg, Attrs: me}); !errors.Is(err, boom) ||
		!strings.Contains(err.Error(), "renew lease 198.19.7.0/24") {
		t.Errorf("renew failure: err = %v", err)
	}

	if _, err := subnet.Acquire(ctx, s, subnet.AcquireOptions{Attrs: me}); err == nil {
		t.Error("no config: no error")
	}
	if _, err := subnet.Acquire(ctx, s, subnet.AcquireOptions{Config: cfg}); err == nil {
		t.Error("no PublicIP: no error")
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := subnet.Acquire(cctx, s, subnet.AcquireOptions{Config: cfg, Attrs: attrs("198.18.0.5")}); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: err = %v", err)
	}
}
