package suite

import (
	"bytes"
	"encoding/json"
	"encoding/xml"
	"errors"
	"io"
	"math"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// fakeResults is two rounds of every test on the four built-in paths,
// with numbers chosen so that medians and ratios are easy to check:
// vxlan's tcp1 is 10 and 12 Gb/s, weft's 1 and 3, so weft's ratios are
// 0.1 and 0.25.
func fakeResults() *Results {
	paths := []Path{
		{Name: "weft", Title: "weft", Src: netip.MustParseAddr("198.19.1.1"), Dst: netip.MustParseAddr("198.19.2.1"), Device: "udp0", MTU: 1472},
		{Name: "vxlan", Title: "kernel VXLAN", Device: "flannel.1", MTU: 1450},
		{Name: "host-gw", Title: "host-gw", Device: "eth0", MTU: 1500},
		{Name: "veth", Title: "bare veth", Device: "eth0", MTU: 1500},
	}
	scale := map[string]float64{"weft": 0.1, "vxlan": 1, "host-gw": 1.2, "veth": 1.4}
	res := &Results{
		Schema: 1, Started: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), Finished: time.Date(2026, 1, 2, 3, 9, 5, 0, time.UTC),
		Command: "weftlab bench -weft ./bin/weft", Paths: paths,
		Machine:  Machine{Kernel: "6.18.44", CPU: "Test CPU <fast> & cheap", CPUs: 2},
		Settings: Settings{Seconds: 10, Rounds: 2, Omit: 1, Pings: 1000, PingInterval: "10ms", UnderlayMTU: 1500, IdleThreshold: 15, Tests: AllTests},
	}
	for round := 1; round <= 2; round++ {
		for _, test := range AllTests {
			for _, p := range paths {
				k := scale[p.Name]
				s := Sample{Round: round, Test: test, Path: p.Name, IdleOK: true, OtherLoad: 2, Daemon: p.Name == "weft", Weft: p.Name == "weft"}
				switch test {
				case TestTCP1:
					s.Gbps = 10 * k
					if round == 2 {
						s.Gbps = 12 * k
						if p.Name == "weft" {
							s.Gbps = 3 // ratio 0.25 this round
						}
					}
					s.BytesMoved = int64(s.Gbps * 1e9 / 8 * 11)
					s.BusyCPU, s.SoftirqCPU = 10, 2
					if p.Name == "weft" {
						s.DaemonCPU = 8
					}
					s.Retransmits = 3
				case TestTCP4, TestTCP8:
					s.Gbps = 20 * k
					s.BytesMoved = 1e9
				case TestUDP64:
					s.DeliveredPP, s.SentPPS = 100e3*k, 200e3
				case TestPing:
					s.PingSent, s.PingRecv, s.P50ms, s.P99ms = 1000, 1000, 0.1/k, 0.2/k
				case TestRR:
					s.RRPerSec = 50e3 * k
				}
				if p.Name == "weft" && test == TestUDP64 {
					s.TunTxDropped, s.UDPRcvbufErrors = 500, 40
					s.WeftDrops = map[string]uint64{"no_route": 2}
				}
				res.Samples = append(res.Samples, s)
			}
		}
	}
	// A failed test must show up as missing, not as zero.
	res.Samples = append(res.Samples[:0:0], res.Samples...)
	for i := range res.Samples {
		if s := &res.Samples[i]; s.Round == 2 && s.Test == TestRR && s.Path == "veth" {
			s.Error, s.RRPerSec = "lab: connect: refused", 0
		}
	}
	res.Summary = Summarize(res.Samples, PathNames(paths), 2)
	res.Notes = notes(res)
	return res
}

func metric(t *testing.T, res *Results, key, path string) PathSummary {
	t.Helper()
	for _, m := range res.Summary {
		if m.Key != key {
			continue
		}
		for _, p := range m.Paths {
			if p.Path == path {
				return p
			}
		}
	}
	t.Fatalf("no %s for %s in the summary", key, path)
	return PathSummary{}
}

func near(a, b float64) bool { return math.Abs(a-b) < 1e-9 }

