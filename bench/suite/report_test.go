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

// fakeResults is two rounds of every test on the five built-in paths in
// both underlay profiles, with numbers chosen so that medians and ratios
// are easy to check: in the default profile vxlan's tcp1 is 10 and 12 Gb/s,
// weft's 1 and 3, so weft's ratios are 0.1 and 0.25; weft -fast-path=off's
// are 0.05. In the NIC-like profile weft has twice its default factor
// (ratio 0.2 in both rounds), the other paths the same.
func fakeResults() *Results {
	paths := []Path{
		{Name: "weft", Title: "weft", Src: netip.MustParseAddr("198.19.1.1"), Dst: netip.MustParseAddr("198.19.2.1"), Device: "udp0", MTU: 1472,
			FastPath: "running (tcx) on both nodes"},
		{Name: UserspacePath, Title: UserspaceTitle, Device: UserspaceTUN, MTU: 1472, FastPath: "off (-fast-path=off) on both nodes"},
		{Name: "vxlan", Title: "kernel VXLAN", Device: "flannel.1", MTU: 1450},
		{Name: "host-gw", Title: "host-gw", Device: "eth0", MTU: 1500},
		{Name: "veth", Title: "bare veth", Device: "eth0", MTU: 1500},
	}
	res := &Results{
		Schema: Schema, Started: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), Finished: time.Date(2026, 1, 2, 3, 9, 5, 0, time.UTC),
		Command: "weftlab bench -weft ./bin/weft", Paths: paths,
		Machine:  Machine{Kernel: "6.18.44", CPU: "Test CPU <fast> & cheap", CPUs: 2},
		Settings: Settings{Seconds: 10, Rounds: 2, Omit: 1, Pings: 1000, PingInterval: "10ms", UnderlayMTU: 1500, IdleThreshold: 15, Tests: AllTests},
	}
	for _, name := range AllProfiles {
		sp := profileSpecs[name]
		res.Profiles = append(res.Profiles, Profile{Name: name, Title: sp.title, Description: sp.description,
			Underlay: Link{Name: "eth0 (veth)", MTU: 1500, TxQLen: 1000}, Paths: paths})
	}
	res.Profiles[1].Setup = []string{"n0: ethtool -K eth0 gro on tx-udp_tnl-segmentation off tx-udp_tnl-csum-segmentation off"}
	for round := 1; round <= 2; round++ {
		for _, test := range AllTests {
			for _, pr := range AllProfiles {
				for _, p := range paths {
					res.Samples = append(res.Samples, fakeSample(round, pr, test, p.Name))
				}
			}
		}
	}
	// A failed test must show up as missing, not as zero.
	for i := range res.Samples {
		if s := &res.Samples[i]; s.Round == 2 && s.Test == TestRR && s.Path == "veth" && s.Profile == ProfileDefault {
			s.Error, s.RRPerSec = "lab: connect: refused", 0
		}
	}
	res.Summary = SummarizeProfiles(res)
	res.Notes = notes(res)
	return res
}

