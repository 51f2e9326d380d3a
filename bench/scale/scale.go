// Package scale measures weft's control plane at cluster sizes up to
// Kubernetes' 5,000 nodes: simulated nodes' leases in a real etcd, with
// real daemons in network namespaces watching them while traffic flows.
package scale

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/weft-net/weft/bench/lab"
	"github.com/weft-net/weft/bench/suite"
	"github.com/weft-net/weft/status"
)

// Network and SubnetLen: small subnets, so that 5,000 leases fit in the
// overlay range the lab may use.
const (
	Network   = "198.19.0.0/16"
	SubnetLen = 29
	// NetworkConfig is what a scale lab writes to etcd.
	NetworkConfig = `{"Network":"198.19.0.0/16","SubnetLen":29,"Backend":{"Type":"udp"}}`
)

// Options parameterise Run.
type Options struct {
	Sizes []int         // simulated leases per step, e.g. 100, 1000, 5000
	Churn time.Duration // length of the churn phase per size (default 20 s)
	// Rate is churn operations per second; 0 means max(10, N/100): a
	// 5,000-node cluster's day of joins, leaves and renewals compressed
	// about a thousandfold.
	Rate    float64
	Quiet   time.Duration // steady-state window without churn (default 5 s)
	Poll    time.Duration // how often each daemon's table revision is read (default 10 ms)
	Workers int           // concurrent writers for a bulk load (default 32)
	// Progress receives one line per phase; nil discards.
	Progress func(format string, args ...any)
}

func (o *Options) defaults() {
	if o.Churn <= 0 {
		o.Churn = 20 * time.Second
	}
	if o.Quiet <= 0 {
		o.Quiet = 5 * time.Second
	}
	if o.Poll <= 0 {
		o.Poll = 10 * time.Millisecond
	}
	if o.Workers <= 0 {
		o.Workers = 32
	}
	if o.Progress == nil {
		o.Progress = func(string, ...any) {}
	}
}

func (o *Options) rate(n int) float64 {
	if o.Rate > 0 {
		return o.Rate
	}
	return max(10, float64(n)/100)
}

// Latency summarises propagation delays.
type Latency struct {
	Samples int           `json:"samples"`
	P50     time.Duration `json:"p50"`
	P99     time.Duration `json:"p99"`
	Max     time.Duration `json:"max"`
}

func summarize(d []time.Duration) Latency {
	if len(d) == 0 {
		return Latency{}
	}
	slices.Sort(d)
	return Latency{Samples: len(d), P50: suite.Percentile(d, 50), P99: suite.Percentile(d, 99), Max: d[len(d)-1]}
}

// Daemon is one real daemon's figures at one size.
type Daemon struct {
	Node string `json:"node"`
	// BulkApplied is the time from the first write of a bulk load until
	// this daemon's table held all of it.
	BulkApplied time.Duration `json:"bulkApplied"`
	RSS         int64         `json:"rssBytes"` // at the end of the churn phase
	// CPU in cores (1.0 = one core busy), quiet and under churn.
	CPUQuiet float64 `json:"cpuQuiet"`
	CPUChurn float64 `json:"cpuChurn"`
	// etcd requests per second this daemon sent, quiet and under churn.
	EtcdQuiet float64 `json:"etcdRequestsPerSecQuiet"`
	EtcdChurn float64 `json:"etcdRequestsPerSecChurn"`
	// Table updates during churn: how many, mean and max cost.
	TableUpdates uint64        `json:"tableUpdates"`
	UpdateMean   time.Duration `json:"tableUpdateMean"`
	UpdateMax    time.Duration `json:"tableUpdateMax"`
}

// Micro is an in-process measurement of the peer table at one size.
type Micro struct {
	NsPerOp     float64 `json:"nsPerOp"`
	AllocsPerOp int64   `json:"allocsPerOp"`
}

// Size is everything measured at one cluster size.
type Size struct {
	Leases    int           `json:"leases"` // simulated, plus the real daemons'
	BulkWrite time.Duration `json:"bulkWrite"`
	// BulkApplied is the slowest daemon's BulkApplied.
	BulkApplied time.Duration `json:"bulkApplied"`
	ChurnOps    int           `json:"churnOps"`
	ChurnRate   float64       `json:"churnRatePerSec"`
	// Propagation: from sending a change to etcd until each daemon's table
	// reflected it, over every change and daemon.
	Propagation Latency            `json:"propagation"`
	ByKind      map[string]Latency `json:"byKind"`
	Unseen      int                `json:"unseen"` // change/daemon pairs never applied
	Daemons     []Daemon           `json:"daemons"`
	// Startup is a daemon's restart to /readyz 200 with the leases present,
	// and the etcd requests it made to get there.
	Startup         time.Duration `json:"startup"`
	StartupRequests uint64        `json:"startupRequests"`
	// Ping ran between two real nodes' pods through bulk load and churn.
	PingSent     int           `json:"pingSent"`
	PingReceived int           `json:"pingReceived"`
	PingMax      time.Duration `json:"pingMax"`
	TableApply   Micro         `json:"tableApply"`   // one change, incremental
	TableRebuild Micro         `json:"tableRebuild"` // the same change as a full rebuild
	Lookup       Micro         `json:"lookup"`
}

