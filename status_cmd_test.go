package main

import (
	"bytes"
	"context"
	"log/slog"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/dataplane"
	"github.com/weft-net/weft/etcd"
	"github.com/weft-net/weft/etcd/etcdtest"
	"github.com/weft-net/weft/status"
	"github.com/weft-net/weft/subnet"
)

func testHealth() *status.Health {
	h := status.NewHealth(status.Build{Version: "test", Commit: "abc"})
	h.SetStatic("http://198.18.0.1:2379", "strict", true, nil)
	h.SetEtcdUp(true)
	h.SetLease(status.Lease{Subnet: netip.MustParsePrefix("198.19.7.0/24"), PublicIP: netip.MustParseAddr("198.18.0.2"),
		Expiration: time.Now().Add(23 * time.Hour)})
	peer := dataplane.Peer{Subnet: netip.MustParsePrefix("198.19.8.0/24"), Addr: netip.MustParseAddr("198.18.0.3"), KernelDecap: true}
	h.SetDataPlane("udp0", 1472, status.PlaneReport{Path: status.PathUserspace, Report: func(bool) dataplane.Report {
		return dataplane.Report{Peers: 1, Counters: dataplane.Counters{TxPackets: 34, RxPackets: 5, Drops: map[string]uint64{"no_route": 0}},
			PeerTraffic: []dataplane.PeerTraffic{{Peer: peer}}}
	}}, status.PlaneReport{Path: status.PathKernel, Report: func(bool) dataplane.Report {
		return dataplane.Report{Peers: 1, Counters: dataplane.Counters{TxPackets: 1200, RxPackets: 900}, PeerTraffic: []dataplane.PeerTraffic{{Peer: peer}}}
	}})
	h.SetFastPath(status.FastPath{Mode: "auto", Running: true, Attach: "tcx"})
	h.SetKernel(status.Kernel{Release: "6.18.44-fc-v1294", Features: []status.KernelFeature{
		{Name: "tcx", Since: "6.6", Detected: true, Detail: "in use", Without: "the fast path attaches by clsact"}}})
	h.SetFirewall(status.Firewall{ForwardRules: true, InPlace: true, ForwardDrops: []string{"table inet firewalld chain filter_FORWARD"},
		Joined: []string{"iptables-nft filter FORWARD"}})
	h.SetReady()
	return h
}

// `weft status` over the daemon's unix socket, text and JSON.
func TestStatusCommandOverSocket(t *testing.T) {
	h := testHealth()
	sock := filepath.Join(t.TempDir(), "weft.sock")
	stop, err := h.ServeSocket(sock, newTestLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer stop()

	var out bytes.Buffer
	if err := execute(context.Background(), []string{"status", "--socket", sock}, &out, &bytes.Buffer{}); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"ready", "198.19.7.0/24", "198.18.0.2", "etcd", "up", "198.19.8.0/24", "198.18.0.3", "source check strict", "drops",
		"firewall   masquerade off  forward rules on  rules in place", "DROPPED by default in table inet firewalld chain filter_FORWARD",
		"joined iptables-nft filter FORWARD (it drops by default)",
		"fast path  kernel, attached by tcx (-fast-path=auto)", "tx 1234 packets (kernel 1200, userspace 34)", "rx 905 packets (kernel 900, userspace 5)",
		"PATH", "198.18.0.3  kernel", "kernel     6.18.44-fc-v1294", "tcx  yes  Linux 6.6+  in use"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("status output lacks %q:\n%s", want, out.String())
		}
	}
	out.Reset()
	if err := execute(context.Background(), []string{"status", "--socket", sock, "-o", "json"}, &out, &bytes.Buffer{}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), `"publicIP": "198.18.0.2"`) || !strings.Contains(out.String(), `"fastPath": {`) ||
		!strings.Contains(out.String(), `"kernel": {`) {
		t.Errorf("json status:\n%s", out.String())
	}
	if err := execute(context.Background(), []string{"status", "--socket", filepath.Join(t.TempDir(), "none.sock")}, &out, &bytes.Buffer{}); err == nil ||
		!strings.Contains(err.Error(), "no weft daemon answers") {
		t.Errorf("status without a daemon: %v", err)
	}
}

// The fast path line tells running, fallen back and off apart; the traffic
// is split by path only once the kernel path carried some.
func TestPrintStatusFastPath(t *testing.T) {
	user := map[string]status.Traffic{status.PathUserspace: {TxPackets: 34, RxPackets: 5}, status.PathKernel: {}}
	for _, tc := range []struct {
		name  string
		fp    *status.FastPath
		paths map[string]status.Traffic
		want  []string
		not   []string
	}{
		{"fell back", &status.FastPath{Mode: "auto", Reason: "no BTF in this kernel"}, user,
			[]string{"fast path  not running: no BTF in this kernel (-fast-path=auto)", "tx 34 packets 0 B", "rx 5 packets 0 B", "198.18.0.3  userspace"},
			[]string{"(kernel", "kernel keeps no per-peer counters"}},
		{"off", &status.FastPath{Mode: "off", Reason: "-fast-path=off"}, user,
			[]string{"fast path  off (-fast-path=off)"}, []string{"not running"}},
		{"clsact", &status.FastPath{Mode: "on", Running: true, Attach: "clsact"},
			map[string]status.Traffic{status.PathUserspace: {TxPackets: 34, RxPackets: 5}, status.PathKernel: {RxPackets: 7}},
			[]string{"fast path  kernel, attached by clsact (-fast-path=on)", "tx 34 packets (kernel 0, userspace 34)", "rx 12 packets (kernel 7, userspace 5)"}, nil},
		{"super-packets by userspace", &status.FastPath{Mode: "auto", Running: true, Attach: "tcx", SuperPackets: "userspace (eth0 cannot segment UDP tunnel packets)"}, user,
			[]string{"fast path  kernel, attached by tcx (-fast-path=auto); TCP super-packets: userspace (eth0 cannot segment UDP tunnel packets)"}, nil},
		{"old daemon", nil, nil, []string{"tx 34 packets 0 B", "198.18.0.3  -"}, []string{"fast path"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var rx uint64
			for _, p := range tc.paths {
				rx += p.RxPackets
			}
			s := &status.Status{Ready: true, FastPath: tc.fp,
				Counters: status.Counters{Traffic: status.Traffic{TxPackets: 34, RxPackets: max(rx, 5)}, Paths: tc.paths},
				Peers:    []status.Peer{{Subnet: netip.MustParsePrefix("198.19.8.0/24"), PublicIP: netip.MustParseAddr("198.18.0.3")}}}
			if tc.paths != nil {
				s.Peers[0].Path = status.PathUserspace
			}
			var out bytes.Buffer
			status.WriteText(&out, s, time.Now())
			for _, w := range tc.want {
				if !strings.Contains(out.String(), w) {
					t.Errorf("output lacks %q:\n%s", w, out.String())
				}
			}
			for _, w := range tc.not {
				if strings.Contains(out.String(), w) {
					t.Errorf("output has %q:\n%s", w, out.String())
				}
			}
		})
	}
}

