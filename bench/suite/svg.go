package suite

import (
	"encoding/xml"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
)

// Colours of the built-in paths, weft the loudest and weft -fast-path=off
// its lighter kin; kernel VXLAN's is the baseline's dashed line.
var pathColors = map[string]string{
	"weft": "#d62728", UserspacePath: "#ff7f0e", Baseline: "#1f77b4", "host-gw": "#2ca02c", "veth": "#7f7f7f",
}

// palette colours the other paths, in path order.
var palette = []string{"#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf"}

// Chart geometry, in SVG pixels.
const (
	chartW     = 1000
	marginL    = 56
	marginR    = 16
	panelPlotH = 230
	panelGapH  = 96 // under a panel: two lines of metric labels and air
	maxRatio   = 4.0
)

// WriteChart draws the first underlay profile's chart metrics as grouped
// bars, one bar per path and metric, each the median ratio to kernel VXLAN
// of the same round (VXLAN = 1.0). Higher-is-better and lower-is-better
// metrics get a panel each, so that "taller" means the same thing within a
// panel. The other profiles are in the report's tables only: two charts'
// worth of bars in one would be cluttered.
func WriteChart(w io.Writer, res *Results) error {
	var up, down []MetricSummary
	var metrics []MetricSummary
	profile := "none"
	if len(res.Summary) > 0 {
		metrics, profile = res.Summary[0].Metrics, ProfileTitle(res.Summary[0].Profile)
	}
	for _, m := range metrics {
		if !m.Chart {
			continue
		}
		if m.Higher {
			up = append(up, m)
		} else {
			down = append(down, m)
		}
	}
	t := titles(res)
	var b strings.Builder
	top := 84.0
	h := top + 2*(panelPlotH+panelGapH) + 4
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%.0f" viewBox="0 0 %d %.0f" font-family="Helvetica, Arial, sans-serif">`+"\n",
		chartW, h, chartW, h)
	fmt.Fprintf(&b, `<rect x="0" y="0" width="%d" height="%.0f" fill="#ffffff"/>`+"\n", chartW, h)
	text(&b, marginL, 24, 17, "start", "bold", "#000", "weft vs kernel VXLAN, host-gw and bare veth (kernel VXLAN = 1.0, median of "+
		fmt.Sprint(res.Settings.Rounds)+" round(s))")
	text(&b, marginL, 44, 12, "start", "normal", "#444", fmt.Sprintf("%s; %s, %d CPUs, Linux %s; underlay %s, veth MTU %d; %d s per test; %s",
		shortVersion(res.Machine.Weft), res.Machine.CPU, res.Machine.CPUs, res.Machine.Kernel, profile, res.Settings.UnderlayMTU, res.Settings.Seconds,
		res.Started.Format("2006-01-02")))
	// Legend.
	x := float64(marginL)
	for i, p := range res.Paths {
		fmt.Fprintf(&b, `<rect x="%.1f" y="56" width="12" height="12" fill="%s"/>`+"\n", x, pathColor(res, i))
		label := t[p.Name]
		text(&b, x+16, 66.5, 12, "start", "normal", "#000", label)
		x += 16 + 7.2*float64(len([]rune(label))) + 20
	}
	y := top
	if err := panel(&b, res, up, y, "higher is better"); err != nil {
		return err
	}
	y += panelPlotH + panelGapH
	if err := panel(&b, res, down, y, "lower is better"); err != nil {
		return err
	}
	text(&b, marginL, h-14, 11, "start", "normal", "#555", fmt.Sprintf(
		"Each bar: the path ÷ kernel VXLAN of the same round, median over rounds. Dotted: %s host-gw (below: ÷ %s). ▲: cut at %g×. Ranges, method: report.md",
		FormatRatio(FloorGoal), trimZeros(FloorGoal), maxRatio))
	b.WriteString("</svg>\n")
	_, err := io.WriteString(w, b.String())
	return err
}

// pathColor is the colour of res.Paths[i]: its own for a built-in path,
// else the palette's next.
func pathColor(res *Results, i int) string {
	if c, ok := pathColors[res.Paths[i].Name]; ok {
		return c
	}
	k := 0
	for _, p := range res.Paths[:i] {
		if _, ok := pathColors[p.Name]; !ok {
			k++
		}
	}
	return palette[k%len(palette)]
}

