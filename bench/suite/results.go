package suite

import (
	"math"
	"net/netip"
	"slices"
	"time"
)

// Baseline is the path every other is compared with.
const Baseline = "vxlan"

// Floor is the no-encapsulation path an overlay can approach (flannel's
// host-gw: plain routes), and FloorGoal the share of it every path of weft
// aims at: ≥ 0.95× of host-gw where higher is better, ≤ 1/0.95× where
// lower is better (issue #23).
const (
	Floor     = "host-gw"
	FloorGoal = 0.95
)

// Test names, in the order each round runs them.
const (
	TestTCP1  = "tcp1"
	TestTCP4  = "tcp4"
	TestTCP8  = "tcp8"
	TestUDP64 = "udp64"
	TestPing  = "ping"
	TestRR    = "rr"
)

// AllTests is every test, in run order.
var AllTests = []string{TestTCP1, TestTCP4, TestTCP8, TestUDP64, TestPing, TestRR}

// Schema is the version of results.json this package writes. Schema 1
// (before underlay profiles) is read by DecodeResults as one profile.
const Schema = 2

// Results is everything one run measured: what results.json holds and
// what the report and the chart are made from.
type Results struct {
	Schema   int       `json:"schema"`
	Started  time.Time `json:"started"`
	Finished time.Time `json:"finished"`
	Command  string    `json:"command"`
	Machine  Machine   `json:"machine"`
	Settings Settings  `json:"settings"`
	// Paths are the columns, in order, as set up in the first profile;
	// each profile's own addresses are in its Paths.
	Paths []Path `json:"paths"`
	// Profiles are the underlay profiles measured, in order, each in a
	// lab of its own.
	Profiles []Profile `json:"profiles"`
	// Samples holds every test of every round, in run order.
	Samples []Sample `json:"samples"`
	// Summary is computed from Samples by SummarizeProfiles: one per
	// profile, in the order of Profiles.
	Summary []ProfileSummary `json:"summary"`
	Notes   []string         `json:"notes,omitempty"`
}

// Profile is one underlay profile as it was measured: how its lab's veths
// were set up before anything else started, and what the paths were there.
type Profile struct {
	Name        string `json:"name"`
	Title       string `json:"title"`
	Description string `json:"description"`
	// Setup is the commands that applied it (none for the default).
	Setup    []string `json:"setup,omitempty"`
	Underlay Link     `json:"underlay"`
	Offloads []string `json:"offloads,omitempty"` // ethtool -k eth0 on node 0, when ethtool is installed
	Paths    []Path   `json:"paths"`
}

// ProfileSummary is the summary of one underlay profile's samples.
type ProfileSummary struct {
	Profile string          `json:"profile"`
	Metrics []MetricSummary `json:"metrics"`
}

// Machine describes where the numbers were taken.
type Machine struct {
	Kernel     string   `json:"kernel"`
	CPU        string   `json:"cpu"`
	CPUs       int      `json:"cpus"`
	LoadAvg    string   `json:"loadavgAtStart"`
	Iperf3     string   `json:"iperf3"`
	Go         string   `json:"go"`
	Weft       string   `json:"weft"`
	WeftArgs   []string `json:"weftArgs"`
	PingBinary string   `json:"ping,omitempty"`
}

// Link is a device's settings as the report shows them.
type Link struct {
	Name       string `json:"name"`
	MTU        int    `json:"mtu"`
	TxQLen     int    `json:"txqueuelen"`
	GSOMaxSize uint32 `json:"gsoMaxSize"`
	GROMaxSize uint32 `json:"groMaxSize"`
}

// Settings are the knobs of the run.
type Settings struct {
	Seconds       int      `json:"seconds"`
	Rounds        int      `json:"rounds"`
	Omit          int      `json:"omitSeconds"`
	Pings         int      `json:"pings"`
	PingInterval  string   `json:"pingInterval"`
	UnderlayMTU   int      `json:"underlayMTU"`
	IdleThreshold float64  `json:"idleThresholdPct"`
	Tests         []string `json:"tests"`
	Order         string   `json:"order"`
}

// Path is one way from node 0 to node 1.
type Path struct {
	Name        string     `json:"name"`
	Title       string     `json:"title"`
	Description string     `json:"description"`
	Src         netip.Addr `json:"src"`
	Dst         netip.Addr `json:"dst"`
	Device      string     `json:"device"` // node 0's route to Dst goes out here
	MTU         int        `json:"mtu"`
	TxQLen      int        `json:"txqueuelen"`
	Daemon      []string   `json:"daemon,omitempty"` // node 0's daemon command line
	// FastPath is weft's kernel fast path on this path as its /status said
	// after setup ("running (tcx)", "off: -fast-path=off", ...); empty for
	// paths that are not weft.
	FastPath string `json:"fastPath,omitempty"`
}