// The kernel section lists each feature: yes, no with what weft does
// instead, or unknown with why (never "no" for a probe that lacked
// privilege); a daemon from before it has none.
func TestPrintStatusKernel(t *testing.T) {
	s := &status.Status{Ready: true, FastPath: &status.FastPath{Mode: "auto", Running: true, Attach: "tcx"}, Kernel: &status.Kernel{Release: "6.18.44-fc-v1294", Features: []status.KernelFeature{
		{Name: "tcx", Since: "6.6", Detected: true, Detail: "in use", Without: "the fast path attaches by clsact"},
		{Name: "clsact", Since: "4.5", Detected: true, Without: "the fast path attaches by TCX only"},
		{Name: "bpf_fib_lookup", Since: "4.18", Detail: "unknown (needs CAP_BPF)", Without: "no fast path: the userspace path carries all traffic"},
		{Name: "tun_uso", Since: "6.2", Without: "UDP super-packets are segmented by the kernel before weft reads them"},
		{Name: "udp_gro", Since: "5.0", Detail: "unknown (not probed: the -offload flags leave it off)", Without: "the userspace path receives each datagram on its own"},
	}}}
	var out bytes.Buffer
	status.WriteText(&out, s, time.Now())
	want := `fast path  kernel, attached by tcx (-fast-path=auto)
kernel     6.18.44-fc-v1294
           tcx             yes      Linux 6.6+   in use
           clsact          yes      Linux 4.5+
           bpf_fib_lookup  unknown  Linux 4.18+  (needs CAP_BPF); without it: no fast path: the userspace path carries all traffic
           tun_uso         no       Linux 6.2+   without it: UDP super-packets are segmented by the kernel before weft reads them
           udp_gro         unknown  Linux 5.0+   (not probed: the -offload flags leave it off); without it: the userspace path receives each datagram on its own
`
	if !strings.Contains(out.String(), want) {
		t.Errorf("output lacks\n%s\ngot:\n%s", want, out.String())
	}
	out.Reset()
	status.WriteText(&out, &status.Status{Ready: true}, time.Now())
	if strings.Contains(out.String(), "kernel") {
		t.Errorf("a status without kernel features shows some:\n%s", out.String())
	}
}

// `weft leases` and `weft lease release` against a real etcd.
func TestLeasesAndRelease(t *testing.T) {
	ep := etcdtest.Start(t)
	s, err := etcd.New(etcd.Config{Endpoints: []string{ep}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	l, err := s.CreateLease(ctx, netip.MustParsePrefix("198.19.7.0/24"), subnet.Attrs{PublicIP: netip.MustParseAddr("198.18.0.2")}, subnet.LeaseTTL)
	if err != nil {
		t.Fatal(err)
	}
	run := func(stdin string, args ...string) (string, error) {
		var out bytes.Buffer
		root := newRootCommand(&out, &bytes.Buffer{})
		root.SetIn(strings.NewReader(stdin))
		root.SetArgs(normalizeArgs(root, append(args, "-etcd-endpoints="+ep)))
		err := root.ExecuteContext(ctx)
		return out.String(), err
	}
	out, err := run("", "leases")
	if err != nil || !strings.Contains(out, "198.19.7.0/24") || !strings.Contains(out, "198.18.0.2") || !strings.Contains(out, "1 leases") {
		t.Fatalf("leases: %q, %v", out, err)
	}
	if _, err := run("n\n", "lease", "release", "198.19.7.0/24"); err == nil || !strings.Contains(err.Error(), "not confirmed") {
		t.Fatalf("release answered no: %v", err)
	}
	if _, err := run("", "lease", "release", "198.19.9.0/24", "--yes"); err == nil || !strings.Contains(err.Error(), "no such lease") {
		t.Fatalf("release of an unknown subnet: %v", err)
	}
	out, err = run("y\n", "lease", "release", "198.19.7.0/24")
	if err != nil || !strings.Contains(out, "released 198.19.7.0/24") {
		t.Fatalf("release: %q, %v", out, err)
	}
	leases, _, err := s.ListLeases(ctx)
	if err != nil || len(leases) != 0 {
		t.Fatalf("after release: %+v, %v", leases, err)
	}
	if _, err := s.RenewLease(ctx, l); err == nil {
		t.Error("the released lease's etcd lease still renews: it leaked")
	}
}

func newTestLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), nil))
}
