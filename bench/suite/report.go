package suite

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Output file names inside the output directory.
const (
	ReportFile = "report.md"
	ChartFile  = "chart.svg"
	JSONFile   = "results.json"
)

// WriteOutputs writes the report, the chart and the JSON into dir,
// creating it; each file is written to a temporary name and renamed, so a
// reader never sees half a file.
func WriteOutputs(dir string, res *Results) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	js, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return fmt.Errorf("encode results: %w", err)
	}
	var md, svg strings.Builder
	if err := WriteReport(&md, res); err != nil {
		return err
	}
	if err := WriteChart(&svg, res); err != nil {
		return err
	}
	for name, data := range map[string][]byte{
		JSONFile: append(js, '\n'), ReportFile: []byte(md.String()), ChartFile: []byte(svg.String()),
	} {
		if err := writeAtomic(filepath.Join(dir, name), data); err != nil {
			return err
		}
	}
	return nil
}

func writeAtomic(path string, data []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("rename %s: %w", tmp, err)
	}
	return nil
}

// FormatValue prints a metric value with about three significant digits.
func FormatValue(v float64, unit string) string {
	switch unit {
	case "segments", "packets", "datagrams":
		return strconv.FormatFloat(math.Round(v), 'f', 0, 64)
	}
	a := math.Abs(v)
	switch {
	case v == 0:
		return "0"
	case a >= 100:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case a >= 10:
		return strconv.FormatFloat(v, 'f', 1, 64)
	case a >= 1:
		return strconv.FormatFloat(v, 'f', 2, 64)
	case a >= 0.001:
		return strconv.FormatFloat(v, 'f', 3, 64)
	}
	return strconv.FormatFloat(v, 'g', 2, 64)
}

// FormatRatio prints a ratio to the baseline: "0.092×".
func FormatRatio(r float64) string {
	switch {
	case r == 0:
		return "0×"
	case r >= 10:
		return strconv.FormatFloat(r, 'f', 1, 64) + "×"
	case r >= 0.1:
		return strconv.FormatFloat(r, 'f', 2, 64) + "×"
	}
	return strconv.FormatFloat(r, 'f', 3, 64) + "×"
}

// SummaryCell is one path's cell of the summary table: the median and
// the ratio to the baseline with its range over rounds.
func SummaryCell(m MetricSummary, p PathSummary) string {
	if p.Median == nil {
		return "–"
	}
	s := FormatValue(*p.Median, m.Unit)
	switch {
	case p.Ratio == nil:
	case p.Path == Baseline:
		s += " (1×)"
	default:
		s += " (" + ratioText(p.Ratio) + ")"
	}
	return s
}

// ratioText is a ratio's median and, where the rounds differ, its range:
// "0.17×, 0.10–0.25×".
func ratioText(r *Ratio) string {
	if len(r.Rounds) == 1 || FormatRatio(r.Min) == FormatRatio(r.Max) {
		return FormatRatio(r.Median)
	}
	return fmt.Sprintf("%s, %s–%s", FormatRatio(r.Median), strings.TrimSuffix(FormatRatio(r.Min), "×"), FormatRatio(r.Max))
}

// FloorCell is one path's cell of the floor table: its ratio to host-gw
// and whether the median reaches FloorGoal ("✓") or not ("✗").
func FloorCell(m MetricSummary, p PathSummary) string {
	if p.FloorRatio == nil {
		return "–"
	}
	mark := "✗"
	if p.MeetsFloor(m) {
		mark = "✓"
	}
	return ratioText(p.FloorRatio) + " " + mark
}

// FloorTable is profile's ratios to host-gw as a Markdown table, for
// every path but host-gw and every metric that has them.
func FloorTable(res *Results, profile string) string {
	var b strings.Builder
	t := titles(res)
	b.WriteString("| metric, ÷ host-gw |")
	var cols []string
	for _, p := range res.Paths {
		if p.Name != Floor {
			cols = append(cols, p.Name)
			b.WriteString(" " + mdEscape(t[p.Name]) + " |")
		}
	}
	b.WriteString("\n|---|" + strings.Repeat("---|", len(cols)) + "\n")
	for _, m := range res.ProfileMetrics(profile) {
		cells, have := make([]string, 0, len(cols)), false
		for _, p := range m.Paths {
			if p.Path == Floor {
				continue
			}
			cells = append(cells, FloorCell(m, p))
			have = have || p.FloorRatio != nil
		}
		if have {
			b.WriteString("| " + mdEscape(m.heading()) + " | " + strings.Join(cells, " | ") + " |\n")
		}
	}
	return b.String()
}

