// Package suite runs weft's benchmark: weft (its defaults, the kernel fast
// path included where the kernel allows), weft -fast-path=off, kernel VXLAN,
// host-gw and bare veth (plus any daemon the user adds) between the same two
// lab namespaces, interleaved round by round, in each underlay profile (the
// default veths, and veths that behave like a NIC), and writes a Markdown
// report, an SVG chart and a JSON file. It builds on bench/lab, the harness
// the demo and the end-to-end tests use.
package suite

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/weft-net/weft/bench/lab"
)

// Address plan, all in 198.18.0.0/15. The lab's underlay is 198.18.K.0/24.
var (
	// WeftNetwork is weft's flannel Network: routed through udp0.
	WeftNetwork = netip.MustParsePrefix("198.19.0.0/17")
	// ExtraNetworks: extra path k gets 198.19.(128+16k).0/20.
	extraBase = netip.MustParsePrefix("198.19.128.0/20")
	// lab.DefaultVXLANSubnet (198.19.200.0/24), lab.DefaultHostGWBase
	// (198.19.210+i.0/24) and UserspaceNetwork (198.19.224.0/20, weft
	// -fast-path=off) complete it.
)

// MaxExtraPaths is how many -path daemons fit the address plan.
const MaxExtraPaths = 4

// DefaultSeconds and DefaultRounds are a run's length unless configured:
// five paths in two underlay profiles are 60 tests a round, each taking
// its seconds plus about 3 s (iperf3's omitted second, the idle check,
// ping's longer run), so 3 rounds of 6 s take about 28 minutes.
const (
	DefaultSeconds = 6
	DefaultRounds  = 3
)

const (
	iperfPort      = 5201
	extraPortBase  = 8286 // the default Backend.Port of extra path k is 8286+k
	defaultOmit    = 1
	defaultIdlePct = 15
	pingInterval   = 10 * time.Millisecond
	minPings       = 200
)

// ErrNoIperf3 means iperf3 is not installed.
var ErrNoIperf3 = errors.New("iperf3 is not installed: apt-get install -y iperf3")

// ExtraPath is a user's daemon measured as one more path: Template is a
// command line started in each node's namespace, with placeholders
// substituted (see Placeholders).
type ExtraPath struct {
	Name     string
	Template string
	// NetworkConfig is written to the path's own etcd prefix (default: a
	// udp backend network in 198.19.128.0/17, see DefaultExtraConfig).
	NetworkConfig string
}

// Placeholders documents what an ExtraPath template may use.
const Placeholders = `{etcd} etcd endpoint, {prefix} the path's etcd prefix, {subnet_file} the path's subnet.env,
{ip} the node's underlay address, {iface} the underlay device (eth0), {node} the node index,
{dir} a directory of the path's own on the node, {port} the path's Backend.Port`

// Config configures Run.
type Config struct {
	WeftBin  string
	WeftArgs []string // extra weft flags on both nodes
	Seconds  int      // per iperf3 test and request/response (default DefaultSeconds)
	Rounds   int      // default DefaultRounds
	MTU      int      // underlay veth MTU (default 1500)
	Omit     int      // iperf3 -O seconds (0: 1; negative: none)
	Pings    int      // default max(200, 100 × Seconds)
	IdlePct  float64  // "idle" means other CPU use below this % of all CPUs (default 15)
	IdleWait time.Duration
	// IdleSample is how long each idle check samples /proc/stat (0.5 s).
	IdleSample time.Duration
	Tests      []string // default AllTests
	// Profiles are the underlay profiles, each measured in a lab of its
	// own (default AllProfiles).
	Profiles []string
	Extra    []ExtraPath
	Command  string // the command line, for the report
	Logger   *slog.Logger
	Progress io.Writer // one line per test; nil: none
}

// defaults fills in the zero fields and checks the result.
func (c *Config) defaults() error {
	c.fillDefaults()
	if err := c.checkLimits(); err != nil {
		return err
	}
	return c.checkExtra()
}