// Report is a whole run.
type Report struct {
	Started  time.Time     `json:"started"`
	Duration time.Duration `json:"duration"`
	Version  string        `json:"version"`
	Machine  string        `json:"machine"`
	Daemons  int           `json:"daemons"`
	Poll     time.Duration `json:"poll"`
	Sizes    []Size        `json:"sizes"`
}

// Run measures every size in turn on l, whose daemons (at least three)
// must be ready. The simulated leases are removed again at the end.
func Run(ctx context.Context, l *lab.Lab, o Options) (*Report, error) {
	o.defaults()
	nodes := len(l.Nodes())
	if nodes < 3 {
		return nil, fmt.Errorf("scale: %d daemons, want at least 3", nodes)
	}
	var taken []netip.Prefix
	for i := range nodes {
		st, err := l.StatusContext(ctx, i)
		if err != nil {
			return nil, err
		}
		if st.Lease == nil {
			return nil, fmt.Errorf("scale: n%d has no lease", i)
		}
		taken = append(taken, st.Lease.Subnet)
	}
	sm, err := newSims(l.Client(), l.Prefix(), netip.MustParsePrefix(Network), SubnetLen, taken, l.Underlay)
	if err != nil {
		return nil, err
	}
	rep := &Report{Started: time.Now(), Daemons: nodes, Poll: o.Poll}
	defer func() {
		// Leave etcd as we found it, even after a failure.
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		_, _ = parallel(cctx, sm.count(), o.Workers, sm.leave)
	}()
	for _, n := range o.Sizes {
		sz, err := runSize(ctx, l, sm, o, n)
		if err != nil {
			return rep, fmt.Errorf("scale: %d leases: %w", n, err)
		}
		rep.Sizes = append(rep.Sizes, *sz)
	}
	rep.Duration = time.Since(rep.Started)
	return rep, nil
}

// sizeRun is the measurement of one cluster size, phase by phase: each
// method is one phase and fills in its part of sz.
type sizeRun struct {
	l       *lab.Lab
	sm      *sims
	o       Options
	n       int // simulated leases at this size
	nodes   int // real daemons
	pollers *pollers
	sz      *Size
}

func runSize(ctx context.Context, l *lab.Lab, sm *sims, o Options, n int) (*Size, error) {
	r := &sizeRun{l: l, sm: sm, o: o, n: n, nodes: len(l.Nodes())}
	r.pollers = startPollers(l, o.Poll)
	defer r.pollers.stop()
	if err := r.clearPrevious(ctx); err != nil {
		return nil, err
	}

	ping, err := startPing(l)
	if err != nil {
		return nil, err
	}
	defer func() { _, _ = ping.stop() }() // on early returns; the measured stop is below

	r.sz = &Size{Leases: n + r.nodes}
	if err := r.bulkLoad(ctx); err != nil {
		return nil, err
	}
	q0, q1, err := r.quiet(ctx)
	if err != nil {
		return nil, err
	}
	ops, c1, err := r.churnPhase(ctx)
	if err != nil {
		return nil, err
	}
	r.propagation(ops)
	r.daemonCosts(q0, q1, c1)
	r.pollers.stop()
	if err := r.stopPing(ping); err != nil {
		return nil, err
	}
	if err := r.startup(ctx); err != nil {
		return nil, err
	}
	r.sz.TableApply, r.sz.TableRebuild, r.sz.Lookup = tableMicro(r.sz.Leases)
	return r.sz, nil
}

// clearPrevious removes the previous size's simulated leases: every size
// starts from none, so that its bulk load is all of it.
func (r *sizeRun) clearPrevious(ctx context.Context) error {
	c := r.sm.count()
	if c == 0 {
		return nil
	}
	r.o.Progress("%d: removing the previous %d simulated leases", r.n, c)
	rev, err := parallel(ctx, c, r.o.Workers, r.sm.leave)
	if err != nil {
		return err
	}
	return r.pollers.wait(ctx, rev, time.Minute)
}

