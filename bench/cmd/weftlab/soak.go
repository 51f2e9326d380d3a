package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/weft-net/weft/bench/lab"
)

const soakUsage = `weftlab soak -weft PATH [-duration 10m] [-sample 10s] [-churn 1m] [-rate-mbit 200] [-report bench/results/soak.md]
    three nodes (or -nodes N): a TCP stream n0 -> n1, pings between every pair every
    second, the last node stopped and started every -churn (alternately keeping and
    losing its lease); a sample every -sample of throughput, TCP retransmits, weft's
    RSS and drops by reason. Prints the samples as they come and a verdict, writes a
    Markdown report. Exits 1 if the verdict is FAIL.
`

func runSoak(args []string, out io.Writer) int {
	fs := flag.NewFlagSet("soak", flag.ContinueOnError)
	fs.Usage = func() { fmt.Fprint(fs.Output(), soakUsage); fs.PrintDefaults() }
	var c clusterFlags
	c.register(fs)
	var o lab.SoakOptions
	fs.DurationVar(&o.Duration, "duration", 10*time.Minute, "how long to run")
	fs.DurationVar(&o.Sample, "sample", 10*time.Second, "sampling interval")
	fs.DurationVar(&o.Churn, "churn", time.Minute, "how often the last node is stopped and started")
	fs.DurationVar(&o.ChurnDown, "churn-down", 5*time.Second, "how long the churned node stays down")
	rate := fs.Float64("rate-mbit", 200, "stream rate in Mb/s (0: as fast as it goes)")
	report := fs.String("report", filepath.Join("bench", "results", "soak.md"), "Markdown report to write (empty: none)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if c.nodes < 3 {
		fmt.Fprintln(os.Stderr, "weftlab soak: -nodes must be at least 3 (one of them is churned)")
		return 2
	}
	if o.Duration < o.Sample || o.Sample <= 0 || *rate < 0 {
		fmt.Fprintln(os.Stderr, "weftlab soak: want -duration >= -sample > 0 and -rate-mbit >= 0")
		return 2
	}
	o.Rate = int64(*rate * 1e6 / 8)
	if err := preflight(c.weft); err != nil {
		fmt.Fprintln(os.Stderr, "weftlab soak:", err)
		return 1
	}

	return inSession(out, func(s *session) int { return soak(s, c, o, *rate, *report) })
}

func soak(s *session, c clusterFlags, o lab.SoakOptions, rateMbit float64, reportPath string) int {
	out := s.out
	fmt.Fprintf(out, "weft soak: %d nodes for %v, sample every %v, n%d churned every %v, stream n0 -> n1 at %s\n",
		c.nodes, o.Duration, o.Sample, c.nodes-1, o.Churn, rateString(rateMbit))
	version := weftVersion(c.weft)
	l, took, err := startCluster(s, c)
	if err != nil {
		if s.interrupted() {
			return 130
		}
		fmt.Fprintln(out, "FAIL: start cluster:", err)
		return 1
	}
	fmt.Fprintf(out, "  lab %s, underlay %s, all ready in %v\n\n", l.ID, l.Underlay, took.Round(time.Millisecond))
	// The first lease changes take a moment to reach every watch.
	time.Sleep(time.Second)

	fmt.Fprintln(out, sampleHeader(c.nodes))
	rep, err := l.Soak(s.ctx, o, func(smp lab.SoakSample) { fmt.Fprintln(out, sampleRow(smp)) })
	if err != nil {
		if s.interrupted() {
			return 130
		}
		fmt.Fprintln(out, "FAIL: soak:", err)
		return 1
	}
	if s.interrupted() {
		return 130
	}
	verdict := rep.Verdict()
	fmt.Fprintln(out)
	writeSummary(out, rep, verdict)
	if reportPath != "" {
		md := markdownReport(rep, verdict, version, rateMbit)
		if err := os.MkdirAll(filepath.Dir(reportPath), 0o755); err != nil {
			fmt.Fprintln(out, "write report:", err)
			return 1
		}
		if err := os.WriteFile(reportPath, []byte(md), 0o644); err != nil {
			fmt.Fprintln(out, "write report:", err)
			return 1
		}
		fmt.Fprintf(out, "report written to %s\n", reportPath)
	}
	if len(verdict) > 0 {
		return 1
	}
	return 0
}

func rateString(mbit float64) string {
	if mbit == 0 {
		return "full speed"
	}
	return fmt.Sprintf("%g Mb/s", mbit)
}

func sampleHeader(nodes int) string {
	rss := make([]string, nodes)
	for i := range rss {
		rss[i] = fmt.Sprintf("n%d", i)
	}
	return fmt.Sprintf("%7s %9s %14s %11s %11s  %-*s  %s", "time", "Mb/s", "retrans", "pings", "churn pings",
		nodes*7-1, "RSS MiB "+strings.Join(rss, "/"), "drops / events")
}

