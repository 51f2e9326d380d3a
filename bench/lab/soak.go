package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Long-running measurements for fault tests and the soak: a TCP stream
// checked byte by byte, a daemon's RSS, a namespace's SNMP counters and a
// device's kernel counters, and the soak itself.

// Stream is a TCP stream between two nodes' pod addresses that runs until
// Stop. The receiver checks every byte against the sender's deterministic
// content as it arrives, so a lost, duplicated or corrupted segment is an
// error at its offset, not a hash mismatch at the end.
type Stream struct {
	From, To netip.AddrPort

	conn, peer *net.TCPConn
	ln         *net.TCPListener
	cl         closers
	stopCtx    func() bool

	start    time.Time
	stop     chan struct{}
	stopOnce sync.Once
	sendDone chan struct{}
	recvDone chan struct{}
	sent     atomic.Int64
	received atomic.Int64 // verified bytes
	sendErr  error        // set before sendDone closes
	recvErr  error        // set before recvDone closes
}

// StreamResult is what a stopped Stream moved.
type StreamResult struct {
	Sent, Received int64
	Duration       time.Duration
}

// Mbps is the verified goodput in Mb/s.
func (r StreamResult) Mbps() float64 {
	if r.Duration <= 0 {
		return 0
	}
	return float64(r.Received) * 8 / r.Duration.Seconds() / 1e6
}

// StartStream opens one TCP connection from node from's pod address to a
// listener on node to's pod address (both set by WaitReady) and keeps
// writing to it, at rate bytes/s or as fast as it goes when rate is 0,
// until Stop or ctx ends.
func (l *Lab) StartStream(ctx context.Context, from, to int, rate int64) (*Stream, error) {
	nf, err := l.node(from)
	if err != nil {
		return nil, err
	}
	nt, err := l.node(to)
	if err != nil {
		return nil, err
	}
	src, dst := l.Pod(from), l.Pod(to)
	if !src.IsValid() || !dst.IsValid() {
		return nil, fmt.Errorf("lab: stream %s -> %s: no pod address yet (WaitReady)", nf.Name, nt.Name)
	}
	what := fmt.Sprintf("stream %s %s -> %s %s", nf.Name, src.Addr(), nt.Name, dst.Addr())
	s := &Stream{stop: make(chan struct{}), sendDone: make(chan struct{}), recvDone: make(chan struct{})}
	ok := false
	defer func() {
		if !ok {
			s.cl.closeAll()
		}
	}()
	if err := inNetns(nt.ns, func() (err error) {
		s.ln, err = net.ListenTCP("tcp4", net.TCPAddrFromAddrPort(netip.AddrPortFrom(dst.Addr(), 0)))
		return err
	}); err != nil {
		return nil, fmt.Errorf("lab: %s: listen in %s: %w", what, nt.NS, err)
	}
	s.cl.add(s.ln)
	s.To = s.ln.Addr().(*net.TCPAddr).AddrPort()
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := inNetns(nf.ns, func() error {
		d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(src.Addr(), 0))}
		c, err := d.DialContext(dctx, "tcp4", s.To.String())
		if err != nil {
			return err
		}
		s.conn = c.(*net.TCPConn)
		return nil
	}); err != nil {
		return nil, fmt.Errorf("lab: %s: connect from %s: %w", what, nf.NS, err)
	}
	s.cl.add(s.conn)
	s.From = s.conn.LocalAddr().(*net.TCPAddr).AddrPort()
	_ = s.ln.SetDeadline(time.Now().Add(10 * time.Second))
	if s.peer, err = s.ln.AcceptTCP(); err != nil {
		return nil, fmt.Errorf("lab: %s: accept: %w", what, err)
	}
	s.cl.add(s.peer)
	if got := s.peer.RemoteAddr().(*net.TCPAddr).AddrPort(); got != s.From {
		return nil, fmt.Errorf("lab: %s: accepted %s, not our %s", what, got, s.From)
	}
	s.stopCtx = context.AfterFunc(ctx, s.cl.closeAll)
	ok = true

	seed := uint64(time.Now().UnixNano())
	s.start = time.Now()
	go s.send(seed, rate)
	go s.receive(seed, what)
	return s, nil
}