// bulkLoad writes all n simulated leases at once and records how long
// the writes took and when each daemon's table held all of them.
func (r *sizeRun) bulkLoad(ctx context.Context) error {
	sz := r.sz
	r.o.Progress("%d: bulk load", r.n)
	start := time.Now()
	bulkRev, err := parallel(ctx, r.n, r.o.Workers, r.sm.join)
	if err != nil {
		return err
	}
	sz.BulkWrite = time.Since(start)
	if err := r.pollers.wait(ctx, bulkRev, time.Minute); err != nil {
		return fmt.Errorf("bulk load: %w", err)
	}
	sz.Daemons = make([]Daemon, r.nodes)
	for i := range r.nodes {
		sz.Daemons[i].Node = r.l.Node(i).Name
		t, ok := r.pollers.firstAt(i, bulkRev)
		if !ok {
			return fmt.Errorf("bulk load: n%d reached revision %d unseen by its poller", i, bulkRev)
		}
		sz.Daemons[i].BulkApplied = t.Sub(start)
		sz.BulkApplied = max(sz.BulkApplied, sz.Daemons[i].BulkApplied)
	}
	r.o.Progress("%d: bulk load written in %v, applied by every daemon in %v", r.n,
		sz.BulkWrite.Round(time.Millisecond), sz.BulkApplied.Round(time.Millisecond))
	return nil
}

// quiet measures what a daemon costs when nothing changes: counters at
// the start and end of the quiet window.
func (r *sizeRun) quiet(ctx context.Context) (q0, q1 []point, err error) {
	r.o.Progress("%d: quiet for %v", r.n, r.o.Quiet)
	// The pollers pause: their 100 requests a second per daemon would be
	// most of what is measured.
	r.pollers.paused.Store(true)
	if q0, err = snapshot(ctx, r.l); err != nil {
		return nil, nil, err
	}
	if err := sleep(ctx, r.o.Quiet); err != nil {
		return nil, nil, err
	}
	if q1, err = snapshot(ctx, r.l); err != nil {
		return nil, nil, err
	}
	r.pollers.paused.Store(false)
	return q0, q1, nil
}

// churnPhase makes joins, renewals and leaves at a steady rate, then
// takes the counters at its end and waits until every daemon applied the
// last change.
func (r *sizeRun) churnPhase(ctx context.Context) (ops []op, c1 []point, err error) {
	r.sz.ChurnRate = r.o.rate(r.n)
	r.o.Progress("%d: churn at %.0f changes/s for %v", r.n, r.sz.ChurnRate, r.o.Churn)
	if ops, err = churn(ctx, r.sm, r.sz.ChurnRate, r.o.Churn); err != nil {
		return nil, nil, err
	}
	if c1, err = snapshot(ctx, r.l); err != nil {
		return nil, nil, err
	}
	if len(ops) > 0 {
		if err := r.pollers.wait(ctx, ops[len(ops)-1].rev, 30*time.Second); err != nil {
			return nil, nil, fmt.Errorf("churn: %w", err)
		}
	}
	r.sz.ChurnOps = len(ops)
	return ops, c1, nil
}

// propagation summarises, over every churn change and daemon, the time
// from sending the change until the daemon's table reflected it.
func (r *sizeRun) propagation(ops []op) {
	sz := r.sz
	var all []time.Duration
	byKind := map[string][]time.Duration{}
	for _, op := range ops {
		for i := range r.nodes {
			t, ok := r.pollers.firstAt(i, op.rev)
			if !ok {
				sz.Unseen++
				continue
			}
			d := max(t.Sub(op.t0), 0)
			all = append(all, d)
			byKind[op.kind] = append(byKind[op.kind], d)
		}
	}
	sz.Propagation = summarize(all)
	sz.ByKind = map[string]Latency{}
	for k, d := range byKind {
		sz.ByKind[k] = summarize(d)
	}
}