// fakeSample is fakeResults' sample of path in profile, round and test.
func fakeSample(round int, profile, test, path string) Sample {
	k := map[string]float64{"weft": 0.1, UserspacePath: 0.05, "vxlan": 1, "host-gw": 1.2, "veth": 1.4}[path]
	if profile == ProfileNIC && path == "weft" {
		k *= 2
	}
	weft := path == "weft" || path == UserspacePath
	s := Sample{Round: round, Profile: profile, Test: test, Path: path, IdleOK: true, OtherLoad: 2, Daemon: weft, Weft: weft}
	switch test {
	case TestTCP1:
		s.Gbps = 10 * k
		if round == 2 {
			s.Gbps = 12 * k
			if path == "weft" && profile == ProfileDefault {
				s.Gbps = 3 // ratio 0.25 this round
			}
		}
		s.BytesMoved = int64(s.Gbps * 1e9 / 8 * 11)
		s.BusyCPU, s.SoftirqCPU = 10, 2
		if weft {
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
	if path == "weft" && test == TestUDP64 {
		s.TunTxDropped, s.UDPRcvbufErrors = 500, 40
		s.WeftDrops = map[string]uint64{"no_route": 2}
	}
	return s
}

// metric is key's summary of path in the default profile.
func metric(t *testing.T, res *Results, key, path string) PathSummary {
	t.Helper()
	return metricIn(t, res, ProfileDefault, key, path)
}

// metricIn is key's summary of path in profile.
func metricIn(t *testing.T, res *Results, profile, key, path string) PathSummary {
	t.Helper()
	for _, m := range res.ProfileMetrics(profile) {
		if m.Key != key {
			continue
		}
		for _, p := range m.Paths {
			if p.Path == path {
				return p
			}
		}
	}
	t.Fatalf("no %s for %s in profile %s's summary", key, path, profile)
	return PathSummary{}
}

func near(a, b float64) bool { return math.Abs(a-b) < 1e-9 }

func TestSummarize(t *testing.T) {
	res := fakeResults()
	if len(res.Summary) != len(AllProfiles) {
		t.Fatalf("%d profile summaries, want %d", len(res.Summary), len(AllProfiles))
	}
	for _, ps := range res.Summary {
		if len(ps.Metrics) != len(Metrics) {
			t.Fatalf("profile %s: %d summary rows, want %d", ps.Profile, len(ps.Metrics), len(Metrics))
		}
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
	// The floor: each path against host-gw of the same round, in the
	// metric's direction.
	if u := metric(t, res, "udp64_kpps", "veth"); u.FloorRatio == nil || !near(u.FloorRatio.Median, 1.4/1.2) {
		t.Errorf("veth udp64 ratio to host-gw = %+v, want %g", u.FloorRatio, 1.4/1.2)
	}
	for _, c := range []struct {
		key, path string
		meets     bool
	}{
		{"udp64_kpps", "veth", true}, {"udp64_kpps", "weft", false}, {"udp64_kpps", Floor, true},
		{"ping_p50_ms", "veth", true},     // 1.2/1.4 of host-gw's latency
		{"ping_p50_ms", Baseline, false},  // 1.2× host-gw's latency
		{"tun_tx_dropped", "weft", false}, // a counter has no ratio
	} {
		var m MetricSummary
		for _, ms := range res.Summary[0].Metrics {
			if ms.Key == c.key {
				m = ms
			}
		}
		if got := metric(t, res, c.key, c.path).MeetsFloor(m); got != c.meets {
			t.Errorf("%s of %s meets the floor: %v, want %v", c.key, c.path, got, c.meets)
		}
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
	if len(res.Notes) != 1 || !strings.Contains(res.Notes[0], "1 of 120 tests failed") {
		t.Errorf("notes = %q", res.Notes)
	}
	// A weft column without its fast path is called out.
	res.Profiles[1].Paths = append([]Path(nil), res.Profiles[1].Paths...)
	res.Profiles[1].Paths[0].FastPath = "not running (-fast-path=auto): missing CAP_BPF on both nodes"
	if n := notes(res); len(n) != 2 || !strings.Contains(n[1], "underlay NIC-like (GRO on, no UDP tunnel TSO): the weft column ran without its kernel fast path") {
		t.Errorf("notes without the fast path = %q", n)
	}
}

func TestSummaryCell(t *testing.T) {
	res := fakeResults()
	m := res.Summary[0].Metrics[0] // tcp1 in the default profile
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

// fakeReport is fakeResults and its report.md.
func fakeReport(t *testing.T) (*Results, string) {
	t.Helper()
	res := fakeResults()
	var b bytes.Buffer
	if err := WriteReport(&b, res); err != nil {
		t.Fatal(err)
	}
	return res, b.String()
}

func TestWriteReport(t *testing.T) {
	res, md := fakeReport(t)
	for _, want := range []string{
		"| metric | weft | weft -fast-path=off | kernel VXLAN | host-gw | bare veth |",
		"| TCP, 1 stream, Gb/s ↑ | 2.00 (0.17×, 0.10–0.25×) | 0.550 (0.050×) | 11.0 (1×) |",
		"| ping RTT p99, ms ↓ |",
		"weftlab bench -weft ./bin/weft",
		"Test CPU <fast> & cheap",
		"ERROR: lab: connect: refused",
		"no_route=2",
		"](chart.svg)",
		"1 of 120 tests failed",
		"kernel fast path: running (tcx) on both nodes",
		"| metric, ÷ host-gw | weft | weft -fast-path=off | kernel VXLAN | bare veth |",
		"| UDP 64 B delivered, kpps ↑ | 0.083× ✗ | 0.042× ✗ | 0.83× ✗ | 1.17× ✓ |",
		"| ping RTT p50, ms ↓ | 12.0× ✗ | 24.0× ✗ | 1.20× ✗ | 0.86× ✓ |",
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
	floors := map[string][2]float64{}       // metric → ratio, y
	bottom := 0.0
	var texts []string
	root.walk(func(n svgNode) {
		if n.XMLName.Local == "line" && n.attr("class") == "floor" {
			r, _ := strconv.ParseFloat(n.attr("data-ratio"), 64)
			y, _ := strconv.ParseFloat(n.attr("y1"), 64)
			floors[n.attr("data-metric")] = [2]float64{r, y}
		}
		if n.XMLName.Local == "rect" && n.attr("class") == "bar" && n.attr("data-metric") == "tcp1_gbps" {
			y, _ := strconv.ParseFloat(n.attr("y"), 64)
			h, _ := strconv.ParseFloat(n.attr("height"), 64)
			bottom = y + h
		}
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
	// One floor line per charted metric, at 0.95 of host-gw's bar where
	// higher is better (host-gw's tcp1 is 1.2× VXLAN), at host-gw's ÷ 0.95
	// where lower is better.
	if len(floors) != charted {
		t.Errorf("floor lines for %d metrics, want %d", len(floors), charted)
	}
	if f := floors["tcp1_gbps"]; !near(f[0], 1.14) || math.Abs((bottom-f[1])/bars["tcp1_gbps"]["host-gw"]-FloorGoal) > 0.01 {
		t.Errorf("tcp1 floor line at ratio %g, y %g (bars' bottom %g, host-gw's bar %g high), want 0.95 of host-gw's bar",
			f[0], f[1], bottom, bars["tcp1_gbps"]["host-gw"])
	}
	if f := floors["ping_p50_ms"]; math.Abs(f[0]-1/1.2/FloorGoal) > 1e-4 {
		t.Errorf("ping floor line at ratio %g, want %g", f[0], 1/1.2/FloorGoal)
	}
	all := strings.Join(texts, "\n")
	for _, want := range []string{"kernel VXLAN", "weft -fast-path=off", "bare veth", "VXLAN = 11.0 Gb/s", "0.17", "higher is better",
		"lower is better", "underlay veth (default)"} {
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

// TestBothWeftColumnsBothProfiles: the report, the terminal's tables and
// results.json have weft and weft -fast-path=off, each with its ratio to
// kernel VXLAN, under both underlay profiles.
func TestBothWeftColumnsBothProfiles(t *testing.T) {
	res, md := fakeReport(t)
	header := "| metric | weft | weft -fast-path=off | kernel VXLAN | host-gw | bare veth |"
	for _, want := range []struct{ heading, tcp1 string }{
		{"### Underlay: veth (default)", "| TCP, 1 stream, Gb/s ↑ | 2.00 (0.17×, 0.10–0.25×) | 0.550 (0.050×) | 11.0 (1×) |"},
		{"### Underlay: NIC-like (GRO on, no UDP tunnel TSO)", "| TCP, 1 stream, Gb/s ↑ | 2.20 (0.20×) | 0.550 (0.050×) | 11.0 (1×) |"},
	} {
		i := strings.Index(md, want.heading)
		if i < 0 {
			t.Errorf("report lacks %q", want.heading)
			continue
		}
		section := md[i:]
		if j := strings.Index(section[1:], "\n### "); j > 0 {
			section = section[:j+1]
		}
		if !strings.Contains(section, header) || !strings.Contains(section, want.tcp1) {
			t.Errorf("%s: table lacks %q or %q:\n%s", want.heading, header, want.tcp1, section)
		}
	}
	terminal := SummaryTables(res)
	for _, want := range []string{"Underlay: veth (default)", "Underlay: NIC-like (GRO on, no UDP tunnel TSO)", header} {
		if strings.Count(terminal, want) < 1 || (want == header && strings.Count(terminal, want) != 2) {
			t.Errorf("summary tables lack %q (twice for the header):\n%s", want, terminal)
		}
	}
	js, err := json.Marshal(res)
	if err != nil {
		t.Fatal(err)
	}
	back, err := DecodeResults(js)
	if err != nil {
		t.Fatal(err)
	}
	for _, pr := range AllProfiles {
		for path, want := range map[string]float64{"weft": map[string]float64{ProfileDefault: 0.175, ProfileNIC: 0.2}[pr], UserspacePath: 0.05} {
			for _, r := range []*Results{res, back} {
				if m := metricIn(t, r, pr, "tcp1_gbps", path); m.Ratio == nil || !near(m.Ratio.Median, want) {
					t.Errorf("%s in %s: tcp1 ratio %+v, want %g", path, pr, m.Ratio, want)
				}
			}
			if m := metricIn(t, res, pr, "ping_p50_ms", path); m.Ratio == nil {
				t.Errorf("%s in %s: no ping ratio", path, pr)
			}
		}
	}
}

// TestDecodeSchema1: a results.json from before underlay profiles reads as
// the default profile, with its underlay and a summary computed again.
func TestDecodeSchema1(t *testing.T) {
	res := fakeResults()
	var samples []Sample
	for _, s := range res.Samples {
		if s.Profile == ProfileDefault {
			samples = append(samples, s)
		}
	}
	js, err := json.Marshal(map[string]any{
		"schema": 1, "command": res.Command, "settings": res.Settings, "paths": res.Paths, "samples": samples,
		"machine": map[string]any{"kernel": "6.1", "underlay": res.Profiles[0].Underlay, "offloads": []string{"generic-receive-offload: off"}},
		"summary": Summarize(samples, PathNames(res.Paths), res.Settings.Rounds),
	})
	if err != nil {
		t.Fatal(err)
	}
	js = bytes.ReplaceAll(js, []byte(`"profile":"default",`), nil) // schema 1 samples had no profile
	got, err := DecodeResults(js)
	if err != nil {
		t.Fatal(err)
	}
	if got.Schema != Schema || len(got.Profiles) != 1 || got.Profiles[0].Name != ProfileDefault || got.Profiles[0].Underlay.MTU != 1500 ||
		len(got.Profiles[0].Offloads) != 1 || got.Machine.Kernel != "6.1" {
		t.Errorf("decoded %+v, profiles %+v", got, got.Profiles)
	}
	if m := metric(t, got, "tcp1_gbps", "weft"); m.Ratio == nil || !near(m.Ratio.Median, 0.175) {
		t.Errorf("weft tcp1 ratio after decoding schema 1: %+v", m.Ratio)
	}
	if _, err := DecodeResults([]byte("{")); err == nil {
		t.Error("bad JSON decoded")
	}
}