func (s *Stream) send(seed uint64, rate int64) {
	defer close(s.sendDone)
	st := newStream(seed)
	buf := make([]byte, 64<<10)
	for {
		select {
		case <-s.stop:
			s.sendErr = s.conn.CloseWrite()
			return
		default:
		}
		st.fill(buf)
		if _, err := s.conn.Write(buf); err != nil {
			s.sendErr = fmt.Errorf("write after %d bytes: %w", s.sent.Load(), err)
			s.conn.Close() // unblock the receiver
			return
		}
		sent := s.sent.Add(int64(len(buf)))
		if rate <= 0 {
			continue
		}
		due := s.start.Add(time.Duration(float64(sent) / float64(rate) * float64(time.Second)))
		if d := time.Until(due); d > 0 {
			select {
			case <-s.stop:
			case <-time.After(d):
			}
		}
	}
}

func (s *Stream) receive(seed uint64, what string) {
	defer close(s.recvDone)
	want := newStream(seed)
	buf := make([]byte, 256<<10)
	exp := make([]byte, len(buf))
	for {
		n, err := s.peer.Read(buf)
		if n > 0 {
			want.fill(exp[:n])
			if !bytes.Equal(buf[:n], exp[:n]) {
				i := 0
				for buf[i] == exp[i] {
					i++
				}
				s.recvErr = fmt.Errorf("%s: %w at byte %d", what, ErrMismatch, s.received.Load()+int64(i))
				s.peer.Close()
				return
			}
			s.received.Add(int64(n))
		}
		if errors.Is(err, io.EOF) {
			return
		}
		if err != nil {
			s.recvErr = fmt.Errorf("%s: read after %d bytes: %w", what, s.received.Load(), err)
			return
		}
	}
}

// Received is the number of bytes that arrived and matched so far.
func (s *Stream) Received() int64 { return s.received.Load() }

// Stop ends the stream: the sender stops and closes its side, the
// receiver reads to the end. It waits up to timeout for the last bytes.
// The error reports a broken connection, a mismatch, or bytes sent but
// never received.
func (s *Stream) Stop(timeout time.Duration) (StreamResult, error) {
	s.stopOnce.Do(func() { close(s.stop) })
	defer s.stopCtx()
	defer s.cl.closeAll()
	deadline := time.Now().Add(timeout)
	wait := func(done <-chan struct{}) bool {
		t := time.NewTimer(time.Until(deadline))
		defer t.Stop()
		select {
		case <-done:
			return true
		case <-t.C:
			s.cl.closeAll() // unblocks whoever waits on the socket
			<-done
			return false
		}
	}
	var errs []error
	if !wait(s.sendDone) {
		errs = append(errs, fmt.Errorf("sender still blocked after %v", timeout))
	}
	if !wait(s.recvDone) {
		errs = append(errs, fmt.Errorf("receiver got no end of stream within %v", timeout))
	}
	r := StreamResult{Sent: s.sent.Load(), Received: s.received.Load(), Duration: time.Since(s.start)}
	errs = append(errs, s.sendErr, s.recvErr)
	if err := errors.Join(errs...); err != nil {
		return r, fmt.Errorf("lab: stream %s -> %s: %w", s.From, s.To, err)
	}
	if r.Sent != r.Received {
		return r, fmt.Errorf("lab: stream %s -> %s: %d bytes sent, %d received", s.From, s.To, r.Sent, r.Received)
	}
	return r, nil
}

// RSS is the resident set size in bytes of node i's daemon (VmRSS).
func (l *Lab) RSS(i int) (int64, error) {
	pid := l.PID(i)
	if pid == 0 {
		return 0, fmt.Errorf("lab: rss of n%d: %w", i, ErrNotRunning)
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, fmt.Errorf("lab: rss of n%d: %w", i, err)
	}
	return ParseVmRSS(string(b))
}

// ParseVmRSS reads VmRSS from /proc/PID/status content, in bytes.
func ParseVmRSS(status string) (int64, error) {
	for line := range strings.Lines(status) {
		rest, ok := strings.CutPrefix(line, "VmRSS:")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) != 2 || f[1] != "kB" {
			return 0, fmt.Errorf("bad VmRSS line %q", strings.TrimSpace(line))
		}
		kb, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil || kb < 0 {
			return 0, fmt.Errorf("bad VmRSS line %q", strings.TrimSpace(line))
		}
		return kb << 10, nil
	}
	return 0, errors.New("no VmRSS line (kernel thread or zombie?)")
}