// daemonCosts fills in each daemon's memory, CPU, etcd requests and table
// updates from the counters at the start (q0) and end (q1) of the quiet
// phase and the end of churn (c1).
func (r *sizeRun) daemonCosts(q0, q1, c1 []point) {
	for i := range r.nodes {
		d := &r.sz.Daemons[i]
		d.RSS = c1[i].rss
		d.CPUQuiet = (q1[i].cpu - q0[i].cpu) / q1[i].at.Sub(q0[i].at).Seconds()
		d.CPUChurn = (c1[i].cpu - q1[i].cpu) / c1[i].at.Sub(q1[i].at).Seconds()
		d.EtcdQuiet = float64(q1[i].requests-q0[i].requests) / q1[i].at.Sub(q0[i].at).Seconds()
		d.EtcdChurn = float64(c1[i].requests-q1[i].requests) / c1[i].at.Sub(q1[i].at).Seconds()
		d.TableUpdates = c1[i].table.Updates - q1[i].table.Updates
		if d.TableUpdates > 0 {
			d.UpdateMean = secs((c1[i].table.UpdateSeconds - q1[i].table.UpdateSeconds) / float64(d.TableUpdates))
		}
		d.UpdateMax = secs(c1[i].table.MaxUpdateSeconds)
	}
}

// stopPing stops the ping that ran through bulk load and churn and records
// its result.
func (r *sizeRun) stopPing(ping *pinger) error {
	pr, err := ping.stop()
	if err != nil {
		return err
	}
	sz := r.sz
	sz.PingSent, sz.PingReceived, sz.PingMax = pr.Sent, pr.Received, pr.Max
	r.o.Progress("%d: %d changes, propagation p50 %v p99 %v; ping %d/%d max %v", r.n, sz.ChurnOps,
		sz.Propagation.P50.Round(time.Millisecond), sz.Propagation.P99.Round(time.Millisecond), pr.Received, pr.Sent, pr.Max)
	return nil
}

// startup measures start-up with every lease present: it restarts the last
// daemon and counts the etcd requests it made until ready.
func (r *sizeRun) startup(ctx context.Context) error {
	sz := r.sz
	last := r.nodes - 1
	var err error
	if sz.Startup, err = restart(ctx, r.l, last); err != nil {
		return err
	}
	st, err := readStatus(ctx, r.l, last)
	if err != nil {
		return err
	}
	for _, c := range st.Etcd.Requests {
		sz.StartupRequests += c
	}
	r.o.Progress("%d: n%d restarted and ready in %v after %d etcd requests", r.n, last, sz.Startup.Round(time.Millisecond), sz.StartupRequests)
	return nil
}

func secs(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }

