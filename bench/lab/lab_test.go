package lab

import (
	"bytes"
	"context"
	"crypto/sha256"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestParsePing(t *testing.T) {
	tests := []struct {
		name           string
		out            string
		sent, received int
		loss           float64
		avg            time.Duration
		wantErr        bool
	}{
		{
			name: "iputils all back",
			out: `PING 198.19.8.1 (198.19.8.1) from 198.19.7.1 : 56(84) bytes of data.
64 bytes from 198.19.8.1: icmp_seq=1 ttl=63 time=0.331 ms

--- 198.19.8.1 ping statistics ---
3 packets transmitted, 3 received, 0% packet loss, time 402ms
rtt min/avg/max/mdev = 0.245/0.331/0.412/0.068 ms
`,
			sent: 3, received: 3, loss: 0, avg: 331 * time.Microsecond,
		},
		{
			name: "iputils partial",
			out: `4 packets transmitted, 3 received, 25% packet loss, time 602ms
rtt min/avg/max/mdev = 0.100/0.200/0.300/0.010 ms`,
			sent: 4, received: 3, loss: 0.25, avg: 200 * time.Microsecond,
		},
		{
			name: "iputils nothing back with errors",
			out:  "5 packets transmitted, 0 received, +5 errors, 100% packet loss, time 812ms\n",
			sent: 5, received: 0, loss: 1,
		},
		{
			name: "busybox",
			out: `3 packets transmitted, 3 packets received, 0% packet loss
round-trip min/avg/max = 0.061/0.070/0.080 ms`,
			sent: 3, received: 3, loss: 0, avg: 70 * time.Microsecond,
		},
		{name: "no summary", out: "ping: bind: Cannot assign requested address\n", wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, err := ParsePing(tc.out)
			if tc.wantErr {
				if err == nil {
					t.Fatalf("ParsePing: no error, got %+v", r)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParsePing: %v", err)
			}
			if r.Sent != tc.sent || r.Received != tc.received || r.Loss != tc.loss || r.Avg != tc.avg {
				t.Errorf("got sent=%d received=%d loss=%v avg=%v, want %d %d %v %v",
					r.Sent, r.Received, r.Loss, r.Avg, tc.sent, tc.received, tc.loss, tc.avg)
			}
			if r.OK() != (tc.sent > 0 && tc.loss == 0) {
				t.Errorf("OK() = %v", r.OK())
			}
		})
	}
}

func FuzzParsePing(f *testing.F) {
	f.Add("3 packets transmitted, 3 received, 0% packet loss\nrtt min/avg/max/mdev = 0.1/0.2/0.3/0.0 ms")
	f.Add("3 packets transmitted, 7 received, +4 duplicates")
	f.Add("0 packets transmitted, 0 received")
	f.Add("99999999999999999999 packets transmitted, 1 received")
	f.Fuzz(func(t *testing.T, out string) {
		r, err := ParsePing(out)
		if err != nil {
			return
		}
		if r.Loss < 0 || r.Loss > 1 {
			t.Fatalf("loss %v out of [0,1]", r.Loss)
		}
		if r.Sent < 0 || r.Received < 0 || r.Min < 0 || r.Avg < 0 || r.Max < 0 {
			t.Fatalf("negative field in %+v", r)
		}
		if r.OK() && r.Loss != 0 {
			t.Fatalf("OK with loss %v", r.Loss)
		}
	})
}

func TestParseSubnetEnv(t *testing.T) {
	env, err := ParseSubnetEnv(strings.NewReader(
		"FLANNEL_NETWORK=198.19.0.0/16\nFLANNEL_SUBNET=198.19.7.1/24\n\n# c\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=false\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"FLANNEL_NETWORK": "198.19.0.0/16", "FLANNEL_SUBNET": "198.19.7.1/24",
		"FLANNEL_MTU": "1472", "FLANNEL_IPMASQ": "false"}
	if len(env) != len(want) {
		t.Fatalf("got %v, want %v", env, want)
	}
	for k, v := range want {
		if env[k] != v {
			t.Errorf("%s = %q, want %q", k, env[k], v)
		}
	}
	if _, err := ParseSubnetEnv(strings.NewReader("FLANNEL_MTU\n")); err == nil {
		t.Error("a line without '=' parsed")
	}
}

func TestSubnetKey(t *testing.T) {
	p := netip.MustParsePrefix("198.19.7.0/24")
	if k := SubnetKey(p); k != "198.19.7.0-24" {
		t.Fatalf("SubnetKey = %q", k)
	}
	got, err := ParseSubnetKey("198.19.7.0-24")
	if err != nil || got != p {
		t.Fatalf("ParseSubnetKey = %v, %v", got, err)
	}
	for _, bad := range []string{"198.19.7.0/24", "198.19.7.1-24", "198.19.7.0-33", "fc00::-64", "198.19.7.0-24&fc00::-64", "x-1"} {
		if p, err := ParseSubnetKey(bad); err == nil {
			t.Errorf("ParseSubnetKey(%q) = %v, want error", bad, p)
		}
	}
}

func FuzzParseSubnetKey(f *testing.F) {
	f.Add("198.19.7.0-24")
	f.Add("0.0.0.0-0")
	f.Add("198.19.7.0-24&fc00::-64")
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParseSubnetKey(s)
		if err != nil {
			return
		}
		if !p.Addr().Is4() || p.Masked() != p {
			t.Fatalf("%q parsed to %v", s, p)
		}
		// Round trip through the canonical form.
		q, err := ParseSubnetKey(SubnetKey(p))
		if err != nil || q != p {
			t.Fatalf("round trip of %v: %v, %v", p, q, err)
		}
	})
}