func (m MetricSummary) heading() string {
	arrow := "↓"
	if m.Higher {
		arrow = "↑"
	}
	return fmt.Sprintf("%s, %s %s", m.Label, m.Unit, arrow)
}

func titles(res *Results) map[string]string {
	t := map[string]string{}
	for _, p := range res.Paths {
		t[p.Name] = p.Title
	}
	return t
}

// SummaryTable is underlay profile's summary as a Markdown table.
func SummaryTable(res *Results, profile string) string {
	var b strings.Builder
	t := titles(res)
	b.WriteString("| metric |")
	for _, p := range res.Paths {
		b.WriteString(" " + mdEscape(t[p.Name]) + " |")
	}
	b.WriteString("\n|---|")
	for range res.Paths {
		b.WriteString("---|")
	}
	b.WriteString("\n")
	for _, m := range res.ProfileMetrics(profile) {
		b.WriteString("| " + mdEscape(m.heading()) + " |")
		for _, p := range m.Paths {
			b.WriteString(" " + SummaryCell(m, p) + " |")
		}
		b.WriteString("\n")
	}
	return b.String()
}

// SummaryTables is every profile's summary table under its title, for a
// terminal.
func SummaryTables(res *Results) string {
	var b strings.Builder
	for i, pr := range res.Profiles {
		if i > 0 {
			b.WriteString("\n")
		}
		fmt.Fprintf(&b, "Underlay: %s\n\n%s", pr.Title, SummaryTable(res, pr.Name))
	}
	return b.String()
}

// WriteReport writes the Markdown report: a header, the summary, the
// machine and settings, the paths, every run and the summary per round.
func WriteReport(w io.Writer, res *Results) error {
	var b strings.Builder
	t := titles(res)
	reportHeader(&b, res)
	reportSummary(&b, res)
	reportMachine(&b, res)
	reportPaths(&b, res)
	reportRuns(&b, res, t)
	reportRounds(&b, res, t)
	_, err := io.WriteString(w, b.String())
	return err
}

// reportHeader is the title, when and how the run was made, the machine
// in one line and the run's notes.
func reportHeader(b *strings.Builder, res *Results) {
	m := res.Machine
	st := res.Settings
	fmt.Fprintf(b, "# weft benchmark: weft vs kernel VXLAN, host-gw and bare veth\n\n")
	fmt.Fprintf(b, "Run %s, %d round(s) × %d test(s) × %d path(s) × %d underlay profile(s), %d s per throughput test, in %s, by\n\n```\n%s\n```\n\n",
		res.Started.Format("2006-01-02 15:04 MST"), st.Rounds, len(st.Tests), len(res.Paths), len(res.Profiles), st.Seconds,
		res.Finished.Sub(res.Started).Round(time.Second), res.Command)
	fmt.Fprintf(b, "%s, %d CPUs (both namespaces share them), Linux %s. How to read this: [bench/README.md](../README.md).\n\n", m.CPU, m.CPUs, m.Kernel)
	for _, n := range res.Notes {
		fmt.Fprintf(b, "> **Note:** %s.\n\n", n)
	}
}

// reportSummary is the "Summary" section: how to read it, the table and
// the chart.
func reportSummary(b *strings.Builder, res *Results) {
	b.WriteString("## Summary\n\n")
	fmt.Fprintf(b, "Median over %d round(s). In brackets: the path ÷ kernel VXLAN **from the same round**, median and range (min–max) over the rounds. ↑ higher is better, ↓ lower is better. "+
		"CPU per GB: CPU seconds during the single-stream TCP test ÷ the GB its sender moved (the omitted first second included); \"all CPU\" is every busy CPU on the machine (iperf3 at both ends, kernel, daemons), softirq the kernel's packet processing, daemon the tunnel processes' utime+stime (none on the kernel paths). "+
		"Counters (retransmits, drops) are totals over a round's tests, both nodes, median over rounds, without ratios. –: does not apply, or failed (see \"Every run\"). "+
		"**weft** is weft with its defaults, the kernel fast path included where the kernel allows; **weft -fast-path=off** is its userspace path alone. "+
		"Each underlay profile ran in a lab of its own, set up before anything started in it; ratios compare paths of the same profile and round.\n\n", res.Settings.Rounds)
	for _, pr := range res.Profiles {
		fmt.Fprintf(b, "### Underlay: %s\n\n%s.\n\n", pr.Title, upperFirst(pr.Description))
		b.WriteString(SummaryTable(res, pr.Name))
		b.WriteString("\n")
		if ft := FloorTable(res, pr.Name); strings.Count(ft, "\n") > 2 {
			fmt.Fprintf(b, "Against host-gw, the floor (no encapsulation), same rounds: ✓ where the median reaches %s of it (≥ %s where higher is better, ≤ %s where lower is better).\n\n%s\n",
				FormatRatio(FloorGoal), FormatRatio(FloorGoal), FormatRatio(1/FloorGoal), ft)
		}
	}
	if len(res.Profiles) > 0 {
		fmt.Fprintf(b, "The chart shows the first underlay, %s, only (two would be cluttered; the tables have both):\n\n", res.Profiles[0].Title)
	}
	b.WriteString("![weft, host-gw and bare veth relative to kernel VXLAN](" + ChartFile + ")\n\n")
}