func sampleRow(s lab.SoakSample) string {
	rss := make([]string, len(s.RSS))
	for i, v := range s.RSS {
		rss[i] = fmt.Sprintf("%6.1f", float64(v)/(1<<20))
		if v == 0 {
			rss[i] = fmt.Sprintf("%6s", "down")
		}
	}
	notes := []string{}
	if d := dropsString(s.Drops); d != "" {
		notes = append(notes, d)
	}
	notes = append(notes, s.Events...)
	return fmt.Sprintf("%7s %9.1f %14s %11s %11s  %s  %s",
		s.At.Round(time.Second), s.Mbps(), retransString(s.Retrans, s.OutSegs),
		fmt.Sprintf("%d/%d", s.PingSent-s.PingLost, s.PingSent),
		fmt.Sprintf("%d/%d", s.ChurnPingSent-s.ChurnPingLost, s.ChurnPingSent),
		strings.Join(rss, " "), strings.Join(notes, "; "))
}

func retransString(re, out int64) string {
	if out <= 0 {
		return fmt.Sprint(re)
	}
	return fmt.Sprintf("%d (%.2f%%)", re, 100*float64(re)/float64(out))
}

// dropsString prints per-node drops as "n1:no_route=3 n2:not_local=1".
func dropsString(drops []map[string]uint64) string {
	var parts []string
	for i, m := range drops {
		var keys []string
		for k, v := range m {
			if v > 0 {
				keys = append(keys, k)
			}
		}
		slices.Sort(keys)
		for _, k := range keys {
			parts = append(parts, fmt.Sprintf("n%d:%s=%d", i, k, m[k]))
		}
	}
	return strings.Join(parts, " ")
}

type soakTotals struct {
	pingSent, pingLost, churnSent, churnLost int
	retrans, outSegs, rcvbuf                 int64
}

func totals(r *lab.SoakReport) soakTotals {
	var t soakTotals
	for _, s := range r.Samples {
		t.pingSent += s.PingSent
		t.pingLost += s.PingLost
		t.churnSent += s.ChurnPingSent
		t.churnLost += s.ChurnPingLost
		t.retrans += s.Retrans
		t.outSegs += s.OutSegs
		t.rcvbuf += s.UDPRcvbufErrors
	}
	return t
}