// panel draws one group of metrics with its plot area's top at y.
func panel(b *strings.Builder, res *Results, ms []MetricSummary, y float64, subtitle string) error {
	text(b, marginL, y+4, 13, "start", "bold", "#000", "Ratio to kernel VXLAN, "+subtitle)
	ymax, step := panelScale(ms)
	pa := plotArea{y: y + 14, w: float64(chartW - marginL - marginR), h: float64(panelPlotH - 14), ymax: ymax}
	pa.grid(b, step)
	if len(ms) == 0 {
		text(b, marginL+pa.w/2, pa.y+pa.h/2, 12, "middle", "normal", "#555", "no metric measured")
		return nil
	}
	n := len(res.Paths)
	groupW := pa.w / float64(len(ms))
	barW := math.Min(30, groupW*0.8/float64(n))
	t := titles(res)
	for gi, m := range ms {
		gx := float64(marginL) + groupW*float64(gi) + (groupW-barW*float64(n))/2
		for pi, p := range m.Paths {
			pa.bar(b, m, p, pathColor(res, pi), gx+barW*float64(pi), barW, t[p.Path])
		}
		pa.groupLabels(b, m, float64(marginL)+groupW*(float64(gi)+0.5))
		pa.floorLine(b, m, gx-4, barW*float64(n)+8)
	}
	// The baseline, over the bars.
	by := pa.yOf(1)
	fmt.Fprintf(b, `<line x1="%d" y1="%.1f" x2="%.0f" y2="%.1f" stroke="#1f77b4" stroke-width="1.5" stroke-dasharray="6 4"/>`+"\n", marginL, by, marginL+pa.w, by)
	return nil
}

// panelScale is a panel's vertical scale: up to the largest ratio shown
// (at least 1.2), capped at maxRatio and rounded up to a whole grid step.
func panelScale(ms []MetricSummary) (ymax, step float64) {
	ymax = 1.2
	for _, m := range ms {
		for _, p := range m.Paths {
			if p.Ratio != nil {
				ymax = math.Max(ymax, p.Ratio.Median*1.12)
			}
		}
	}
	ymax = math.Min(ymax, maxRatio)
	step = 0.25
	switch {
	case ymax > 2.5:
		step = 1
	case ymax > 1.5:
		step = 0.5
	}
	return math.Ceil(ymax/step) * step, step
}

// plotArea is a panel's plot: its top y, width w and height h in pixels
// (its left edge is marginL), and the ratio at its top, ymax.
type plotArea struct {
	y, w, h, ymax float64
}

// yOf is the height of ratio v in the plot; ratios over ymax are cut.
func (pa plotArea) yOf(v float64) float64 { return pa.y + pa.h - math.Min(v, pa.ymax)/pa.ymax*pa.h }

// grid draws a labelled grid line every step from 0 to ymax, then the
// plot's bottom axis.
func (pa plotArea) grid(b *strings.Builder, step float64) {
	for g := 0.0; g <= pa.ymax+1e-9; g += step {
		gy := pa.yOf(g)
		fmt.Fprintf(b, `<line x1="%d" y1="%.1f" x2="%.0f" y2="%.1f" stroke="#e4e4e4" stroke-width="1"/>`+"\n", marginL, gy, marginL+pa.w, gy)
		text(b, marginL-6, gy+4, 11, "end", "normal", "#555", trimZeros(g))
	}
	fmt.Fprintf(b, `<line x1="%d" y1="%.1f" x2="%.0f" y2="%.1f" stroke="#000" stroke-width="1"/>`+"\n", marginL, pa.y+pa.h, marginL+pa.w, pa.y+pa.h)
}