// Sample is one test of one path in one round. Counters are deltas over
// the test, summed over both nodes.
type Sample struct {
	Round   int       `json:"round"`
	Profile string    `json:"profile"` // the underlay profile's Name
	Test    string    `json:"test"`
	Path    string    `json:"path"`
	Start   time.Time `json:"start"`
	Wall    float64   `json:"wallSeconds"`
	// OtherLoad is the machine's CPU use (percent of all CPUs) just before
	// the test, while nothing of the benchmark ran; IdleOK says it was under
	// the threshold.
	OtherLoad float64 `json:"otherLoadPct"`
	IdleOK    bool    `json:"idleOK"`
	Error     string  `json:"error,omitempty"`
	// Daemon: the path has tunnel daemons, whose CPU time is measured;
	// Weft: they are weft, whose /status drop counters are read.
	Daemon bool `json:"daemon"`
	Weft   bool `json:"weft"`

	// TCP and UDP (iperf3).
	Gbps        float64 `json:"gbps,omitempty"`        // receiver, measured interval
	Bytes       int64   `json:"bytes,omitempty"`       // receiver, measured interval
	BytesMoved  int64   `json:"bytesMoved,omitempty"`  // sender, omitted interval included
	Retransmits int64   `json:"retransmits,omitempty"` // sender
	SentPPS     float64 `json:"sentPPS,omitempty"`
	DeliveredPP float64 `json:"deliveredPPS,omitempty"`
	LossPct     float64 `json:"lossPct,omitempty"`

	// Ping.
	PingSent int     `json:"pingSent,omitempty"`
	PingRecv int     `json:"pingReceived,omitempty"`
	P50ms    float64 `json:"rttP50ms,omitempty"`
	P99ms    float64 `json:"rttP99ms,omitempty"`
	Minms    float64 `json:"rttMinMs,omitempty"`
	Maxms    float64 `json:"rttMaxMs,omitempty"`

	// Request/response.
	RRPerSec float64 `json:"rrPerSec,omitempty"`

	// CPU seconds over the test: the tunnel daemons' utime+stime, the
	// machine's softirq time, and all of the machine's busy time.
	DaemonCPU  float64 `json:"daemonCPUSeconds"`
	SoftirqCPU float64 `json:"softirqSeconds"`
	BusyCPU    float64 `json:"busyCPUSeconds"`

	// Drops.
	TunTxDropped    int64             `json:"tunTxDropped"`
	UDPRcvbufErrors int64             `json:"udpRcvbufErrors"`
	UDPSndbufErrors int64             `json:"udpSndbufErrors"`
	WeftDrops       map[string]uint64 `json:"weftDrops,omitempty"`
}

// gb is the data moved in the sample, in 1e9 bytes.
func (s *Sample) gb() float64 { return float64(s.BytesMoved) / 1e9 }

// weftDropTotal sums the daemon's own drop counters.
func (s *Sample) weftDropTotal() float64 {
	var t uint64
	for _, v := range s.WeftDrops {
		t += v
	}
	return float64(t)
}

// Metric is one row of the summary: a number per path and round, taken
// from that round's samples of that path.
type Metric struct {
	Key    string
	Label  string
	Unit   string
	Higher bool   // higher is better
	Short  string // the chart's label, when Chart
	// Chart: drawn in the chart (ratios to VXLAN are meaningful).
	Chart bool
	// Counter: an event count (drops, retransmits), shown without a
	// ratio: VXLAN's count is often 0, and 3 vs 1 drops is no "3×".
	Counter bool
	// Value computes the metric from one round's samples of one path,
	// keyed by test; ok is false when the inputs are missing or failed.
	Value func(byTest map[string]*Sample) (v float64, ok bool)
}

func fromTest(test string, f func(*Sample) (float64, bool)) func(map[string]*Sample) (float64, bool) {
	return func(m map[string]*Sample) (float64, bool) {
		s := m[test]
		if s == nil || s.Error != "" {
			return 0, false
		}
		return f(s)
	}
}

func perGB(f func(*Sample) float64) func(*Sample) (float64, bool) {
	return func(s *Sample) (float64, bool) {
		if s.BytesMoved <= 0 {
			return 0, false
		}
		return f(s) / s.gb(), true
	}
}

// sumTests adds f over the given tests; missing or failed ones are skipped,
// all missing is not ok.
func sumTests(tests []string, f func(*Sample) float64) func(map[string]*Sample) (float64, bool) {
	return func(m map[string]*Sample) (float64, bool) {
		var t float64
		ok := false
		for _, name := range tests {
			if s := m[name]; s != nil && s.Error == "" {
				t += f(s)
				ok = true
			}
		}
		return t, ok
	}
}