// LinkStat reads /sys/class/net/<dev>/statistics/<stat> inside node i's
// namespace (ip netns exec mounts that namespace's sysfs).
func (l *Lab) LinkStat(i int, dev, stat string) (uint64, error) {
	n, err := l.node(i)
	if err != nil {
		return 0, err
	}
	path := "/sys/class/net/" + dev + "/statistics/" + stat
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	out, err := l.Command(ctx, i, "cat", path).CombinedOutput()
	if err != nil {
		return 0, fmt.Errorf("lab: read %s in %s: %w: %s", path, n.NS, err, trimOut(out))
	}
	v, err := strconv.ParseUint(strings.TrimSpace(string(out)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("lab: read %s in %s: %w", path, n.NS, err)
	}
	return v, nil
}

// SoakOptions configure Soak; zero fields take the defaults.
type SoakOptions struct {
	Duration time.Duration // default 10 min
	Sample   time.Duration // default 10 s
	// Churn is how often the last node is stopped and started again
	// (default 1 min). Turns alternate: SIGTERM and restart (the lease
	// stays), then deleting its lease and subnet file (a new lease).
	Churn     time.Duration
	ChurnDown time.Duration // how long it stays down (default 5 s)
	// Rate of the stream from node 0 to node 1 in bytes/s; 0 is as fast
	// as it goes.
	Rate int64
	// RSSLimit is the largest RSS growth of a daemon that ran the whole
	// soak (default 16 MiB).
	RSSLimit int64
}

func (o *SoakOptions) defaults() {
	if o.Duration <= 0 {
		o.Duration = 10 * time.Minute
	}
	if o.Sample <= 0 {
		o.Sample = 10 * time.Second
	}
	if o.Churn <= 0 {
		o.Churn = time.Minute
	}
	if o.ChurnDown <= 0 {
		o.ChurnDown = 5 * time.Second
	}
	if o.RSSLimit <= 0 {
		o.RSSLimit = 16 << 20
	}
}

// SoakSample is one sampling interval; counters are deltas over it.
type SoakSample struct {
	At          time.Duration // since the soak started
	StreamBytes int64         // verified stream bytes
	Interval    time.Duration
	// Retrans and OutSegs are Tcp.RetransSegs and Tcp.OutSegs in node
	// 0's namespace (the stream's sender).
	Retrans, OutSegs int64
	// UDPRcvbufErrors is Udp.RcvbufErrors summed over the nodes: datagrams
	// the kernel dropped because a socket's buffer was full.
	UDPRcvbufErrors int64
	RSS             []int64             // per node, bytes; 0 when down
	Drops           []map[string]uint64 // per node, by reason
	// Pings between nodes that are never churned, and pings to or from
	// the churned node.
	PingSent, PingLost           int
	ChurnPingSent, ChurnPingLost int
	Events                       []string
}

// Mbps is the stream's goodput over the sample.
func (s SoakSample) Mbps() float64 {
	if s.Interval <= 0 {
		return 0
	}
	return float64(s.StreamBytes) * 8 / s.Interval.Seconds() / 1e6
}

// SoakReport is the whole soak.
type SoakReport struct {
	Options   SoakOptions
	Nodes     int
	Started   time.Time
	Samples   []SoakSample
	Stream    StreamResult
	StreamErr error
	// ChurnErrs are churn steps that failed (a node that did not come back).
	ChurnErrs []string
	// Exits are daemons other than the churned one that died.
	Exits []string
	// RSSFirst and RSSLast are each node's RSS at the first and last
	// sample; RSSGrowthChecked marks the nodes never restarted.
	RSSFirst, RSSLast []int64
	RSSGrowthChecked  []bool
}

// DropTotals sums every sample's drops per reason over all nodes.
func (r *SoakReport) DropTotals() map[string]uint64 {
	t := map[string]uint64{}
	for _, s := range r.Samples {
		for _, m := range s.Drops {
			for k, v := range m {
				t[k] += v
			}
		}
	}
	return t
}

// ExpectedDrop reports whether a drop reason is expected during lease
// churn: packets for a subnet whose lease is gone, or not yet learned.
func ExpectedDrop(reason string) bool { return reason == "no_route" }

// Verdict lists every failed criterion; empty means pass.
func (r *SoakReport) Verdict() []string {
	var fails []string
	if r.StreamErr != nil {
		fails = append(fails, "stream: "+r.StreamErr.Error())
	} else if r.Stream.Received == 0 {
		fails = append(fails, "stream: no bytes arrived")
	}
	var sent, lost int
	for _, s := range r.Samples {
		sent += s.PingSent
		lost += s.PingLost
	}
	// One lost echo in a hundred between nodes that were never touched is
	// scheduling noise on a loaded host; more is a fault.
	if sent == 0 || lost*100 > sent {
		fails = append(fails, fmt.Sprintf("pings between unchurned nodes: %d of %d lost", lost, sent))
	}
	for k, v := range r.DropTotals() {
		if v > 0 && !ExpectedDrop(k) {
			fails = append(fails, fmt.Sprintf("unexpected drops: %s=%d", k, v))
		}
	}
	for i := range r.RSSFirst {
		if i < len(r.RSSGrowthChecked) && r.RSSGrowthChecked[i] && r.RSSLast[i]-r.RSSFirst[i] >= r.Options.RSSLimit {
			fails = append(fails, fmt.Sprintf("n%d RSS grew %d KiB (limit %d KiB)", i,
				(r.RSSLast[i]-r.RSSFirst[i])>>10, r.Options.RSSLimit>>10))
		}
	}
	fails = append(fails, r.ChurnErrs...)
	fails = append(fails, r.Exits...)
	slices.Sort(fails)
	return fails
}

// Soak runs the soak on a lab whose nodes are all ready (at least 3): a
// stream from node 0 to node 1, pings between every pair every second,
// the last node churned, a sample every Sample handed to onSample (may be
// nil) as it is taken. It returns when Duration is over or ctx ends.
func (l *Lab) Soak(ctx context.Context, o SoakOptions, onSample func(SoakSample)) (*SoakReport, error) {
	o.defaults()
	nn := len(l.nodes)
	if nn < 3 {
		return nil, fmt.Errorf("lab: soak needs at least 3 nodes, have %d", nn)
	}
	r := &soakRun{l: l, o: o, nn: nn, churned: nn - 1,
		rep: &SoakReport{Options: o, Nodes: nn, Started: time.Now()}}
	pids := make([]int, nn)
	for i := range nn {
		if pids[i] = l.PID(i); pids[i] == 0 || !l.Pod(i).IsValid() {
			return nil, fmt.Errorf("lab: soak: n%d is not running and ready", i)
		}
	}

	// The stream outlives the soak's deadline: it is stopped, and
	// checked, after the last sample.
	stream, err := l.StartStream(ctx, 0, 1, o.Rate)
	if err != nil {
		return nil, err
	}
	r.stream = stream
	ctx, cancel := context.WithTimeout(ctx, o.Duration)
	defer cancel()

	var wg sync.WaitGroup
	r.startPings(ctx, &wg)
	wg.Go(func() { r.churnLoop(ctx) })
	r.sampleLoop(ctx, onSample)
	wg.Wait()
	r.finish(pids)
	return r.rep, nil
}

// soakRun is the state of one Soak: the pingers and the churner count and
// log into it, the sampler turns that and the nodes' counters into
// samples, and finish fills in the report once all of them have stopped.
type soakRun struct {
	l           *Lab
	o           SoakOptions
	nn, churned int
	rep         *SoakReport
	stream      *Stream

	// mu guards the counters below, events and churnErrs: the pingers
	// and the churner write them, the sampler takes them.
	mu                                       sync.Mutex
	pingSent, pingLost, churnSent, churnLost int
	events, churnErrs                        []string

	// The previous sample's readings, which the next one is a delta of.
	prevDrops []map[string]uint64
	prevPID   []int
	prevSNMP  []SNMP
	prevBytes int64
	prevAt    time.Time
}

// event records a timestamped line for the next sample's Events.
func (r *soakRun) event(format string, args ...any) {
	r.mu.Lock()
	r.events = append(r.events, fmt.Sprintf("%s "+format, append([]any{time.Since(r.rep.Started).Round(time.Second)}, args...)...))
	r.mu.Unlock()
}

// startPings starts one pinger per ordered pair of nodes, each in wg.
func (r *soakRun) startPings(ctx context.Context, wg *sync.WaitGroup) {
	for from := range r.nn {
		for to := range r.nn {
			if from == to {
				continue
			}
			wg.Go(func() { r.pingLoop(ctx, from, to) })
		}
	}
}

// pingLoop pings node to from node from once a second until ctx ends,
// counting pairs that involve the churned node apart from the others.
func (r *soakRun) pingLoop(ctx context.Context, from, to int) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		res, err := r.l.Ping(from, r.l.Pod(to).Addr(), 1)
		if ctx.Err() != nil {
			return // cut short by the end, not lost
		}
		ok := err == nil && res.OK()
		r.mu.Lock()
		if from == r.churned || to == r.churned {
			r.churnSent++
			if !ok {
				r.churnLost++
			}
		} else {
			r.pingSent++
			if !ok {
				r.pingLost++
			}
		}
		r.mu.Unlock()
	}
}