func TestTail(t *testing.T) {
	if got := tail("a\nb\nc\n", 2); got != "b\nc" {
		t.Errorf("tail = %q", got)
	}
	if got := tail("a\nb", 5); got != "a\nb" {
		t.Errorf("tail = %q", got)
	}
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" || os.Getenv("WEFT_E2E_REQUIRED") == "1" {
			t.Fatal("network namespace tests need root and CI=true or WEFT_E2E_REQUIRED=1 requires them; run as root")
		}
		t.Skip("network namespace tests need root: run `sudo go test ./bench/lab/`")
	}
	if _, err := exec.LookPath("ping"); err != nil {
		t.Fatal("ping not found: apt-get install -y iputils-ping")
	}
}

// newTestLab builds a lab that is closed, and checked to leave nothing
// behind, when the test ends.
func newTestLab(t *testing.T, opts Options) *Lab {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = testLogger(t)
	}
	l, err := New(opts)
	if err != nil {
		t.Fatalf("lab.New: %v", err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Errorf("lab.Close: %v", err)
		}
		assertGone(t, l)
	})
	return l
}

// assertGone checks that Close left no namespace, host link or directory.
func assertGone(t *testing.T, l *Lab) {
	t.Helper()
	entries, _ := os.ReadDir("/run/netns")
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "wl"+l.ID+"-") {
			t.Errorf("namespace %s left after Close", e.Name())
		}
	}
	if _, err := net.InterfaceByName(l.hostLink); err == nil {
		t.Errorf("host link %s left after Close", l.hostLink)
	}
	if _, err := os.Stat(l.Dir); err == nil && !l.opts.KeepDir {
		t.Errorf("lab dir %s left after Close", l.Dir)
	}
}