// Metrics lists the summary's rows, in report order.
var Metrics = []Metric{
	{Key: "tcp1_gbps", Label: "TCP, 1 stream", Short: "TCP 1 stream", Unit: "Gb/s", Higher: true, Chart: true,
		Value: fromTest(TestTCP1, func(s *Sample) (float64, bool) { return s.Gbps, true })},
	{Key: "tcp4_gbps", Label: "TCP, 4 streams", Short: "TCP 4 streams", Unit: "Gb/s", Higher: true, Chart: true,
		Value: fromTest(TestTCP4, func(s *Sample) (float64, bool) { return s.Gbps, true })},
	{Key: "tcp8_gbps", Label: "TCP, 8 streams", Short: "TCP 8 streams", Unit: "Gb/s", Higher: true, Chart: true,
		Value: fromTest(TestTCP8, func(s *Sample) (float64, bool) { return s.Gbps, true })},
	{Key: "udp64_kpps", Label: "UDP 64 B delivered", Short: "UDP 64 B pps", Unit: "kpps", Higher: true, Chart: true,
		Value: fromTest(TestUDP64, func(s *Sample) (float64, bool) { return s.DeliveredPP / 1e3, true })},
	{Key: "rr_kps", Label: "TCP request/response", Short: "TCP req/resp rate", Unit: "k/s", Higher: true, Chart: true,
		Value: fromTest(TestRR, func(s *Sample) (float64, bool) { return s.RRPerSec / 1e3, true })},
	{Key: "ping_p50_ms", Label: "ping RTT p50", Short: "ping RTT p50", Unit: "ms", Chart: true,
		Value: fromTest(TestPing, func(s *Sample) (float64, bool) { return s.P50ms, s.PingRecv > 0 })},
	{Key: "ping_p99_ms", Label: "ping RTT p99", Short: "ping RTT p99", Unit: "ms", Chart: true,
		Value: fromTest(TestPing, func(s *Sample) (float64, bool) { return s.P99ms, s.PingRecv > 0 })},
	{Key: "cpu_s_per_gb", Label: "all CPU per GB (TCP 1 stream)", Short: "all CPU per GB", Unit: "s/GB", Chart: true,
		Value: fromTest(TestTCP1, perGB(func(s *Sample) float64 { return s.BusyCPU }))},
	{Key: "softirq_s_per_gb", Label: "softirq CPU per GB (TCP 1 stream)", Short: "softirq CPU per GB", Unit: "s/GB", Chart: true,
		Value: fromTest(TestTCP1, perGB(func(s *Sample) float64 { return s.SoftirqCPU }))},
	{Key: "daemon_cpu_s_per_gb", Label: "tunnel daemon CPU per GB (TCP 1 stream)", Unit: "s/GB",
		Value: fromTest(TestTCP1, func(s *Sample) (float64, bool) {
			if !s.Daemon {
				return 0, false
			}
			return perGB(func(s *Sample) float64 { return s.DaemonCPU })(s)
		})},
	{Key: "retransmits", Label: "TCP retransmits (1+4+8 streams)", Unit: "segments", Counter: true,
		Value: sumTests([]string{TestTCP1, TestTCP4, TestTCP8}, func(s *Sample) float64 { return float64(s.Retransmits) })},
	{Key: "tun_tx_dropped", Label: "device tx_dropped (all tests)", Unit: "packets", Counter: true,
		Value: sumTests(AllTests, func(s *Sample) float64 { return float64(s.TunTxDropped) })},
	{Key: "udp_rcvbuf_errors", Label: "UdpRcvbufErrors (all tests)", Unit: "datagrams", Counter: true,
		Value: sumTests(AllTests, func(s *Sample) float64 { return float64(s.UDPRcvbufErrors) })},
	{Key: "udp_sndbuf_errors", Label: "UdpSndbufErrors (all tests)", Unit: "datagrams", Counter: true,
		Value: sumTests(AllTests, func(s *Sample) float64 { return float64(s.UDPSndbufErrors) })},
	{Key: "weft_drops", Label: "weft drop counters (all tests)", Unit: "packets", Counter: true,
		Value: func(m map[string]*Sample) (float64, bool) {
			for _, s := range m {
				if !s.Weft {
					return 0, false
				}
			}
			return sumTests(AllTests, (*Sample).weftDropTotal)(m)
		}},
}

// MetricSummary is one metric across paths.
type MetricSummary struct {
	Key    string        `json:"key"`
	Label  string        `json:"label"`
	Unit   string        `json:"unit"`
	Higher bool          `json:"higherIsBetter"`
	Chart  bool          `json:"chart"`
	Short  string        `json:"short,omitempty"`
	Paths  []PathSummary `json:"paths"`
}

