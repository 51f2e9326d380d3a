package lab

// End-to-end tests: the real weft binary in network namespaces, against a
// real etcd. They need root; as a normal user they skip, unless CI=true or
// WEFT_E2E_REQUIRED=1, where skipping would hide a regression and they
// fail instead. The binary is built from the module root on first use;
// WEFT_BIN=path uses a prebuilt one, WEFT_E2E_RACE=1 builds it with the
// race detector.
//
// Tests that mostly wait (on the daemon's timers, etcd's or gRPC's backoff,
// an outage) call t.Parallel: each has a lab of its own (namespaces, an
// underlay /24 chosen under a lock, its own etcd), and go test runs them
// side by side once the serial tests are done. The serial ones move bulk
// traffic or count drops (TestE2EThreeNodes, TestFaultFlood,
// TestFaultKill9UnderTraffic) or change process-wide state
// (TestLabUnderlay, TestLabProcesses): they run alone in this binary.

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

const readyTimeout = 30 * time.Second

var (
	weftOnce     sync.Once
	weftBin      string
	weftBuildErr error
	weftDir      string // removed by TestMain
)

// TestMain removes the weft binary built (once, on first use) for the
// end-to-end tests.
func TestMain(m *testing.M) {
	code := m.Run()
	if weftDir != "" {
		os.RemoveAll(weftDir)
	}
	os.Exit(code)
}

// weft builds the daemon on first use; unit tests never pay for it.
func weft(t *testing.T) string {
	t.Helper()
	weftOnce.Do(func() {
		weftDir, weftBuildErr = os.MkdirTemp("", "weftlab-bin-")
		if weftBuildErr == nil {
			weftBin, weftBuildErr = buildWeft(weftDir)
		}
	})
	if weftBuildErr != nil {
		t.Fatalf("no weft binary: %v", weftBuildErr)
	}
	return weftBin
}

// buildWeft builds the daemon from the module root into dir, or returns
// $WEFT_BIN.
func buildWeft(dir string) (string, error) {
	if p := os.Getenv("WEFT_BIN"); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("WEFT_BIN: %w", err)
		}
		return filepath.Abs(p)
	}
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	root := filepath.Dir(strings.TrimSpace(string(out)))
	bin := filepath.Join(dir, "weft")
	args := []string{"build", "-o", bin}
	if os.Getenv("WEFT_E2E_RACE") == "1" {
		args = append(args, "-race")
	}
	cmd := exec.Command("go", append(args, ".")...)
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build weft in %s: %w\n%s", root, err, out)
	}
	return bin, nil
}

// newE2ELab is newTestLab for tests that run weft: it needs the binary and
// prints every node's log and the leases in etcd when the test failed.
func newE2ELab(t *testing.T, opts Options) *Lab {
	t.Helper()
	requireRoot(t)
	opts.WeftBin = weft(t)
	opts.WeftArgs = append([]string{"-v=1"}, opts.WeftArgs...)
	l := newTestLab(t, opts)
	t.Cleanup(func() { // runs before newTestLab's Close
		if !t.Failed() {
			return
		}
		for i, n := range l.Nodes() {
			t.Logf("----- log of %s (%s, pid %d) -----\n%s", n.Name, n.NS, l.PID(i), l.Log(i))
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if ls, err := l.Leases(ctx); err == nil {
			for _, le := range ls {
				t.Logf("etcd %s = %s (reserved=%v)", le.Key, le.Value, le.Reserved)
			}
		}
	})
	return l
}

// startAll starts every node at once and waits until all are ready.
func startAll(t *testing.T, l *Lab, extraArgs ...string) {
	t.Helper()
	n := len(l.Nodes())
	for i := range n {
		if err := l.StartWeft(i, extraArgs...); err != nil {
			t.Fatal(err)
		}
	}
	waitAllReady(t, l)
}

func waitAllReady(t *testing.T, l *Lab) {
	t.Helper()
	n := len(l.Nodes())
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { errs[i] = l.WaitReady(i, readyTimeout) })
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
}