func sleep(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

// churn makes changes at rate per second for d: 40% renewals, 30% joins,
// 30% leaves, so the cluster's size holds steady.
func churn(ctx context.Context, sm *sims, rate float64, d time.Duration) ([]op, error) {
	interval := time.Duration(float64(time.Second) / rate)
	var ops []op
	start := time.Now()
	for i := 0; time.Since(start) < d; i++ {
		next := start.Add(time.Duration(i) * interval)
		if err := sleep(ctx, time.Until(next)); err != nil {
			return ops, err
		}
		var (
			o   op
			err error
		)
		switch i % 10 {
		case 0, 3, 6, 8:
			o, err = sm.renew(ctx)
		case 1, 4, 7:
			o, err = sm.join(ctx)
		default:
			o, err = sm.leave(ctx)
		}
		if err != nil {
			return ops, err
		}
		ops = append(ops, o)
	}
	return ops, nil
}

// readStatus reads a daemon's /status without the per-peer list, which
// at thousands of leases is most of the document.
func readStatus(ctx context.Context, l *lab.Lab, i int) (*status.Status, error) {
	var s status.Status
	if err := l.GetJSON(ctx, i, "/status?peers=0", &s); err != nil {
		return nil, err
	}
	return &s, nil
}

// pollers record, per daemon, when its table revision changed.
type pollers struct {
	paused  atomic.Bool
	mu      sync.Mutex
	samples [][]sample
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	once    sync.Once
}

var errPaused = errors.New("paused")

type sample struct {
	at  time.Time
	rev int64
}

func startPollers(l *lab.Lab, every time.Duration) *pollers {
	ctx, cancel := context.WithCancel(context.Background())
	p := &pollers{samples: make([][]sample, len(l.Nodes())), cancel: cancel}
	for i := range l.Nodes() {
		p.wg.Go(func() {
			var last int64 = -1
			t := time.NewTicker(every)
			defer t.Stop()
			for {
				var s *status.Status
				err := errPaused
				if !p.paused.Load() {
					s, err = readStatus(ctx, l, i)
				}
				if err == nil && s.PeerTable.Revision != last {
					last = s.PeerTable.Revision
					p.mu.Lock()
					p.samples[i] = append(p.samples[i], sample{time.Now(), last})
					p.mu.Unlock()
				}
				select {
				case <-ctx.Done():
					return
				case <-t.C:
				}
			}
		})
	}
	return p
}

func (p *pollers) stop() {
	p.once.Do(func() {
		p.cancel()
		p.wg.Wait()
	})
}

// wait waits until every daemon was seen at revision rev or later.
func (p *pollers) wait(ctx context.Context, rev int64, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for i := range p.samples {
		for {
			if _, ok := p.firstAt(i, rev); ok {
				break
			}
			if time.Now().After(deadline) {
				p.mu.Lock()
				var got int64 = -1
				if s := p.samples[i]; len(s) > 0 {
					got = s[len(s)-1].rev
				}
				p.mu.Unlock()
				return fmt.Errorf("n%d's table at revision %d, not %d, after %v", i, got, rev, timeout)
			}
			if err := sleep(ctx, time.Millisecond); err != nil {
				return err
			}
		}
	}
	return nil
}

// firstAt is when daemon i was first seen at revision rev or later.
func (p *pollers) firstAt(i int, rev int64) (time.Time, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return firstAt(p.samples[i], rev)
}

func firstAt(s []sample, rev int64) (time.Time, bool) {
	j, _ := slices.BinarySearchFunc(s, rev, func(x sample, r int64) int {
		switch {
		case x.rev < r:
			return -1
		case x.rev > r:
			return 1
		}
		return 0
	})
	if j == len(s) {
		return time.Time{}, false
	}
	return s[j].at, true
}

// point is a daemon's counters at one moment.
type point struct {
	at       time.Time
	cpu      float64 // seconds of CPU used so far
	rss      int64
	requests uint64
	table    struct {
		Updates          uint64
		UpdateSeconds    float64
		MaxUpdateSeconds float64
	}
}

func snapshot(ctx context.Context, l *lab.Lab) ([]point, error) {
	out := make([]point, len(l.Nodes()))
	for i := range out {
		pid := l.PID(i)
		if pid == 0 {
			return nil, fmt.Errorf("n%d: %w", i, lab.ErrNotRunning)
		}
		st, err := readStatus(ctx, l, i)
		if err != nil {
			return nil, err
		}
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if err != nil {
			return nil, err
		}
		p := &out[i]
		p.at = time.Now()
		if p.cpu, err = suite.ParsePIDStat(b); err != nil {
			return nil, err
		}
		if p.rss, err = l.RSS(i); err != nil {
			return nil, err
		}
		for _, n := range st.Etcd.Requests {
			p.requests += n
		}
		p.table.Updates, p.table.UpdateSeconds, p.table.MaxUpdateSeconds =
			st.PeerTable.Updates, st.PeerTable.UpdateSeconds, st.PeerTable.MaxUpdateSeconds
	}
	return out, nil
}

// pinger runs ping(8) at 100 echoes a second from n0's pod to n1's.
type pinger struct{ p *lab.Proc }

func startPing(l *lab.Lab) (*pinger, error) {
	src, dst := l.Pod(0), l.Pod(1)
	if !src.IsValid() || !dst.IsValid() {
		return nil, errors.New("scale: nodes have no pod addresses (WaitReady first)")
	}
	p, err := l.Spawn(0, "scale-ping", []string{"ping", "-n", "-i", "0.01", "-W", "1", "-I", src.Addr().String(), dst.Addr().String()}, nil)
	if err != nil {
		return nil, err
	}
	return &pinger{p: p}, nil
}

func (p *pinger) stop() (lab.PingResult, error) {
	if p.p.Exited() {
		return lab.ParsePing(p.p.Output())
	}
	if err := p.p.Interrupt(); err != nil {
		return lab.PingResult{}, err
	}
	if err := p.p.Wait(5 * time.Second); err != nil {
		_ = p.p.Stop(time.Second)
		return lab.PingResult{}, err
	}
	return lab.ParsePing(p.p.Output())
}

// restart stops daemon i and starts it again, returning the time from its
// start to /readyz answering 200.
func restart(ctx context.Context, l *lab.Lab, i int) (time.Duration, error) {
	if _, err := l.StopWeft(i); err != nil {
		return 0, err
	}
	start := time.Now()
	if err := l.StartWeft(i); err != nil {
		return 0, err
	}
	for !l.Ready(i) {
		if time.Since(start) > time.Minute {
			return 0, fmt.Errorf("n%d not ready a minute after its restart: %s", i, l.Log(i))
		}
		if l.PID(i) == 0 {
			return 0, fmt.Errorf("n%d exited during start-up: %s", i, l.Log(i))
		}
		if err := sleep(ctx, 5*time.Millisecond); err != nil {
			return 0, err
		}
	}
	took := time.Since(start)
	// WaitReady puts the pod address back for the next size's pings.
	return took, l.WaitReady(i, 30*time.Second)
}
