package lab

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestParseSNMP(t *testing.T) {
	in := `Ip: Forwarding DefaultTTL InReceives
Ip: 2 64 1234
Tcp: RtoAlgorithm MaxConn CurrEstab
Tcp: 1 -1 3
Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors
Udp: 100 1 7 90 6 0
UdpLite: InDatagrams NoPorts
UdpLite: 0 0
`
	s, err := ParseSNMP(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	if s.Get("Udp", "RcvbufErrors") != 6 || s.Get("Udp", "InErrors") != 7 || s.Get("Tcp", "MaxConn") != -1 || s.Get("Ip", "InReceives") != 1234 {
		t.Errorf("parsed %v", s)
	}
	if s.Get("Udp", "Nope") != 0 || s.Get("Icmp", "InMsgs") != 0 {
		t.Error("absent counters are not 0")
	}
	for name, bad := range map[string]string{
		"header only":      "Udp: InDatagrams NoPorts\n",
		"count mismatch":   "Udp: A B\nUdp: 1\n",
		"proto mismatch":   "Udp: A\nTcp: 1\n",
		"not a number":     "Udp: A\nUdp: x\n",
		"no proto":         "Udp A\nUdp 1\n",
		"values of header": "Udp: A\nIp: 1\n",
	} {
		if _, err := ParseSNMP(strings.NewReader(bad)); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func TestHostGWSubnets(t *testing.T) {
	got, err := hostGWSubnets(netip.MustParsePrefix("198.19.210.0/24"), 3)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"198.19.210.0/24", "198.19.211.0/24", "198.19.212.0/24"}
	for i, p := range got {
		if p.String() != want[i] {
			t.Errorf("subnet %d = %v, want %s", i, p, want[i])
		}
	}
	if _, err := hostGWSubnets(netip.MustParsePrefix("255.255.255.0/24"), 2); err == nil {
		t.Error("subnets past 255.255.255.255 accepted")
	}
	if got := nthHost(netip.MustParsePrefix("198.19.200.7/24"), 2); got != netip.MustParseAddr("198.19.200.2") {
		t.Errorf("nthHost = %v", got)
	}
}

// pingVia reports whether one echo from src on node 0 to dst comes back.
func pingVia(t *testing.T, l *Lab, src, dst netip.Addr) bool {
	t.Helper()
	out, _ := l.Command(t.Context(), 0, "ping", "-n", "-c", "1", "-W", "1", "-I", src.String(), dst.String()).CombinedOutput()
	r, err := ParsePing(string(out))
	return err == nil && r.OK()
}

// TestLabPaths builds the benchmark's kernel paths without weft: VXLAN
// with flannel's settings and host-gw, and checks that traffic takes them,
// that the counters read, and that spawned helpers are stopped.
func TestLabPaths(t *testing.T) {
	requireRoot(t)
	var left *Proc
	t.Cleanup(func() { // runs after the lab's Close, registered later
		if left != nil && !left.Exited() {
			t.Errorf("pid %d still running after Close", left.PID())
		}
	})
	l := newTestLab(t, Options{Nodes: 2})

	vx, err := l.SetupVXLAN(VXLANOptions{})
	if err != nil {
		t.Fatal(err)
	}
	hg, err := l.SetupHostGW(HostGWOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if vx[0] != netip.MustParseAddr("198.19.200.1") || vx[1] != netip.MustParseAddr("198.19.200.2") {
		t.Errorf("vxlan addresses %v", vx)
	}
	if hg[0] != netip.MustParseAddr("198.19.210.1") || hg[1] != netip.MustParseAddr("198.19.211.1") {
		t.Errorf("host-gw addresses %v", hg)
	}
	for name, want := range map[string]struct {
		src, dst netip.Addr
		dev      string
	}{
		"vxlan":   {vx[0], vx[1], "flannel.1"},
		"host-gw": {hg[0], hg[1], "eth0"},
	} {
		dev, err := l.RouteDev(0, want.dst)
		if err != nil || dev != want.dev {
			t.Errorf("%s: route to %v goes via %q (%v), want %s", name, want.dst, dev, err, want.dev)
		}
		if !pingVia(t, l, want.src, want.dst) {
			t.Errorf("%s: %v → %v does not answer", name, want.src, want.dst)
		}
	}

	// The pings crossed flannel.1 as VXLAN: its counters moved and it has
	// flannel's MTU; eth0 carried UDP to 8472.
	st, err := l.Link(0, "flannel.1")
	if err != nil {
		t.Fatal(err)
	}
	if st.MTU != 1450 || st.TxPackets == 0 {
		t.Errorf("flannel.1: %+v, want MTU 1450 and packets sent", st)
	}
	snmpBefore, err := l.SNMP(1)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := snmpBefore["Udp"]["RcvbufErrors"]; !ok {
		t.Fatalf("no Udp RcvbufErrors in node 1's /proc/net/snmp: %v", snmpBefore)
	}

	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	rr, err := l.RequestResponse(ctx, 0, vx[0], 1, vx[1], 1, 300*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if rr.Transactions < 10 || rr.Rate() <= 0 || rr.From.Addr() != vx[0] || rr.To.Addr() != vx[1] {
		t.Errorf("request/response: %+v", rr)
	}

	// A spawned helper runs in the node's namespace, is listed by PID and
	// is stopped.
	p, err := l.Spawn(1, "sleeper", []string{"sleep", "60"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if p.PID() == 0 || p.Exited() {
		t.Fatal("sleeper not running")
	}
	if err := p.Stop(5 * time.Second); err != nil {
		t.Errorf("stop: %v", err)
	}
	if !p.Exited() || p.PID() != 0 || p.Success() {
		t.Errorf("after Stop: exited %v pid %d success %v (%s)", p.Exited(), p.PID(), p.Success(), p.ExitState())
	}
	q, err := l.Spawn(0, "ok", []string{"true"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := q.Wait(5 * time.Second); err != nil || !q.Success() {
		t.Errorf("true: %v, %s", err, q.ExitState())
	}
	if _, err := l.Spawn(0, "bad name/..", []string{"true"}, nil); err == nil {
		t.Error("a name with a slash was accepted")
	}
	// Left running on purpose: Close must stop it.
	if left, err = l.Spawn(1, "left", []string{"sleep", "60"}, nil); err != nil {
		t.Fatal(err)
	}

	if err := l.TeardownHostGW(HostGWOptions{}); err != nil {
		t.Fatal(err)
	}
	if pingVia(t, l, hg[0], hg[1]) {
		t.Error("host-gw still answers after teardown")
	}
	if err := l.DeleteLink("flannel.1"); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Link(0, "flannel.1"); err == nil {
		t.Error("flannel.1 still there after DeleteLink")
	}
}