func TestSummarize(t *testing.T) {
	res := fakeResults()
	if len(res.Summary) != len(Metrics) {
		t.Fatalf("%d summary rows, want %d", len(res.Summary), len(Metrics))
	}
	w := metric(t, res, "tcp1_gbps", "weft")
	if w.Median == nil || !near(*w.Median, 2) {
		t.Errorf("weft tcp1 median = %v, want 2 (of 1 and 3)", w.Median)
	}
	if w.Ratio == nil || !near(w.Ratio.Min, 0.1) || !near(w.Ratio.Max, 0.25) || !near(w.Ratio.Median, 0.175) {
		t.Errorf("weft tcp1 ratio = %+v, want 0.1..0.25, median 0.175 (per round, not of medians)", w.Ratio)
	}
	v := metric(t, res, "tcp1_gbps", Baseline)
	if v.Ratio == nil || v.Ratio.Median != 1 {
		t.Errorf("vxlan's own ratio = %+v", v.Ratio)
	}
	if p := metric(t, res, "ping_p50_ms", "host-gw"); p.Ratio == nil || !near(p.Ratio.Median, 1/1.2) {
		t.Errorf("host-gw ping ratio = %+v", p.Ratio)
	}
	// Failed round: one value missing, the median from the other.
	rr := metric(t, res, "rr_kps", "veth")
	if rr.Values[1] != nil || rr.Values[0] == nil || !near(*rr.Median, 70) || len(rr.Ratio.Rounds) != 1 {
		t.Errorf("veth rr with a failed round 2: values %v median %v ratio %+v", rr.Values, rr.Median, rr.Ratio)
	}
	// The daemon metric exists only where there is a daemon; counters get no ratio.
	if d := metric(t, res, "daemon_cpu_s_per_gb", "vxlan"); d.Median != nil {
		t.Errorf("vxlan daemon CPU = %v, want none", *d.Median)
	}
	if d := metric(t, res, "daemon_cpu_s_per_gb", "weft"); d.Median == nil || *d.Median <= 0 {
		t.Errorf("weft daemon CPU per GB = %v", d.Median)
	}
	if d := metric(t, res, "tun_tx_dropped", "weft"); d.Median == nil || *d.Median != 500 || d.Ratio != nil {
		t.Errorf("weft tx_dropped = %+v", d)
	}
	if d := metric(t, res, "weft_drops", "weft"); d.Median == nil || *d.Median != 2 {
		t.Errorf("weft drops = %+v", d)
	}
	if d := metric(t, res, "weft_drops", "veth"); d.Median != nil {
		t.Errorf("veth has weft drops %v", *d.Median)
	}
	if d := metric(t, res, "retransmits", "vxlan"); d.Median == nil || *d.Median != 3 {
		t.Errorf("vxlan retransmits = %+v", d)
	}
	if len(res.Notes) != 1 || !strings.Contains(res.Notes[0], "1 of 48 tests failed") {
		t.Errorf("notes = %q", res.Notes)
	}
}

func TestSummaryCell(t *testing.T) {
	res := fakeResults()
	m := res.Summary[0] // tcp1
	cells := map[string]string{}
	for _, p := range m.Paths {
		cells[p.Path] = SummaryCell(m, p)
	}
	if cells["weft"] != "2.00 (0.17×, 0.10–0.25×)" {
		t.Errorf("weft cell = %q", cells["weft"])
	}
	if cells["vxlan"] != "11.0 (1×)" {
		t.Errorf("vxlan cell = %q", cells["vxlan"])
	}
	if cells["host-gw"] != "13.2 (1.20×)" { // both rounds 1.2: no range
		t.Errorf("host-gw cell = %q", cells["host-gw"])
	}
}

func TestFormatValue(t *testing.T) {
	for _, tc := range []struct {
		v    float64
		unit string
		want string
	}{
		{0, "Gb/s", "0"}, {123.4, "kpps", "123"}, {12.34, "Gb/s", "12.3"}, {1.234, "", "1.23"},
		{0.0614, "ms", "0.061"}, {0.00042, "s/GB", "0.00042"}, {22642.4, "segments", "22642"},
	} {
		if got := FormatValue(tc.v, tc.unit); got != tc.want {
			t.Errorf("FormatValue(%g, %q) = %q, want %q", tc.v, tc.unit, got, tc.want)
		}
	}
}

func TestWriteReport(t *testing.T) {
	res := fakeResults()
	var b bytes.Buffer
	if err := WriteReport(&b, res); err != nil {
		t.Fatal(err)
	}
	md := b.String()
	for _, want := range []string{
		"| metric | weft | kernel VXLAN | host-gw | bare veth |",
		"| TCP, 1 stream, Gb/s ↑ | 2.00 (0.17×, 0.10–0.25×) | 11.0 (1×) |",
		"| ping RTT p99, ms ↓ |",
		"weftlab bench -weft ./bin/weft",
		"Test CPU <fast> & cheap",
		"ERROR: lab: connect: refused",
		"no_route=2",
		"](chart.svg)",
		"1 of 48 tests failed",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q", want)
		}
	}
	// Every sample has its row in "Every run".
	if got := strings.Count(md, "\n| 1 | ") + strings.Count(md, "\n| 2 | "); got != len(res.Samples) {
		t.Errorf("%d per-run rows, want %d", got, len(res.Samples))
	}
}