// TestLabUnderlay checks the harness itself, without weft: addressing,
// reachability, etcd from the nodes, a TCP transfer, etcd restart, and a
// complete teardown.
func TestLabUnderlay(t *testing.T) {
	requireRoot(t)
	l := newTestLab(t, Options{Nodes: 2, MTU: 1400})
	l2 := newTestLab(t, Options{Nodes: 1})
	if l.Underlay == l2.Underlay {
		t.Fatalf("two labs share underlay %v", l.Underlay)
	}
	if !netip.MustParsePrefix("198.18.0.0/16").Contains(l.Underlay.Addr()) || l.Underlay.Bits() != 24 {
		t.Fatalf("underlay %v outside 198.18.0.0/16", l.Underlay)
	}
	for i, n := range l.Nodes() {
		if want := underlayAddr(l.Underlay, 10+i); n.Addr != want {
			t.Errorf("node %d address %v, want %v", i, n.Addr, want)
		}
		if _, err := os.Stat(filepath.Join("/run/netns", n.NS)); err != nil {
			t.Errorf("namespace of node %d: %v", i, err)
		}
	}
	out, err := l.Command(t.Context(), 0, "ip", "-o", "link", "show", "eth0").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "mtu 1400") {
		t.Errorf("eth0 in n0: %v: %s", err, out)
	}

	for _, c := range []struct {
		from int
		to   netip.Addr
	}{{0, l.Node(1).Addr}, {1, l.Node(0).Addr}, {0, l.HostAddr()}} {
		r, err := l.Ping(c.from, c.to, 2)
		if err != nil || !r.OK() {
			t.Errorf("ping %v from n%d: %+v, %v", c.to, c.from, r, err)
		}
	}
	// The other lab's node is in another underlay: unreachable.
	if r, err := l.Ping(0, l2.Node(0).Addr, 1); err == nil && r.Received > 0 {
		t.Errorf("lab %s reached lab %s's node", l.ID, l2.ID)
	}

	// etcd answers on the host end, from inside a node.
	n0 := l.nodes[0]
	if err := inNetns(n0.ns, func() error {
		c, err := net.DialTimeout("tcp4", netip.AddrPortFrom(l.HostAddr(), EtcdClientPort).String(), 2*time.Second)
		if err == nil {
			c.Close()
		}
		return err
	}); err != nil {
		t.Errorf("dial etcd from n0: %v", err)
	}

	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	r, err := l.TransferAddr(ctx, 0, l.Node(0).Addr, 1, l.Node(1).Addr, 8<<20)
	if err != nil || !r.Match() || r.Bytes != 8<<20 || r.Duration <= 0 {
		t.Fatalf("transfer: %+v, %v", r, err)
	}
	if r.From.Addr() != l.Node(0).Addr || r.To.Addr() != l.Node(1).Addr {
		t.Errorf("transfer went %v -> %v", r.From, r.To)
	}
	t.Logf("underlay transfer: %d bytes in %v, %.2f Gb/s", r.Bytes, r.Duration, r.Gbps())

	// Above the buffering limit the receiver hashes inline: same verdict.
	maxBufferedTransfer = 1 << 20
	r, err = l.TransferAddr(ctx, 1, l.Node(1).Addr, 0, l.Node(0).Addr, 3<<20+5)
	maxBufferedTransfer = MaxBufferedTransfer
	if err != nil || !r.Match() || r.Bytes != 3<<20+5 {
		t.Fatalf("inline-hashed transfer: %+v, %v", r, err)
	}

	// A cancelled transfer returns promptly with an error.
	cctx, ccancel := context.WithCancel(t.Context())
	ccancel()
	if _, err := l.TransferAddr(cctx, 0, l.Node(0).Addr, 1, l.Node(1).Addr, 1<<30); err == nil {
		t.Error("transfer with a cancelled context succeeded")
	}

	// etcd restarts on the same data.
	if err := l.StopEtcd(); err != nil {
		t.Fatal(err)
	}
	if err := l.StartEtcd(); err != nil {
		t.Fatal(err)
	}
	resp, err := l.Client().Get(ctx, l.Prefix()+"/config")
	if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != DefaultNetworkConfig {
		t.Fatalf("config after etcd restart: %v, %v", resp, err)
	}
}

// TestLabProcesses checks daemon process handling with a stand-in script:
// the process runs in the node's namespace, its output lands in the log,
// SIGTERM, SIGKILL and a self-exit are reported with the right status.
func TestLabProcesses(t *testing.T) {
	requireRoot(t)
	bin := filepath.Join(t.TempDir(), "fakeweft")
	script := `#!/bin/sh
echo "fake weft $* env=$FLANNELD_ETCD_PREFIX inherited=$FLANNELD_IFACE"
ip -o -4 addr show dev eth0
case "$1" in exit3) exit 3;; ignoreterm) trap '' TERM;; *) trap 'echo bye; exit 0' TERM;; esac
while :; do sleep 0.05; done
`
	if err := os.WriteFile(bin, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("FLANNELD_IFACE", "leaked")
	l := newTestLab(t, Options{Nodes: 1, WeftBin: bin, StopTimeout: 2 * time.Second})

	if _, err := l.StopWeft(0); err == nil {
		t.Error("StopWeft with nothing running: no error")
	}
	if err := l.StartWeftWith(0, []string{"plain"}, []string{"FLANNELD_ETCD_PREFIX=/x"}); err != nil {
		t.Fatal(err)
	}
	if err := l.StartWeft(0); err == nil {
		t.Error("second StartWeft on a busy node: no error")
	}
	waitFor(t, 5*time.Second, func() bool { return strings.Contains(l.Log(0), l.Node(0).Addr.String()) })
	log := l.Log(0)
	if !strings.Contains(log, "fake weft plain env=/x inherited=\n") {
		t.Errorf("arguments or environment not as given:\n%s", log)
	}
	code, err := l.StopWeft(0)
	if err != nil || code != 0 {
		t.Errorf("StopWeft = %d, %v; want 0", code, err)
	}
	waitFor(t, 2*time.Second, func() bool { return strings.Contains(l.Log(0), "bye") })

	if err := l.StartWeftWith(0, []string{"ignoreterm"}, nil); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond) // let the trap be installed
	start := time.Now()
	if code, err := l.StopWeft(0); err == nil || code != -1 {
		t.Errorf("StopWeft of a daemon ignoring SIGTERM = %d, %v; want -1 and an error", code, err)
	}
	if d := time.Since(start); d < 2*time.Second || d > 5*time.Second {
		t.Errorf("SIGKILL came after %v, want about 2s", d)
	}

	if err := l.StartWeftWith(0, []string{"exit3"}, nil); err != nil {
		t.Fatal(err)
	}
	if code, err := l.WaitExit(0, 5*time.Second); err != nil || code != 3 {
		t.Errorf("WaitExit = %d, %v; want 3", code, err)
	}
	if l.Running(0) {
		t.Error("Running after exit")
	}
	if err := l.WaitReady(0, time.Second); err == nil {
		t.Error("WaitReady of an exited daemon: no error")
	}

	if err := l.StartWeftWith(0, []string{"plain"}, nil); err != nil {
		t.Fatal(err)
	}
	pid := l.PID(0)
	if err := l.KillWeft(0); err != nil {
		t.Errorf("KillWeft: %v", err)
	}
	if _, err := os.Stat("/proc/" + strconv.Itoa(pid)); err == nil {
		t.Errorf("pid %d still exists after KillWeft", pid)
	}
	// Close stops a running daemon too (checked by assertGone's namespace
	// check: a live process would not stop the name from going, so check
	// the PID).
	if err := l.StartWeftWith(0, []string{"plain"}, nil); err != nil {
		t.Fatal(err)
	}
	pid = l.PID(0)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat("/proc/" + strconv.Itoa(pid)); err == nil {
		t.Errorf("pid %d survived Close", pid)
	}
}

