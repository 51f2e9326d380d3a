package suite

import (
	"bytes"
	"encoding/xml"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

var (
	weftOnce sync.Once
	weftPath string
	weftErr  error
)

// weftBinary builds the daemon once per test binary ($WEFT_BIN: use that).
func weftBinary(t *testing.T) string {
	t.Helper()
	weftOnce.Do(func() {
		if p := os.Getenv("WEFT_BIN"); p != "" {
			weftPath, weftErr = filepath.Abs(p)
			return
		}
		out, err := exec.Command("go", "env", "GOMOD").Output()
		if err != nil {
			weftErr = fmt.Errorf("go env GOMOD: %w", err)
			return
		}
		dir, err := os.MkdirTemp("", "weftbench-bin-")
		if err != nil {
			weftErr = err
			return
		}
		weftPath = filepath.Join(dir, "weft")
		cmd := exec.Command("go", "build", "-o", weftPath, ".")
		cmd.Dir = filepath.Dir(strings.TrimSpace(string(out)))
		if b, err := cmd.CombinedOutput(); err != nil {
			weftErr = fmt.Errorf("go build weft: %w\n%s", err, b)
		}
	})
	if weftErr != nil {
		t.Fatal(weftErr)
	}
	return weftPath
}

func TestMain(m *testing.M) {
	code := m.Run()
	if weftPath != "" && os.Getenv("WEFT_BIN") == "" {
		os.RemoveAll(filepath.Dir(weftPath))
	}
	os.Exit(code)
}

// requireBenchTools skips unless root with iperf3 (in CI, being not root
// is a failure, as for the lab's namespace tests).
func requireBenchTools(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" || os.Getenv("WEFT_E2E_REQUIRED") == "1" {
			t.Fatal("the benchmark smoke test needs root, and CI=true or WEFT_E2E_REQUIRED=1 requires it")
		}
		t.Skip("the benchmark smoke test needs root (network namespaces): sudo go test ./bench/suite/")
	}
	if _, err := exec.LookPath("iperf3"); err != nil {
		t.Skip("iperf3 is not installed (apt-get install -y iperf3): skipping the benchmark smoke test")
	}
	if _, err := exec.LookPath("ping"); err != nil {
		t.Fatal("ping not found: apt-get install -y iputils-ping")
	}
}

// requireEthtool skips without ethtool, which the NIC-like profile needs
// (in CI, where .ci/run installs it, its absence is a failure).
func requireEthtool(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("ethtool"); err != nil {
		if os.Getenv("CI") == "true" || os.Getenv("WEFT_E2E_REQUIRED") == "1" {
			t.Fatal("the NIC-like underlay profile needs ethtool (.ci/run installs it): apt-get install -y ethtool")
		}
		t.Skip("ethtool is not installed (apt-get install -y ethtool): skipping the NIC-like underlay profile")
	}
}

// leftovers lists namespaces of this process's labs.
func leftovers() []string {
	var out []string
	entries, _ := os.ReadDir("/run/netns")
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), fmt.Sprintf("wl%x-", os.Getpid())) {
			out = append(out, e.Name())
		}
	}
	return out
}