// fillDefaults replaces each unset field by its default.
func (c *Config) fillDefaults() {
	if c.Seconds == 0 {
		c.Seconds = DefaultSeconds
	}
	if c.Rounds == 0 {
		c.Rounds = DefaultRounds
	}
	if c.MTU == 0 {
		c.MTU = 1500
	}
	switch {
	case c.Omit == 0:
		c.Omit = defaultOmit
	case c.Omit < 0:
		c.Omit = 0
	}
	if c.Pings == 0 {
		c.Pings = max(minPings, 100*c.Seconds)
	}
	if c.IdlePct == 0 {
		c.IdlePct = defaultIdlePct
	}
	if c.IdleWait == 0 {
		c.IdleWait = 5 * time.Second
	}
	if c.IdleSample == 0 {
		c.IdleSample = 500 * time.Millisecond
	}
	if len(c.Tests) == 0 {
		c.Tests = AllTests
	}
	if len(c.Profiles) == 0 {
		c.Profiles = AllProfiles
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Progress == nil {
		c.Progress = io.Discard
	}
}

// checkLimits checks the numeric settings, the weft binary and the test
// names.
func (c *Config) checkLimits() error {
	switch {
	case c.Seconds < 1 || c.Seconds > 3600:
		return fmt.Errorf("seconds %d: want 1..3600", c.Seconds)
	case c.Rounds < 1 || c.Rounds > 100:
		return fmt.Errorf("rounds %d: want 1..100", c.Rounds)
	case c.Omit < 0 || c.Omit > 60:
		return fmt.Errorf("omit %d: want 0..60", c.Omit)
	case c.Pings < 1:
		return fmt.Errorf("pings %d: want at least 1", c.Pings)
	case c.MTU < 1280 || c.MTU > 65535:
		return fmt.Errorf("mtu %d: want 1280..65535", c.MTU)
	case c.WeftBin == "":
		return errors.New("no weft binary")
	}
	for _, t := range c.Tests {
		if !contains(AllTests, t) {
			return fmt.Errorf("test %q: want one of %s", t, strings.Join(AllTests, ", "))
		}
	}
	for i, p := range c.Profiles {
		if !contains(AllProfiles, p) {
			return fmt.Errorf("underlay profile %q: want one of %s", p, strings.Join(AllProfiles, ", "))
		}
		if contains(c.Profiles[:i], p) {
			return fmt.Errorf("underlay profile %q given twice", p)
		}
	}
	return nil
}

// checkExtra checks the extra paths, in order, and gives each without a
// network config its default one.
func (c *Config) checkExtra() error {
	if len(c.Extra) > MaxExtraPaths {
		return fmt.Errorf("%d extra paths: at most %d fit the address plan", len(c.Extra), MaxExtraPaths)
	}
	seen := map[string]bool{"weft": true, UserspacePath: true, Baseline: true, "host-gw": true, "veth": true}
	for k := range c.Extra {
		e := &c.Extra[k]
		if !pathNameRe.MatchString(e.Name) {
			return fmt.Errorf("path name %q: want %s", e.Name, pathNameRe)
		}
		if seen[e.Name] {
			return fmt.Errorf("path name %q used twice (weft, %s, vxlan, host-gw and veth are built in)", e.Name, UserspacePath)
		}
		seen[e.Name] = true
		if _, err := SplitCommand(e.Template); err != nil {
			return fmt.Errorf("path %s: %w", e.Name, err)
		}
		if e.NetworkConfig == "" {
			e.NetworkConfig = DefaultExtraConfig(k)
		}
		if err := checkExtraNetwork(e.NetworkConfig, k); err != nil {
			return fmt.Errorf("path %s: %w", e.Name, err)
		}
	}
	return nil
}

var pathNameRe = regexp.MustCompile(`^[a-z][a-z0-9-]{0,15}$`)

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// ExtraNetwork is extra path k's default Network: 198.19.(128+16k).0/20.
func ExtraNetwork(k int) netip.Prefix {
	a := extraBase.Addr().As4()
	a[2] += byte(16 * k)
	return netip.PrefixFrom(netip.AddrFrom4(a), extraBase.Bits())
}

// DefaultExtraConfig is extra path k's default network config: flannel's
// udp backend on its own network and port, so it runs beside weft.
func DefaultExtraConfig(k int) string {
	return udpConfig(ExtraNetwork(k), extraPortBase+k)
}

// checkExtraNetwork makes sure an extra path's Network collides with no
// other path's addresses.
func checkExtraNetwork(config string, k int) error {
	var c struct{ Network string }
	if err := json.Unmarshal([]byte(config), &c); err != nil {
		return fmt.Errorf("network config: %w", err)
	}
	n, err := netip.ParsePrefix(c.Network)
	if err != nil || !n.Addr().Is4() {
		return fmt.Errorf("network config: Network %q is not an IPv4 prefix", c.Network)
	}
	taken := map[string]netip.Prefix{
		"weft": WeftNetwork, UserspacePath: UserspaceNetwork, "vxlan": lab.DefaultVXLANSubnet,
		"host-gw": netip.MustParsePrefix("198.19.210.0/23"),
	}
	for j := range MaxExtraPaths {
		if j != k {
			taken[fmt.Sprintf("extra path %d", j+1)] = ExtraNetwork(j)
		}
	}
	for name, p := range taken {
		if n.Overlaps(p) {
			return fmt.Errorf("network %s overlaps %s's %s (use %s)", n, name, p, ExtraNetwork(k))
		}
	}
	return nil
}

// ExpandTemplate substitutes placeholders in every word.
func ExpandTemplate(words []string, vars map[string]string) []string {
	pairs := make([]string, 0, 2*len(vars))
	for k, v := range vars {
		pairs = append(pairs, "{"+k+"}", v)
	}
	r := strings.NewReplacer(pairs...)
	out := make([]string, len(words))
	for i, w := range words {
		out[i] = r.Replace(w)
	}
	return out
}

// Preflight checks the tools the suite needs for the underlay profiles
// (nil: AllProfiles), each error saying how to fix it.
func Preflight(weftBin string, profiles []string) error {
	if os.Geteuid() != 0 {
		return errors.New("needs root for network namespaces: sudo make bench")
	}
	if _, err := exec.LookPath("iperf3"); err != nil {
		return ErrNoIperf3
	}
	if _, err := exec.LookPath("ping"); err != nil {
		return errors.New("ping is not installed: apt-get install -y iputils-ping")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return errors.New("ip is not installed: apt-get install -y iproute2")
	}
	if profiles == nil {
		profiles = AllProfiles
	}
	if _, err := exec.LookPath("ethtool"); err != nil && needsEthtool(profiles) {
		return ErrNoEthtool
	}
	if st, err := os.Stat(weftBin); err != nil || st.IsDir() || st.Mode()&0o111 == 0 {
		return fmt.Errorf("weft binary %q is not an executable file (make build)", weftBin)
	}
	return nil
}

// pathRun is a path plus what the runner needs to measure it.
type pathRun struct {
	Path
	devs [2]string    // the path's device on node 0 and node 1
	pids func() []int // tunnel daemon PIDs, nil for kernel paths
	// statusPort is where the path's weft daemons serve /status, whose
	// drop counters are read; 0: not weft.
	statusPort int
}

// runner is one underlay profile's lab and paths.
type runner struct {
	cfg   Config
	lab   *lab.Lab
	log   *slog.Logger
	name  string // the profile
	spec  profileSpec
	setup []string    // the commands that applied the profile
	stop  func() bool // ends the Ctrl-C hook
	paths []*pathRun
}

// Run sets up a lab per underlay profile, each with every path, runs
// cfg.Rounds rounds of every test on every path of every profile, and
// tears everything down. A failing test is recorded in its sample and the
// run goes on; a failing setup ends it.
func Run(ctx context.Context, cfg Config) (*Results, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	if err := Preflight(cfg.WeftBin, cfg.Profiles); err != nil {
		return nil, err
	}
	res := &Results{Schema: Schema, Started: time.Now().UTC(), Command: cfg.Command}
	res.Settings = Settings{
		Seconds: cfg.Seconds, Rounds: cfg.Rounds, Omit: cfg.Omit, Pings: cfg.Pings,
		PingInterval: pingInterval.String(), UnderlayMTU: cfg.MTU, IdleThreshold: cfg.IdlePct,
		Tests: cfg.Tests,
		Order: "per round, each test in turn on every path in the order listed, one underlay profile after the other " +
			"(round 1: tcp1 on A B C in profile 1, then A B C in profile 2, then tcp4 ...); every profile's lab is up throughout",
	}
	var runners []*runner
	defer func() {
		for _, r := range runners {
			r.close()
		}
	}()
	for _, name := range cfg.Profiles {
		r, err := startProfile(ctx, cfg, name)
		if err != nil {
			return nil, errors.Join(err, ctx.Err())
		}
		runners = append(runners, r)
		res.Profiles = append(res.Profiles, r.profile(ctx))
	}
	res.Paths = res.Profiles[0].Paths
	res.Machine = runners[0].machine(ctx)
	if err := runRounds(ctx, runners, res); err != nil {
		return nil, err
	}
	res.Finished = time.Now().UTC()
	res.Summary = SummarizeProfiles(res)
	res.Notes = notes(res)
	return res, nil
}

// startProfile builds underlay profile name's lab, applies the profile
// before anything else runs there, and sets up every path.
func startProfile(ctx context.Context, cfg Config, name string) (*runner, error) {
	l, err := lab.New(lab.Options{
		Nodes: 2, MTU: cfg.MTU, WeftBin: cfg.WeftBin, WeftArgs: cfg.WeftArgs,
		NetworkConfig: fmt.Sprintf(`{"Network":"%s","SubnetLen":24,"Backend":{"Type":"udp"}}`, WeftNetwork),
		Logger:        cfg.Logger,
	})
	if err != nil {
		return nil, fmt.Errorf("underlay profile %s: %w", name, err)
	}
	r := &runner{cfg: cfg, lab: l, log: cfg.Logger, name: name, spec: profileSpecs[name]}
	// Ctrl-C closes the lab so that a running iperf3 or ping fails fast.
	r.stop = context.AfterFunc(ctx, func() { _ = l.Close() })
	fmt.Fprintf(cfg.Progress, "lab %s, underlay profile %s: underlay %s, veth MTU %d\n", l.ID, r.spec.title, l.Underlay, cfg.MTU)
	if r.setup, err = r.applyProfile(ctx); err == nil {
		err = r.setupPaths(ctx)
	}
	if err != nil {
		r.close()
		return nil, fmt.Errorf("underlay profile %s: %w", name, err)
	}
	return r, nil
}

// close tears the runner's lab down.
func (r *runner) close() {
	r.stop()
	if err := r.lab.Close(); err != nil {
		r.log.Warn("lab teardown", "lab", r.lab.ID, "err", err)
	}
}

// runRounds runs every round: each test on every path of every profile
// in turn, appending the samples to res.
func runRounds(ctx context.Context, runners []*runner, res *Results) error {
	cfg := runners[0].cfg
	for round := 1; round <= cfg.Rounds; round++ {
		for _, test := range cfg.Tests {
			for _, r := range runners {
				for _, p := range r.paths {
					if ctx.Err() != nil {
						return ctx.Err()
					}
					s := r.runTest(ctx, round, test, p)
					fmt.Fprintf(cfg.Progress, "round %d/%d  %-7s  %-5s  %-14s  %s\n", round, cfg.Rounds, r.name, test, p.Name, s.brief())
					res.Samples = append(res.Samples, s)
				}
			}
		}
	}
	return ctx.Err()
}

// profile describes the runner's profile as measured: its setup, the
// underlay's settings and the paths.
func (r *runner) profile(ctx context.Context) Profile {
	p := Profile{Name: r.name, Title: r.spec.title, Description: r.spec.description, Setup: r.setup}
	if st, err := r.lab.Link(0, "eth0"); err == nil {
		p.Underlay = Link{Name: "eth0 (veth)", MTU: st.MTU, TxQLen: st.TxQLen, GSOMaxSize: st.GSOMaxSize, GROMaxSize: st.GROMaxSize}
	}
	if _, err := exec.LookPath("ethtool"); err == nil {
		out, _ := r.lab.Command(ctx, 0, "ethtool", "-k", "eth0").Output()
		for _, line := range strings.Split(string(out), "\n") {
			for _, f := range []string{"tx-checksumming:", "tcp-segmentation-offload:", "generic-segmentation-offload:",
				"generic-receive-offload:", "rx-gro-list:", "rx-udp-gro-forwarding:", "tx-udp-segmentation:",
				"tx-udp_tnl-segmentation:", "tx-udp_tnl-csum-segmentation:"} {
				if strings.HasPrefix(strings.TrimSpace(line), f) {
					p.Offloads = append(p.Offloads, strings.TrimSpace(line))
				}
			}
		}
	}
	for _, pr := range r.paths {
		p.Paths = append(p.Paths, pr.Path)
	}
	return p
}

// snapshot is every counter read before and after a test.
type snapshot struct {
	cpu    CPUStat
	daemon float64
	txDrop [2]uint64
	snmp   [2]lab.SNMP
	weft   [2]map[string]uint64
}

func (r *runner) snap(p *pathRun) (snapshot, error) {
	var s snapshot
	var errs []error
	var err error
	if s.cpu, err = readProcStat(); err != nil {
		errs = append(errs, err)
	}
	if p.pids != nil {
		for _, pid := range p.pids() {
			if pid == 0 {
				errs = append(errs, fmt.Errorf("path %s: a daemon is not running", p.Name))
				continue
			}
			b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
			if err == nil {
				var t float64
				t, err = ParsePIDStat(b)
				s.daemon += t
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("daemon pid %d: %w", pid, err))
			}
		}
	}
	for i := range 2 {
		st, err := r.lab.Link(i, p.devs[i])
		if err != nil {
			errs = append(errs, err)
		}
		s.txDrop[i] = st.TxDropped
		if s.snmp[i], err = r.lab.SNMP(i); err != nil {
			errs = append(errs, err)
		}
		if p.statusPort != 0 {
			var st lab.Status
			if err := r.lab.GetJSONAt(context.Background(), i, p.statusPort, "/status", &st); err != nil {
				errs = append(errs, fmt.Errorf("path %s: %w", p.Name, err))
				continue
			}
			s.weft[i] = st.Counters.Drops
		}
	}
	return s, errors.Join(errs...)
}

