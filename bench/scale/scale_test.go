package scale

import (
	"context"
	"encoding/xml"
	"errors"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/weft-net/weft/bench/lab"
	"github.com/weft-net/weft/etcd/etcdtest"
	"github.com/weft-net/weft/subnet"
)

func TestFirstAt(t *testing.T) {
	t0 := time.Unix(1000, 0)
	s := []sample{{t0, 5}, {t0.Add(time.Millisecond), 9}, {t0.Add(2 * time.Millisecond), 12}}
	for _, c := range []struct {
		rev  int64
		want time.Time
		ok   bool
	}{{1, t0, true}, {5, t0, true}, {6, t0.Add(time.Millisecond), true}, {12, t0.Add(2 * time.Millisecond), true}, {13, time.Time{}, false}} {
		got, ok := firstAt(s, c.rev)
		if ok != c.ok || !got.Equal(c.want) {
			t.Errorf("firstAt(rev %d) = %v, %v; want %v, %v", c.rev, got, ok, c.want, c.ok)
		}
	}
	if _, ok := firstAt(nil, 1); ok {
		t.Error("firstAt(nil) found a sample")
	}
}

func TestSummarize(t *testing.T) {
	var d []time.Duration
	for i := 100; i >= 1; i-- {
		d = append(d, time.Duration(i)*time.Millisecond)
	}
	l := summarize(d)
	if l.Samples != 100 || l.P50 != 50*time.Millisecond || l.P99 != 99*time.Millisecond || l.Max != 100*time.Millisecond {
		t.Errorf("summarize = %+v", l)
	}
	if (summarize(nil) != Latency{}) {
		t.Error("summarize(nil) not zero")
	}
}

// passing is a report whose largest size meets every target.
func passing() *Report {
	ok := Size{
		Leases: TargetSize + 3, BulkWrite: time.Second, BulkApplied: 2 * time.Second, ChurnOps: 100, ChurnRate: 50,
		Propagation: Latency{Samples: 300, P50: 5 * time.Millisecond, P99: 9 * time.Millisecond, Max: 20 * time.Millisecond},
		ByKind:      map[string]Latency{"join": {Samples: 90, P50: time.Millisecond, P99: 2 * time.Millisecond}},
		Daemons:     []Daemon{{Node: "n0", RSS: 40 << 20}, {Node: "n1", RSS: 41 << 20}, {Node: "n2", RSS: 39 << 20}},
		Startup:     150 * time.Millisecond, StartupRequests: 6, PingSent: 1000, PingReceived: 1000, PingMax: 3 * time.Millisecond,
		TableApply: Micro{NsPerOp: 50e3, AllocsPerOp: 21}, TableRebuild: Micro{NsPerOp: 3e6, AllocsPerOp: 10000}, Lookup: Micro{NsPerOp: 10},
	}
	small := ok
	small.Leases = 103
	return &Report{Started: time.Unix(0, 0), Daemons: 3, Poll: 10 * time.Millisecond, Sizes: []Size{small, ok}}
}

func TestChecks(t *testing.T) {
	if f := passing().Failed(); len(f) != 0 {
		t.Fatalf("passing report fails: %v", f)
	}
	for name, breakIt := range map[string]func(*Size){
		"propagation p99":                      func(s *Size) { s.Propagation.P99 = 1100 * time.Millisecond },
		"every change applied by every daemon": func(s *Size) { s.Unseen = 1 },
		"bulk load applied":                    func(s *Size) { s.BulkApplied = 11 * time.Second },
		"daemon RSS":                           func(s *Size) { s.Daemons[1].RSS = 65 << 20 },
		"start-up to ready":                    func(s *Size) { s.Startup = 3 * time.Second },
		"one change without a full rebuild":    func(s *Size) { s.TableApply.NsPerOp = 2e6 },
		"forwarding during updates":            func(s *Size) { s.PingReceived = 999 },
	} {
		r := passing()
		last := &r.Sizes[len(r.Sizes)-1]
		last.Daemons = append([]Daemon(nil), last.Daemons...)
		breakIt(last)
		f := r.Failed()
		if len(f) != 1 || !strings.HasPrefix(f[0], name+":") {
			t.Errorf("%s broken: failed = %q, want only that target", name, f)
		}
	}
	// A full rebuild is allowed while it costs under a millisecond.
	r := passing()
	r.Sizes[1].TableApply.NsPerOp, r.Sizes[1].TableRebuild.NsPerOp = 2e6, 0.5e6
	if f := r.Failed(); len(f) != 0 {
		t.Errorf("cheap rebuild: failed = %v", f)
	}
	// Below the target size nothing is checked.
	r = passing()
	r.Sizes = r.Sizes[:1]
	if c := r.Checks(); c != nil {
		t.Errorf("checks at 103 leases: %v", c)
	}
}