func dropTotalsString(r *lab.SoakReport) string {
	tot := r.DropTotals()
	var keys []string
	for k, v := range tot {
		if v > 0 {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	var parts []string
	for _, k := range keys {
		what := "unexpected"
		if lab.ExpectedDrop(k) {
			what = "expected during churn"
		}
		parts = append(parts, fmt.Sprintf("%s=%d (%s)", k, tot[k], what))
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

func rssLines(r *lab.SoakReport) []string {
	var lines []string
	for i := range r.RSSFirst {
		note := ""
		if !r.RSSGrowthChecked[i] {
			note = " (restarted by the churn: not judged)"
		}
		lines = append(lines, fmt.Sprintf("n%d %.1f MiB -> %.1f MiB (%+.1f MiB)%s", i,
			float64(r.RSSFirst[i])/(1<<20), float64(r.RSSLast[i])/(1<<20),
			float64(r.RSSLast[i]-r.RSSFirst[i])/(1<<20), note))
	}
	return lines
}

func writeSummary(out io.Writer, r *lab.SoakReport, verdict []string) {
	t := totals(r)
	stream := fmt.Sprintf("%s verified in %v (%.1f Mb/s)", humanBytes(r.Stream.Received), r.Stream.Duration.Round(time.Second), r.Stream.Mbps())
	if r.StreamErr != nil {
		stream += ", FAILED: " + r.StreamErr.Error()
	}
	fmt.Fprintf(out, "stream n0 -> n1   %s\n", stream)
	fmt.Fprintf(out, "tcp retransmits   %s of n0's segments\n", retransString(t.retrans, t.outSegs))
	fmt.Fprintf(out, "pings             %d/%d between unchurned nodes, %d/%d to or from the churned node\n",
		t.pingSent-t.pingLost, t.pingSent, t.churnSent-t.churnLost, t.churnSent)
	fmt.Fprintf(out, "drops             %s\n", dropTotalsString(r))
	fmt.Fprintf(out, "udp rcvbuf drops  %d\n", t.rcvbuf)
	for _, line := range rssLines(r) {
		fmt.Fprintf(out, "rss               %s\n", line)
	}
	if len(verdict) == 0 {
		fmt.Fprintln(out, "\nPASS")
		return
	}
	fmt.Fprintln(out, "\nFAIL:")
	for _, v := range verdict {
		fmt.Fprintln(out, "  -", v)
	}
}

func markdownReport(r *lab.SoakReport, verdict []string, version string, rateMbit float64) string {
	var b strings.Builder
	t := totals(r)
	o := r.Options
	result := "PASS"
	if len(verdict) > 0 {
		result = "FAIL"
	}
	kernel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	fmt.Fprintf(&b, "# weft soak: %s\n\n", result)
	fmt.Fprintf(&b, "Run %s for %v by `weftlab soak` (`make soak`).\n\n", r.Started.UTC().Format(time.RFC3339), o.Duration)
	fmt.Fprintf(&b, "| | |\n|---|---|\n")
	fmt.Fprintf(&b, "| weft | %s |\n", orDash(version))
	fmt.Fprintf(&b, "| host | Linux %s, %d CPUs, %s |\n", strings.TrimSpace(string(kernel)), runtime.NumCPU(), runtime.GOARCH)
	fmt.Fprintf(&b, "| nodes | %d in network namespaces; n%d churned every %v (down %v), alternately keeping and losing its lease |\n",
		r.Nodes, r.Nodes-1, o.Churn, o.ChurnDown)
	fmt.Fprintf(&b, "| traffic | TCP stream n0 → n1 at %s, checked byte by byte; ping between every pair every second |\n", rateString(rateMbit))
	fmt.Fprintf(&b, "| sample | every %v |\n\n", o.Sample)

	fmt.Fprintf(&b, "## Verdict: %s\n\n", result)
	if len(verdict) == 0 {
		fmt.Fprintf(&b, "Every criterion held: the stream arrived intact, pings between unchurned nodes lost at most 1%%, "+
			"no drops other than `no_route` (expected while a lease changes), RSS of the unchurned daemons grew less than %d MiB, "+
			"no daemon died, the churned node came back every time.\n\n", o.RSSLimit>>20)
	} else {
		for _, v := range verdict {
			fmt.Fprintf(&b, "- %s\n", strings.ReplaceAll(v, "\n", " "))
		}
		b.WriteString("\n")
	}

	fmt.Fprintf(&b, "## Summary\n\n")
	fmt.Fprintf(&b, "| | |\n|---|---|\n")
	stream := fmt.Sprintf("%s verified, %.1f Mb/s average", humanBytes(r.Stream.Received), r.Stream.Mbps())
	if r.StreamErr != nil {
		stream += "; failed: " + r.StreamErr.Error()
	}
	fmt.Fprintf(&b, "| stream n0 → n1 | %s |\n", stream)
	fmt.Fprintf(&b, "| TCP retransmits (n0) | %s of segments sent |\n", retransString(t.retrans, t.outSegs))
	fmt.Fprintf(&b, "| pings, unchurned pairs | %d of %d answered |\n", t.pingSent-t.pingLost, t.pingSent)
	fmt.Fprintf(&b, "| pings to/from n%d | %d of %d answered |\n", r.Nodes-1, t.churnSent-t.churnLost, t.churnSent)
	fmt.Fprintf(&b, "| weft drops | %s |\n", dropTotalsString(r))
	fmt.Fprintf(&b, "| UDP receive-buffer drops | %d |\n", t.rcvbuf)
	for _, line := range rssLines(r) {
		fmt.Fprintf(&b, "| RSS | %s |\n", line)
	}

	fmt.Fprintf(&b, "\n## Over time\n\n")
	b.WriteString("| time | Mb/s | TCP retrans | pings | churn pings |")
	for i := range r.Nodes {
		fmt.Fprintf(&b, " RSS n%d MiB |", i)
	}
	b.WriteString(" drops | events |\n|---:|---:|---:|---:|---:|")
	for range r.Nodes {
		b.WriteString("---:|")
	}
	b.WriteString("---|---|\n")
	for _, s := range r.Samples {
		fmt.Fprintf(&b, "| %v | %.1f | %s | %d/%d | %d/%d |", s.At.Round(time.Second), s.Mbps(), retransString(s.Retrans, s.OutSegs),
			s.PingSent-s.PingLost, s.PingSent, s.ChurnPingSent-s.ChurnPingLost, s.ChurnPingSent)
		for _, v := range s.RSS {
			if v == 0 {
				b.WriteString(" down |")
			} else {
				fmt.Fprintf(&b, " %.1f |", float64(v)/(1<<20))
			}
		}
		fmt.Fprintf(&b, " %s | %s |\n", orDash(dropsString(s.Drops)), orDash(strings.Join(s.Events, "; ")))
	}
	b.WriteString("\nDrops are per sample and per node, by reason; `no_route` is expected while the churned node's lease is gone " +
		"or not yet learned. Pings count one echo per pair per second.\n")
	return b.String()
}

func orDash(s string) string {
	if s == "" {
		return "–"
	}
	return s
}
