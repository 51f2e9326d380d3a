package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/weft-net/weft/bench/suite"
)

// pathFlags collects repeatable NAME=VALUE flags in order.
type pathFlags struct {
	names  []string
	values map[string]string
}

func (p *pathFlags) String() string { return strings.Join(p.names, ",") }

func (p *pathFlags) Set(s string) error {
	name, value, ok := strings.Cut(s, "=")
	if !ok || name == "" || strings.TrimSpace(value) == "" {
		return fmt.Errorf("%q: want NAME=VALUE", s)
	}
	if p.values == nil {
		p.values = map[string]string{}
	}
	if _, dup := p.values[name]; dup {
		return fmt.Errorf("%q given twice", name)
	}
	p.names = append(p.names, name)
	p.values[name] = value
	return nil
}

// benchArgs are weftlab bench's flags.
type benchArgs struct {
	weft, outDir, tests, profiles, from string
	seconds, rounds, mtu                int
	verbose                             bool
	paths, configs                      pathFlags
}

// parseBench parses weftlab bench's flags; ok false means exit 2 (the
// flag package or this said why).
func parseBench(args []string) (a benchArgs, ok bool) {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.StringVar(&a.weft, "weft", "", "weft binary to run on both nodes (required)")
	fs.IntVar(&a.seconds, "seconds", suite.DefaultSeconds, "seconds per iperf3 test and per request/response test")
	fs.IntVar(&a.rounds, "rounds", suite.DefaultRounds, "rounds; each runs every test on every path of every underlay profile in turn")
	fs.IntVar(&a.mtu, "mtu", 1500, "MTU of the underlay veths")
	fs.StringVar(&a.outDir, "out", "bench/results", "directory for report.md, chart.svg and results.json")
	fs.StringVar(&a.tests, "tests", strings.Join(suite.AllTests, ","), "comma-separated tests to run")
	fs.StringVar(&a.profiles, "profiles", strings.Join(suite.AllProfiles, ","),
		"comma-separated underlay profiles, each in a lab of its own: default (veths as the kernel makes them), "+
			"nic (NIC-like: veth GRO on, no UDP tunnel segmentation on the senders; needs ethtool)")
	fs.BoolVar(&a.verbose, "v", false, "harness progress on stderr")
	fs.StringVar(&a.from, "from", "", "measure nothing: rewrite report.md and chart.svg in -out from this results.json")
	fs.Var(&a.paths, "path", "NAME=COMMAND: also measure a daemon started with COMMAND on each node (repeatable);\n"+suite.Placeholders)
	fs.Var(&a.configs, "path-config", "NAME=JSON: the network config for -path NAME (default: a udp backend network of its own)")
	if err := fs.Parse(args); err != nil {
		return a, false
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "weftlab bench: unexpected argument %q\n", fs.Arg(0))
		return a, false
	}
	for _, name := range a.configs.names {
		if _, ok := a.paths.values[name]; !ok {
			fmt.Fprintf(os.Stderr, "weftlab bench: -path-config %s: no -path %s\n", name, name)
			return a, false
		}
	}
	if a.from == "" && a.weft == "" {
		fmt.Fprintln(os.Stderr, "weftlab bench: -weft PATH is required (make bench builds bin/weft and passes it)")
		return a, false
	}
	return a, true
}

// splitList is a comma-separated list's non-empty items.
func splitList(s string) []string {
	var out []string
	for _, t := range strings.Split(s, ",") {
		if t = strings.TrimSpace(t); t != "" {
			out = append(out, t)
		}
	}
	return out
}

// config is the suite's configuration for a.
func (a benchArgs) config(args []string, out io.Writer) suite.Config {
	cfg := suite.Config{
		WeftBin: a.weft, Seconds: a.seconds, Rounds: a.rounds, MTU: a.mtu,
		Tests: splitList(a.tests), Profiles: splitList(a.profiles),
		Command:  "weftlab bench " + strings.Join(args, " "),
		Progress: out,
	}
	for _, name := range a.paths.names {
		cfg.Extra = append(cfg.Extra, suite.ExtraPath{Name: name, Template: a.paths.values[name], NetworkConfig: a.configs.values[name]})
	}
	if a.verbose {
		cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	return cfg
}

func runBench(args []string, out io.Writer) int {
	a, ok := parseBench(args)
	if !ok {
		return 2
	}
	if a.from != "" {
		return rerender(a.from, a.outDir, out)
	}
	cfg := a.config(args, out)
	if err := suite.Preflight(a.weft, cfg.Profiles); err != nil {
		fmt.Fprintln(os.Stderr, "weftlab bench:", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	start := time.Now()
	fmt.Fprintf(out, "weftlab bench: %d round(s), %d s per test, underlay MTU %d, profiles %s\n", a.rounds, a.seconds, a.mtu, a.profiles)
	res, err := suite.Run(ctx, cfg)
	if err != nil {
		if errors.Is(err, context.Canceled) {
			fmt.Fprintln(os.Stderr, "weftlab bench: interrupted; labs torn down, nothing written")
			return 130
		}
		fmt.Fprintln(os.Stderr, "weftlab bench:", err)
		return 1
	}
	if err := suite.WriteOutputs(a.outDir, res); err != nil {
		fmt.Fprintln(os.Stderr, "weftlab bench:", err)
		return 1
	}
	fmt.Fprintf(out, "\n%s\n", suite.SummaryTables(res))
	for _, n := range res.Notes {
		fmt.Fprintln(out, "note:", n)
	}
	fmt.Fprintf(out, "wrote %s, %s and %s in %s (%s)\n",
		filepath.Join(a.outDir, suite.ReportFile), filepath.Join(a.outDir, suite.ChartFile),
		filepath.Join(a.outDir, suite.JSONFile), a.outDir, time.Since(start).Round(time.Second))
	return 0
}

// rerender rewrites the outputs from a results.json, for a changed report
// format or to check the files in bench/results match their numbers.
func rerender(from, outDir string, out io.Writer) int {
	b, err := os.ReadFile(from)
	if err != nil {
		fmt.Fprintln(os.Stderr, "weftlab bench:", err)
		return 1
	}
	res, err := suite.DecodeResults(b)
	if err != nil {
		fmt.Fprintf(os.Stderr, "weftlab bench: %s: %v\n", from, err)
		return 1
	}
	if err := suite.WriteOutputs(outDir, res); err != nil {
		fmt.Fprintln(os.Stderr, "weftlab bench:", err)
		return 1
	}
	fmt.Fprintf(out, "%s\nrewrote %s from %s\n", suite.SummaryTables(res), outDir, from)
	return 0
}