// churnLoop churns the last node every Churn, alternating a restart that
// keeps the lease with one that loses it, until ctx ends or too little
// time is left to see the node come back.
func (r *soakRun) churnLoop(ctx context.Context) {
	tick := time.NewTicker(r.o.Churn)
	defer tick.Stop()
	for turn := 0; ; turn++ {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) < r.o.ChurnDown+20*time.Second {
			return // no time left to see it come back
		}
		if err := r.l.churn(ctx, r.churned, turn%2 == 1, r.o.ChurnDown, r.event); err != nil && ctx.Err() == nil {
			r.mu.Lock()
			r.churnErrs = append(r.churnErrs, err.Error())
			r.mu.Unlock()
		}
	}
}

// sampleLoop takes a baseline, then a sample every Sample and a last one
// when ctx ends, appending each to the report and handing it to onSample.
func (r *soakRun) sampleLoop(ctx context.Context, onSample func(SoakSample)) {
	r.prevDrops = make([]map[string]uint64, r.nn)
	r.prevPID = make([]int, r.nn)
	r.prevAt = time.Now()
	r.sample() // baseline: counters so far are the warm-up's
	tick := time.NewTicker(r.o.Sample)
	for done := false; !done; {
		select {
		case <-ctx.Done():
			done = true
		case <-tick.C:
		}
		s := r.sample()
		r.rep.Samples = append(r.rep.Samples, s)
		if onSample != nil {
			onSample(s)
		}
	}
	tick.Stop()
}