type svgNode struct {
	XMLName xml.Name
	Attrs   []xml.Attr `xml:",any,attr"`
	Nodes   []svgNode  `xml:",any"`
	Text    string     `xml:",chardata"`
}

func (n svgNode) attr(name string) string {
	for _, a := range n.Attrs {
		if a.Name.Local == name {
			return a.Value
		}
	}
	return ""
}

func (n svgNode) walk(f func(svgNode)) {
	f(n)
	for _, c := range n.Nodes {
		c.walk(f)
	}
}

func TestWriteChart(t *testing.T) {
	res := fakeResults()
	var b bytes.Buffer
	if err := WriteChart(&b, res); err != nil {
		t.Fatal(err)
	}
	var root svgNode
	dec := xml.NewDecoder(&b)
	if err := dec.Decode(&root); err != nil {
		t.Fatalf("chart is not XML: %v", err)
	}
	if root.XMLName.Local != "svg" || root.XMLName.Space != "http://www.w3.org/2000/svg" {
		t.Fatalf("root element %v", root.XMLName)
	}
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if cd, ok := tok.(xml.CharData); !ok || strings.TrimSpace(string(cd)) != "" || err != nil {
			t.Fatalf("content after </svg>: %v %v", tok, err)
		}
	}
	charted := 0
	for _, m := range Metrics {
		if m.Chart {
			charted++
		}
	}
	bars := map[string]map[string]float64{} // metric → path → height
	var texts []string
	root.walk(func(n svgNode) {
		if n.XMLName.Local == "text" {
			texts = append(texts, n.Text)
		}
		if n.XMLName.Local != "rect" || n.attr("class") != "bar" {
			return
		}
		h, err := strconv.ParseFloat(n.attr("height"), 64)
		if err != nil || h < 0 {
			t.Errorf("bar %s/%s height %q", n.attr("data-metric"), n.attr("data-path"), n.attr("height"))
		}
		m := n.attr("data-metric")
		if bars[m] == nil {
			bars[m] = map[string]float64{}
		}
		if _, dup := bars[m][n.attr("data-path")]; dup {
			t.Errorf("two bars for %s/%s", m, n.attr("data-path"))
		}
		bars[m][n.attr("data-path")] = h
	})
	if len(bars) != charted {
		t.Errorf("bars for %d metrics, want %d", len(bars), charted)
	}
	for m, byPath := range bars {
		if len(byPath) != len(res.Paths) {
			t.Errorf("metric %s: %d bars, want one per path (%d)", m, len(byPath), len(res.Paths))
		}
	}
	// Heights are proportional to the ratio: weft's tcp1 (0.175) against
	// vxlan's (1).
	if w, v := bars["tcp1_gbps"]["weft"], bars["tcp1_gbps"]["vxlan"]; v <= 0 || math.Abs(w/v-0.175) > 0.01 {
		t.Errorf("tcp1 bar heights weft %g vxlan %g, want ratio 0.175", w, v)
	}
	// Lower-is-better metrics are in their own panel, still normalised:
	// host-gw's ping is 1/1.2 of vxlan's.
	if h, v := bars["ping_p50_ms"]["host-gw"], bars["ping_p50_ms"]["vxlan"]; math.Abs(h/v-1/1.2) > 0.01 {
		t.Errorf("ping bar heights host-gw %g vxlan %g", h, v)
	}
	all := strings.Join(texts, "\n")
	for _, want := range []string{"kernel VXLAN", "bare veth", "VXLAN = 11.0 Gb/s", "0.17", "higher is better", "lower is better"} {
		if !strings.Contains(all, want) {
			t.Errorf("chart text lacks %q", want)
		}
	}
}

func TestWriteOutputs(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "results")
	res := fakeResults()
	if err := WriteOutputs(dir, res); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, JSONFile))
	if err != nil {
		t.Fatal(err)
	}
	var back Results
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatalf("results.json: %v", err)
	}
	if len(back.Samples) != len(res.Samples) || len(back.Summary) != len(res.Summary) || back.Paths[0].Src != res.Paths[0].Src {
		t.Errorf("results.json lost data: %d samples, %d metrics", len(back.Samples), len(back.Summary))
	}
	if got := metric(t, &back, "tcp1_gbps", "weft"); got.Ratio == nil || !near(got.Ratio.Median, 0.175) {
		t.Errorf("ratio after JSON round trip: %+v", got.Ratio)
	}
	for _, f := range []string{ReportFile, ChartFile} {
		if st, err := os.Stat(filepath.Join(dir, f)); err != nil || st.Size() == 0 {
			t.Errorf("%s: %v", f, err)
		}
	}
	if left, _ := filepath.Glob(filepath.Join(dir, "*.tmp")); len(left) > 0 {
		t.Errorf("temporary files left: %v", left)
	}
}
