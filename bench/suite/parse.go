package suite

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Iperf3 is what one iperf3 client run (-J) reported.
type Iperf3 struct {
	Protocol string // "TCP" or "UDP"
	Streams  int
	// Measured interval (after -O omit), receiver side.
	ReceivedBytes   int64
	ReceivedSeconds float64
	ReceivedBPS     float64
	// Measured interval, sender side.
	SentBytes   int64
	SentSeconds float64
	SentPackets int64 // UDP only
	Retransmits int64 // TCP only
	// AllSentBytes sums every interval the sender reported, omitted ones
	// included: the bytes moved while the CPU counters ran.
	AllSentBytes int64
	BlockSize    int
}

// DeliveredPPS is UDP packets per second the receiver got.
func (r Iperf3) DeliveredPPS() float64 {
	if r.BlockSize <= 0 || r.ReceivedSeconds <= 0 {
		return 0
	}
	return float64(r.ReceivedBytes) / float64(r.BlockSize) / r.ReceivedSeconds
}

// SentPPS is UDP packets per second the sender sent.
func (r Iperf3) SentPPS() float64 {
	if r.SentSeconds <= 0 {
		return 0
	}
	return float64(r.SentPackets) / r.SentSeconds
}

type iperfSum struct {
	Seconds     float64 `json:"seconds"`
	Bytes       int64   `json:"bytes"`
	BPS         float64 `json:"bits_per_second"`
	Retransmits *int64  `json:"retransmits"`
	Packets     int64   `json:"packets"`
	Omitted     bool    `json:"omitted"`
}