// bar draws the bar of path p (titled title, coloured fill) in metric m at
// x, w wide, with its ratio printed over it: rotated when the bar is too
// narrow for the label.
func (pa plotArea) bar(b *strings.Builder, m MetricSummary, p PathSummary, fill string, x, w float64, title string) {
	ratio, ok := 0.0, p.Ratio != nil
	if ok {
		ratio = p.Ratio.Median
	}
	top := pa.yOf(ratio)
	tip := fmt.Sprintf("%s, %s: %s", m.Label, title, SummaryCell(m, p)+" "+m.Unit)
	fmt.Fprintf(b, `<rect class="bar" data-path="%s" data-metric="%s" x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"><title>%s</title></rect>`+"\n",
		esc(p.Path), esc(m.Key), x+1, top, w-2, pa.y+pa.h-top, fill, esc(tip))
	label := "n/a"
	if ok {
		label = trimX(FormatRatio(ratio))
		if ratio > pa.ymax {
			label = "▲" + label
		}
	}
	lx, ly := x+w/2, top-4
	if w < 26 {
		fmt.Fprintf(b, `<text x="%.1f" y="%.1f" font-size="10" text-anchor="start" fill="#222" transform="rotate(-90 %.1f %.1f)">%s</text>`+"\n",
			lx+3, ly, lx+3, ly, esc(label))
	} else {
		text(b, lx, ly, 10, "middle", "normal", "#222", label)
	}
}

// floorLine marks metric m's goal against host-gw across its group's
// bars (x, w wide): FloorGoal of host-gw's ratio where higher is better,
// host-gw's ratio ÷ FloorGoal where lower is better. A bar that reaches the
// line (past it, where lower is better: below it) meets the goal.
func (pa plotArea) floorLine(b *strings.Builder, m MetricSummary, x, w float64) {
	for _, p := range m.Paths {
		if p.Path != Floor || p.Ratio == nil {
			continue
		}
		v := p.Ratio.Median * FloorGoal
		if !m.Higher {
			v = p.Ratio.Median / FloorGoal
		}
		y := pa.yOf(v)
		fmt.Fprintf(b, `<line class="floor" data-metric="%s" data-ratio="%s" x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#000" stroke-width="1.5" stroke-dasharray="2 2"><title>%s</title></line>`+"\n",
			esc(m.Key), strconv.FormatFloat(v, 'f', 4, 64), x, y, x+w, y, esc(fmt.Sprintf("%s: %s host-gw (%s of VXLAN)", m.Label, FormatRatio(FloorGoal), trimX(FormatRatio(v)))))
	}
}

// groupLabels writes metric m's name and the baseline's value under the
// plot, centred on cx.
func (pa plotArea) groupLabels(b *strings.Builder, m MetricSummary, cx float64) {
	label := m.Short
	if label == "" {
		label = m.Label
	}
	text(b, cx, pa.y+pa.h+18, 12, "middle", "bold", "#000", label)
	var base *PathSummary
	for i := range m.Paths {
		if m.Paths[i].Path == Baseline {
			base = &m.Paths[i]
		}
	}
	vx := "VXLAN: failed"
	if base != nil && base.Median != nil {
		vx = "VXLAN = " + FormatValue(*base.Median, m.Unit) + " " + m.Unit
	}
	text(b, cx, pa.y+pa.h+34, 11, "middle", "normal", "#555", vx)
}

func text(b *strings.Builder, x, y float64, size int, anchor, weight, fill, s string) {
	fmt.Fprintf(b, `<text x="%.1f" y="%.1f" font-size="%d" text-anchor="%s" font-weight="%s" fill="%s">%s</text>`+"\n",
		x, y, size, anchor, weight, fill, esc(s))
}

func esc(s string) string {
	var b strings.Builder
	_ = xml.EscapeText(&b, []byte(s))
	return b.String()
}

func trimZeros(f float64) string {
	s := fmt.Sprintf("%.2f", f)
	s = strings.TrimRight(s, "0")
	return strings.TrimSuffix(s, ".")
}

func trimX(s string) string { return strings.TrimSuffix(s, "×") }

// shortVersion drops the parenthesised detail of `weft version`
// ("weft 82d8b11 (commit 82d8b11, go1.26.8 linux/amd64)" → "weft 82d8b11").
func shortVersion(v string) string {
	if i := strings.Index(v, " ("); i > 0 {
		return v[:i]
	}
	return v
}