// upperFirst capitalises s's first letter.
func upperFirst(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}

// reportMachine is the "Machine and settings" table.
func reportMachine(b *strings.Builder, res *Results) {
	m := res.Machine
	st := res.Settings
	b.WriteString("## Machine and settings\n\n")
	fmt.Fprintf(b, "| | |\n|---|---|\n")
	row := func(k, v string) { fmt.Fprintf(b, "| %s | %s |\n", k, mdEscape(v)) }
	row("kernel", m.Kernel)
	row("CPU", fmt.Sprintf("%s, %d CPUs", m.CPU, m.CPUs))
	row("load average at start", m.LoadAvg)
	row("weft", m.Weft)
	row("weft flags", strings.Join(m.WeftArgs, " "))
	row("iperf3", m.Iperf3)
	row("ping", m.PingBinary)
	row("Go (weftlab)", m.Go)
	for _, pr := range res.Profiles {
		u := pr.Underlay
		row("underlay "+pr.Name, fmt.Sprintf("%s: %s MTU %d, txqueuelen %d, gso_max_size %d, gro_max_size %d, through a bridge in its own namespace",
			pr.Title, u.Name, u.MTU, u.TxQLen, u.GSOMaxSize, u.GROMaxSize))
		if len(pr.Setup) > 0 {
			row("underlay "+pr.Name+" set up by", strings.Join(pr.Setup, "; "))
		}
		if len(pr.Offloads) > 0 {
			row("underlay "+pr.Name+", node 0's eth0 (ethtool -k)", strings.Join(pr.Offloads, "; "))
		}
	}
	row("per test", fmt.Sprintf("iperf3 -t %d -O %d -J; UDP -u -l 64 -b 0; %d pings at %s; request/response 1 byte each way for %d s",
		st.Seconds, st.Omit, st.Pings, st.PingInterval, st.Seconds))
	row("order", st.Order)
	row("idle check", fmt.Sprintf("before each test, wait up to a few seconds for other CPU use < %.0f %% of all CPUs; the load seen is in \"Every run\"", st.IdleThreshold))
	b.WriteString("\n")
}

// reportPaths is the "Paths" table: one row per path and profile (each
// profile's lab has its own addresses).
func reportPaths(b *strings.Builder, res *Results) {
	b.WriteString("### Paths (node 0 → node 1)\n\n| underlay | path | from → to | device | MTU | txqueuelen | what |\n|---|---|---|---|---|---|---|\n")
	for _, pr := range res.Profiles {
		for _, p := range pr.Paths {
			what := p.Description
			if p.FastPath != "" {
				what += "; kernel fast path: " + p.FastPath
			}
			if len(p.Daemon) > 0 {
				what += "; node 0 ran `" + strings.Join(p.Daemon, " ") + "`"
			}
			fmt.Fprintf(b, "| %s | %s | %s → %s | %s | %d | %d | %s |\n", pr.Name, mdEscape(p.Title), p.Src, p.Dst, p.Device, p.MTU, p.TxQLen, mdEscape(what))
		}
	}
	b.WriteString("\n")
}