// PathSummary is one metric of one path: per-round values, their median,
// and the ratio to the baseline's value of the same round.
type PathSummary struct {
	Path string `json:"path"`
	// Values per round, in round order; null where the test failed.
	Values []*float64 `json:"values"`
	Median *float64   `json:"median"`
	// Ratio to the baseline of the same round; absent where the
	// baseline is zero or missing.
	Ratio *Ratio `json:"ratio,omitempty"`
	// FloorRatio is the same to host-gw (Floor).
	FloorRatio *Ratio `json:"floorRatio,omitempty"`
}

// MeetsFloor says whether the median ratio to host-gw reaches FloorGoal
// in metric m's direction; false without a ratio.
func (p PathSummary) MeetsFloor(m MetricSummary) bool {
	if p.FloorRatio == nil {
		return false
	}
	if m.Higher {
		return p.FloorRatio.Median >= FloorGoal
	}
	return p.FloorRatio.Median <= 1/FloorGoal
}

// Ratio is path ÷ baseline: the median over rounds and the range.
type Ratio struct {
	Median float64   `json:"median"`
	Min    float64   `json:"min"`
	Max    float64   `json:"max"`
	Rounds []float64 `json:"rounds"`
}

// Summarize computes the summary of samples for paths over rounds.
func Summarize(samples []Sample, paths []string, rounds int) []MetricSummary {
	// (round, path) → test → sample
	type key struct {
		round int
		path  string
	}
	idx := map[key]map[string]*Sample{}
	for i := range samples {
		s := &samples[i]
		k := key{s.Round, s.Path}
		if idx[k] == nil {
			idx[k] = map[string]*Sample{}
		}
		idx[k][s.Test] = s
	}
	var out []MetricSummary
	for _, m := range Metrics {
		ms := MetricSummary{Key: m.Key, Label: m.Label, Unit: m.Unit, Higher: m.Higher, Chart: m.Chart, Short: m.Short}
		values := map[string][]*float64{}
		for _, p := range paths {
			vs := make([]*float64, rounds)
			for r := range rounds {
				if byTest := idx[key{r + 1, p}]; byTest != nil {
					if v, ok := m.Value(byTest); ok && !math.IsNaN(v) && !math.IsInf(v, 0) {
						vs[r] = &v
					}
				}
			}
			values[p] = vs
		}
		for _, p := range paths {
			ps := PathSummary{Path: p, Values: values[p]}
			var got []float64
			for _, v := range values[p] {
				if v != nil {
					got = append(got, *v)
				}
			}
			if len(got) > 0 {
				med := Median(got)
				ps.Median = &med
			}
			if !m.Counter {
				ps.Ratio = roundRatios(values[p], values[Baseline])
				ps.FloorRatio = roundRatios(values[p], values[Floor])
			}
			ms.Paths = append(ms.Paths, ps)
		}
		out = append(out, ms)
	}
	return out
}

// roundRatios is vs ÷ base round by round, over the rounds where both
// have a value and base's is positive; nil if there is none.
func roundRatios(vs, base []*float64) *Ratio {
	var ratios []float64
	for r, v := range vs {
		if v != nil && r < len(base) && base[r] != nil && *base[r] > 0 {
			ratios = append(ratios, *v / *base[r])
		}
	}
	if len(ratios) == 0 {
		return nil
	}
	return &Ratio{Median: Median(ratios), Min: slices.Min(ratios), Max: slices.Max(ratios), Rounds: ratios}
}

// SummarizeProfiles summarizes res.Samples per profile, in the order of
// res.Profiles, over res.Paths and res.Settings.Rounds.
func SummarizeProfiles(res *Results) []ProfileSummary {
	names := PathNames(res.Paths)
	out := make([]ProfileSummary, 0, len(res.Profiles))
	for _, pr := range res.Profiles {
		var samples []Sample
		for _, s := range res.Samples {
			if s.Profile == pr.Name {
				samples = append(samples, s)
			}
		}
		out = append(out, ProfileSummary{Profile: pr.Name, Metrics: Summarize(samples, names, res.Settings.Rounds)})
	}
	return out
}

// ProfileMetrics is profile's summary in res (nil if it has none).
func (res *Results) ProfileMetrics(profile string) []MetricSummary {
	for _, ps := range res.Summary {
		if ps.Profile == profile {
			return ps.Metrics
		}
	}
	return nil
}

// PathNames lists the names of paths, in order.
func PathNames(paths []Path) []string {
	out := make([]string, len(paths))
	for i, p := range paths {
		out[i] = p.Name
	}
	return out
}