// ParseIperf3 decodes an iperf3 -J client report. A report carrying an
// "error" (iperf3 exits 1 then) is an error naming it.
func ParseIperf3(b []byte) (Iperf3, error) {
	var doc struct {
		Start struct {
			TestStart struct {
				Protocol   string `json:"protocol"`
				NumStreams int    `json:"num_streams"`
				BlkSize    int    `json:"blksize"`
			} `json:"test_start"`
		} `json:"start"`
		Intervals []struct {
			Sum iperfSum `json:"sum"`
		} `json:"intervals"`
		End struct {
			SumSent     *iperfSum `json:"sum_sent"`
			SumReceived *iperfSum `json:"sum_received"`
		} `json:"end"`
		Error string `json:"error"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		return Iperf3{}, fmt.Errorf("iperf3 JSON: %w", err)
	}
	if doc.Error != "" {
		return Iperf3{}, fmt.Errorf("iperf3: %s", doc.Error)
	}
	ts := doc.Start.TestStart
	if doc.End.SumSent == nil || doc.End.SumReceived == nil {
		return Iperf3{}, errors.New("iperf3 JSON: no end.sum_sent/sum_received (interrupted run?)")
	}
	r := Iperf3{
		Protocol: ts.Protocol, Streams: ts.NumStreams, BlockSize: ts.BlkSize,
		ReceivedBytes: doc.End.SumReceived.Bytes, ReceivedSeconds: doc.End.SumReceived.Seconds,
		ReceivedBPS: doc.End.SumReceived.BPS,
		SentBytes:   doc.End.SumSent.Bytes, SentSeconds: doc.End.SumSent.Seconds,
		SentPackets: doc.End.SumSent.Packets,
	}
	if rt := doc.End.SumSent.Retransmits; rt != nil {
		r.Retransmits = *rt
	}
	for _, iv := range doc.Intervals {
		r.AllSentBytes += iv.Sum.Bytes
	}
	if r.ReceivedSeconds <= 0 || r.ReceivedBytes < 0 || r.SentBytes < 0 {
		return r, fmt.Errorf("iperf3 JSON: implausible totals (%d bytes in %g s)", r.ReceivedBytes, r.ReceivedSeconds)
	}
	return r, nil
}

var pingTimeRe = regexp.MustCompile(`seq=\d+ .*time[=<]([\d.]+) ms`)

// ParsePingRTTs returns the round-trip time of every echo reply line of
// iputils or busybox ping output ("... icmp_seq=7 ttl=64 time=0.061 ms"),
// in order. Duplicate replies (DUP!) are skipped.
func ParsePingRTTs(out string) []time.Duration {
	var rtts []time.Duration
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		line := sc.Text()
		if strings.Contains(line, "DUP!") {
			continue
		}
		m := pingTimeRe.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		ms, err := strconv.ParseFloat(m[1], 64)
		if err != nil || ms < 0 || ms > 1e6 {
			continue
		}
		rtts = append(rtts, time.Duration(ms*float64(time.Millisecond)))
	}
	return rtts
}

// Percentile is the nearest-rank p-th percentile (0 < p ≤ 100) of d, which
// it sorts; 0 for no data.
func Percentile(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 || p <= 0 || p > 100 {
		return 0
	}
	slices.Sort(d)
	rank := int(math.Ceil(p / 100 * float64(len(d))))
	return d[max(rank, 1)-1]
}

// CPUStat is the aggregate "cpu" line of /proc/stat, in seconds.
type CPUStat struct {
	User, Nice, System, Idle, IOWait, IRQ, SoftIRQ, Steal float64
}

// Busy is the time spent running anything: user (guests included),
// system, hard and soft interrupts. Steal is another VM's.
func (c CPUStat) Busy() float64 { return c.User + c.Nice + c.System + c.IRQ + c.SoftIRQ }

// Total is every state but steal's counted time.
func (c CPUStat) Total() float64 { return c.Busy() + c.Idle + c.IOWait }

// Sub is c − o, per field.
func (c CPUStat) Sub(o CPUStat) CPUStat {
	return CPUStat{c.User - o.User, c.Nice - o.Nice, c.System - o.System, c.Idle - o.Idle,
		c.IOWait - o.IOWait, c.IRQ - o.IRQ, c.SoftIRQ - o.SoftIRQ, c.Steal - o.Steal}
}

// clkTck is USER_HZ, the unit of /proc/stat and /proc/PID/stat: 100 on
// every Linux architecture Go supports (sysconf needs cgo).
const clkTck = 100

// ParseProcStat reads the aggregate "cpu" line of /proc/stat.
func ParseProcStat(r io.Reader) (CPUStat, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 || f[0] != "cpu" {
			continue
		}
		if len(f) < 9 {
			return CPUStat{}, fmt.Errorf("/proc/stat: cpu line has %d fields, want at least 8 values", len(f)-1)
		}
		var v [8]float64
		for i := range v {
			n, err := strconv.ParseUint(f[i+1], 10, 64)
			if err != nil {
				return CPUStat{}, fmt.Errorf("/proc/stat: cpu field %d: %w", i+1, err)
			}
			v[i] = float64(n) / clkTck
		}
		return CPUStat{v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]}, nil
	}
	if err := sc.Err(); err != nil {
		return CPUStat{}, err
	}
	return CPUStat{}, errors.New("/proc/stat: no cpu line")
}

// ParsePIDStat returns utime+stime of /proc/PID/stat, in seconds. The
// command name may hold spaces and parentheses, so fields are counted
// from the last ')'.
func ParsePIDStat(b []byte) (float64, error) {
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, errors.New("/proc/PID/stat: no ')' after the command name")
	}
	f := strings.Fields(s[i+1:])
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/PID/stat: %d fields after the name, want at least 13", len(f))
	}
	u, err1 := strconv.ParseUint(f[11], 10, 64)
	st, err2 := strconv.ParseUint(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("/proc/PID/stat: utime/stime: %w", err)
	}
	return float64(u+st) / clkTck, nil
}

// TCPListening reports whether /proc/net/tcp content lists a socket in
// LISTEN state on port.
func TCPListening(r io.Reader, port int) (bool, error) {
	want := fmt.Sprintf(":%04X", port)
	sc := bufio.NewScanner(r)
	first := true
	for sc.Scan() {
		if first { // header
			first = false
			continue
		}
		f := strings.Fields(sc.Text())
		if len(f) < 4 {
			continue
		}
		if strings.HasSuffix(f[1], want) && f[3] == "0A" {
			return true, nil
		}
	}
	return false, sc.Err()
}

// Median of v (not modified); NaN for none.
func Median(v []float64) float64 {
	if len(v) == 0 {
		return math.NaN()
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if n := len(s); n%2 == 1 {
		return s[n/2]
	} else {
		return (s[n/2-1] + s[n/2]) / 2
	}
}

// SplitCommand splits a command template into words, honouring single
// and double quotes and backslash escapes outside single quotes, as a
// shell would, without running one.
func SplitCommand(s string) ([]string, error) {
	var words []string
	var cur strings.Builder
	inWord := false
	var quote byte
	escaped := false
	for i := 0; i < len(s); i++ {
		r := s[i] // bytes, not runes: invalid UTF-8 passes through unchanged
		switch {
		case escaped:
			cur.WriteByte(r)
			escaped = false
		case quote == '\'':
			if r == '\'' {
				quote = 0
			} else {
				cur.WriteByte(r)
			}
		case r == '\\':
			escaped, inWord = true, true
		case quote == '"':
			if r == '"' {
				quote = 0
			} else {
				cur.WriteByte(r)
			}
		case r == '\'' || r == '"':
			quote, inWord = r, true
		case r == ' ' || r == '\t' || r == '\n':
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteByte(r)
			inWord = true
		}
	}
	if escaped || quote != 0 {
		return nil, fmt.Errorf("command %q: unterminated quote or escape", s)
	}
	if inWord {
		words = append(words, cur.String())
	}
	return words, nil
}