func waitFor(t *testing.T, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met after %v", timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// TestCleanupStale leaves behind what a killed lab process would (a
// namespace with a process inside, a host veth) and checks that
// CleanupStale removes it, while a live process's lab is untouched.
func TestCleanupStale(t *testing.T) {
	requireRoot(t)
	live := newTestLab(t, Options{Nodes: 1})

	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	id := strconv.FormatInt(int64(dead.Process.Pid), 16) + "-fff"
	ns, link := "wl"+id+"-n0", "wl"+id
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	t.Cleanup(func() { _ = deleteNS(ns) })
	if out, err := exec.Command("ip", "link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", ns).CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "link", "del", link).Run() })
	sleeper := exec.Command("ip", "netns", "exec", ns, "sleep", "60")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	waitDone := make(chan error, 1)
	go func() { waitDone <- sleeper.Wait() }()
	t.Cleanup(func() { _ = sleeper.Process.Kill() })

	removed, err := CleanupStale(testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Join(removed, ",")
	if !strings.Contains(got, "netns "+ns) || !strings.Contains(got, "link "+link) {
		t.Errorf("removed %v, want %s and %s", removed, ns, link)
	}
	if strings.Contains(got, live.ID) {
		t.Errorf("removed the live lab's %v", removed)
	}
	select {
	case err := <-waitDone:
		t.Logf("process in the stale namespace ended: %v", err)
	case <-time.After(5 * time.Second):
		t.Error("process in the stale namespace survived")
	}
	if _, err := os.Stat("/run/netns/" + ns); err == nil {
		t.Errorf("namespace %s still there", ns)
	}
	if _, err := net.InterfaceByName(link); err == nil {
		t.Errorf("link %s still there", link)
	}
	if r, err := live.Ping(0, live.HostAddr(), 1); err != nil || !r.OK() {
		t.Errorf("live lab broken by CleanupStale: %+v, %v", r, err)
	}
}

// The stream is the same however it is cut into writes, and differs
// between seeds and between units.
func TestStream(t *testing.T) {
	const n = 3*streamBlock + 12345
	whole := make([]byte, n)
	newStream(7).fill(whole)
	s := newStream(7)
	var got []byte
	for i, sizes := 0, []int{1, 7, 4089, 4096, 5000, 65536, 1 << 20}; len(got) < n; i++ {
		p := make([]byte, min(sizes[i%len(sizes)], n-len(got)))
		s.fill(p)
		got = append(got, p...)
	}
	if !bytes.Equal(got, whole) {
		t.Fatal("stream depends on how it is cut")
	}
	other := make([]byte, n)
	newStream(8).fill(other)
	if bytes.Equal(other[:streamUnit], whole[:streamUnit]) {
		t.Error("seeds 7 and 8 give the same stream")
	}
	seen := map[string]bool{}
	for u := 0; u+streamUnit <= n; u += streamUnit {
		k := string(whole[u : u+streamUnit])
		if seen[k] {
			t.Fatalf("unit at %d repeats an earlier one", u)
		}
		seen[k] = true
	}
	var buf bytes.Buffer
	if err := writeStream(&buf, 7, n, nil); err != nil || !bytes.Equal(buf.Bytes(), whole) {
		t.Fatalf("writeStream differs from fill: %v", err)
	}
	if streamSum(7, n) != sha256.Sum256(whole) {
		t.Error("streamSum is not the SHA-256 of the stream")
	}
}