func mustStatus(t *testing.T, l *Lab, i int) *Status {
	t.Helper()
	s, err := l.Status(i)
	if err != nil {
		t.Fatal(err)
	}
	if s.Lease == nil {
		t.Fatalf("n%d /status has no lease: %+v", i, s)
	}
	return s
}

// waitPeers waits until node i's /status lists exactly the subnets want.
func waitPeers(t *testing.T, l *Lab, i int, want []netip.Prefix, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		s, err := l.Status(i)
		if err == nil && len(s.Peers) == len(want) {
			all := true
			for _, p := range want {
				all = all && s.HasPeer(p)
			}
			if all {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("n%d peers after %v: %+v (err %v), want %v", i, timeout, s, err, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitMesh waits until every weft node lists every other node's subnet as
// a peer: ready means this node's own lease, device and route are in place,
// while the others' leases may still be on their way through the watch.
// Nodes without /status (a stock flanneld) are not asked.
func waitMesh(t *testing.T, l *Lab) {
	t.Helper()
	n := len(l.Nodes())
	deadline := time.Now().Add(10 * time.Second)
	for i := range n {
		for {
			s, err := l.Status(i)
			if err != nil {
				break
			}
			missing := netip.Prefix{}
			for j := range n {
				if p := l.Pod(j).Masked(); j != i && p.IsValid() && !s.HasPeer(p) {
					missing = p
				}
			}
			if !missing.IsValid() {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("n%d never learned peer %v: %+v", i, missing, s.Peers)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

// pingAll pings every ordered pair of pod addresses, once every node knows
// every other.
func pingAll(t *testing.T, l *Lab) {
	t.Helper()
	waitMesh(t, l)
	n := len(l.Nodes())
	for from := range n {
		for to := range n {
			if from == to {
				continue
			}
			r, err := l.Ping(from, l.Pod(to).Addr(), 3)
			if err != nil || !r.OK() {
				t.Errorf("ping n%d %v -> n%d %v: %v, %d/%d back\n%s",
					from, l.Pod(from), to, l.Pod(to), err, r.Received, r.Sent, r.Output)
			}
		}
	}
}

// subnetOf returns node i's lease from /status.
func subnetOf(t *testing.T, l *Lab, i int) netip.Prefix {
	t.Helper()
	return mustStatus(t, l, i).Lease.Subnet
}

// (a) Three nodes: leases, subnet.env, device, peers, every pair pings
// through the tunnel and a TCP stream arrives byte-exact.
func TestE2EThreeNodes(t *testing.T) {
	l := newE2ELab(t, Options{Nodes: 3})
	startAll(t, l)

	network := netip.MustParsePrefix("198.19.0.0/16")
	subnets := make([]netip.Prefix, 3)
	for i, n := range l.Nodes() {
		s := mustStatus(t, l, i)
		subnets[i] = s.Lease.Subnet
		if !s.Ready || s.Lease.PublicIP != n.Addr || s.Lease.Subnet.Bits() != 24 ||
			!network.Contains(s.Lease.Subnet.Addr()) || s.Lease.Reserved {
			t.Errorf("n%d status: ready=%v lease=%+v, want a /24 in %v for %v", i, s.Ready, *s.Lease, network, n.Addr)
		}
		if s.Device != "udp0" || s.MTU != 1472 {
			t.Errorf("n%d device %q mtu %d, want udp0 1472", i, s.Device, s.MTU)
		}
		// With the kernel fast path, the TUN's super-packets keep the
		// kernel's default size (capped, TCP would send twice the packets).
		// The userspace path alone caps them at one UDP GSO message, 44
		// segments of 1472 bytes: TestE2EFastPathFallback checks that.
		if out, err := l.Command(t.Context(), i, "ip", "-d", "link", "show", "udp0").CombinedOutput(); err != nil ||
			!strings.Contains(string(out), "gso_max_segs 65535 ") {
			t.Errorf("n%d udp0 without gso_max_segs 65535 (%v):\n%s", i, err, out)
		}
		if exp := time.Until(s.Lease.Expiration); exp < 23*time.Hour || exp > 25*time.Hour {
			t.Errorf("n%d lease expires in %v, want about 24h", i, exp)
		}
		env, err := ReadSubnetEnv(n.SubnetFile)
		if err != nil {
			t.Fatal(err)
		}
		first := s.Lease.Subnet.Addr().Next()
		want := map[string]string{
			"FLANNEL_NETWORK": "198.19.0.0/16",
			"FLANNEL_SUBNET":  netip.PrefixFrom(first, 24).String(),
			"FLANNEL_MTU":     "1472",
			"FLANNEL_IPMASQ":  "false",
		}
		for k, v := range want {
			if env[k] != v {
				t.Errorf("n%d subnet.env %s=%q, want %q", i, k, env[k], v)
			}
		}
		if len(env) != len(want) {
			t.Errorf("n%d subnet.env has %d keys, want %d: %v", i, len(env), len(want), env)
		}
		if l.Pod(i).Addr() != first {
			t.Errorf("n%d pod address %v, want %v", i, l.Pod(i), first)
		}
		out, err := l.Command(t.Context(), i, "ip", "-o", "-4", "addr", "show", "dev", "udp0").CombinedOutput()
		if err != nil || !strings.Contains(string(out), s.Lease.Subnet.Addr().String()+"/32") {
			t.Errorf("n%d udp0 address: %v: %s", i, err, out)
		}
		out, err = l.Command(t.Context(), i, "ip", "-4", "route", "show", "198.19.0.0/16").CombinedOutput()
		if err != nil || !strings.Contains(string(out), "dev udp0") {
			t.Errorf("n%d route to the network: %v: %s", i, err, out)
		}
	}
	if subnets[0] == subnets[1] || subnets[1] == subnets[2] || subnets[0] == subnets[2] {
		t.Fatalf("subnets not distinct: %v", subnets)
	}
	leases, err := l.Leases(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(leases) != 3 {
		t.Fatalf("%d leases in etcd, want 3: %+v", len(leases), leases)
	}
	for _, le := range leases {
		i := int(le.PublicIP.As4()[3]) - 10
		if i < 0 || i > 2 || subnets[i] != le.Subnet || le.Reserved {
			t.Errorf("etcd lease %s = %s does not match the nodes' %v", le.Key, le.Value, subnets)
		}
	}
	for i := range 3 {
		var others []netip.Prefix
		for j := range 3 {
			if j != i {
				others = append(others, subnets[j])
			}
		}
		waitPeers(t, l, i, others, 10*time.Second)
	}

	pingAll(t, l)

	const size = 32 << 20
	before := mustStatus(t, l, 2).Counters
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	r, err := l.Transfer(ctx, 0, 2, size)
	if err != nil {
		t.Fatalf("transfer: %v", err)
	}
	if !r.Match() || r.Bytes != size {
		t.Fatalf("transfer not byte-exact: %+v", r)
	}
	t.Logf("transfer n0 -> n2: %d bytes in %v (%.2f Gb/s)", r.Bytes, r.Duration, r.Gbps())
	after := mustStatus(t, l, 2).Counters
	if after.RxBytes-before.RxBytes < size {
		t.Errorf("n2 rxBytes grew by %d during a %d-byte transfer", after.RxBytes-before.RxBytes, size)
	}
}

// (b) A node keeps its subnet across SIGTERM + start and kill -9 + start.
func TestE2ERestartKeepsSubnet(t *testing.T) {
	t.Parallel()
	l := newE2ELab(t, Options{Nodes: 2})
	startAll(t, l)
	want := subnetOf(t, l, 0)
	waitPeers(t, l, 1, []netip.Prefix{want}, 10*time.Second)

	code, err := l.StopWeft(0)
	if err != nil || code != 0 {
		t.Fatalf("SIGTERM: exit %d, %v; want 0", code, err)
	}
	if out, err := l.Command(t.Context(), 0, "ip", "link", "show", "udp0").CombinedOutput(); err == nil {
		t.Errorf("udp0 still exists after SIGTERM:\n%s", out)
	}
	leases, err := l.Leases(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	kept := false
	for _, le := range leases {
		kept = kept || (le.Subnet == want && le.PublicIP == l.Node(0).Addr)
	}
	if !kept {
		t.Errorf("lease %v gone from etcd after SIGTERM: %+v", want, leases)
	}

	for _, how := range []string{"SIGTERM", "SIGKILL"} {
		if how == "SIGKILL" {
			if err := l.KillWeft(0); err != nil {
				t.Fatal(err)
			}
		}
		if err := l.StartWeft(0); err != nil {
			t.Fatal(err)
		}
		if err := l.WaitReady(0, readyTimeout); err != nil {
			t.Fatal(err)
		}
		if got := subnetOf(t, l, 0); got != want {
			t.Fatalf("after %s and start: subnet %v, want %v", how, got, want)
		}
		waitPeers(t, l, 0, []netip.Prefix{subnetOf(t, l, 1)}, 10*time.Second)
		pingAll(t, l)
	}
	if t.Failed() {
		return
	}
	leases, err = l.Leases(t.Context())
	if err != nil || len(leases) != 2 {
		t.Errorf("leases after restarts: %+v, %v; want 2", leases, err)
	}
}

// (c) Deleting a node's lease removes it from the others' peers, and the
// node itself exits non-zero.
func TestE2ELeaseDeleted(t *testing.T) {
	t.Parallel()
	l := newE2ELab(t, Options{Nodes: 3})
	startAll(t, l)
	var subnets [3]netip.Prefix
	for i := range 3 {
		subnets[i] = subnetOf(t, l, i)
	}
	waitPeers(t, l, 0, []netip.Prefix{subnets[1], subnets[2]}, 10*time.Second)
	waitPeers(t, l, 1, []netip.Prefix{subnets[0], subnets[2]}, 10*time.Second)

	if err := l.DeleteLease(t.Context(), subnets[2]); err != nil {
		t.Fatal(err)
	}
	waitPeers(t, l, 0, []netip.Prefix{subnets[1]}, 5*time.Second)
	waitPeers(t, l, 1, []netip.Prefix{subnets[0]}, 5*time.Second)
	code, err := l.WaitExit(2, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if code == 0 {
		t.Errorf("n2 exited 0 after its lease was deleted; want non-zero")
	}
	// The survivors still talk.
	if r, err := l.Ping(0, l.Pod(1).Addr(), 2); err != nil || !r.OK() {
		t.Errorf("n0 -> n1 after n2 left: %+v, %v", r, err)
	}
}

// (d) A daemon started while etcd is down says so in its log and becomes
// ready once etcd is up.
func TestE2EEtcdDownAtStart(t *testing.T) {
	t.Parallel()
	l := newE2ELab(t, Options{Nodes: 1})
	if err := l.StopEtcd(); err != nil {
		t.Fatal(err)
	}
	if err := l.StartWeft(0); err != nil {
		t.Fatal(err)
	}
	// One line of weft's own output must name etcd and its trouble.
	mentions := func() bool {
		for line := range strings.Lines(strings.ToLower(l.Log(0))) {
			if strings.HasPrefix(line, "=== weftlab") || !strings.Contains(line, "etcd") {
				continue
			}
			for _, w := range []string{"unreachable", "unavailable", "cannot", "can't", "refused", "retrying", "connect"} {
				if strings.Contains(line, w) {
					return true
				}
			}
		}
		return false
	}
	deadline := time.Now().Add(15 * time.Second)
	for !mentions() {
		if !l.Running(0) {
			t.Fatalf("weft exited while etcd was down:\n%s", l.Log(0))
		}
		if time.Now().After(deadline) {
			t.Fatalf("log does not mention etcd being unreachable after 15s:\n%s", l.Log(0))
		}
		time.Sleep(200 * time.Millisecond)
	}
	if l.Ready(0) {
		t.Fatal("ready while etcd is down")
	}
	// `systemctl stop` now is a clean stop, not a failed unit.
	if code, err := l.StopWeft(0); err != nil || code != 0 {
		t.Fatalf("SIGTERM while etcd is down: exit %d, %v; want 0\n%s", code, err, l.Log(0))
	}
	if log := l.Log(0); !strings.Contains(log, "stopped before ready") || strings.Contains(log, "context canceled") {
		t.Errorf("log of the stop while etcd is down:\n%s", log)
	}
	if err := l.StartWeft(0); err != nil {
		t.Fatal(err)
	}
	if err := l.StartEtcd(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := l.WaitReady(0, readyTimeout); err != nil {
		t.Fatal(err)
	}
	t.Logf("ready %v after etcd came up", time.Since(start).Round(time.Millisecond))
	leases, err := l.Leases(t.Context())
	if err != nil || len(leases) != 1 || leases[0].PublicIP != l.Node(0).Addr {
		t.Errorf("leases: %+v, %v", leases, err)
	}
}

// (e) Two nodes race for a network with exactly two subnets: both get
// one, never the same. Several rounds, starting from scratch each time, so
// that the random choice collides in some of them.
func TestE2ESubnetRace(t *testing.T) {
	t.Parallel()
	const config = `{"Network":"198.19.0.0/16","SubnetLen":24,"SubnetMin":"198.19.1.0","SubnetMax":"198.19.2.0","Backend":{"Type":"udp"}}`
	l := newE2ELab(t, Options{Nodes: 2, NetworkConfig: config})
	want := map[netip.Prefix]bool{
		netip.MustParsePrefix("198.19.1.0/24"): true,
		netip.MustParsePrefix("198.19.2.0/24"): true,
	}
	for round := range 3 {
		var wg sync.WaitGroup
		errs := make([]error, 2)
		for i := range 2 {
			wg.Go(func() { errs[i] = l.StartWeft(i) })
		}
		wg.Wait()
		for _, err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
		waitAllReady(t, l)
		a, b := subnetOf(t, l, 0), subnetOf(t, l, 1)
		if a == b || !want[a] || !want[b] {
			t.Fatalf("round %d: subnets %v and %v, want 198.19.1.0/24 and 198.19.2.0/24 in some order", round, a, b)
		}
		pingAll(t, l)
		for i := range 2 {
			if code, err := l.StopWeft(i); err != nil || code != 0 {
				t.Fatalf("round %d: stop n%d: exit %d, %v", round, i, code, err)
			}
			// Forget the previous lease so the next round races again.
			if err := l.DeleteLease(t.Context(), []netip.Prefix{a, b}[i]); err != nil {
				t.Fatal(err)
			}
			if err := os.Remove(l.Node(i).SubnetFile); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// (f) flanneld's command-line conventions: single-dash flags and
// FLANNELD_* environment variables, the command line winning over the
// environment. The prefix is not the default, so a daemon that ignored
// FLANNELD_ETCD_PREFIX would never find its config.
func TestE2EFlanneldStyle(t *testing.T) {
	t.Parallel()
	const prefix = "/weftlab.test/network"
	l := newE2ELab(t, Options{Nodes: 2, Prefix: prefix})
	n0, n1 := l.Node(0), l.Node(1)

	// n0: single-dash flags, the prefix from the environment.
	if err := l.StartWeftWith(0, []string{
		"-etcd-endpoints=" + l.EtcdEndpoint(),
		"-subnet-file=" + n0.SubnetFile,
		"-healthz-ip=0.0.0.0",
		fmt.Sprintf("-healthz-port=%d", HealthzPort),
		"-iface=eth0",
	}, []string{"FLANNELD_ETCD_PREFIX=" + prefix}); err != nil {
		t.Fatal(err)
	}
	// n1: everything from the environment but the subnet file, which the
	// command line overrides.
	decoy := filepath.Join(n1.Dir, "decoy", "subnet.env")
	if err := l.StartWeftWith(1, []string{"-subnet-file", n1.SubnetFile}, []string{
		"FLANNELD_ETCD_ENDPOINTS=" + l.EtcdEndpoint(),
		"FLANNELD_ETCD_PREFIX=" + prefix,
		"FLANNELD_SUBNET_FILE=" + decoy,
		"FLANNELD_HEALTHZ_IP=0.0.0.0",
		fmt.Sprintf("FLANNELD_HEALTHZ_PORT=%d", HealthzPort),
		"FLANNELD_IFACE=eth0",
	}); err != nil {
		t.Fatal(err)
	}
	waitAllReady(t, l)
	if _, err := os.Stat(decoy); err == nil {
		t.Errorf("n1 wrote the environment's subnet file %s although -subnet-file was given", decoy)
	}
	leases, err := l.Leases(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(leases) != 2 || !strings.HasPrefix(leases[0].Key, prefix+"/subnets/") {
		t.Fatalf("leases under %s: %+v", prefix, leases)
	}
	waitPeers(t, l, 0, []netip.Prefix{subnetOf(t, l, 1)}, 10*time.Second)
	waitPeers(t, l, 1, []netip.Prefix{subnetOf(t, l, 0)}, 10*time.Second)
	pingAll(t, l)
}

// A mixed cluster: two weft nodes and one stock flanneld (udp backend) on
// one etcd pass traffic both ways. It needs a flanneld binary built with
// the udp backend (cgo, amd64), given as WEFT_FLANNELD=path (make test
// builds one: make flanneld).
func TestE2EMixedWithStockFlanneld(t *testing.T) {
	flanneld := os.Getenv("WEFT_FLANNELD")
	if flanneld == "" {
		t.Skip("set WEFT_FLANNELD=/path/to/flanneld (udp backend) to test a mixed weft/flanneld cluster")
	}
	l := newE2ELab(t, Options{Nodes: 3})
	for i := range 2 {
		if err := l.StartWeft(i); err != nil {
			t.Fatal(err)
		}
	}
	fl := 2
	n := l.Node(fl)
	// Exactly a flanneld unit's ExecStart, single-dash flags.
	args := []string{"-etcd-endpoints=" + l.EtcdEndpoint(), "-etcd-prefix=" + l.Prefix(),
		"-subnet-file=" + n.SubnetFile, "-iface=eth0", "-v=1"}
	if err := l.StartDaemon(fl, flanneld, args, nil); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		if err := l.WaitReady(i, readyTimeout); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.WaitSubnetFile(fl, readyTimeout); err != nil {
		t.Fatal(err)
	}
	// flanneld's lease, as flanneld wrote it, must be a peer of both weft
	// nodes, and weft's leases must be flanneld's udp value plus only the
	// BackendData that flanneld's udp backend never reads (the in-kernel
	// decap capability, flannel-compat.md).
	leases, err := l.Leases(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(leases) != 3 {
		t.Fatalf("%d leases, want 3: %+v", len(leases), leases)
	}
	for _, le := range leases {
		want := fmt.Sprintf(`{"PublicIP":"%s","PublicIPv6":null}`, le.PublicIP)
		if le.PublicIP != n.Addr {
			want = fmt.Sprintf(`{"PublicIP":"%s","PublicIPv6":null,"BackendData":{"WeftDecap":"kernel"}}`, le.PublicIP)
		}
		if le.Value != want {
			t.Errorf("lease %s = %s; want %s", le.Key, le.Value, want)
		}
	}
	flSubnet := l.Pod(fl).Masked()
	for i := range 2 {
		deadline := time.Now().Add(10 * time.Second)
		for s := mustStatus(t, l, i); !s.HasPeer(flSubnet); s = mustStatus(t, l, i) {
			if time.Now().After(deadline) {
				t.Fatalf("n%d never listed flanneld's subnet %v: %+v", i, flSubnet, s.Peers)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	// flanneld reads new leases by its watch; give it a moment to learn weft's.
	time.Sleep(time.Second)
	pingAll(t, l)
	for _, pair := range [][2]int{{0, fl}, {fl, 1}} {
		r, err := l.Transfer(t.Context(), pair[0], pair[1], 32<<20)
		if err != nil || !r.Match() {
			t.Fatalf("transfer n%d -> n%d: %v (match %v)", pair[0], pair[1], err, r.Match())
		}
		t.Logf("n%d -> n%d: %d bytes byte-exact, %.2f Gb/s", pair[0], pair[1], r.Bytes, r.Gbps())
	}
}

// systemd: weft sends READY=1 on $NOTIFY_SOCKET, and only once subnet.env
// is on disk (dockerd and the CNI plugin read it as soon as the unit is
// up). The socket is a path socket, reachable from the node's namespace.
func TestE2ESystemdNotify(t *testing.T) {
	t.Parallel()
	l := newE2ELab(t, Options{Nodes: 1})
	sock := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := l.StartWeftWith(0, l.WeftArgs(0), []string{"NOTIFY_SOCKET=" + sock}); err != nil {
		t.Fatal(err)
	}
	if err := conn.SetReadDeadline(time.Now().Add(readyTimeout)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	var env map[string]string
	var envErr error
	for {
		n, err := conn.Read(buf)
		if err != nil {
			t.Fatalf("no READY=1 from sd_notify: %v", err)
		}
		msg := string(buf[:n])
		if strings.Contains(msg, "READY=1") {
			// Checked the moment READY=1 arrives: the file must already be there.
			env, envErr = ReadSubnetEnv(l.Node(0).SubnetFile)
			if !strings.Contains(msg, "STATUS=") {
				t.Errorf("READY=1 without a STATUS= line: %q", msg)
			}
			break
		}
		if !strings.HasPrefix(msg, "STATUS=") {
			t.Errorf("sd_notify before READY=1: %q, want only STATUS= lines", msg)
		}
	}
	if envErr != nil || env["FLANNEL_SUBNET"] == "" {
		t.Fatalf("READY=1 sent before subnet.env was written: %v %v", env, envErr)
	}
	if !l.Ready(0) {
		t.Error("READY=1 sent but /readyz is not 200")
	}
}

// The underlay address leaves the node (renumbered): weft warns at one
// route check and exits 1 at the next, naming the address the interface
// has now, so that systemd restarts it on that one.
func TestE2EUnderlayAddressGone(t *testing.T) {
	t.Parallel()
	l := newE2ELab(t, Options{Nodes: 1})
	if err := l.StartWeft(0); err != nil {
		t.Fatal(err)
	}
	if err := l.WaitReady(0, readyTimeout); err != nil {
		t.Fatal(err)
	}
	old := l.Node(0).Addr
	b := old.As4()
	b[3] += 100
	renumbered := netip.AddrFrom4(b)
	for _, args := range [][]string{
		{"addr", "del", old.String() + "/24", "dev", "eth0"},
		{"addr", "add", renumbered.String() + "/24", "dev", "eth0"},
	} {
		if out, err := l.Command(t.Context(), 0, "ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v\n%s", args, err, out)
		}
	}
	code, err := l.WaitExit(0, 35*time.Second)
	if err != nil {
		t.Fatalf("weft still running 35 s after its underlay address went: %v\n%s", err, l.Log(0))
	}
	log := l.Log(0)
	if code != 1 || !strings.Contains(log, "underlay address is gone from the node") ||
		!strings.Contains(log, "underlay address "+old.String()+" is gone from the node (eth0 now has "+renumbered.String()+")") {
		t.Errorf("exit %d; log:\n%s", code, log)
	}
}
