package etcd

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc/connectivity"

	"github.com/weft-net/weft/etcd/etcdtest"
	"github.com/weft-net/weft/subnet"
)

const valueA = `{"PublicIP":"198.18.0.2","PublicIPv6":null}`

var (
	subnetA = netip.MustParsePrefix("198.19.7.0/24")
	subnetB = netip.MustParsePrefix("198.19.8.0/24")
	subnetC = netip.MustParsePrefix("198.19.9.0/24")
)

// logBuffer collects log output; the watch goroutine logs concurrently.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func newStore(t *testing.T, endpoint string) (*Store, *logBuffer) {
	t.Helper()
	logs := &logBuffer{}
	s, err := New(Config{
		Endpoints: []string{endpoint},
		Logger:    slog.New(slog.NewTextHandler(logs, nil)),
	})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s, logs
}

// rawClient is a plain etcd client, to check and change what the Store
// wrote behind its back.
func rawClient(t *testing.T, endpoint string) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, Logger: zap.NewNop()})
	if err != nil {
		t.Fatalf("clientv3.New: %v", err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func attrs(t *testing.T, js string) subnet.Attrs {
	t.Helper()
	a, err := subnet.ParseAttrs([]byte(js))
	if err != nil {
		t.Fatalf("ParseAttrs(%s): %v", js, err)
	}
	return a
}

// etcdLeases lists every etcd lease ID, sorted.
func etcdLeases(t *testing.T, ctx context.Context, cli *clientv3.Client) []int64 {
	t.Helper()
	resp, err := cli.Leases(ctx)
	if err != nil {
		t.Fatalf("Leases: %v", err)
	}
	var ids []int64
	for _, l := range resp.Leases {
		ids = append(ids, int64(l.ID))
	}
	slices.Sort(ids)
	return ids
}

func getKV(t *testing.T, ctx context.Context, cli *clientv3.Client, key string) (value string, lease int64, ok bool) {
	t.Helper()
	resp, err := cli.Get(ctx, key)
	if err != nil {
		t.Fatalf("Get %s: %v", key, err)
	}
	if len(resp.Kvs) == 0 {
		return "", 0, false
	}
	return string(resp.Kvs[0].Value), resp.Kvs[0].Lease, true
}

func TestNetworkConfig(t *testing.T) {
	ep := etcdtest.Start(t)
	ctx := testCtx(t)
	s, _ := newStore(t, ep)
	cli := rawClient(t, ep)

	if got := s.ConfigKey(); got != "/coreos.com/network/config" {
		t.Fatalf("ConfigKey = %q", got)
	}
	_, err := s.GetNetworkConfig(ctx)
	if !errors.Is(err, subnet.ErrNoConfig) {
		t.Fatalf("GetNetworkConfig on empty etcd: err = %v, want ErrNoConfig", err)
	}
	if !strings.Contains(err.Error(), "/coreos.com/network/config") {
		t.Errorf("error %q does not name the key", err)
	}

	// Unknown fields and odd spacing must come back byte for byte.
	cfg := []byte(`{"Network": "198.19.0.0/16", "Backend": {"Type": "udp"}, "Future": [1,2]}`)
	if err := s.PutNetworkConfig(ctx, cfg); err != nil {
		t.Fatalf("PutNetworkConfig: %v", err)
	}
	got, err := s.GetNetworkConfig(ctx)
	if err != nil {
		t.Fatalf("GetNetworkConfig: %v", err)
	}
	if !bytes.Equal(got, cfg) {
		t.Errorf("GetNetworkConfig = %s, want %s", got, cfg)
	}
	if v, _, ok := getKV(t, ctx, cli, "/coreos.com/network/config"); !ok || v != string(cfg) {
		t.Errorf("etcd holds %q (present %v), want %s", v, ok, cfg)
	}

	// Another prefix (with a trailing slash, cleaned as flanneld's
	// path.Join does) sees nothing of the default one.
	other, err := New(Config{Endpoints: []string{ep}, Prefix: "/weft-test/network/"})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	defer other.Close()
	if got := other.ConfigKey(); got != "/weft-test/network/config" {
		t.Errorf("ConfigKey = %q", got)
	}
	if got := other.LeaseKey(subnetA); got != "/weft-test/network/subnets/198.19.7.0-24" {
		t.Errorf("LeaseKey = %q", got)
	}
	if _, err := other.GetNetworkConfig(ctx); !errors.Is(err, subnet.ErrNoConfig) {
		t.Errorf("GetNetworkConfig under another prefix: err = %v, want ErrNoConfig", err)
	}
}

func TestCreateLease(t *testing.T) {
	ep := etcdtest.Start(t)
	ctx := testCtx(t)
	s, _ := newStore(t, ep)
	cli := rawClient(t, ep)

	before := time.Now()
	l, err := s.CreateLease(ctx, subnetA, attrs(t, valueA), subnet.LeaseTTL)
	after := time.Now()
	if err != nil {
		t.Fatalf("CreateLease: %v", err)
	}
	if l.Subnet != subnetA || l.ID == 0 || !l.Attrs.Equal(attrs(t, valueA)) {
		t.Errorf("CreateLease = %+v", l)
	}
	if l.Expiration.Before(before.Add(subnet.LeaseTTL-time.Second)) || l.Expiration.After(after.Add(subnet.LeaseTTL)) {
		t.Errorf("Expiration %v not 24h after [%v, %v]", l.Expiration, before, after)
	}

	key := "/coreos.com/network/subnets/198.19.7.0-24"
	v, leaseID, ok := getKV(t, ctx, cli, key)
	if !ok {
		t.Fatalf("key %s not written", key)
	}
	if v != valueA {
		t.Errorf("value = %s, want exactly %s", v, valueA)
	}
	if leaseID != l.ID {
		t.Errorf("key attached to lease %x, CreateLease returned %x", leaseID, l.ID)
	}
	ttl, err := cli.TimeToLive(ctx, clientv3.LeaseID(l.ID), clientv3.WithAttachedKeys())
	if err != nil {
		t.Fatalf("TimeToLive: %v", err)
	}
	if ttl.GrantedTTL != 86400 || ttl.TTL < 86400-30 || ttl.TTL > 86400 {
		t.Errorf("etcd lease granted %ds, %ds left; want 86400", ttl.GrantedTTL, ttl.TTL)
	}
	if len(ttl.Keys) != 1 || string(ttl.Keys[0]) != key {
		t.Errorf("etcd lease holds keys %q, want [%s]", ttl.Keys, key)
	}

	leases, rev, err := s.ListLeases(ctx)
	if err != nil {
		t.Fatalf("ListLeases: %v", err)
	}
	if len(leases) != 1 {
		t.Fatalf("ListLeases = %+v, want one lease", leases)
	}
	got := leases[0]
	if got.Subnet != subnetA || got.ID != l.ID || !got.Attrs.Equal(l.Attrs) || got.Reserved() {
		t.Errorf("listed %+v, created %+v", got, l)
	}
	if d := got.Expiration.Sub(l.Expiration); d < -2*time.Second || d > 2*time.Second {
		t.Errorf("listed expiration %v, created %v", got.Expiration, l.Expiration)
	}
	resp, err := cli.Get(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	if rev < resp.Kvs[0].ModRevision {
		t.Errorf("ListLeases revision %d is before the lease's %d", rev, resp.Kvs[0].ModRevision)
	}

	// Bad arguments are refused before anything is granted.
	for _, bad := range []netip.Prefix{{}, netip.MustParsePrefix("198.19.7.1/24")} {
		if _, err := s.CreateLease(ctx, bad, attrs(t, valueA), subnet.LeaseTTL); err == nil {
			t.Errorf("CreateLease(%v) succeeded", bad)
		}
	}
	if _, err := s.CreateLease(ctx, subnetB, attrs(t, valueA), 0); err == nil {
		t.Error("CreateLease with TTL 0 succeeded")
	}
	if ids := etcdLeases(t, ctx, cli); !slices.Equal(ids, []int64{l.ID}) {
		t.Errorf("etcd leases = %x, want only %x", ids, l.ID)
	}
}

func TestCreateLeaseTaken(t *testing.T) {
	ep := etcdtest.Start(t)
	ctx := testCtx(t)
	s, _ := newStore(t, ep)
	cli := rawClient(t, ep)

	first, err := s.CreateLease(ctx, subnetA, attrs(t, valueA), subnet.LeaseTTL)
	if err != nil {
		t.Fatalf("CreateLease: %v", err)
	}
	_, err = s.CreateLease(ctx, subnetA, attrs(t, `{"PublicIP":"198.18.0.3","PublicIPv6":null}`), subnet.LeaseTTL)
	if !errors.Is(err, subnet.ErrLeaseTaken) {
		t.Fatalf("second CreateLease: err = %v, want ErrLeaseTaken", err)
	}
	if !strings.Contains(err.Error(), "/coreos.com/network/subnets/198.19.7.0-24") {
		t.Errorf("error %q does not name the key", err)
	}
	// The lease granted for the lost race was revoked: no orphan.
	if ids := etcdLeases(t, ctx, cli); !slices.Equal(ids, []int64{first.ID}) {
		t.Errorf("etcd leases = %x, want only the first %x", ids, first.ID)
	}
	if v, id, _ := getKV(t, ctx, cli, s.LeaseKey(subnetA)); v != valueA || id != first.ID {
		t.Errorf("key now %s on %x; the loser overwrote it", v, id)
	}

	// A reservation is taken too.
	if _, err := cli.Put(ctx, s.LeaseKey(subnetB), valueA); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateLease(ctx, subnetB, attrs(t, valueA), subnet.LeaseTTL); !errors.Is(err, subnet.ErrLeaseTaken) {
		t.Fatalf("CreateLease over a reservation: err = %v, want ErrLeaseTaken", err)
	}
	if ids := etcdLeases(t, ctx, cli); !slices.Equal(ids, []int64{first.ID}) {
		t.Errorf("etcd leases = %x, want only %x", ids, first.ID)
	}
	if _, id, _ := getKV(t, ctx, cli, s.LeaseKey(subnetB)); id != 0 {
		t.Errorf("reservation now attached to lease %x", id)
	}
}

func TestReservation(t *testing.T) {
	ep := etcdtest.Start(t)
	ctx := testCtx(t)
	s, _ := newStore(t, ep)
	cli := rawClient(t, ep)

	if _, err := cli.Put(ctx, s.LeaseKey(subnetB), valueA); err != nil {
		t.Fatal(err)
	}
	leases, _, err := s.ListLeases(ctx)
	if err != nil {
		t.Fatalf("ListLeases: %v", err)
	}
	if len(leases) != 1 {
		t.Fatalf("ListLeases = %+v", leases)
	}
	r := leases[0]
	if r.Subnet != subnetB || r.ID != 0 || !r.Reserved() || !r.Expiration.IsZero() {
		t.Errorf("reservation listed as %+v", r)
	}
	// Renewing a reservation touches nothing: it must never get a TTL.
	got, err := s.RenewLease(ctx, r)
	if err != nil {
		t.Fatalf("RenewLease(reservation): %v", err)
	}
	if got.ID != 0 || !got.Expiration.IsZero() {
		t.Errorf("RenewLease(reservation) = %+v", got)
	}
	if ids := etcdLeases(t, ctx, cli); len(ids) != 0 {
		t.Errorf("etcd leases = %x, want none", ids)
	}
	if _, id, _ := getKV(t, ctx, cli, s.LeaseKey(subnetB)); id != 0 {
		t.Errorf("reservation attached to lease %x", id)
	}
	if _, err := cli.Delete(ctx, s.LeaseKey(subnetB)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.RenewLease(ctx, r); !errors.Is(err, subnet.ErrLeaseNotFound) {
		t.Errorf("RenewLease(deleted reservation): err = %v, want ErrLeaseNotFound", err)
	}
}

func TestRenewLease(t *testing.T) {
	ep := etcdtest.Start(t)
	ctx := testCtx(t)
	s, _ := newStore(t, ep)
	cli := rawClient(t, ep)

	const ttl = 30 * time.Second
	l, err := s.CreateLease(ctx, subnetA, attrs(t, valueA), ttl)
	if err != nil {
		t.Fatalf("CreateLease: %v", err)
	}
	// Let the TTL run down so that a renewal is visible.
	time.Sleep(2100 * time.Millisecond)
	left, err := cli.TimeToLive(ctx, clientv3.LeaseID(l.ID))
	if err != nil {
		t.Fatal(err)
	}
	if left.TTL > 28 {
		t.Fatalf("TTL %ds left after 2s of a 30s lease", left.TTL)
	}

	start := time.Now()
	r, err := s.RenewLease(ctx, l)
	if err != nil {
		t.Fatalf("RenewLease: %v", err)
	}
	if r.ID != l.ID || r.Subnet != l.Subnet || !r.Attrs.Equal(l.Attrs) {
		t.Errorf("RenewLease = %+v, want %+v with a new expiration", r, l)
	}
	if !r.Expiration.After(l.Expiration) || r.Expiration.Before(start.Add(ttl-time.Second)) {
		t.Errorf("renewed expiration %v, created %v, renewed at %v", r.Expiration, l.Expiration, start)
	}
	now, err := cli.TimeToLive(ctx, clientv3.LeaseID(l.ID))
	if err != nil {
		t.Fatal(err)
	}
	if now.TTL < 29 {
		t.Errorf("TTL %ds after renewal, want ~30", now.TTL)
	}
	if ids := etcdLeases(t, ctx, cli); !slices.Equal(ids, []int64{l.ID}) {
		t.Errorf("etcd leases after renewal = %x, want only %x (same lease, no new grant)", ids, l.ID)
	}
	if _, id, _ := getKV(t, ctx, cli, s.LeaseKey(subnetA)); id != l.ID {
		t.Errorf("key now on lease %x, want %x", id, l.ID)
	}
}

func TestRenewLeaseGone(t *testing.T) {
	ep := etcdtest.Start(t)
	ctx := testCtx(t)
	s, _ := newStore(t, ep)
	cli := rawClient(t, ep)
	a := attrs(t, valueA)

	t.Run("key deleted", func(t *testing.T) {
		l, err := s.CreateLease(ctx, subnetA, a, subnet.LeaseTTL)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := cli.Delete(ctx, s.LeaseKey(subnetA)); err != nil {
			t.Fatal(err)
		}
		_, err = s.RenewLease(ctx, l)
		if !errors.Is(err, subnet.ErrLeaseNotFound) {
			t.Fatalf("RenewLease: err = %v, want ErrLeaseNotFound", err)
		}
		if !strings.Contains(err.Error(), s.LeaseKey(subnetA)) {
			t.Errorf("error %q does not name the key", err)
		}
		// The etcd lease lost its only key: it was revoked, not leaked.
		if ids := etcdLeases(t, ctx, cli); len(ids) != 0 {
			t.Errorf("etcd leases = %x, want none", ids)
		}
	})

	t.Run("etcd lease revoked", func(t *testing.T) {
		l, err := s.CreateLease(ctx, subnetA, a, subnet.LeaseTTL)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := cli.Revoke(ctx, clientv3.LeaseID(l.ID)); err != nil {
			t.Fatal(err)
		}
		if _, err := s.RenewLease(ctx, l); !errors.Is(err, subnet.ErrLeaseNotFound) {
			t.Fatalf("RenewLease: err = %v, want ErrLeaseNotFound", err)
		}
		if ids := etcdLeases(t, ctx, cli); len(ids) != 0 {
			t.Errorf("etcd leases = %x, want none (renewal must not grant)", ids)
		}
	})

	t.Run("key on another lease", func(t *testing.T) {
		l, err := s.CreateLease(ctx, subnetA, a, subnet.LeaseTTL)
		if err != nil {
			t.Fatal(err)
		}
		// What a flanneld renewal does: new grant, re-put the key.
		g, err := cli.Grant(ctx, 3600)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := cli.Put(ctx, s.LeaseKey(subnetA), valueA, clientv3.WithLease(g.ID)); err != nil {
			t.Fatal(err)
		}
		if _, err := s.RenewLease(ctx, l); !errors.Is(err, subnet.ErrLeaseNotFound) {
			t.Fatalf("RenewLease: err = %v, want ErrLeaseNotFound", err)
		}
		if ids := etcdLeases(t, ctx, cli); !slices.Equal(ids, []int64{int64(g.ID)}) {
			t.Errorf("etcd leases = %x, want only the other node's %x", ids, int64(g.ID))
		}
		if _, id, ok := getKV(t, ctx, cli, s.LeaseKey(subnetA)); !ok || id != int64(g.ID) {
			t.Errorf("other node's key disturbed: present %v, lease %x", ok, id)
		}
	})
}

func TestListSkipsUnparsable(t *testing.T) {
	ep := etcdtest.Start(t)
	ctx := testCtx(t)
	s, logs := newStore(t, ep)
	cli := rawClient(t, ep)

	bad := map[string]string{
		"/coreos.com/network/subnets/not-a-subnet":         valueA,
		"/coreos.com/network/subnets/198.19.7.1-24":        valueA, // not a network address
		"/coreos.com/network/subnets/198.19.10.0-24/extra": valueA,
		"/coreos.com/network/subnets/198.19.11.0-24":       `{"PublicIP":`,
		"/coreos.com/network/subnets/198.19.12.0-24":       `{"PublicIPv6":null}`,
	}
	for k, v := range bad {
		if _, err := cli.Put(ctx, k, v); err != nil {
			t.Fatal(err)
		}
	}
	// Outside subnets/ entirely: must not even be read.
	if _, err := cli.Put(ctx, "/coreos.com/network/subnetsX/198.19.13.0-24", valueA); err != nil {
		t.Fatal(err)
	}
	l, err := s.CreateLease(ctx, subnetA, attrs(t, valueA), subnet.LeaseTTL)
	if err != nil {
		t.Fatal(err)
	}
	leases, _, err := s.ListLeases(ctx)
	if err != nil {
		t.Fatalf("ListLeases: %v", err)
	}
	if len(leases) != 1 || leases[0].Subnet != l.Subnet || leases[0].ID != l.ID {
		t.Errorf("ListLeases = %+v, want only %v", leases, l.Subnet)
	}
	out := logs.String()
	for k := range bad {
		if !strings.Contains(out, k) {
			t.Errorf("no warning naming %s in log:\n%s", k, out)
		}
	}
	if strings.Contains(out, "subnetsX") {
		t.Errorf("key outside subnets/ was read:\n%s", out)
	}
}

type batch struct {
	events []subnet.Event
	rev    int64
}

// startWatch runs WatchLeases in the background; batches arrive on the
// first channel, its result on the second.
func startWatch(ctx context.Context, s *Store, fromRev int64) (<-chan batch, <-chan error) {
	batches := make(chan batch, 100)
	errc := make(chan error, 1)
	go func() {
		errc <- s.WatchLeases(ctx, fromRev, func(events []subnet.Event, rev int64) {
			batches <- batch{events, rev}
		})
	}()
	return batches, errc
}

// collect gathers batches until one reaches rev.
func collect(t *testing.T, batches <-chan batch, rev int64) []batch {
	t.Helper()
	var got []batch
	timeout := time.After(20 * time.Second)
	for {
		select {
		case b := <-batches:
			got = append(got, b)
			if b.rev >= rev {
				return got
			}
		case <-timeout:
			t.Fatalf("no batch reached revision %d; got %+v", rev, got)
		}
	}
}

func TestWatchLeases(t *testing.T) {
	ep := etcdtest.Start(t)
	ctx := testCtx(t)
	s, logs := newStore(t, ep)
	cli := rawClient(t, ep)
	attrsA := attrs(t, valueA)
	attrsB := attrs(t, `{"PublicIP":"198.18.0.3","PublicIPv6":null,"BackendType":"udp"}`)

	_, rev0, err := s.ListLeases(ctx)
	if err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	batches, errc := startWatch(wctx, s, rev0)

	// The changes, each with the revision it was made at.
	la, err := s.CreateLease(ctx, subnetA, attrsA, subnet.LeaseTTL)
	if err != nil {
		t.Fatal(err)
	}
	ga, err := cli.Get(ctx, s.LeaseKey(subnetA))
	if err != nil {
		t.Fatal(err)
	}
	revA := ga.Kvs[0].ModRevision
	pb, err := cli.Put(ctx, s.LeaseKey(subnetB), `{"PublicIP":"198.18.0.3","PublicIPv6":null,"BackendType":"udp"}`)
	if err != nil {
		t.Fatal(err)
	}
	garbageKey := "/coreos.com/network/subnets/garbage"
	pg, err := cli.Put(ctx, garbageKey, valueA)
	if err != nil {
		t.Fatal(err)
	}
	pc, err := cli.Put(ctx, s.LeaseKey(subnetC), "not json")
	if err != nil {
		t.Fatal(err)
	}
	da, err := cli.Delete(ctx, s.LeaseKey(subnetA))
	if err != nil {
		t.Fatal(err)
	}
	revB, revG, revC, revD := pb.Header.Revision, pg.Header.Revision, pc.Header.Revision, da.Header.Revision

	type want struct {
		typ subnet.EventType
		sn  netip.Prefix
		rev int64
	}
	wants := []want{
		{subnet.EventAdded, subnetA, revA},
		{subnet.EventAdded, subnetB, revB},
		{subnet.EventRemoved, subnetC, revC}, // value does not parse
		{subnet.EventRemoved, subnetA, revD},
	}
	got := collect(t, batches, revD)

	// Every event is in the batch whose revision is the first one at or
	// after the event's: the revision a batch reports is exactly how far
	// the reader got, never beyond.
	var flat []subnet.Event
	prevRev := rev0
	for _, b := range got {
		if b.rev <= prevRev {
			t.Errorf("batch revision %d after %d", b.rev, prevRev)
		}
		if !slices.Contains([]int64{revA, revB, revG, revC, revD}, b.rev) {
			t.Errorf("batch revision %d is not the revision of a change", b.rev)
		}
		for _, e := range b.events {
			i := len(flat)
			if i < len(wants) && (wants[i].rev > b.rev || wants[i].rev <= prevRev) {
				t.Errorf("event %d (revision %d) delivered in batch of revision %d after %d", i, wants[i].rev, b.rev, prevRev)
			}
			flat = append(flat, e)
		}
		prevRev = b.rev
	}
	if len(flat) != len(wants) {
		t.Fatalf("got events %+v, want %+v", flat, wants)
	}
	for i, w := range wants {
		if flat[i].Type != w.typ || flat[i].Lease.Subnet != w.sn {
			t.Errorf("event %d = %v %v, want %v %v", i, flat[i].Type, flat[i].Lease.Subnet, w.typ, w.sn)
		}
	}
	if e := flat[0].Lease; e.ID != la.ID || !e.Attrs.Equal(attrsA) ||
		e.Expiration.Sub(la.Expiration).Abs() > 2*time.Second {
		t.Errorf("added A = %+v, created %+v", e, la)
	}
	if e := flat[1].Lease; e.ID != 0 || !e.Attrs.Equal(attrsB) || !e.Expiration.IsZero() {
		t.Errorf("added reservation B = %+v", e)
	}
	// A removal carries only its subnet: asking etcd for the previous
	// value would cost it a read per event and watcher.
	if e := flat[3].Lease; e.Subnet != subnetA || e.ID != 0 || e.Attrs.PublicIP.IsValid() {
		t.Errorf("removed A = %+v, want only the subnet", e)
	}
	for _, k := range []string{garbageKey, s.LeaseKey(subnetC)} {
		if !strings.Contains(logs.String(), k) {
			t.Errorf("no warning naming %s in log:\n%s", k, logs.String())
		}
	}

	// A watch from a revision sees only what came after it.
	later, errLater := startWatch(wctx, s, revB)
	var lateEvents []subnet.Event
	for _, b := range collect(t, later, revD) {
		lateEvents = append(lateEvents, b.events...)
	}
	if len(lateEvents) != 2 || lateEvents[0].Lease.Subnet != subnetC || lateEvents[1].Lease.Subnet != subnetA ||
		lateEvents[1].Type != subnet.EventRemoved {
		t.Errorf("watch from revision %d got %+v, want removals of C and A", revB, lateEvents)
	}

	cancel()
	for _, c := range []<-chan error{errc, errLater} {
		select {
		case err := <-c:
			if !errors.Is(err, context.Canceled) {
				t.Errorf("WatchLeases after cancel: %v, want context.Canceled", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("WatchLeases did not return after cancel")
		}
	}
}

func TestWatchCompacted(t *testing.T) {
	ep := etcdtest.Start(t)
	ctx := testCtx(t)
	s, _ := newStore(t, ep)
	cli := rawClient(t, ep)

	_, rev0, err := s.ListLeases(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var last int64
	for _, p := range []netip.Prefix{subnetA, subnetB, subnetC} {
		r, err := cli.Put(ctx, s.LeaseKey(p), valueA)
		if err != nil {
			t.Fatal(err)
		}
		last = r.Header.Revision
	}
	if _, err := cli.Compact(ctx, last); err != nil {
		t.Fatalf("Compact: %v", err)
	}
	called := false
	err = s.WatchLeases(ctx, rev0, func([]subnet.Event, int64) { called = true })
	if !errors.Is(err, subnet.ErrCompacted) {
		t.Fatalf("WatchLeases from compacted revision %d: err = %v, want ErrCompacted", rev0, err)
	}
	if called {
		t.Error("handle called for a compacted watch")
	}

	// Right after a fresh list the watch works again.
	leases, rev, err := s.ListLeases(ctx)
	if err != nil || len(leases) != 3 {
		t.Fatalf("ListLeases = %d leases, %v", len(leases), err)
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	batches, errc := startWatch(wctx, s, rev)
	d, err := cli.Delete(ctx, s.LeaseKey(subnetB))
	if err != nil {
		t.Fatal(err)
	}
	got := collect(t, batches, d.Header.Revision)
	if ev := got[len(got)-1].events; len(ev) != 1 || ev[0].Type != subnet.EventRemoved || ev[0].Lease.Subnet != subnetB {
		t.Errorf("after re-list got %+v, want removal of %v", got, subnetB)
	}
	cancel()
	if err := <-errc; err != nil && !errors.Is(err, context.Canceled) {
		t.Errorf("watch after cancel: %v", err)
	}
}

// TestEtcdDown: with etcd gone every call fails by its context's deadline
// with an error that says etcd is unreachable; after a restart on the same
// data the same Store works again and a running watch resumes.
func TestEtcdDown(t *testing.T) {
	srv := etcdtest.NewServer(t)
	ep := srv.Endpoint()
	ctx := testCtx(t)
	s, _ := newStore(t, ep)
	l, err := s.CreateLease(ctx, subnetA, attrs(t, valueA), subnet.LeaseTTL)
	if err != nil {
		t.Fatal(err)
	}
	_, rev, err := s.ListLeases(ctx)
	if err != nil {
		t.Fatal(err)
	}
	wctx, cancelWatch := context.WithCancel(ctx)
	defer cancelWatch()
	batches, errc := startWatch(wctx, s, rev)

	srv.Close()

	// New does not need etcd up (no credentials to exchange).
	down, err := New(Config{Endpoints: []string{ep}})
	if err != nil {
		t.Fatalf("New with etcd down: %v", err)
	}
	defer down.Close()

	calls := map[string]func(context.Context) error{
		"GetNetworkConfig": func(ctx context.Context) error { _, err := s.GetNetworkConfig(ctx); return err },
		"PutNetworkConfig": func(ctx context.Context) error { return s.PutNetworkConfig(ctx, []byte(`{}`)) },
		"ListLeases":       func(ctx context.Context) error { _, _, err := s.ListLeases(ctx); return err },
		"CreateLease": func(ctx context.Context) error {
			_, err := s.CreateLease(ctx, subnetB, attrs(t, valueA), subnet.LeaseTTL)
			return err
		},
		"RenewLease":             func(ctx context.Context) error { _, err := s.RenewLease(ctx, l); return err },
		"GetNetworkConfig (new)": func(ctx context.Context) error { _, err := down.GetNetworkConfig(ctx); return err },
	}
	var wg sync.WaitGroup
	for name, call := range calls {
		wg.Go(func() {
			cctx, cancel := context.WithTimeout(ctx, time.Second)
			defer cancel()
			start := time.Now()
			err := call(cctx)
			elapsed := time.Since(start)
			if err == nil {
				t.Errorf("%s succeeded with etcd down", name)
				return
			}
			if elapsed > 3*time.Second {
				t.Errorf("%s took %v with a 1s deadline", name, elapsed)
			}
			if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "etcd at ["+ep+"] unreachable") {
				t.Errorf("%s: %q does not say etcd at %s is unreachable", name, err, ep)
			}
			t.Logf("%s: %v", name, err)
		})
	}
	wg.Wait()
	if s.Connected() || down.Connected() {
		t.Error("Connected() with etcd down")
	}
	cctx, cancel := context.WithTimeout(ctx, time.Second)
	err = down.WatchLeases(cctx, rev, func([]subnet.Event, int64) {})
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("WatchLeases with etcd down: %v, want the context's deadline", err)
	}
	select {
	case err := <-errc:
		t.Fatalf("running watch ended during the outage: %v", err)
	default:
	}

	srv2, err := etcdtest.StartServer(srv.Dir(), ep)
	if err != nil {
		t.Fatalf("restart etcd: %v", err)
	}
	t.Cleanup(srv2.Close)

	leases, _, err := s.ListLeases(ctx)
	if err != nil {
		t.Fatalf("ListLeases after restart: %v", err)
	}
	if !waitConnected(ctx, s) {
		t.Error("not Connected() after a successful call")
	}
	if len(leases) != 1 || leases[0].ID != l.ID {
		t.Errorf("after restart listed %+v, want lease %x", leases, l.ID)
	}
	if r, err := s.RenewLease(ctx, l); err != nil || r.ID != l.ID {
		t.Errorf("RenewLease after restart = %+v, %v", r, err)
	}
	cli := rawClient(t, ep)
	p, err := cli.Put(ctx, s.LeaseKey(subnetC), valueA)
	if err != nil {
		t.Fatal(err)
	}
	got := collect(t, batches, p.Header.Revision)
	if ev := got[len(got)-1].events; len(ev) != 1 || ev[0].Lease.Subnet != subnetC {
		t.Errorf("resumed watch got %+v, want %v added", got, subnetC)
	}
	cancelWatch()
	if err := <-errc; err != nil && !errors.Is(err, context.Canceled) {
		t.Errorf("watch after cancel: %v", err)
	}
}

// waitConnected reports whether s says Connected, or comes to say it
// before ctx ends, without making a request. A call can succeed a moment
// before Connected, which reads gRPC's connection state, turns true: gRPC
// hands its balancer's new picker to calls before it publishes the state
// (grpc-go balancer_wrapper.go, ccBalancerWrapper.UpdateState), and on a
// loaded machine that moment is long enough to see.
func waitConnected(ctx context.Context, s *Store) bool {
	for !s.Connected() {
		select {
		case <-ctx.Done():
			return false
		case <-time.After(10 * time.Millisecond):
		}
	}
	return true
}

// TestWaitConnChange: a wait on the connection ends as soon as etcd goes
// and as soon as it is back, not on gRPC's moves that keep the verdict
// (Ready to Idle, Connecting to TransientFailure), and otherwise when its
// context ends. The test's 30 s context only bounds a failure.
func TestWaitConnChange(t *testing.T) {
	srv := etcdtest.NewServer(t)
	ep := srv.Endpoint()
	ctx := testCtx(t)
	s, _ := newStore(t, ep)
	if _, err := s.GetNetworkConfig(ctx); !errors.Is(err, subnet.ErrNoConfig) {
		t.Fatalf("GetNetworkConfig: %v, want no config", err)
	}
	if !waitConnected(ctx, s) {
		t.Fatal("not Connected() after a successful call")
	}
	short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	up := s.WaitConnChange(short, true)
	cancel()
	if !up || ctx.Err() != nil {
		t.Fatalf("WaitConnChange with nothing changing = %v, want true when its context ends", up)
	}
	wait := func(wasUp bool) <-chan bool {
		c := make(chan bool, 1)
		go func() { c <- s.WaitConnChange(ctx, wasUp) }()
		return c
	}
	result := func(c <-chan bool, what string) bool {
		t.Helper()
		select {
		case up := <-c:
			if ctx.Err() != nil {
				t.Fatalf("%s: WaitConnChange ended with the test's context, not on the change", what)
			}
			return up
		case <-ctx.Done():
			t.Fatalf("%s: WaitConnChange still waiting", what)
			return false
		}
	}

	lost := wait(true)
	srv.Close()
	if result(lost, "etcd stopped") {
		t.Fatal("WaitConnChange after etcd stopped = true, want false")
	}
	if s.Connected() {
		t.Error("Connected() after WaitConnChange said down")
	}
	back := wait(false)
	// gRPC moves on to TransientFailure and retries: no change of verdict.
	conn := s.cli.ActiveConnection()
	for st := conn.GetState(); st != connectivity.TransientFailure; st = conn.GetState() {
		if !conn.WaitForStateChange(ctx, st) {
			t.Fatalf("gRPC state still %v with etcd down", st)
		}
	}
	select {
	case up := <-back:
		t.Fatalf("WaitConnChange(false) = %v with etcd still down", up)
	case <-time.After(500 * time.Millisecond):
	}

	srv2, err := etcdtest.StartServer(srv.Dir(), ep)
	if err != nil {
		t.Fatalf("restart etcd: %v", err)
	}
	t.Cleanup(srv2.Close)
	if !result(back, "etcd restarted") {
		t.Fatal("WaitConnChange after etcd restarted = false, want true")
	}
	if !s.Connected() {
		t.Error("not Connected() after WaitConnChange said up")
	}
}

func TestTLS(t *testing.T) {
	dir := t.TempDir()
	files, err := etcdtest.WriteTLSFiles(dir)
	if err != nil {
		t.Fatal(err)
	}
	ep := etcdtest.Start(t, etcdtest.WithClientTLS(files.ServerCert, files.ServerKey, files.CA))
	if !strings.HasPrefix(ep, "https://") {
		t.Fatalf("TLS endpoint %q", ep)
	}
	ctx := testCtx(t)

	s, err := New(Config{Endpoints: []string{ep}, CertFile: files.ClientCert, KeyFile: files.ClientKey, CAFile: files.CA})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	defer s.Close()
	if err := s.PutNetworkConfig(ctx, []byte(`{"Network":"198.19.0.0/16"}`)); err != nil {
		t.Fatalf("PutNetworkConfig over TLS: %v", err)
	}
	if _, err := s.GetNetworkConfig(ctx); err != nil {
		t.Fatalf("GetNetworkConfig over TLS: %v", err)
	}

	// Without a client certificate the server refuses us.
	noCert, err := New(Config{Endpoints: []string{ep}, CAFile: files.CA})
	if err != nil {
		t.Fatalf("New with CA only: %v", err)
	}
	defer noCert.Close()
	cctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	_, err = noCert.GetNetworkConfig(cctx)
	if err == nil {
		t.Error("GetNetworkConfig without a client certificate succeeded")
	} else if !strings.Contains(err.Error(), "TLS failure") || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("a refused client certificate reads as %q; want a TLS failure naming the certificate", err)
	}

	// A CA that did not sign the server's certificate: a TLS failure, not
	// "context deadline exceeded".
	other, err := etcdtest.WriteTLSFiles(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	wrongCA, err := New(Config{Endpoints: []string{ep}, CertFile: files.ClientCert, KeyFile: files.ClientKey, CAFile: other.CA})
	if err != nil {
		t.Fatalf("New with the wrong CA: %v", err)
	}
	defer wrongCA.Close()
	cctx2, cancel2 := context.WithTimeout(ctx, time.Second)
	defer cancel2()
	_, err = wrongCA.GetNetworkConfig(cctx2)
	if err == nil || !strings.Contains(err.Error(), "TLS failure") || !strings.Contains(err.Error(), "x509") ||
		!strings.Contains(err.Error(), "-etcd-cafile") {
		t.Errorf("wrong CA reads as %v; want a TLS failure with the x509 cause and the flags to check", err)
	}
}

func TestTLSConfig(t *testing.T) {
	dir := t.TempDir()
	files, err := etcdtest.WriteTLSFiles(dir)
	if err != nil {
		t.Fatal(err)
	}
	garbage := filepath.Join(dir, "garbage.pem")
	if err := os.WriteFile(garbage, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing.pem")
	logs := &logBuffer{}
	log := slog.New(slog.NewTextHandler(logs, nil))

	for _, tc := range []struct {
		name    string
		c       Config
		wantErr string // substring; "" = no error
		tls     bool
		cert    bool
	}{
		{name: "none", c: Config{}},
		{name: "cert and key", c: Config{CertFile: files.ClientCert, KeyFile: files.ClientKey}, tls: true, cert: true},
		{name: "all three", c: Config{CertFile: files.ClientCert, KeyFile: files.ClientKey, CAFile: files.CA}, tls: true, cert: true},
		{name: "CA only", c: Config{CAFile: files.CA}, tls: true},
		{name: "key only is ignored", c: Config{KeyFile: files.ClientKey}},
		{name: "missing cert", c: Config{CertFile: missing, KeyFile: files.ClientKey}, wantErr: missing},
		{name: "missing key", c: Config{CertFile: files.ClientCert, KeyFile: missing}, wantErr: missing},
		{name: "mismatched pair", c: Config{CertFile: files.ClientCert, KeyFile: files.ServerKey}, wantErr: files.ServerKey},
		{name: "missing CA", c: Config{CAFile: missing}, wantErr: missing},
		{name: "garbage CA", c: Config{CAFile: garbage}, wantErr: garbage},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := tlsConfig(tc.c, log)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want one naming %s", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if (cfg != nil) != tc.tls {
				t.Fatalf("TLS config %v, want TLS %v", cfg, tc.tls)
			}
			if cfg != nil && (len(cfg.Certificates) == 1) != tc.cert {
				t.Errorf("%d client certificates, want cert %v", len(cfg.Certificates), tc.cert)
			}
			if cfg != nil && (cfg.RootCAs != nil) != (tc.c.CAFile != "") {
				t.Errorf("RootCAs %v with CA file %q", cfg.RootCAs, tc.c.CAFile)
			}
		})
	}
	if !strings.Contains(logs.String(), "both a key file and a cert file") {
		t.Errorf("a lone key file was not warned about:\n%s", logs.String())
	}
	if _, err := New(Config{}); err == nil {
		t.Error("New without endpoints succeeded")
	}
	if _, err := New(Config{Endpoints: []string{"http://127.0.0.1:1"}, CAFile: missing}); err == nil || !strings.Contains(err.Error(), missing) {
		t.Errorf("New with a missing CA file: %v", err)
	}
}

// FuzzParseKey: a key from etcd either names a masked IPv4 subnet directly
// under <prefix>/subnets/ or is rejected; plain keys round-trip.
func FuzzParseKey(f *testing.F) {
	s := &Store{leasesDir: "/coreos.com/network/subnets/"}
	for _, k := range []string{
		"/coreos.com/network/subnets/198.19.7.0-24",
		"/coreos.com/network/subnets/198.19.7.1-24",
		"/coreos.com/network/subnets/198.19.0.0-16/x",
		"/coreos.com/network/subnets/",
		"/coreos.com/network/subnets/198.19.7.0-024",
		"/coreos.com/network/subnets/198.19.7.0-33",
		"/coreos.com/network/subnetsX/198.19.7.0-24",
		"/coreos.com/network/config",
		"",
	} {
		f.Add(k)
	}
	f.Fuzz(func(t *testing.T, key string) {
		p, err := s.parseKey(key)
		if err != nil {
			return
		}
		name, ok := strings.CutPrefix(key, s.leasesDir)
		if !ok || strings.Contains(name, "/") {
			t.Fatalf("parseKey(%q) accepted a key outside %s", key, s.leasesDir)
		}
		if !p.IsValid() || !p.Addr().Is4() || p.Masked() != p {
			t.Fatalf("parseKey(%q) = %v, not a masked IPv4 subnet", key, p)
		}
		if !strings.Contains(name, "&") && s.LeaseKey(p) != key {
			t.Fatalf("parseKey(%q) = %v, which is key %q", key, p, s.LeaseKey(p))
		}
	})
}

// User and password, as flanneld's -etcd-username/-etcd-password, against
// an etcd with authentication on: the right ones work, a wrong password is
// an error that says so.
func TestUsernamePassword(t *testing.T) {
	ep := etcdtest.Start(t)
	ctx := testCtx(t)
	cli := rawClient(t, ep)
	for _, step := range []func() error{
		func() error { _, err := cli.UserAdd(ctx, "root", "rootpw"); return err },
		func() error { _, err := cli.UserGrantRole(ctx, "root", "root"); return err },
		func() error { _, err := cli.UserAdd(ctx, "weft", "s3cret"); return err },
		func() error { _, err := cli.RoleAdd(ctx, "weft"); return err },
		func() error {
			_, err := cli.RoleGrantPermission(ctx, "weft", "/coreos.com/network/", clientv3.GetPrefixRangeEnd("/coreos.com/network/"), clientv3.PermissionType(clientv3.PermReadWrite))
			return err
		},
		func() error { _, err := cli.UserGrantRole(ctx, "weft", "weft"); return err },
		func() error { _, err := cli.AuthEnable(ctx); return err },
	} {
		if err := step(); err != nil {
			t.Fatalf("set up etcd auth: %v", err)
		}
	}

	s, err := New(Config{Endpoints: []string{ep}, Username: "weft", Password: "s3cret"})
	if err != nil {
		t.Fatalf("New with user and password: %v", err)
	}
	defer s.Close()
	if err := s.PutNetworkConfig(ctx, []byte(`{"Network":"198.19.0.0/16"}`)); err != nil {
		t.Fatalf("PutNetworkConfig as weft: %v", err)
	}
	if _, err := s.CreateLease(ctx, subnetA, attrs(t, valueA), subnet.LeaseTTL); err != nil {
		t.Fatalf("CreateLease as weft: %v", err)
	}

	_, err = New(Config{Endpoints: []string{ep}, Username: "weft", Password: "wrong"})
	if err == nil || !strings.Contains(err.Error(), "authentication failed") {
		t.Errorf("wrong password: %v; want an error saying authentication failed", err)
	}
	anon, err := New(Config{Endpoints: []string{ep}})
	if err != nil {
		t.Fatal(err)
	}
	defer anon.Close()
	if _, err := anon.GetNetworkConfig(ctx); err == nil {
		t.Error("reading without credentials succeeded with auth on")
	}
}

// TestPutLeaseAttrs: the node rewrites its lease's value (the fast path's
// advertisement) in place: same etcd lease, same TTL, a reservation stays
// one, and a key that is gone or someone else's is left alone.
func TestPutLeaseAttrs(t *testing.T) {
	ep := etcdtest.Start(t)
	ctx := testCtx(t)
	s, _ := newStore(t, ep)
	cli := rawClient(t, ep)

	l, err := s.CreateLease(ctx, subnetA, attrs(t, valueA), subnet.LeaseTTL)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Attrs.SetKernelDecap(true); err != nil {
		t.Fatal(err)
	}
	if err := s.PutLeaseAttrs(ctx, l); err != nil {
		t.Fatalf("PutLeaseAttrs: %v", err)
	}
	v, id, _ := getKV(t, ctx, cli, s.LeaseKey(subnetA))
	if id != l.ID || !strings.Contains(v, `"BackendData":{"WeftDecap":"kernel"}`) {
		t.Errorf("after put: value %s on lease %x, want the advertisement on %x", v, id, l.ID)
	}
	if ids := etcdLeases(t, ctx, cli); !slices.Equal(ids, []int64{l.ID}) {
		t.Errorf("etcd leases = %x, want only %x", ids, l.ID)
	}

	t.Run("reservation", func(t *testing.T) {
		if _, err := cli.Put(ctx, s.LeaseKey(subnetB), valueA); err != nil {
			t.Fatal(err)
		}
		r := subnet.Lease{Subnet: subnetB, Attrs: attrs(t, valueA)}
		if err := r.Attrs.SetKernelDecap(true); err != nil {
			t.Fatal(err)
		}
		if err := s.PutLeaseAttrs(ctx, r); err != nil {
			t.Fatalf("PutLeaseAttrs(reservation): %v", err)
		}
		if v, id, _ := getKV(t, ctx, cli, s.LeaseKey(subnetB)); id != 0 || !strings.Contains(v, "WeftDecap") {
			t.Errorf("reservation now %s on lease %x, want the advertisement and no lease", v, id)
		}
	})

	t.Run("key on another lease", func(t *testing.T) {
		g, err := cli.Grant(ctx, 3600)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := cli.Put(ctx, s.LeaseKey(subnetA), valueA, clientv3.WithLease(g.ID)); err != nil {
			t.Fatal(err)
		}
		if err := s.PutLeaseAttrs(ctx, l); !errors.Is(err, subnet.ErrLeaseNotFound) {
			t.Fatalf("PutLeaseAttrs: err = %v, want ErrLeaseNotFound", err)
		}
		if v, id, _ := getKV(t, ctx, cli, s.LeaseKey(subnetA)); v != valueA || id != int64(g.ID) {
			t.Errorf("other node's key disturbed: %s on %x", v, id)
		}
	})

	t.Run("key deleted", func(t *testing.T) {
		if _, err := cli.Delete(ctx, s.LeaseKey(subnetA)); err != nil {
			t.Fatal(err)
		}
		if err := s.PutLeaseAttrs(ctx, l); !errors.Is(err, subnet.ErrLeaseNotFound) {
			t.Fatalf("PutLeaseAttrs: err = %v, want ErrLeaseNotFound", err)
		}
		if _, _, ok := getKV(t, ctx, cli, s.LeaseKey(subnetA)); ok {
			t.Error("a deleted key was written again")
		}
	})
}