// fill puts the counter deltas between a and b into s.
func (a snapshot) fill(b snapshot, s *Sample) {
	d := b.cpu.Sub(a.cpu)
	s.SoftirqCPU, s.BusyCPU = d.SoftIRQ, d.Busy()
	s.DaemonCPU = b.daemon - a.daemon
	for i := range 2 {
		s.TunTxDropped += int64(b.txDrop[i] - a.txDrop[i])
		s.UDPRcvbufErrors += b.snmp[i].Get("Udp", "RcvbufErrors") - a.snmp[i].Get("Udp", "RcvbufErrors")
		s.UDPSndbufErrors += b.snmp[i].Get("Udp", "SndbufErrors") - a.snmp[i].Get("Udp", "SndbufErrors")
		for k, v := range b.weft[i] {
			if dv := v - a.weft[i][k]; dv > 0 {
				if s.WeftDrops == nil {
					s.WeftDrops = map[string]uint64{}
				}
				s.WeftDrops[k] += dv
			}
		}
	}
}

func readProcStat() (CPUStat, error) {
	f, err := os.Open("/proc/stat")
	if err != nil {
		return CPUStat{}, err
	}
	defer f.Close()
	return ParseProcStat(f)
}

// waitIdle samples the machine's CPU use until it is below the threshold
// or IdleWait has passed, and returns the last sample (percent of all CPUs).
func (r *runner) waitIdle(ctx context.Context) (float64, bool) {
	deadline := time.Now().Add(r.cfg.IdleWait)
	for {
		a, err1 := readProcStat()
		select {
		case <-ctx.Done():
			return 0, false
		case <-time.After(r.cfg.IdleSample):
		}
		b, err2 := readProcStat()
		if err := errors.Join(err1, err2); err != nil {
			r.log.Warn("idle check", "err", err)
			return 0, false
		}
		d := b.Sub(a)
		load := 0.0
		if d.Total() > 0 {
			load = 100 * d.Busy() / d.Total()
		}
		if load < r.cfg.IdlePct {
			return load, true
		}
		if time.Now().After(deadline) {
			return load, false
		}
	}
}