// sample reads every counter and returns its change since the previous
// sample; the ping counts and events are taken and reset.
func (r *soakRun) sample() SoakSample {
	now := time.Now()
	s := SoakSample{At: now.Sub(r.rep.Started), Interval: now.Sub(r.prevAt),
		RSS: make([]int64, r.nn), Drops: make([]map[string]uint64, r.nn)}
	b := r.stream.Received()
	s.StreamBytes, r.prevBytes, r.prevAt = b-r.prevBytes, b, now
	r.sampleSNMP(&s)
	for i := range r.nn {
		r.sampleNode(&s, i)
	}
	r.mu.Lock()
	s.PingSent, s.PingLost, s.ChurnPingSent, s.ChurnPingLost = r.pingSent, r.pingLost, r.churnSent, r.churnLost
	r.pingSent, r.pingLost, r.churnSent, r.churnLost = 0, 0, 0, 0
	s.Events, r.events = r.events, nil
	r.mu.Unlock()
	return s
}

// sampleSNMP fills s's TCP and UDP deltas from every namespace's SNMP
// counters; the first sample, with nothing to compare to, leaves them 0.
func (r *soakRun) sampleSNMP(s *SoakSample) {
	snmp := make([]SNMP, r.nn)
	for i := range r.nn {
		snmp[i], _ = r.l.SNMP(i) // nil on error: deltas read as 0
	}
	if r.prevSNMP != nil {
		d := func(i int, proto, field string) int64 {
			return snmp[i].Get(proto, field) - r.prevSNMP[i].Get(proto, field)
		}
		s.Retrans, s.OutSegs = d(0, "Tcp", "RetransSegs"), d(0, "Tcp", "OutSegs")
		for i := range r.nn {
			s.UDPRcvbufErrors += d(i, "Udp", "RcvbufErrors")
		}
	}
	r.prevSNMP = snmp
}

