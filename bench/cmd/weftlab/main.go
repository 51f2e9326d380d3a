// Command weftlab runs weft clusters in network namespaces on this host.
//
//	weftlab demo -weft PATH [-nodes 3] [-bytes 256MiB]   show a cluster working, then tear it down
//	weftlab up -weft PATH [-nodes 3]                     keep a cluster up until Ctrl-C
//	weftlab bench -weft PATH [-seconds 6] [-rounds 3]    benchmark weft against kernel VXLAN, host-gw, veth
//	weftlab scale -weft PATH [-sizes 100,1000,5000]        measure the control plane at cluster sizes
//	weftlab cleanup                                      remove what killed labs left behind
//
// It builds nothing: `make demo` builds weft first.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/weft-net/weft/bench/lab"
	"github.com/weft-net/weft/status"
)

const usage = `weftlab runs weft clusters in network namespaces (needs root).

  weftlab demo -weft PATH [-nodes 3] [-bytes 256MiB] [-pings 5] [-mtu 1500] [-keep] [-v]
      start a cluster, show leases, ping every pair through the tunnel,
      move a TCP stream, show counters, tear everything down.
      Exits non-zero if any ping pair or the transfer fails.
  weftlab up -weft PATH [-nodes 3] [-mtu 1500] [-keep] [-v]
      start a cluster and keep it until Ctrl-C.
  weftlab bench -weft PATH [-seconds 6] [-rounds 3] [-mtu 1500] [-out bench/results] [-profiles default,nic]
                [-tests tcp1,tcp4,tcp8,udp64,ping,rr] [-path NAME=COMMAND [-path-config NAME=JSON]]... [-v]
      measure weft (its defaults), weft -fast-path=off, kernel VXLAN, host-gw and
      bare veth (and each -path) between two namespaces, interleaved per round,
      on each underlay profile; write report.md, chart.svg and results.json to
      -out. Needs iperf3, and ethtool for the NIC-like profile. See bench/README.md.
  weftlab scale -weft PATH [-sizes 100,1000,5000] [-churn 20s] [-quiet 5s] [-rate 0] [-out bench/results] [-v]
      three daemons watch simulated nodes' leases in one etcd at each size: bulk
      load, churn, propagation, RSS, CPU, etcd requests, start-up; writes
      scale.md, scale.svg and scale.json to -out. Exits 1 if a target is missed.
  weftlab cleanup
      remove namespaces and veths left by weftlab processes that were killed.
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	var code int
	switch cmd, args := os.Args[1], os.Args[2:]; cmd {
	case "demo":
		code = runDemo(args, os.Stdout)
	case "up":
		code = runUp(args, os.Stdout)
	case "bench":
		code = runBench(args, os.Stdout)
	case "soak":
		code = runSoak(args, os.Stdout)
	case "scale":
		code = runScale(args, os.Stdout)
	case "cleanup":
		code = runCleanup(os.Stdout)
	case "-h", "-help", "--help", "help":
		fmt.Print(usage)
	default:
		fmt.Fprintf(os.Stderr, "weftlab: unknown command %q\n\n%s", cmd, usage)
		code = 2
	}
	os.Exit(code)
}

// clusterFlags are shared by demo and up.
type clusterFlags struct {
	weft    string
	nodes   int
	mtu     int
	keep    bool
	verbose bool
	// network is the flannel network config (default: the lab's).
	network string
}

func (c *clusterFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&c.weft, "weft", "", "weft binary to run on every node (required)")
	fs.IntVar(&c.nodes, "nodes", 3, "number of nodes")
	fs.IntVar(&c.mtu, "mtu", 1500, "MTU of the underlay veths")
	fs.BoolVar(&c.keep, "keep", false, "keep the lab directory (weft logs, etcd data)")
	fs.BoolVar(&c.verbose, "v", false, "weft debug logs and harness progress on stderr")
}

// preflight checks what the lab needs, with a fix for each problem.
func preflight(weft string) error {
	if os.Geteuid() != 0 {
		return errors.New("needs root to create network namespaces: run it with sudo (sudo make demo)")
	}
	if weft == "" {
		return errors.New("-weft PATH is required (make demo builds bin/weft and passes it)")
	}
	if st, err := os.Stat(weft); err != nil || st.IsDir() || st.Mode()&0o111 == 0 {
		return fmt.Errorf("-weft %s: not an executable file (build it: go build -o bin/weft .)", weft)
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return errors.New("the ip command is missing: apt-get install -y iproute2")
	}
	if _, err := exec.LookPath("ping"); err != nil {
		return errors.New("ping is missing: apt-get install -y iputils-ping")
	}
	return nil
}

// session owns the lab and tears it down exactly once, also on Ctrl-C.
type session struct {
	ctx    context.Context
	cancel context.CancelFunc
	mu     sync.Mutex
	lab    *lab.Lab
	out    io.Writer
}

// newSession cancels ctx on the first SIGINT/SIGTERM and closes the lab (so
// whatever the main goroutine waits on fails fast); a second signal exits
// at once, leaving `weftlab cleanup` to finish.
func newSession(out io.Writer) *session {
	s := &session{out: out}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		<-sigs
		fmt.Fprintln(out, "\ninterrupted: tearing down (Ctrl-C again to abandon; then run weftlab cleanup)")
		s.cancel()
		go func() {
			<-sigs
			os.Exit(130)
		}()
		s.close()
	}()
	return s
}

func (s *session) setLab(l *lab.Lab) {
	s.mu.Lock()
	s.lab = l
	s.mu.Unlock()
	if s.ctx.Err() != nil { // interrupted while New ran
		s.close()
	}
}

func (s *session) close() error {
	s.mu.Lock()
	l := s.lab
	s.mu.Unlock()
	if l == nil {
		return nil
	}
	return l.Close()
}

func (s *session) interrupted() bool { return s.ctx.Err() != nil }

// inSession runs job in a new session and tears the lab down after it: a
// failed teardown makes the exit code at least 1, Ctrl-C makes it 130.
func inSession(out io.Writer, job func(*session) int) int {
	s := newSession(out)
	code := job(s)
	if err := s.close(); err != nil {
		fmt.Fprintln(out, "teardown:", err)
		code = max(code, 1)
	}
	if s.interrupted() {
		return 130
	}
	return code
}

// startCluster creates the lab and starts and readies every node.
func startCluster(s *session, c clusterFlags) (*lab.Lab, time.Duration, error) {
	logger := slog.New(slog.DiscardHandler)
	var weftArgs []string
	if c.verbose {
		logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
		weftArgs = []string{"-v=1"}
	}
	l, err := lab.New(lab.Options{
		Nodes: c.nodes, MTU: c.mtu, WeftBin: c.weft, WeftArgs: weftArgs,
		KeepDir: c.keep, Logger: logger, NetworkConfig: c.network,
	})
	if err != nil {
		return nil, 0, err
	}
	s.setLab(l)
	if s.interrupted() {
		return l, 0, s.ctx.Err()
	}
	start := time.Now()
	for i := range l.Nodes() {
		if err := l.StartWeft(i); err != nil {
			return l, 0, err
		}
	}
	errs := make([]error, len(l.Nodes()))
	var wg sync.WaitGroup
	for i := range l.Nodes() {
		wg.Go(func() { errs[i] = l.WaitReady(i, 30*time.Second) })
	}
	wg.Wait()
	return l, time.Since(start), errors.Join(errs...)
}

func runDemo(args []string, out io.Writer) int {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	var c clusterFlags
	c.register(fs)
	bytesFlag := fs.String("bytes", "256MiB", "size of the TCP transfer (B, KiB, MiB, GiB, KB, MB, GB)")
	pings := fs.Int("pings", 5, "echoes per ping pair")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	nbytes, err := parseSize(*bytesFlag)
	if err != nil {
		fmt.Fprintf(os.Stderr, "weftlab demo: -bytes: %v\n", err)
		return 2
	}
	if c.nodes < 2 {
		fmt.Fprintln(os.Stderr, "weftlab demo: -nodes must be at least 2")
		return 2
	}
	if err := preflight(c.weft); err != nil {
		fmt.Fprintln(os.Stderr, "weftlab demo:", err)
		return 1
	}

	s := newSession(out)
	code := demo(s, c, nbytes, *pings)
	if err := s.close(); err != nil {
		fmt.Fprintln(out, "teardown:", err)
		code = max(code, 1)
	} else if s.lab != nil {
		if c.keep {
			fmt.Fprintf(out, "\ntorn down; logs kept in %s\n", s.lab.Dir)
		} else {
			fmt.Fprintln(out, "\ntorn down: daemons stopped, etcd stopped, namespaces and veths removed")
		}
	}
	if s.interrupted() {
		return 130
	}
	return code
}

// demo runs the demo on a new cluster: leases, pings between every pair,
// one TCP transfer and the counters, then the verdict. It returns the
// exit code; the caller tears the lab down.
func demo(s *session, c clusterFlags, nbytes int64, pings int) int {
	out := s.out
	fmt.Fprintf(out, "weft demo: %d nodes in network namespaces, one etcd, flannel's udp backend\n", c.nodes)
	if v := weftVersion(c.weft); v != "" {
		fmt.Fprintf(out, "  weft     %s (%s)\n", c.weft, v)
	}
	l, took, err := startCluster(s, c)
	if l != nil {
		fmt.Fprintf(out, "  lab      %s, underlay %s (veth MTU %d), etcd %s\n", l.ID, l.Underlay, c.mtu, l.EtcdEndpoint())
	}
	if err != nil {
		return demoFail(s, "start cluster", err)
	}
	fmt.Fprintf(out, "  started  %d daemons, all ready in %v\n", c.nodes, took.Round(time.Millisecond))

	statuses, err := leaseStatuses(l)
	if err != nil {
		return demoFail(s, "read status", err)
	}
	printLeases(out, l, statuses)

	failed, pairs := pingPairs(s, l, pings)
	if s.interrupted() {
		return 130
	}
	r, terr := demoTransfer(s, l, nbytes)
	if s.interrupted() {
		return 130
	}
	printTransfer(out, r, terr)
	transferOK := terr == nil

	printCounters(out, l)

	if failed > 0 || !transferOK {
		fmt.Fprintf(out, "\nFAIL: %d of %d ping pairs failed; transfer %s\n", failed, pairs, verdict(transferOK))
		fmt.Fprintf(out, "weft logs: rerun with -keep, then see %s/n*/weft.log\n", l.Dir)
		return 1
	}
	fmt.Fprintf(out, "\nPASS: %d of %d ping pairs answered, transfer byte-exact\n", pairs, pairs)
	return 0
}

// demoFail reports a step of the demo that failed and returns the exit
// code: 130 when Ctrl-C caused it, so that is not printed as a failure.
func demoFail(s *session, what string, err error) int {
	if s.interrupted() {
		return 130
	}
	fmt.Fprintf(s.out, "\nFAIL: %s: %v\n", what, err)
	return 1
}

// leaseStatuses reads every node's /status; each must report a lease.
func leaseStatuses(l *lab.Lab) ([]*lab.Status, error) {
	statuses := make([]*lab.Status, len(l.Nodes()))
	for i := range statuses {
		var err error
		if statuses[i], err = l.Status(i); err != nil {
			return nil, err
		}
		if statuses[i].Lease == nil {
			return nil, fmt.Errorf("%s reports no lease", l.Node(i).Name)
		}
	}
	return statuses, nil
}

// printLeases prints the table of every node's lease and device.
func printLeases(out io.Writer, l *lab.Lab, statuses []*lab.Status) {
	fmt.Fprintf(out, "\nleases (from each daemon's /status)\n")
	tw := newTable(out, "  ", "node", "public IP", "subnet", "pod address", "device", "peers")
	for i, st := range statuses {
		tw.row(l.Node(i).Name, st.Lease.PublicIP.String(), st.Lease.Subnet.String(), l.Pod(i).Addr().String(),
			fmt.Sprintf("%s mtu %d", st.Device, st.MTU), strconv.Itoa(len(st.Peers)))
	}
	tw.flush()
}

// pingPairs pings every ordered pair of pod addresses and prints a table
// of the results; it returns how many pairs failed of how many it tried.
// On Ctrl-C it stops at once, without printing the table.
func pingPairs(s *session, l *lab.Lab, pings int) (failed, pairs int) {
	out := s.out
	n := len(l.Nodes())
	fmt.Fprintf(out, "\nping between pod addresses, through the tunnel (%d echoes each)\n", pings)
	tw := newTable(out, "  ", "from → to", "loss", "avg rtt", "result")
	for from := range n {
		for to := range n {
			if from == to {
				continue
			}
			if s.interrupted() {
				return failed, pairs
			}
			pairs++
			r, err := l.Ping(from, l.Pod(to).Addr(), pings)
			verdict, rtt := "ok", "-"
			if r.Received > 0 {
				rtt = fmt.Sprintf("%.3f ms", float64(r.Avg.Microseconds())/1000)
			}
			if err != nil || !r.OK() {
				failed++
				verdict = "FAIL"
				if err != nil {
					verdict += ": " + firstLine(err.Error())
				}
			}
			tw.row(l.Node(from).Name+" → "+l.Node(to).Name, fmt.Sprintf("%.0f%%", r.Loss*100), rtt, verdict)
		}
	}
	tw.flush()
	return failed, pairs
}

// demoTransfer announces and runs the demo's TCP transfer from node 0 to
// node 1, for at most 5 minutes.
func demoTransfer(s *session, l *lab.Lab, nbytes int64) (lab.TransferResult, error) {
	from, to := 0, 1
	fmt.Fprintf(s.out, "\nTCP stream %s → %s (%s → %s), %s of random data\n",
		l.Node(from).Name, l.Node(to).Name, l.Pod(from).Addr(), l.Pod(to).Addr(), humanBytes(nbytes))
	ctx, cancel := context.WithTimeout(s.ctx, 5*time.Minute)
	defer cancel()
	return l.Transfer(ctx, from, to, nbytes)
}

// printTransfer prints the transfer's rate and hashes, or why it failed.
func printTransfer(out io.Writer, r lab.TransferResult, terr error) {
	switch {
	case terr == nil:
		fmt.Fprintf(out, "  %s in %.2f s = %.2f Gb/s, sha256 %x… identical at both ends: ok\n",
			humanBytes(r.Bytes), r.Duration.Seconds(), r.Gbps(), r.Sent[:6])
	case errors.Is(terr, lab.ErrMismatch):
		fmt.Fprintf(out, "  FAIL: %s received, sha256 sent %x… received %x…\n", humanBytes(r.Bytes), r.Sent[:6], r.Received[:6])
	default:
		fmt.Fprintf(out, "  FAIL: %v\n", terr)
	}
}

// printCounters prints every daemon's packet counters and drops, or the
// error reading them.
func printCounters(out io.Writer, l *lab.Lab) {
	fmt.Fprintf(out, "\nweft counters (udp0 ⇄ UDP 8285)\n")
	tw := newTable(out, "  ", "node", "tx packets", "tx bytes", "rx packets", "rx bytes", "drops", "fast path", "tx bytes in kernel")
	for i := range len(l.Nodes()) {
		st, err := l.Status(i)
		if err != nil {
			tw.row(l.Node(i).Name, "?", "?", "?", "?", firstLine(err.Error()), "?", "?")
			continue
		}
		k := st.Counters
		tw.row(l.Node(i).Name, strconv.FormatUint(k.TxPackets, 10), humanBytes(int64(k.TxBytes)),
			strconv.FormatUint(k.RxPackets, 10), humanBytes(int64(k.RxBytes)), drops(k.Drops),
			fastPathState(st.FastPath), share(k.Paths["kernel"].TxBytes, k.TxBytes))
	}
	tw.flush()
}

// fastPathState is how the node's kernel fast path runs, in a word.
func fastPathState(f *status.FastPath) string {
	switch {
	case f == nil:
		return "-"
	case f.Running:
		return f.Attach
	case f.Mode == "off":
		return "off"
	}
	return "not running"
}

func share(part, whole uint64) string {
	if whole == 0 {
		return "-"
	}
	return fmt.Sprintf("%.0f%%", 100*float64(part)/float64(whole))
}

func runUp(args []string, out io.Writer) int {
	fs := flag.NewFlagSet("up", flag.ContinueOnError)
	var c clusterFlags
	c.register(fs)
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if err := preflight(c.weft); err != nil {
		fmt.Fprintln(os.Stderr, "weftlab up:", err)
		return 1
	}
	s := newSession(out)
	defer s.close()
	l, took, err := startCluster(s, c)
	if err != nil {
		if s.interrupted() {
			return 130
		}
		fmt.Fprintln(out, "weftlab up:", err)
		return 1
	}
	fmt.Fprintf(out, "lab %s up in %v: underlay %s, etcd %s, prefix %s\n\n",
		l.ID, took.Round(time.Millisecond), l.Underlay, l.EtcdEndpoint(), l.Prefix())
	tw := newTable(out, "  ", "node", "namespace", "underlay", "pod address", "status", "log")
	for i, nd := range l.Nodes() {
		tw.row(nd.Name, nd.NS, nd.Addr.String(), l.Pod(i).String(), l.URL(i, "/status"), nd.LogFile)
	}
	tw.flush()
	n0, n1 := l.Node(0), l.Node(min(1, len(l.Nodes())-1))
	fmt.Fprintf(out, "\ntry:\n  ip netns exec %s ping -I %s %s\n  curl -s %s\n  etcdctl --endpoints %s get --prefix %s\n\nCtrl-C tears it down.\n",
		n0.NS, l.Pod(0).Addr(), l.Pod(n1.Index).Addr(), l.URL(0, "/status"), l.EtcdEndpoint(), l.Prefix())
	<-s.ctx.Done()
	if err := s.close(); err != nil {
		fmt.Fprintln(out, "teardown:", err)
		return 1
	}
	fmt.Fprintln(out, "torn down")
	return 130
}

func runCleanup(out io.Writer) int {
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "weftlab cleanup: needs root: run it with sudo")
		return 1
	}
	removed, err := lab.CleanupStale(nil)
	for _, r := range removed {
		fmt.Fprintln(out, "removed", r)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "weftlab cleanup:", err)
		return 1
	}
	if len(removed) == 0 {
		fmt.Fprintln(out, "nothing to clean up")
	}
	return 0
}

func weftVersion(bin string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	b, err := exec.CommandContext(ctx, bin, "-version").Output()
	if err != nil {
		return ""
	}
	return firstLine(strings.TrimSpace(string(b)))
}

func verdict(ok bool) string {
	if ok {
		return "ok"
	}
	return "FAILED"
}

func drops(m map[string]uint64) string {
	var parts []string
	for k, v := range m {
		if v > 0 {
			parts = append(parts, fmt.Sprintf("%s=%d", k, v))
		}
	}
	if len(parts) == 0 {
		return "0"
	}
	sortStrings(parts)
	return strings.Join(parts, " ")
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}
