package suite

import (
	"fmt"
	"math"
	"os"
	"slices"
	"strings"
	"testing"
	"time"
)

func readTestdata(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile("testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParseIperf3TCP(t *testing.T) {
	r, err := ParseIperf3(readTestdata(t, "iperf3-tcp-p4.json"))
	if err != nil {
		t.Fatal(err)
	}
	if r.Protocol != "TCP" || r.Streams != 4 {
		t.Errorf("protocol %q streams %d, want TCP 4", r.Protocol, r.Streams)
	}
	if r.Retransmits != 17 {
		t.Errorf("retransmits = %d, want 17 (end.sum_sent)", r.Retransmits)
	}
	if r.ReceivedBytes != 2_500_000_000 || r.ReceivedSeconds != 2.0 || r.ReceivedBPS != 10e9 {
		t.Errorf("received %d B in %g s at %g b/s", r.ReceivedBytes, r.ReceivedSeconds, r.ReceivedBPS)
	}
	// The omitted interval counts toward the bytes moved.
	if r.AllSentBytes != 1_000_000_000+1_250_000_000+1_250_000_000 {
		t.Errorf("all sent bytes = %d", r.AllSentBytes)
	}
}

func TestParseIperf3UDP(t *testing.T) {
	r, err := ParseIperf3(readTestdata(t, "iperf3-udp64.json"))
	if err != nil {
		t.Fatal(err)
	}
	if r.Protocol != "UDP" || r.BlockSize != 64 {
		t.Fatalf("protocol %q blksize %d", r.Protocol, r.BlockSize)
	}
	// Delivered: receiver bytes / 64 / receiver seconds, not the sender's
	// packet count (sum_received.packets repeats the sender's).
	if got, want := r.DeliveredPPS(), 14102912.0/64/2.000733; math.Abs(got-want) > 1e-6 {
		t.Errorf("delivered pps = %g, want %g", got, want)
	}
	if got, want := r.SentPPS(), 407420/2.000446; math.Abs(got-want) > 1e-6 {
		t.Errorf("sent pps = %g, want %g", got, want)
	}
	if r.Retransmits != 0 {
		t.Errorf("UDP retransmits = %d", r.Retransmits)
	}
}

func TestParseIperf3Errors(t *testing.T) {
	for name, in := range map[string]string{
		"error field":   `{"start":{},"intervals":[],"end":{},"error":"unable to connect to server: Connection refused"}`,
		"not json":      `iperf3: error - unable to connect`,
		"no end sums":   `{"start":{"test_start":{"protocol":"TCP"}},"intervals":[],"end":{}}`,
		"zero duration": `{"end":{"sum_sent":{"bytes":1,"seconds":0},"sum_received":{"bytes":1,"seconds":0}}}`,
	} {
		if _, err := ParseIperf3([]byte(in)); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	_, err := ParseIperf3([]byte(`{"error":"unable to connect to server: Connection refused"}`))
	if err == nil || !strings.Contains(err.Error(), "Connection refused") {
		t.Errorf("error %v does not carry iperf3's message", err)
	}
}

func TestParsePingRTTs(t *testing.T) {
	out := `PING 198.19.8.1 (198.19.8.1) from 198.19.7.1 : 56(84) bytes of data.
64 bytes from 198.19.8.1: icmp_seq=1 ttl=64 time=0.061 ms
64 bytes from 198.19.8.1: icmp_seq=2 ttl=64 time=1.20 ms
64 bytes from 198.19.8.1: icmp_seq=2 ttl=64 time=1.30 ms (DUP!)
From 198.19.7.1 icmp_seq=3 Destination Host Unreachable
64 bytes from 198.19.8.1: icmp_seq=4 ttl=64 time=12 ms
64 bytes from 198.19.8.1: seq=5 ttl=64 time=0.070 ms

--- 198.19.8.1 ping statistics ---
5 packets transmitted, 4 received, +1 duplicates, 20% packet loss, time 41ms
rtt min/avg/max/mdev = 0.061/3.332/12.000/5.100 ms
`
	got := ParsePingRTTs(out)
	want := []time.Duration{61 * time.Microsecond, 1200 * time.Microsecond, 12 * time.Millisecond, 70 * time.Microsecond}
	if !slices.Equal(got, want) {
		t.Errorf("rtts = %v, want %v", got, want)
	}
	if got := ParsePingRTTs("ping: connect: Network is unreachable\n"); len(got) != 0 {
		t.Errorf("rtts from an error = %v", got)
	}
}

func TestPercentile(t *testing.T) {
	var d []time.Duration
	for i := 200; i >= 1; i-- { // unsorted on purpose
		d = append(d, time.Duration(i)*time.Microsecond)
	}
	if got := Percentile(d, 50); got != 100*time.Microsecond {
		t.Errorf("p50 of 1..200 µs = %v, want 100µs", got)
	}
	if got := Percentile(d, 99); got != 198*time.Microsecond {
		t.Errorf("p99 of 1..200 µs = %v, want 198µs", got)
	}
	if got := Percentile(d, 100); got != 200*time.Microsecond {
		t.Errorf("p100 = %v", got)
	}
	if got := Percentile([]time.Duration{5}, 99); got != 5 {
		t.Errorf("p99 of one = %v", got)
	}
	if got := Percentile(nil, 50); got != 0 {
		t.Errorf("p50 of none = %v", got)
	}
}

func TestParseProcStat(t *testing.T) {
	in := `cpu  1000 20 300 50000 40 5 600 7 0 0
cpu0 500 10 150 25000 20 3 300 4 0 0
intr 12345 0 0
ctxt 999
`
	c, err := ParseProcStat(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	want := CPUStat{User: 10, Nice: 0.2, System: 3, Idle: 500, IOWait: 0.4, IRQ: 0.05, SoftIRQ: 6, Steal: 0.07}
	if c != want {
		t.Errorf("got %+v, want %+v", c, want)
	}
	if got := c.Busy(); math.Abs(got-19.25) > 1e-9 {
		t.Errorf("busy = %g, want 19.25", got)
	}
	d := c.Sub(CPUStat{User: 4, SoftIRQ: 1})
	if d.User != 6 || d.SoftIRQ != 5 {
		t.Errorf("sub = %+v", d)
	}
	for _, bad := range []string{"", "cpu 1 2 3\n", "cpu a b c d e f g h\n", "intr 1\n"} {
		if _, err := ParseProcStat(strings.NewReader(bad)); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

func pidStatLine(comm string, utime, stime int) string {
	return fmt.Sprintf("4242 (%s) S 1 4242 4242 0 -1 4194560 1000 0 0 0 %d %d 0 0 20 0 9 0 1234 123456 789 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0",
		comm, utime, stime)
}

func TestParsePIDStat(t *testing.T) {
	for _, comm := range []string{"weft", "my (evil) daemon", ") S 1 2 3", ""} {
		got, err := ParsePIDStat([]byte(pidStatLine(comm, 250, 175)))
		if err != nil || got != 4.25 {
			t.Errorf("comm %q: %g, %v; want 4.25 s", comm, got, err)
		}
	}
	for _, bad := range []string{"", "4242 weft S 1", "4242 (weft) S 1 2 3"} {
		if _, err := ParsePIDStat([]byte(bad)); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

// FuzzParsePIDStat: any process can name itself anything, so the name must
// never shift the fields read.
func FuzzParsePIDStat(f *testing.F) {
	f.Add("weft", 1, 2)
	f.Add(") 9 9 9 9 9 9 9 9 9 9 9 9 (", 100, 0)
	f.Add("a\nb", 0, 7)
	f.Fuzz(func(t *testing.T, comm string, u, s int) {
		if u < 0 || s < 0 || u > 1<<40 || s > 1<<40 {
			return
		}
		got, err := ParsePIDStat([]byte(pidStatLine(comm, u, s)))
		if err != nil {
			t.Fatalf("comm %q: %v", comm, err)
		}
		if want := float64(u+s) / clkTck; got != want {
			t.Fatalf("comm %q: %g, want %g", comm, got, want)
		}
	})
}

func TestTCPListening(t *testing.T) {
	in := `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0A0113C6:1451 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1
   1: 0A0113C6:1452 0B0113C6:9C40 01 00000000:00000000 00:00000000 00000000     0        0 2 1
`
	for port, want := range map[int]bool{5201: true, 5202: false, 40000: false} {
		got, err := TCPListening(strings.NewReader(in), port)
		if err != nil || got != want {
			t.Errorf("port %d: %v, %v; want %v", port, got, err, want)
		}
	}
}

func TestMedian(t *testing.T) {
	for _, tc := range []struct {
		in   []float64
		want float64
	}{
		{[]float64{3}, 3}, {[]float64{3, 1, 2}, 2}, {[]float64{4, 1, 3, 2}, 2.5}, {[]float64{5, 5}, 5},
	} {
		in := slices.Clone(tc.in)
		if got := Median(tc.in); got != tc.want {
			t.Errorf("Median(%v) = %g, want %g", in, got, tc.want)
		}
		if !slices.Equal(in, tc.in) {
			t.Errorf("Median reordered its input: %v", tc.in)
		}
	}
	if !math.IsNaN(Median(nil)) {
		t.Error("Median(nil) is not NaN")
	}
}

func TestSplitCommand(t *testing.T) {
	for in, want := range map[string][]string{
		`flanneld -etcd-endpoints={etcd} -iface=eth0`: {"flanneld", "-etcd-endpoints={etcd}", "-iface=eth0"},
		`  a   'b c'  "d e" f\ g `:                    {"a", "b c", "d e", "f g"},
		`x "" ''`:                                     {"x", "", ""},
		`a"b"'c'`:                                     {"abc"},
		`"a \" b"`:                                    {`a " b`},
		``:                                            nil,
	} {
		got, err := SplitCommand(in)
		if err != nil || !slices.Equal(got, want) {
			t.Errorf("SplitCommand(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{`a 'b`, `"c`, `d\`} {
		if _, err := SplitCommand(bad); err == nil {
			t.Errorf("SplitCommand(%q): no error", bad)
		}
	}
}

// FuzzSplitCommand: words quoted in single quotes come back as they were.
func FuzzSplitCommand(f *testing.F) {
	f.Add("flanneld", "-iface=eth0", "a b")
	f.Add("", "\"", "\\")
	f.Fuzz(func(t *testing.T, a, b, c string) {
		words := []string{a, b, c}
		var parts []string
		for _, w := range words {
			parts = append(parts, "'"+strings.ReplaceAll(w, "'", `'\''`)+"'")
		}
		got, err := SplitCommand(strings.Join(parts, " "))
		if err != nil {
			t.Fatalf("%q: %v", parts, err)
		}
		if !slices.Equal(got, words) {
			t.Fatalf("split %q = %q, want %q", parts, got, words)
		}
	})
}

func TestExpandTemplate(t *testing.T) {
	words, _ := SplitCommand(`/usr/bin/flanneld -etcd-endpoints={etcd} -subnet-file={subnet_file} -iface={ip} {unknown}`)
	got := ExpandTemplate(words, map[string]string{"etcd": "http://198.18.5.1:2379", "subnet_file": "/run/x/subnet.env", "ip": "198.18.5.10"})
	want := []string{"/usr/bin/flanneld", "-etcd-endpoints=http://198.18.5.1:2379", "-subnet-file=/run/x/subnet.env", "-iface=198.18.5.10", "{unknown}"}
	if !slices.Equal(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
}

func TestExtraNetworks(t *testing.T) {
	for k := range MaxExtraPaths {
		if err := checkExtraNetwork(DefaultExtraConfig(k), k); err != nil {
			t.Errorf("default config %d: %v", k, err)
		}
		if !ExtraNetwork(k).Addr().Is4() || ExtraNetwork(k).Overlaps(WeftNetwork) || ExtraNetwork(k).Overlaps(UserspaceNetwork) ||
			extraPortBase+k == userspacePort {
			t.Errorf("extra network %d = %v", k, ExtraNetwork(k))
		}
	}
	for _, bad := range []string{
		`{"Network":"198.19.0.0/16"}`,   // all of weft's
		`{"Network":"198.19.200.0/24"}`, // VXLAN's
		`{"Network":"198.19.211.0/24"}`, // host-gw's
		`{"Network":"198.19.144.0/20"}`, // extra path 2's, for path 1
		`{"Network":"198.19.230.0/24"}`, // weft -fast-path=off's
		`{"Network":"fd00::/64"}`,
		`not json`,
	} {
		if err := checkExtraNetwork(bad, 0); err == nil {
			t.Errorf("%s: accepted", bad)
		}
	}
}

func TestConfigDefaults(t *testing.T) {
	c := Config{WeftBin: "/bin/true"}
	if err := c.defaults(); err != nil {
		t.Fatal(err)
	}
	if c.Seconds != DefaultSeconds || c.Rounds != DefaultRounds || c.MTU != 1500 || c.Omit != 1 || c.Pings != 100*DefaultSeconds ||
		c.IdlePct != 15 || !slices.Equal(c.Profiles, AllProfiles) {
		t.Errorf("defaults: %+v", c)
	}
	c = Config{WeftBin: "/bin/true", Seconds: 1, Omit: -1}
	if err := c.defaults(); err != nil || c.Pings != 200 || c.Omit != 0 {
		t.Errorf("short run: pings %d omit %d, %v; want 200 pings (the minimum), no omit", c.Pings, c.Omit, err)
	}
	for _, bad := range []Config{
		{WeftBin: "/bin/true", Tests: []string{"tcp2"}},
		{WeftBin: "/bin/true", Extra: []ExtraPath{{Name: "vxlan", Template: "x"}}},
		{WeftBin: "/bin/true", Extra: []ExtraPath{{Name: UserspacePath, Template: "x"}}},
		{WeftBin: "/bin/true", Profiles: []string{"fast-nic"}},
		{WeftBin: "/bin/true", Profiles: []string{ProfileNIC, ProfileNIC}},
		{WeftBin: "/bin/true", Extra: []ExtraPath{{Name: "Bad Name", Template: "x"}}},
		{WeftBin: "/bin/true", Extra: []ExtraPath{{Name: "a", Template: "x '"}}},
		{WeftBin: "/bin/true", Extra: []ExtraPath{{Name: "a", Template: "x"}, {Name: "a", Template: "y"}}},
		{WeftBin: "/bin/true", MTU: 1000},
		{},
	} {
		if err := bad.defaults(); err == nil {
			t.Errorf("%+v: accepted", bad)
		}
	}
}

func TestParseEthtoolK(t *testing.T) {
	out := `Features for eth0:
rx-checksumming: on
tx-checksumming: on
	tx-checksum-ipv4: off [fixed]
generic-receive-offload: on
tx-udp_tnl-segmentation: off
rx-gro-hw: off [fixed]
`
	got := parseEthtoolK(out)
	for k, want := range map[string]string{"generic-receive-offload": "on", "tx-udp_tnl-segmentation": "off", "tx-checksum-ipv4": "off", "rx-gro-hw": "off"} {
		if got[k] != want {
			t.Errorf("%s = %q, want %q", k, got[k], want)
		}
	}
	// What the NIC-like profile checks after setting it is what -k shows.
	for _, f := range append(profileSpecs[ProfileNIC].node, profileSpecs[ProfileNIC].hub...) {
		if _, ok := got[f.Shown]; !ok && f.Shown != "tx-udp_tnl-csum-segmentation" {
			t.Errorf("feature %s (ethtool -K %s) is not a name ethtool -k shows", f.Shown, f.Arg)
		}
	}
	if needsEthtool([]string{ProfileDefault}) || !needsEthtool(AllProfiles) {
		t.Error("only the NIC-like profile needs ethtool")
	}
	if got := ethtoolArgs("eth0", profileSpecs[ProfileNIC].node); strings.Join(got, " ") !=
		"-K eth0 gro on tx-udp_tnl-segmentation off tx-udp_tnl-csum-segmentation off" {
		t.Errorf("ethtool args %q", got)
	}
}