// runTest runs one test on one path and fills a sample; errors go into
// the sample.
func (r *runner) runTest(ctx context.Context, round int, test string, p *pathRun) Sample {
	s := Sample{Round: round, Profile: r.name, Test: test, Path: p.Name, Daemon: p.pids != nil, Weft: p.statusPort != 0}
	s.OtherLoad, s.IdleOK = r.waitIdle(ctx)
	before, err := r.snap(p)
	if err != nil {
		s.Error = err.Error()
		return s
	}
	s.Start = time.Now().UTC()
	switch test {
	case TestTCP1:
		err = r.iperf(ctx, p, &s)
	case TestTCP4:
		err = r.iperf(ctx, p, &s, "-P", "4")
	case TestTCP8:
		err = r.iperf(ctx, p, &s, "-P", "8")
	case TestUDP64:
		err = r.iperf(ctx, p, &s, "-u", "-l", "64", "-b", "0")
	case TestPing:
		err = r.ping(ctx, p, &s)
	case TestRR:
		err = r.rr(ctx, p, &s)
	}
	s.Wall = time.Since(s.Start).Seconds()
	after, serr := r.snap(p)
	before.fill(after, &s)
	if err = errors.Join(err, serr); err != nil {
		s.Error = err.Error()
	}
	return s
}