// sampleNode fills node i's RSS and drops by reason into s.
func (r *soakRun) sampleNode(s *SoakSample, i int) {
	s.RSS[i], _ = r.l.RSS(i)
	pid := r.l.PID(i)
	st, err := r.l.Status(i)
	if err != nil {
		s.Drops[i] = map[string]uint64{}
		return
	}
	// A restarted daemon starts its counters from zero.
	restarted := pid != r.prevPID[i]
	s.Drops[i] = map[string]uint64{}
	for k, v := range st.Counters.Drops {
		if p := r.prevDrops[i][k]; !restarted && v >= p {
			v -= p
		}
		if v > 0 {
			s.Drops[i][k] = v
		}
	}
	r.prevDrops[i], r.prevPID[i] = st.Counters.Drops, pid
}

// finish stops and checks the stream and fills in the report's verdict
// inputs: churn errors, daemons that died (pids are those at the start)
// and RSS growth. Pingers and churner must have stopped.
func (r *soakRun) finish(pids []int) {
	rep := r.rep
	rep.Stream, rep.StreamErr = r.stream.Stop(30 * time.Second)
	// The stream may deliver its last bytes after the final sample.
	if len(rep.Samples) > 0 {
		rep.Samples[len(rep.Samples)-1].StreamBytes += rep.Stream.Received - r.prevBytes
	}
	rep.ChurnErrs = r.churnErrs
	for i := range r.nn {
		if i == r.churned {
			continue
		}
		if pid := r.l.PID(i); pid != pids[i] {
			rep.Exits = append(rep.Exits, fmt.Sprintf("n%d daemon pid %d is gone (now %d); log tail:\n%s",
				i, pids[i], pid, tail(r.l.Log(i), 10)))
		}
	}
	rep.RSSFirst = make([]int64, r.nn)
	rep.RSSLast = make([]int64, r.nn)
	rep.RSSGrowthChecked = make([]bool, r.nn)
	if len(rep.Samples) > 0 {
		first, last := rep.Samples[0], rep.Samples[len(rep.Samples)-1]
		for i := range r.nn {
			rep.RSSFirst[i], rep.RSSLast[i] = first.RSS[i], last.RSS[i]
			rep.RSSGrowthChecked[i] = i != r.churned && first.RSS[i] > 0 && last.RSS[i] > 0
		}
	}
}

// churn stops node i and starts it again: newLease deletes its lease and
// subnet file first, so it comes back with a fresh lease.
func (l *Lab) churn(ctx context.Context, i int, newLease bool, down time.Duration, event func(string, ...any)) error {
	n := l.nodes[i]
	if newLease {
		pod := l.Pod(i).Masked()
		if err := l.DeleteLease(ctx, pod); err != nil {
			return fmt.Errorf("churn %s: %w", n.Name, err)
		}
		code, err := l.WaitExit(i, 15*time.Second)
		if err != nil {
			return fmt.Errorf("churn %s: after its lease %v was deleted: %w", n.Name, pod, err)
		}
		if code == 0 {
			return fmt.Errorf("churn %s: exited 0 after its lease %v was deleted; want non-zero", n.Name, pod)
		}
		if err := os.Remove(n.SubnetFile); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("churn %s: %w", n.Name, err)
		}
		event("%s: lease %v deleted, daemon exited %d", n.Name, pod, code)
	} else {
		code, err := l.StopWeft(i)
		if err != nil {
			return fmt.Errorf("churn %s: SIGTERM: %w", n.Name, err)
		}
		if code != 0 {
			return fmt.Errorf("churn %s: SIGTERM: exit %d; want 0", n.Name, code)
		}
		event("%s: stopped (SIGTERM, exit 0)", n.Name)
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(down):
	}
	start := time.Now()
	if err := l.StartWeft(i); err != nil {
		return fmt.Errorf("churn %s: %w", n.Name, err)
	}
	if err := l.WaitReady(i, 30*time.Second); err != nil {
		return fmt.Errorf("churn %s: %w", n.Name, err)
	}
	event("%s: ready again in %v with %v", n.Name, time.Since(start).Round(time.Millisecond), l.Pod(i).Masked())
	return nil
}
