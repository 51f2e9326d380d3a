package main

import (
	"context"
	"encoding/json"
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

func runBench(args []string, out io.Writer) int {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	weft := fs.String("weft", "", "weft binary to run on both nodes (required)")
	seconds := fs.Int("seconds", 10, "seconds per iperf3 test and per request/response test")
	rounds := fs.Int("rounds", 3, "rounds; each runs every test on every path in turn")
	mtu := fs.Int("mtu", 1500, "MTU of the underlay veths")
	outDir := fs.String("out", "bench/results", "directory for report.md, chart.svg and results.json")
	tests := fs.String("tests", strings.Join(suite.AllTests, ","), "comma-separated tests to run")
	verbose := fs.Bool("v", false, "harness progress on stderr")
	from := fs.String("from", "", "measure nothing: rewrite report.md and chart.svg in -out from this results.json")
	var paths, configs pathFlags
	fs.Var(&paths, "path", "NAME=COMMAND: also measure a daemon started with COMMAND on each node (repeatable);\n"+suite.Placeholders)
	fs.Var(&configs, "path-config", "NAME=JSON: the network config for -path NAME (default: a udp backend network of its own)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "weftlab bench: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	if *from != "" {
		return rerender(*from, *outDir, out)
	}
	for _, name := range configs.names {
		if _, ok := paths.values[name]; !ok {
			fmt.Fprintf(os.Stderr, "weftlab bench: -path-config %s: no -path %s\n", name, name)
			return 2
		}
	}
	if *weft == "" {
		fmt.Fprintln(os.Stderr, "weftlab bench: -weft PATH is required (make bench builds bin/weft and passes it)")
		return 2
	}
	if err := suite.Preflight(*weft); err != nil {
		fmt.Fprintln(os.Stderr, "weftlab bench:", err)
		return 1
	}
	cfg := suite.Config{
		WeftBin: *weft, Seconds: *seconds, Rounds: *rounds, MTU: *mtu,
		Command:  "weftlab bench " + strings.Join(args, " "),
		Progress: out,
	}
	for _, t := range strings.Split(*tests, ",") {
		if t = strings.TrimSpace(t); t != "" {
			cfg.Tests = append(cfg.Tests, t)
		}
	}
	for _, name := range paths.names {
		cfg.Extra = append(cfg.Extra, suite.ExtraPath{Name: name, Template: paths.values[name], NetworkConfig: configs.values[name]})
	}
	if *verbose {
		cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	start := time.Now()
	fmt.Fprintf(out, "weftlab bench: %d round(s), %d s per test, underlay MTU %d\n", *rounds, *seconds, *mtu)
	res, err := suite.Run(ctx, cfg)
	if err != nil {
		if errors.Is(err, context.Canceled) {
			fmt.Fprintln(os.Stderr, "weftlab bench: interrupted; lab torn down, nothing written")
			return 130
		}
		fmt.Fprintln(os.Stderr, "weftlab bench:", err)
		return 1
	}
	if err := suite.WriteOutputs(*outDir, res); err != nil {
		fmt.Fprintln(os.Stderr, "weftlab bench:", err)
		return 1
	}
	fmt.Fprintf(out, "\n%s\n", suite.SummaryTable(res))
	for _, n := range res.Notes {
		fmt.Fprintln(out, "note:", n)
	}
	fmt.Fprintf(out, "wrote %s, %s and %s in %s (%s)\n",
		filepath.Join(*outDir, suite.ReportFile), filepath.Join(*outDir, suite.ChartFile),
		filepath.Join(*outDir, suite.JSONFile), *outDir, time.Since(start).Round(time.Second))
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
	var res suite.Results
	if err := json.Unmarshal(b, &res); err != nil {
		fmt.Fprintf(os.Stderr, "weftlab bench: %s: %v\n", from, err)
		return 1
	}
	if err := suite.WriteOutputs(outDir, &res); err != nil {
		fmt.Fprintln(os.Stderr, "weftlab bench:", err)
		return 1
	}
	fmt.Fprintf(out, "%s\nrewrote %s from %s\n", suite.SummaryTable(&res), outDir, from)
	return 0
}