// TestSmoke runs the whole suite in the default underlay profile, 1 s per
// test and one round, and checks every path measured sensible numbers and
// the outputs are complete.
func TestSmoke(t *testing.T) {
	requireBenchTools(t)
	weft := weftBinary(t)
	var progress bytes.Buffer
	start := time.Now()
	res, err := Run(t.Context(), Config{
		WeftBin: weft, Seconds: 1, Rounds: 1, Profiles: []string{ProfileDefault},
		Omit:       -1, // no slow-start omission: keeps the test short
		IdleSample: 100 * time.Millisecond, IdleWait: time.Second,
		Command:  "go test ./bench/suite -run TestSmoke",
		Progress: &progress,
	})
	t.Logf("suite ran in %v:\n%s", time.Since(start).Round(time.Millisecond), progress.String())
	if err != nil {
		t.Fatal(err)
	}
	if left := leftovers(); len(left) > 0 {
		t.Errorf("namespaces left after Run: %v", left)
	}

	if got := PathNames(res.Paths); strings.Join(got, ",") != "weft,weft-userspace,vxlan,host-gw,veth" {
		t.Fatalf("paths %v", got)
	}
	want := map[string]struct {
		dev string
		mtu int
	}{"weft": {"udp0", 1472}, UserspacePath: {UserspaceTUN, 1472}, "vxlan": {"flannel.1", 1450}, "host-gw": {"eth0", 1500}, "veth": {"eth0", 1500}}
	for _, p := range res.Paths {
		if w := want[p.Name]; p.Device != w.dev || p.MTU != w.mtu {
			t.Errorf("path %s: device %s MTU %d, want %s %d", p.Name, p.Device, p.MTU, w.dev, w.mtu)
		}
	}
	if p := res.Paths[1]; !UserspaceNetwork.Contains(p.Src) || !strings.Contains(strings.Join(p.Daemon, " "), "--fast-path=off") ||
		!strings.HasPrefix(p.FastPath, "off (-fast-path=off)") {
		t.Errorf("weft -fast-path=off path %+v", p)
	}
	if p := res.Paths[0]; p.FastPath == "" {
		t.Errorf("weft's fast path state not recorded: %+v", p)
	}
	if n := len(res.Samples); n != len(AllTests)*len(res.Paths) {
		t.Fatalf("%d samples, want %d", n, len(AllTests)*len(res.Paths))
	}
	for _, s := range res.Samples {
		if s.Error != "" {
			t.Errorf("%s on %s: %s", s.Test, s.Path, s.Error)
			continue
		}
		switch s.Test {
		case TestTCP1, TestTCP4, TestTCP8:
			if s.Gbps <= 0 || s.BytesMoved <= 0 || s.BusyCPU <= 0 {
				t.Errorf("%s on %s: %+v", s.Test, s.Path, s)
			}
		case TestUDP64:
			if s.DeliveredPP <= 0 || s.SentPPS < s.DeliveredPP*0.99 {
				t.Errorf("udp64 on %s: delivered %g of %g pps", s.Path, s.DeliveredPP, s.SentPPS)
			}
		case TestPing:
			if s.PingSent < 200 || s.PingRecv < s.PingSent*9/10 || s.P50ms <= 0 || s.P99ms < s.P50ms {
				t.Errorf("ping on %s: %d/%d p50 %g p99 %g", s.Path, s.PingRecv, s.PingSent, s.P50ms, s.P99ms)
			}
		case TestRR:
			if s.RRPerSec <= 0 {
				t.Errorf("rr on %s: %g/s", s.Path, s.RRPerSec)
			}
		}
		// weft -fast-path=off moved bytes through its daemons (weft's own
		// may have left it to the kernel); the kernel paths have none.
		if s.Path == UserspacePath && s.Test == TestTCP1 && s.DaemonCPU <= 0 {
			t.Errorf("weft -fast-path=off's daemons used no CPU moving %d bytes", s.BytesMoved)
		}
		if !s.Daemon && s.DaemonCPU != 0 {
			t.Errorf("%s on %s: daemon CPU %g without a daemon", s.Test, s.Path, s.DaemonCPU)
		}
	}
	tcp1 := metric(t, res, "tcp1_gbps", Baseline)
	if tcp1.Ratio == nil || tcp1.Ratio.Median != 1 {
		t.Errorf("vxlan tcp1 ratio %+v", tcp1.Ratio)
	}
	if res.Machine.Kernel == "" || res.Machine.CPUs < 1 || !strings.Contains(res.Machine.Iperf3, "iperf") || !strings.Contains(res.Machine.Weft, "weft") {
		t.Errorf("machine %+v", res.Machine)
	}

	dir := t.TempDir()
	if err := WriteOutputs(dir, res); err != nil {
		t.Fatal(err)
	}
	svg, err := os.ReadFile(filepath.Join(dir, ChartFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := xml.Unmarshal(svg, new(svgNode)); err != nil {
		t.Errorf("chart.svg: %v", err)
	}
	md, _ := os.ReadFile(filepath.Join(dir, ReportFile))
	if !strings.Contains(string(md), "| TCP, 1 stream, Gb/s ↑ |") {
		t.Errorf("report lacks the summary table:\n%s", md)
	}
}

// TestProfiles runs both underlay profiles, one round of a TCP stream and a
// few pings, and checks that the NIC-like profile took and that both weft
// columns have ratios to VXLAN in both.
func TestProfiles(t *testing.T) {
	requireBenchTools(t)
	requireEthtool(t)
	weft := weftBinary(t)
	res, err := Run(t.Context(), Config{
		WeftBin: weft, Seconds: 1, Rounds: 1, Omit: -1, Tests: []string{TestTCP1, TestPing}, Pings: 20,
		IdleSample: 100 * time.Millisecond, IdleWait: time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Profiles) != 2 || res.Profiles[0].Name != ProfileDefault || res.Profiles[1].Name != ProfileNIC {
		t.Fatalf("profiles %+v", res.Profiles)
	}
	nic := strings.Join(res.Profiles[1].Offloads, "; ")
	for _, want := range []string{"generic-receive-offload: on", "tx-udp_tnl-segmentation: off", "tx-udp_tnl-csum-segmentation: off"} {
		if !strings.Contains(nic, want) {
			t.Errorf("NIC-like profile's eth0: %s; want %s", nic, want)
		}
	}
	if len(res.Profiles[1].Setup) != 4 || len(res.Profiles[0].Setup) != 0 {
		t.Errorf("setup commands: %q and %q", res.Profiles[0].Setup, res.Profiles[1].Setup)
	}
	if def := strings.Join(res.Profiles[0].Offloads, "; "); !strings.Contains(def, "generic-receive-offload: off") {
		t.Errorf("default profile's eth0: %s", def)
	}
	if n := len(res.Samples); n != 2*2*5 {
		t.Errorf("%d samples, want 20", n)
	}
	for _, s := range res.Samples {
		if s.Error != "" {
			t.Errorf("%s on %s in %s: %s", s.Test, s.Path, s.Profile, s.Error)
		}
	}
	for _, pr := range AllProfiles {
		for _, path := range []string{"weft", UserspacePath} {
			if m := metricIn(t, res, pr, "tcp1_gbps", path); m.Ratio == nil || m.Ratio.Median <= 0 {
				t.Errorf("%s in %s: tcp1 %+v", path, pr, m)
			}
		}
	}
	if left := leftovers(); len(left) > 0 {
		t.Errorf("namespaces left after Run: %v", left)
	}
}

// TestExtraPath measures a second weft (its own TUN, port and network) as
// a -path, the way a stock flanneld would be added.
func TestExtraPath(t *testing.T) {
	requireBenchTools(t)
	weft := weftBinary(t)
	res, err := Run(t.Context(), Config{
		WeftBin: weft, Seconds: 1, Rounds: 1, Tests: []string{TestPing}, Pings: 20, Profiles: []string{ProfileDefault},
		IdleSample: 100 * time.Millisecond, IdleWait: time.Second,
		Extra: []ExtraPath{{Name: "weft-2", Template: weft +
			" -etcd-endpoints={etcd} -etcd-prefix={prefix} -subnet-file={subnet_file} -iface={iface} -tun-name=udp9" +
			" -healthz-port=0 -status-socket={dir}/weft.sock"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	p := res.Paths[len(res.Paths)-1]
	if p.Name != "weft-2" || p.Device != "udp9" || !ExtraNetwork(0).Contains(p.Src) || !ExtraNetwork(0).Contains(p.Dst) {
		t.Errorf("extra path %+v", p)
	}
	if len(p.Daemon) == 0 || !strings.Contains(strings.Join(p.Daemon, " "), "-etcd-prefix=/weftlab/weft-2/network") {
		t.Errorf("daemon command %q: placeholders not substituted", p.Daemon)
	}
	for _, s := range res.Samples {
		if s.Path == "weft-2" && (s.Error != "" || s.PingRecv == 0 || !s.Daemon) {
			t.Errorf("extra path sample %+v", s)
		}
	}
	if left := leftovers(); len(left) > 0 {
		t.Errorf("namespaces left after Run: %v", left)
	}
}