// iperf runs one iperf3 test from node 0 to a one-off server on node 1.
func (r *runner) iperf(ctx context.Context, p *pathRun, s *Sample, extra ...string) error {
	l := r.lab
	port := strconv.Itoa(iperfPort)
	srv, err := l.Spawn(1, "iperf3-server", []string{"iperf3", "-s", "-1", "-B", p.Dst.String(), "-p", port}, nil)
	if err != nil {
		return err
	}
	defer func() {
		if srv.Wait(3*time.Second) != nil {
			_ = srv.Stop(2 * time.Second)
		}
	}()
	if err := waitListening(ctx, srv, iperfPort, 5*time.Second); err != nil {
		return err
	}
	timeout := time.Duration(r.cfg.Seconds+r.cfg.Omit+30) * time.Second
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	args := append([]string{"-c", p.Dst.String(), "-B", p.Src.String(), "-p", port,
		"-t", strconv.Itoa(r.cfg.Seconds), "-O", strconv.Itoa(r.cfg.Omit), "-J", "--connect-timeout", "3000"}, extra...)
	cmd := l.Command(cctx, 0, "iperf3", args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, runErr := cmd.Output()
	ip, err := ParseIperf3(out)
	if err != nil {
		return fmt.Errorf("iperf3 %s: %w (%s; %s; server: %s)", strings.Join(args, " "), err, ended(runErr),
			strings.TrimSpace(stderr.String()), tail(srv.Output(), 3))
	}
	s.Gbps = ip.ReceivedBPS / 1e9
	s.Bytes = ip.ReceivedBytes
	s.BytesMoved = ip.AllSentBytes
	s.Retransmits = ip.Retransmits
	if ip.Protocol == "UDP" {
		s.SentPPS, s.DeliveredPP = ip.SentPPS(), ip.DeliveredPPS()
		if s.SentPPS > 0 {
			s.LossPct = max(0, 100*(1-s.DeliveredPP/s.SentPPS))
		}
	}
	return nil
}

// waitListening polls the server's own /proc/PID/net/tcp (its namespace's
// view) until it listens on port: a probe connection would be taken by
// the one-off server as its test.
func waitListening(ctx context.Context, p *lab.Proc, port int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		pid := p.PID()
		if pid == 0 {
			return fmt.Errorf("%s exited (%s): %s", p.Name, p.ExitState(), tail(p.Output(), 5))
		}
		if f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/net/tcp"); err == nil {
			ok, _ := TCPListening(f, port)
			f.Close()
			if ok {
				return nil
			}
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("%s not listening on %d after %v: %s", p.Name, port, timeout, tail(p.Output(), 5))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (r *runner) ping(ctx context.Context, p *pathRun, s *Sample) error {
	// -w makes ping stop and still print its summary: an interval of 10 ms
	// really takes about 16 ms here (timer granularity), more on a busy
	// machine, so the deadline is three times the nominal duration.
	deadline := 3*time.Duration(r.cfg.Pings)*pingInterval + 5*time.Second
	cctx, cancel := context.WithTimeout(ctx, deadline+10*time.Second)
	defer cancel()
	out, runErr := r.lab.Command(cctx, 0, "ping", "-n", "-i", strconv.FormatFloat(pingInterval.Seconds(), 'f', -1, 64),
		"-c", strconv.Itoa(r.cfg.Pings), "-w", strconv.Itoa(int(deadline.Seconds())), "-W", "1",
		"-I", p.Src.String(), p.Dst.String()).CombinedOutput()
	sum, err := lab.ParsePing(string(out))
	if err != nil {
		return fmt.Errorf("ping %s: %w (%s): %s", p.Dst, err, ended(runErr), tail(string(out), 3))
	}
	rtts := ParsePingRTTs(string(out))
	s.PingSent, s.PingRecv = sum.Sent, len(rtts)
	if len(rtts) == 0 {
		return fmt.Errorf("ping %s: no replies", p.Dst)
	}
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	s.P50ms, s.P99ms = ms(Percentile(rtts, 50)), ms(Percentile(rtts, 99))
	s.Minms, s.Maxms = ms(rtts[0]), ms(rtts[len(rtts)-1]) // Percentile sorted them
	return nil
}

func (r *runner) rr(ctx context.Context, p *pathRun, s *Sample) error {
	cctx, cancel := context.WithTimeout(ctx, time.Duration(r.cfg.Seconds+30)*time.Second)
	defer cancel()
	res, err := r.lab.RequestResponse(cctx, 0, p.Src, 1, p.Dst, 1, time.Duration(r.cfg.Seconds)*time.Second)
	if err != nil {
		return err
	}
	s.RRPerSec = res.Rate()
	return nil
}

// brief is the progress line's result.
func (s Sample) brief() string {
	var b strings.Builder
	switch s.Test {
	case TestTCP1, TestTCP4, TestTCP8:
		fmt.Fprintf(&b, "%7.3f Gb/s  retr %d", s.Gbps, s.Retransmits)
	case TestUDP64:
		fmt.Fprintf(&b, "%7.1f kpps delivered of %.1f sent", s.DeliveredPP/1e3, s.SentPPS/1e3)
	case TestPing:
		fmt.Fprintf(&b, "p50 %.3f ms  p99 %.3f ms  (%d/%d)", s.P50ms, s.P99ms, s.PingRecv, s.PingSent)
	case TestRR:
		fmt.Fprintf(&b, "%7.1f k transactions/s", s.RRPerSec/1e3)
	}
	fmt.Fprintf(&b, "  [load before %.0f%%]", s.OtherLoad)
	if !s.IdleOK {
		b.WriteString(" BUSY")
	}
	if s.Error != "" {
		b.WriteString("  ERROR: " + firstLine(s.Error))
	}
	return b.String()
}

// machine collects what the report says about the host and the tools.
func (r *runner) machine(ctx context.Context) Machine {
	m := Machine{CPUs: runtime.NumCPU(), Go: runtime.Version()}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		f := strings.Fields(string(b))
		if len(f) >= 3 {
			m.LoadAvg = strings.Join(f[:3], " ")
		}
	}
	m.Iperf3 = firstLine(cmdOut(ctx, "iperf3", "--version"))
	m.Weft = firstLine(cmdOut(ctx, r.cfg.WeftBin, "version"))
	m.WeftArgs = r.lab.WeftArgs(0)
	m.PingBinary = firstLine(cmdOut(ctx, "ping", "-V"))
	return m
}

func cmdOut(ctx context.Context, name string, args ...string) string {
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	out, err := exec.CommandContext(cctx, name, args...).CombinedOutput()
	if err != nil && len(out) == 0 {
		return "unknown (" + err.Error() + ")"
	}
	return strings.TrimSpace(string(out))
}

// notes lists what a reader must know: busy tests and failed tests.
func notes(res *Results) []string {
	var out []string
	busy, failed := 0, 0
	var worst float64
	for _, s := range res.Samples {
		if !s.IdleOK {
			busy++
			worst = max(worst, s.OtherLoad)
		}
		if s.Error != "" {
			failed++
		}
	}
	if busy > 0 {
		out = append(out, fmt.Sprintf("%d of %d tests started while other processes used ≥ %.0f %% of the CPUs (up to %.0f %%): their numbers are noisier", busy, len(res.Samples), res.Settings.IdleThreshold, worst))
	}
	if failed > 0 {
		out = append(out, fmt.Sprintf("%d of %d tests failed; see \"Every run\"", failed, len(res.Samples)))
	}
	for _, pr := range res.Profiles {
		for _, p := range pr.Paths {
			if p.Name == "weft" && p.FastPath != "" && !strings.HasPrefix(p.FastPath, "running") {
				out = append(out, fmt.Sprintf("underlay %s: the weft column ran without its kernel fast path (%s), "+
					"so it measured the userspace path, as weft -fast-path=off does", pr.Title, p.FastPath))
			}
		}
	}
	return out
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

func tail(s string, lines int) string {
	s = strings.TrimRight(s, "\n")
	parts := strings.Split(s, "\n")
	if len(parts) > lines {
		parts = parts[len(parts)-lines:]
	}
	return strings.Join(parts, "\n")
}

// ended says how a command ended, for an error about its output: the
// output is the error, the way it ended only context (and often nil).
func ended(runErr error) string {
	if runErr == nil {
		return "exit 0"
	}
	return runErr.Error()
}