// reportRuns is the "Every run" table: one row per sample; t maps path
// names to titles.
func reportRuns(b *strings.Builder, res *Results, t map[string]string) {
	b.WriteString("## Every run\n\n")
	b.WriteString("CPU columns are seconds over the test (daemon = the tunnel processes' utime+stime; all = every busy CPU on the machine). Drop counters are deltas over the test, both nodes: tx_dropped of the path's device (udp0 for weft), UdpRcvbufErrors/UdpSndbufErrors of each node's namespace (every UDP socket there, iperf3's own included), weft's own drop counters by reason. \"load\" is the other CPU use seen just before the test.\n\n")
	b.WriteString("| round | underlay | test | path | result | retr | daemon CPU s | softirq s | all CPU s | tx_dropped | RcvbufErr | SndbufErr | weft drops | load |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, s := range res.Samples {
		load := fmt.Sprintf("%.0f %%", s.OtherLoad)
		if !s.IdleOK {
			load += " (busy)"
		}
		fmt.Fprintf(b, "| %d | %s | %s | %s | %s | %s | %.2f | %.2f | %.2f | %d | %d | %d | %s | %s |\n",
			s.Round, s.Profile, s.Test, mdEscape(t[s.Path]), mdEscape(sampleResult(s)), retr(s), s.DaemonCPU, s.SoftirqCPU, s.BusyCPU,
			s.TunTxDropped, s.UDPRcvbufErrors, s.UDPSndbufErrors, dropString(s.WeftDrops), load)
	}
	b.WriteString("\n")
}

// reportRounds is the "Per round" table: each summary metric of each
// path, one column per round; t maps path names to titles.
func reportRounds(b *strings.Builder, res *Results, t map[string]string) {
	rounds := res.Settings.Rounds
	b.WriteString("## Per round\n\nEach summary metric for each round, so that the spread is visible.\n\n")
	b.WriteString("| underlay | metric | path |")
	for r := 1; r <= rounds; r++ {
		fmt.Fprintf(b, " round %d |", r)
	}
	b.WriteString("\n|---|---|---|")
	for r := 1; r <= rounds; r++ {
		b.WriteString("---|")
	}
	b.WriteString("\n")
	for _, ps := range res.Summary {
		for _, ms := range ps.Metrics {
			reportRoundRows(b, ps.Profile, ms, t)
		}
	}
}

// reportRoundRows is one metric's rows of "Per round" in profile, one per
// path; t maps path names to titles.
func reportRoundRows(b *strings.Builder, profile string, ms MetricSummary, t map[string]string) {
	for _, p := range ms.Paths {
		fmt.Fprintf(b, "| %s | %s | %s |", profile, mdEscape(ms.heading()), mdEscape(t[p.Path]))
		for _, v := range p.Values {
			if v == nil {
				b.WriteString(" – |")
			} else {
				b.WriteString(" " + FormatValue(*v, ms.Unit) + " |")
			}
		}
		b.WriteString("\n")
	}
}

func retr(s Sample) string {
	switch s.Test {
	case TestTCP1, TestTCP4, TestTCP8:
		return strconv.FormatInt(s.Retransmits, 10)
	}
	return ""
}

// sampleResult is the "result" cell of a sample.
func sampleResult(s Sample) string {
	if s.Error != "" {
		return "ERROR: " + firstLine(s.Error)
	}
	switch s.Test {
	case TestTCP1, TestTCP4, TestTCP8:
		return fmt.Sprintf("%s Gb/s (%s moved)", FormatValue(s.Gbps, "Gb/s"), gbString(s.BytesMoved))
	case TestUDP64:
		return fmt.Sprintf("%s kpps delivered of %s sent (%.0f %% lost)", FormatValue(s.DeliveredPP/1e3, ""), FormatValue(s.SentPPS/1e3, ""), s.LossPct)
	case TestPing:
		return fmt.Sprintf("p50 %s ms, p99 %s ms, min %s, max %s (%d/%d)", FormatValue(s.P50ms, ""), FormatValue(s.P99ms, ""),
			FormatValue(s.Minms, ""), FormatValue(s.Maxms, ""), s.PingRecv, s.PingSent)
	case TestRR:
		return fmt.Sprintf("%s k/s", FormatValue(s.RRPerSec/1e3, ""))
	}
	return ""
}

func gbString(b int64) string { return FormatValue(float64(b)/1e9, "") + " GB" }

func dropString(m map[string]uint64) string {
	var parts []string
	for k, v := range m {
		if v > 0 {
			parts = append(parts, fmt.Sprintf("%s=%d", k, v))
		}
	}
	if len(parts) == 0 {
		return "0"
	}
	sort.Strings(parts)
	return strings.Join(parts, " ")
}

// mdEscape keeps a cell inside its table column.
func mdEscape(s string) string {
	return strings.NewReplacer("|", `\|`, "\n", " ").Replace(s)
}