func TestReportFiles(t *testing.T) {
	dir := t.TempDir()
	if err := passing().WriteFiles(dir); err != nil {
		t.Fatal(err)
	}
	md, err := os.ReadFile(filepath.Join(dir, "scale.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"## Targets at 5000 leases", "| 5003 |", "Verdict: PASS", "scale.svg", "9.0 ms"} {
		if !strings.Contains(string(md), want) {
			t.Errorf("scale.md lacks %q:\n%s", want, md)
		}
	}
	f, err := os.Open(filepath.Join(dir, "scale.svg"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dec := xml.NewDecoder(f)
	rects := 0
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("scale.svg is not well-formed XML: %v", err)
		}
		if se, ok := tok.(xml.StartElement); ok && se.Name.Local == "rect" {
			rects++
		}
	}
	// Background, 2 sizes × 4 bars, 4 legend swatches.
	if rects != 1+8+4 {
		t.Errorf("scale.svg has %d rects, want 13", rects)
	}
	if _, err := os.Stat(filepath.Join(dir, "scale.json")); err != nil {
		t.Error(err)
	}
}

// TestSims writes, renews and removes simulated leases in a real etcd and
// checks what a watcher parses from them.
func TestSims(t *testing.T) {
	ep := etcdtest.Start(t)
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{ep}, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx := t.Context()
	taken := []netip.Prefix{netip.MustParsePrefix("198.19.0.8/29"), netip.MustParsePrefix("198.19.7.16/29")}
	avoid := netip.MustParsePrefix("198.18.100.0/24")
	sm, err := newSims(cli, lab.DefaultPrefix, netip.MustParsePrefix(Network), SubnetLen, taken, avoid)
	if err != nil {
		t.Fatal(err)
	}
	if len(sm.free) != 8191-2 {
		t.Fatalf("%d free subnets, want 8189", len(sm.free))
	}
	rev, err := parallel(ctx, 50, 8, sm.join)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := cli.Get(ctx, lab.DefaultPrefix+"/subnets/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) != 50 || resp.Header.Revision != rev {
		t.Fatalf("%d keys at revision %d, want 50 at %d", len(resp.Kvs), resp.Header.Revision, rev)
	}
	for _, kv := range resp.Kvs {
		sn, err := lab.ParseSubnetKey(strings.TrimPrefix(string(kv.Key), lab.DefaultPrefix+"/subnets/"))
		if err != nil || sn.Bits() != SubnetLen || sn == taken[0] || sn == taken[1] {
			t.Errorf("key %s: subnet %v, %v", kv.Key, sn, err)
		}
		a, err := subnet.ParseAttrs(kv.Value)
		if err != nil || avoid.Contains(a.PublicIP) || !netip.MustParsePrefix("198.18.0.0/15").Contains(a.PublicIP) || kv.Lease == 0 {
			t.Errorf("key %s: value %s lease %d: %v", kv.Key, kv.Value, kv.Lease, err)
		}
	}
	o, err := sm.renew(ctx)
	if err != nil || o.kind != "renew" || o.rev != rev+1 {
		t.Errorf("renew = %+v, %v; want revision %d", o, err, rev+1)
	}
	o, err = sm.leave(ctx)
	if err != nil || o.rev != rev+2 || sm.count() != 49 {
		t.Errorf("leave = %+v, %v, %d left; want revision %d, 49 left", o, err, sm.count(), rev+2)
	}
	if _, err := parallel(ctx, sm.count(), 8, sm.leave); err != nil {
		t.Fatal(err)
	}
	resp, err = cli.Get(ctx, lab.DefaultPrefix+"/subnets/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil || resp.Count != 0 || len(sm.free) != 8189 {
		t.Errorf("after every leave: %d keys (%v), %d free", resp.Count, err, len(sm.free))
	}
}

// TestScaleSmall runs the whole harness on a small cluster: three daemons,
// forty simulated nodes, short churn.
func TestScaleSmall(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("the scale test needs root, and CI=true requires it")
		}
		t.Skip("needs root (network namespaces): sudo go test ./bench/scale/")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "weft")
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("go", "build", "-o", bin, ".")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build weft: %v\n%s", err, out)
	}
	l, err := lab.New(lab.Options{Nodes: 3, WeftBin: bin, NetworkConfig: NetworkConfig})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := l.Close(); err != nil {
			t.Error(err)
		}
	}()
	for i := range 3 {
		if err := l.StartWeft(i); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 3 {
		if err := l.WaitReady(i, 30*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	const n = 40
	rep, err := Run(ctx, l, Options{Sizes: []int{n}, Churn: 2 * time.Second, Quiet: time.Second, Progress: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	s := rep.Sizes[0]
	if s.Leases != n+3 || s.ChurnOps < 15 || s.Unseen != 0 || s.Propagation.Samples != 3*s.ChurnOps {
		t.Errorf("size %+v: want %d leases, ≥15 changes, each seen by 3 daemons", s, n+3)
	}
	if s.BulkApplied <= 0 || s.BulkApplied < s.BulkWrite/2 || s.Startup <= 0 || s.PingSent == 0 || s.PingReceived < s.PingSent {
		t.Errorf("bulk %v/%v, start-up %v, ping %d/%d", s.BulkWrite, s.BulkApplied, s.Startup, s.PingReceived, s.PingSent)
	}
	// The daemon must not ask etcd about each lease: with 43 leases, a
	// TimeToLive per lease per list would be over 80 requests.
	if s.StartupRequests == 0 || s.StartupRequests > 20 {
		t.Errorf("start-up made %d etcd requests, want a handful whatever the cluster's size", s.StartupRequests)
	}
	for _, d := range s.Daemons {
		if d.RSS <= 0 || d.TableUpdates == 0 || d.BulkApplied <= 0 {
			t.Errorf("daemon %+v", d)
		}
	}
	// Run removed its simulated leases again.
	leases, err := l.Leases(ctx)
	if err != nil || len(leases) != 3 {
		t.Errorf("%d leases left after Run (%v), want the 3 daemons'", len(leases), err)
	}
}
