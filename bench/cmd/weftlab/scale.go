package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/weft-net/weft/bench/scale"
)

const scaleUsage = `weftlab scale -weft PATH [-sizes 100,1000,5000] [-churn 20s] [-quiet 5s] [-rate 0] [-out bench/results] [-v]
    three weft daemons in namespaces (network 198.19.0.0/16, /29 subnets) watch
    simulated nodes' leases in one embedded etcd. At each size: a bulk load, a
    quiet window, churn at -rate changes/s (0: max(10, size/100)) with a ping
    between two pods, a daemon restart. Writes scale.md, scale.svg and
    scale.json to -out; exits 1 if a target at 5,000 leases is missed.
`

func runScale(args []string, out io.Writer) int {
	fs := flag.NewFlagSet("scale", flag.ContinueOnError)
	fs.Usage = func() { fmt.Fprint(fs.Output(), scaleUsage); fs.PrintDefaults() }
	var c clusterFlags
	c.register(fs)
	sizes := fs.String("sizes", "100,1000,5000", "simulated lease counts, comma-separated")
	var o scale.Options
	fs.DurationVar(&o.Churn, "churn", 20*time.Second, "churn phase per size")
	fs.DurationVar(&o.Quiet, "quiet", 5*time.Second, "quiet window per size")
	fs.Float64Var(&o.Rate, "rate", 0, "churn changes per second (0: max(10, size/100))")
	fs.DurationVar(&o.Poll, "poll", 10*time.Millisecond, "how often each daemon's table revision is read")
	dir := fs.String("out", "bench/results", "directory for scale.md, scale.svg and scale.json (empty: none)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	for _, f := range strings.Split(*sizes, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 || n > 8000 {
			fmt.Fprintf(os.Stderr, "weftlab scale: -sizes: %q is not a count from 1 to 8000 (a /16 holds 8,191 /29s)\n", f)
			return 2
		}
		o.Sizes = append(o.Sizes, n)
	}
	if c.nodes < 3 {
		fmt.Fprintln(os.Stderr, "weftlab scale: -nodes must be at least 3")
		return 2
	}
	if err := preflight(c.weft); err != nil {
		fmt.Fprintln(os.Stderr, "weftlab scale:", err)
		return 1
	}
	c.network = scale.NetworkConfig
	o.Progress = func(format string, a ...any) {
		fmt.Fprintf(out, "  %s  %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, a...))
	}

	return inSession(out, func(s *session) int { return doScale(s, c, o, *dir) })
}

func doScale(s *session, c clusterFlags, o scale.Options, dir string) int {
	out := s.out
	fmt.Fprintf(out, "weft scale: %d daemons, sizes %v, churn %v per size\n", c.nodes, o.Sizes, o.Churn)
	l, took, err := startCluster(s, c)
	if err != nil {
		fmt.Fprintln(out, "FAIL: start cluster:", err)
		return 1
	}
	fmt.Fprintf(out, "  lab %s, underlay %s, all ready in %v\n", l.ID, l.Underlay, took.Round(time.Millisecond))
	rep, err := scale.Run(s.ctx, l, o)
	if err != nil {
		if s.interrupted() {
			return 130
		}
		fmt.Fprintln(out, "FAIL:", err)
		return 1
	}
	rep.Version = strings.TrimPrefix(weftVersion(c.weft), "weft ")
	rep.Machine = machine()
	fmt.Fprintln(out)
	if err := rep.WriteMarkdown(out); err != nil {
		fmt.Fprintln(out, "FAIL: report:", err)
		return 1
	}
	if dir != "" {
		if err := rep.WriteFiles(dir); err != nil {
			fmt.Fprintln(out, "FAIL: write report:", err)
			return 1
		}
		fmt.Fprintf(out, "\nreport written to %s/scale.md, scale.svg, scale.json\n", dir)
	}
	if len(rep.Failed()) > 0 {
		return 1
	}
	return 0
}

// machine describes this host for the report.
func machine() string {
	var u syscall.Utsname
	kernel := "linux"
	if syscall.Uname(&u) == nil {
		var b strings.Builder
		for _, c := range u.Release {
			if c == 0 {
				break
			}
			b.WriteByte(byte(c))
		}
		kernel = "Linux " + b.String()
	}
	return fmt.Sprintf("%d vCPUs, %s, %s", runtime.NumCPU(), kernel, runtime.Version())
}
