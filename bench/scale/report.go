package scale

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Targets at TargetSize leases (the scale issue's).
const (
	TargetSize        = 5000
	TargetPropagation = time.Second      // p99
	TargetBulk        = 10 * time.Second // bulk load applied
	TargetRSS         = 64 << 20
	TargetStartup     = 2 * time.Second
	// A change may cost a full rebuild only while a rebuild takes less.
	TargetRebuild = time.Millisecond
)

// Check is one target's outcome.
type Check struct {
	Name, Want, Got string
	OK              bool
}

// Checks evaluates the targets on the largest size measured; they are
// meant for TargetSize and are not checked below it.
func (r *Report) Checks() []Check {
	if len(r.Sizes) == 0 {
		return nil
	}
	s := r.Sizes[len(r.Sizes)-1]
	if s.Leases < TargetSize {
		return nil
	}
	var rss int64
	for _, d := range s.Daemons {
		rss = max(rss, d.RSS)
	}
	incremental := s.TableApply.NsPerOp < float64(TargetRebuild) || s.TableRebuild.NsPerOp < float64(TargetRebuild)
	return []Check{
		{"propagation p99", "≤ " + TargetPropagation.String(), dur(s.Propagation.P99), s.Propagation.P99 <= TargetPropagation && s.Propagation.Samples > 0},
		{"every change applied by every daemon", "0 missed", fmt.Sprintf("%d missed", s.Unseen), s.Unseen == 0},
		{"bulk load applied", "≤ " + TargetBulk.String(), dur(s.BulkApplied), s.BulkApplied <= TargetBulk},
		{"daemon RSS", fmt.Sprintf("≤ %d MiB", TargetRSS>>20), mib(rss), rss <= TargetRSS},
		{"start-up to ready", "≤ " + TargetStartup.String(), dur(s.Startup), s.Startup <= TargetStartup},
		{"one change without a full rebuild", "apply < 1 ms (rebuild " + ns(s.TableRebuild.NsPerOp) + ")", ns(s.TableApply.NsPerOp), incremental},
		{"forwarding during updates", "no ping lost", fmt.Sprintf("%d of %d lost", s.PingSent-s.PingReceived, s.PingSent), s.PingSent > 0 && s.PingReceived >= s.PingSent},
	}
}

// Failed lists the targets missed.
func (r *Report) Failed() []string {
	var out []string
	for _, c := range r.Checks() {
		if !c.OK {
			out = append(out, fmt.Sprintf("%s: %s, want %s", c.Name, c.Got, c.Want))
		}
	}
	return out
}

func dur(d time.Duration) string {
	switch {
	case d >= time.Second:
		return fmt.Sprintf("%.2f s", d.Seconds())
	case d >= time.Millisecond:
		return fmt.Sprintf("%.1f ms", float64(d)/1e6)
	}
	return fmt.Sprintf("%.0f µs", float64(d)/1e3)
}

func ns(v float64) string {
	switch {
	case v >= 1e6:
		return fmt.Sprintf("%.2f ms", v/1e6)
	case v >= 1e3:
		return fmt.Sprintf("%.1f µs", v/1e3)
	}
	return fmt.Sprintf("%.0f ns", v)
}

func mib(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

// WriteMarkdown writes the report.
func (r *Report) WriteMarkdown(w io.Writer) error {
	var b strings.Builder
	p := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	p("# weft control plane at scale\n\n")
	p("`sudo make scale` on %s, %s, weft %s; %d real daemons in network namespaces watching one embedded etcd; %s; took %s.\n\n",
		r.Machine, r.Started.UTC().Format("2006-01-02 15:04 MST"), r.Version, r.Daemons, "subnets /29 of "+Network, r.Duration.Round(time.Second))
	p("Each size starts from no simulated leases: a **bulk load** writes them all at once (32 writers, each lease a grant and a create-only transaction, as a joining node does), then a quiet window, then **churn** (40%% renewals written as stock flanneld writes them, 30%% joins, 30%% leaves, at a steady rate) while a ping runs every 10 ms between two real nodes' pods. **Propagation** is from sending a change to etcd until a daemon's table reflects its revision (`/status?peers=0`, polled every %v, so figures carry up to that much extra), over every change and every daemon. **Start-up** restarts one daemon with all leases present and times it to `/readyz` 200. The table figures are in-process benchmarks of `tunnel.Table` at the same size.\n\n", r.Poll)
	if checks := r.Checks(); len(checks) > 0 {
		p("## Targets at %d leases\n\n| target | want | measured | |\n|---|---|---|---|\n", TargetSize)
		for _, c := range checks {
			mark := "✅"
			if !c.OK {
				mark = "❌ **missed**"
			}
			p("| %s | %s | %s | %s |\n", c.Name, c.Want, c.Got, mark)
		}
		p("\n")
	}
	p("![propagation, bulk load and start-up by cluster size](scale.svg)\n\n")
	p("## By cluster size\n\n")
	p("| leases | bulk written | bulk applied (slowest daemon) | churn | propagation p50 / p99 / max | missed | start-up (etcd requests) | ping lost / max RTT |\n|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, s := range r.Sizes {
		p("| %d | %s | %s | %.0f/s, %d changes | %s / %s / %s | %d | %s (%d) | %d of %d / %s |\n", s.Leases, dur(s.BulkWrite), dur(s.BulkApplied),
			s.ChurnRate, s.ChurnOps, dur(s.Propagation.P50), dur(s.Propagation.P99), dur(s.Propagation.Max), s.Unseen,
			dur(s.Startup), s.StartupRequests, s.PingSent-s.PingReceived, s.PingSent, dur(s.PingMax))
	}
	p("\n### Per daemon (worst of the %d daemons)\n\n", r.Daemons)
	p("| leases | RSS | CPU quiet | CPU churn | etcd req/s quiet | etcd req/s churn | table updates in churn | update mean / max |\n|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, s := range r.Sizes {
		var w Daemon
		for _, d := range s.Daemons {
			w.RSS = max(w.RSS, d.RSS)
			w.CPUQuiet, w.CPUChurn = max(w.CPUQuiet, d.CPUQuiet), max(w.CPUChurn, d.CPUChurn)
			w.EtcdQuiet, w.EtcdChurn = max(w.EtcdQuiet, d.EtcdQuiet), max(w.EtcdChurn, d.EtcdChurn)
			w.TableUpdates = max(w.TableUpdates, d.TableUpdates)
			w.UpdateMean, w.UpdateMax = max(w.UpdateMean, d.UpdateMean), max(w.UpdateMax, d.UpdateMax)
		}
		p("| %d | %s | %.1f%% | %.1f%% | %.2f | %.2f | %d | %s / %s |\n", s.Leases, mib(w.RSS), 100*w.CPUQuiet, 100*w.CPUChurn,
			w.EtcdQuiet, w.EtcdChurn, w.TableUpdates, dur(w.UpdateMean), dur(w.UpdateMax))
	}
	p("\nCPU is in percent of one core; under churn it includes answering the harness's %.0f status polls a second. etcd requests are what the daemon sent (unary calls and stream messages; gRPC keepalive pings are not requests). Update mean is per watch batch during churn; the maximum is over the daemon's life, so it includes the bulk loads' batches of thousands of changes.\n\n", float64(time.Second)/float64(r.Poll))
	p("### Peer table (in process)\n\n| leases | one change: incremental | one change: full rebuild | lookup |\n|---:|---:|---:|---:|\n")
	for _, s := range r.Sizes {
		p("| %d | %s, %d allocs | %s, %d allocs | %s, %d allocs |\n", s.Leases, ns(s.TableApply.NsPerOp), s.TableApply.AllocsPerOp,
			ns(s.TableRebuild.NsPerOp), s.TableRebuild.AllocsPerOp, ns(s.Lookup.NsPerOp), s.Lookup.AllocsPerOp)
	}
	p("\n### Propagation by kind of change\n\n| leases | join p50 / p99 | renewal p50 / p99 | leave p50 / p99 |\n|---:|---:|---:|---:|\n")
	for _, s := range r.Sizes {
		cell := func(k string) string {
			l := s.ByKind[k]
			return dur(l.P50) + " / " + dur(l.P99)
		}
		p("| %d | %s | %s | %s |\n", s.Leases, cell("join"), cell("renew"), cell("leave"))
	}
	if f := r.Failed(); len(f) > 0 {
		p("\n**Verdict: FAIL** — %s\n", strings.Join(f, "; "))
	} else if len(r.Checks()) > 0 {
		p("\n**Verdict: PASS** — every target holds at %d leases.\n", TargetSize)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// WriteSVG draws, per size, propagation p50 and p99, the bulk load and the
// start-up, in milliseconds on a log scale, with the targets as marks.
func (r *Report) WriteSVG(w io.Writer) error {
	const (
		width, height         = 760, 340
		left, right, top, bot = 60, 20, 40, 60
		lo, hi                = 0.0, 5.0 // log10 ms: 1 ms .. 100 s
	)
	series := []struct {
		name   string
		colour string
		target time.Duration
		get    func(Size) time.Duration
	}{
		{"propagation p50", "#9ecae1", 0, func(s Size) time.Duration { return s.Propagation.P50 }},
		{"propagation p99", "#3182bd", TargetPropagation, func(s Size) time.Duration { return s.Propagation.P99 }},
		{"bulk load applied", "#e6550d", TargetBulk, func(s Size) time.Duration { return s.BulkApplied }},
		{"start-up to ready", "#31a354", TargetStartup, func(s Size) time.Duration { return s.Startup }},
	}
	plotW, plotH := float64(width-left-right), float64(height-top-bot)
	y := func(d time.Duration) float64 {
		v := math.Log10(math.Max(float64(d)/1e6, 1))
		return float64(top) + plotH*(1-(math.Min(v, hi)-lo)/(hi-lo))
	}
	var b strings.Builder
	p := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	p(`<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">`+"\n", width, height)
	p(`<rect width="100%%" height="100%%" fill="white"/>` + "\n")
	p(`<text x="%d" y="20" font-size="14" font-weight="bold">weft control plane by cluster size (log scale; dashes: targets)</text>`+"\n", left)
	for e := lo; e <= hi; e++ {
		yy := y(time.Duration(math.Pow(10, e) * 1e6))
		label := []string{"1 ms", "10 ms", "100 ms", "1 s", "10 s", "100 s"}[int(e)]
		p(`<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#ddd"/><text x="%d" y="%.1f" text-anchor="end">%s</text>`+"\n",
			left, width-right, yy, yy, left-6, yy+4, label)
	}
	n := max(len(r.Sizes), 1)
	groupW := plotW / float64(n)
	barW := groupW * 0.8 / float64(len(series))
	for gi, s := range r.Sizes {
		x0 := float64(left) + groupW*float64(gi) + groupW*0.1
		for si, se := range series {
			d := se.get(s)
			x := x0 + barW*float64(si)
			yy := y(d)
			p(`<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"><title>%s at %d leases: %s</title></rect>`+"\n",
				x, yy, barW-2, float64(top)+plotH-yy, se.colour, se.name, s.Leases, dur(d))
			if se.target > 0 {
				ty := y(se.target)
				p(`<line x1="%.1f" x2="%.1f" y1="%.1f" y2="%.1f" stroke="black" stroke-dasharray="3,2"/>`+"\n", x, x+barW-2, ty, ty)
			}
		}
		p(`<text x="%.1f" y="%d" text-anchor="middle">%d leases</text>`+"\n", x0+groupW*0.4, height-bot+16, s.Leases)
	}
	for si, se := range series {
		x := left + si*170
		p(`<rect x="%d" y="%d" width="12" height="12" fill="%s"/><text x="%d" y="%d">%s</text>`+"\n", x, height-22, se.colour, x+16, height-12, se.name)
	}
	p("</svg>\n")
	_, err := io.WriteString(w, b.String())
	return err
}

// WriteFiles writes scale.md, scale.svg and scale.json into dir.
func (r *Report) WriteFiles(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	var md, svg strings.Builder
	if err := r.WriteMarkdown(&md); err != nil {
		return err
	}
	if err := r.WriteSVG(&svg); err != nil {
		return err
	}
	js, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	for name, data := range map[string]string{"scale.md": md.String(), "scale.svg": svg.String(), "scale.json": string(js) + "\n"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			return fmt.Errorf("write %s: %w", name, err)
		}
	}
	return nil
}
