package status

import (
	"context"
	"encoding/json"
	"errors"
	"io/fs"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/dataplane"
)

// setTestPeers gives h a data plane whose table holds peers, each with
// one packet sent, and a drop count.
func setTestPeers(h *Health, peers []dataplane.Peer) {
	h.SetDataPlane("udp0", 1472, PlaneReport{Path: PathUserspace, Report: func(withPeers bool) dataplane.Report {
		r := dataplane.Report{Peers: len(peers), Counters: dataplane.Counters{TxPackets: uint64(len(peers)),
			Drops: map[string]uint64{"no_route": 2, "spoofed_source": 0}}}
		if withPeers {
			for _, p := range peers {
				r.PeerTraffic = append(r.PeerTraffic, dataplane.PeerTraffic{Peer: p, TxPackets: 1, TxBytes: 84})
			}
		}
		return r
	}})
}

func get(t *testing.T, h http.Handler, path string) *httptest.ResponseRecorder {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	return rec
}

func TestHealthEndpoints(t *testing.T) {
	h := NewHealth(Build{Version: "test", Commit: "abc"})
	srv := h.Handler()
	if rec := get(t, srv, "/healthz"); rec.Code != http.StatusOK {
		t.Errorf("/healthz = %d, want 200 while alive", rec.Code)
	}
	if rec := get(t, srv, "/readyz"); rec.Code != http.StatusServiceUnavailable {
		t.Errorf("/readyz = %d before ready, want 503", rec.Code)
	}

	exp := time.Date(2026, 11, 23, 0, 0, 0, 0, time.UTC)
	h.SetLease(Lease{Subnet: netip.MustParsePrefix("198.19.7.0/24"), PublicIP: netip.MustParseAddr("198.18.0.2"), Expiration: exp})
	setTestPeers(h, []dataplane.Peer{{Subnet: netip.MustParsePrefix("198.19.8.0/24"), Addr: netip.MustParseAddr("198.18.0.3")}})
	if rec := get(t, srv, "/readyz"); rec.Code != http.StatusServiceUnavailable {
		t.Errorf("/readyz = %d with a lease but no subnet file yet, want 503", rec.Code)
	}
	h.SetReady()
	if rec := get(t, srv, "/readyz"); rec.Code != http.StatusOK {
		t.Errorf("/readyz = %d once ready, want 200", rec.Code)
	}

	rec := get(t, srv, "/status")
	var s Status
	if err := json.Unmarshal(rec.Body.Bytes(), &s); err != nil {
		t.Fatalf("/status: %v\n%s", err, rec.Body)
	}
	if !s.Ready || s.Lease == nil || s.Lease.Subnet.String() != "198.19.7.0/24" || s.Lease.PublicIP.String() != "198.18.0.2" ||
		!s.Lease.Expiration.Equal(exp) || s.Lease.Reserved || len(s.Peers) != 1 || s.Peers[0].PublicIP.String() != "198.18.0.3" ||
		s.Peers[0].TxBytes != 84 || s.Counters.TxPackets != 1 || s.Counters.Drops["no_route"] != 2 || s.Device != "udp0" || s.MTU != 1472 {
		t.Errorf("/status = %s", rec.Body)
	}
}

// A renewal in trouble shows on /readyz and /status at the first failed
// attempt, hours before the lease could expire, and clears on success.
func TestHealthRenewalFailing(t *testing.T) {
	h := NewHealth(Build{Version: "test", Commit: "abc"})
	srv := h.Handler()
	l := Lease{Subnet: netip.MustParsePrefix("198.19.7.0/24"), Expiration: time.Now().Add(time.Hour)}
	h.SetLease(l)
	h.SetReady()
	now := time.Now()
	h.RenewFailed(errors.New("etcd at [http://198.18.0.1:2379] unreachable: context deadline exceeded"), now)
	h.RenewFailed(errors.New("still down"), now.Add(time.Minute))
	rec := get(t, srv, "/readyz")
	if rec.Code != http.StatusServiceUnavailable || !strings.Contains(rec.Body.String(), "renewal failing") ||
		!strings.Contains(rec.Body.String(), "still down") {
		t.Errorf("/readyz while renewals fail = %d %q", rec.Code, rec.Body)
	}
	var s Status
	if err := json.Unmarshal(get(t, srv, "/status").Body.Bytes(), &s); err != nil {
		t.Fatal(err)
	}
	if s.Ready || s.Renewal == nil || !s.Renewal.FailingSince.Equal(now) || s.Renewal.LastError != "still down" {
		t.Errorf("/status while renewals fail: %+v", s)
	}
	h.Renewed(l)
	if rec := get(t, srv, "/readyz"); rec.Code != http.StatusOK {
		t.Errorf("/readyz after a successful renewal = %d", rec.Code)
	}
}

// /status?peers=0 is the cheap form for large clusters: no per-peer list,
// but the table's size, revision and update costs, and etcd's request
// counts; /metrics carries the same.
func TestStatusPeerTable(t *testing.T) {
	h := NewHealth(Build{Version: "test", Commit: "abc"})
	srv := h.Handler()
	setTestPeers(h, []dataplane.Peer{{Subnet: netip.MustParsePrefix("198.19.8.0/24"), Addr: netip.MustParseAddr("198.18.0.3")}})
	h.TableUpdated(1, 40, 3*time.Millisecond)
	h.TableUpdated(1, 42, time.Millisecond)
	h.TableUpdated(1, 41, time.Millisecond) // an older list never moves the revision back
	h.SetEtcdRequests(func() map[string]uint64 { return map[string]uint64{"Range": 3, "Watch": 1} })

	rec := get(t, srv, "/status?peers=0")
	if strings.Contains(rec.Body.String(), `"peers": [`) {
		t.Errorf("/status?peers=0 lists peers:\n%s", rec.Body)
	}
	var s Status
	if err := json.Unmarshal(rec.Body.Bytes(), &s); err != nil {
		t.Fatal(err)
	}
	pt := s.PeerTable
	if pt.Peers != 1 || pt.Revision != 42 || pt.Updates != 3 || pt.MaxUpdateSeconds != 0.003 || pt.LastUpdateSeconds != 0.001 ||
		pt.UpdateSeconds < 0.0049 || pt.UpdateSeconds > 0.0051 || s.Etcd.Requests["Range"] != 3 {
		t.Errorf("/status?peers=0 = %+v, etcd %+v", pt, s.Etcd)
	}
	if err := json.Unmarshal(get(t, srv, "/status").Body.Bytes(), &s); err != nil || len(s.Peers) != 1 {
		t.Errorf("/status peers %v (%v), want the one peer", s.Peers, err)
	}
	m := get(t, srv, "/metrics").Body.String()
	for _, want := range []string{"weft_peers 1", "weft_peer_table_revision 42", "weft_peer_table_updates_total 3",
		`weft_etcd_requests_total{method="Range"} 3`, `weft_etcd_requests_total{method="Watch"} 1`, "weft_peer_table_update_seconds_total 0.005"} {
		if !strings.Contains(m, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

func testHealth() *Health {
	h := NewHealth(Build{Version: "test", Commit: "abc"})
	h.SetStatic("http://198.18.0.1:2379", "strict", true, []string{"no_route", "spoofed_source", "not_local"})
	h.SetEtcdUp(true)
	h.SetLease(Lease{Subnet: netip.MustParsePrefix("198.19.7.0/24"), PublicIP: netip.MustParseAddr("198.18.0.2"),
		Expiration: time.Now().Add(23 * time.Hour)})
	setTestPeers(h, []dataplane.Peer{{Subnet: netip.MustParsePrefix("198.19.8.0/24"), Addr: netip.MustParseAddr("198.18.0.3")}})
	h.SetFirewall(Firewall{ForwardRules: true, InPlace: true, ForwardDrops: []string{"table inet firewalld chain filter_FORWARD"},
		Joined: []string{"iptables-nft filter FORWARD"}})
	h.SetReady()
	return h
}

func TestMetricsEndpoint(t *testing.T) {
	h := testHealth()
	h.Renewed(Lease{Subnet: netip.MustParsePrefix("198.19.7.0/24"), Expiration: time.Unix(1800000000, 0)})
	h.WatchRestarted("compacted")
	body := get(t, h.Handler(), "/metrics").Body.String()
	for _, want := range []string{
		`weft_build_info{commit="abc",goversion=`,
		"weft_peers 1",
		"weft_lease_expiry_timestamp_seconds 1.8e+09",
		`weft_lease_renewals_total{result="success"} 1`,
		`weft_lease_renewals_total{result="failure"} 0`,
		"weft_etcd_up 1",
		`weft_etcd_watch_restarts_total{reason="compacted"} 1`,
		`weft_tx_packets_total{path="userspace"} 1`, `weft_rx_bytes_total{path="userspace"} 0`,
		`weft_tx_packets_total{path="kernel"} 0`, // no kernel plane: zeros, so rate() works
		`weft_drops_total{reason="spoofed_source"} 0`,
		`weft_drops_total{reason="no_route"} 2`,
		`weft_drops_total{reason="not_local"} 0`, // named at start, absent from the plane's report
		"weft_offload_enabled 0",
		"weft_firewall_rules_in_place 1", "weft_firewall_forward_drop_chains 1",
		`weft_firewall_joined_chain{chain="iptables-nft filter FORWARD"} 1`,
		"go_goroutines", "process_resident_memory_bytes",
		`weft_peer_tx_bytes_total{public_ip="198.18.0.3",subnet="198.19.8.0/24"} 84`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

// Before any data plane runs, /metrics already has every drop reason and
// /status an empty drop map.
func TestMetricsBeforeDataPlane(t *testing.T) {
	h := NewHealth(Build{})
	h.SetStatic("http://198.18.0.1:2379", "strict", false, []string{"no_route", "not_local"})
	body := get(t, h.Handler(), "/metrics").Body.String()
	for _, want := range []string{`weft_drops_total{reason="no_route"} 0`, `weft_drops_total{reason="not_local"} 0`, "weft_peers 0",
		`weft_tx_packets_total{path="userspace"} 0`, `weft_tx_packets_total{path="kernel"} 0`, `weft_rx_bytes_total{path="kernel"} 0`} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics before a data plane lacks %q", want)
		}
	}
	if strings.Contains(body, "weft_fast_path_running") {
		t.Error("/metrics has weft_fast_path_running before the node set the fast path up")
	}
	if s := h.Status(true); s.Counters.Drops == nil || len(s.Peers) != 0 || s.Offload || s.FastPath != nil || s.Counters.Paths != nil {
		t.Errorf("/status before a data plane: %+v", s)
	}
}

// twoPlanes gives h a userspace plane with peers a and b and a kernel
// plane that encapsulates toward a, each with its own counters and drops.
// It returns the withPeers arguments the kernel plane was called with.
func twoPlanes(h *Health, a, b dataplane.Peer) *[]bool {
	var kernelCalls []bool
	user := func(withPeers bool) dataplane.Report {
		r := dataplane.Report{Peers: 2, Offloads: dataplane.Offloads{UDPGSO: true},
			Counters: dataplane.Counters{TxPackets: 10, TxBytes: 1000, RxPackets: 20, RxBytes: 2000,
				Drops: map[string]uint64{"no_route": 2, "spoofed_source": 1}}}
		if withPeers {
			r.PeerTraffic = []dataplane.PeerTraffic{{Peer: a, TxPackets: 3, TxBytes: 300}, {Peer: b, TxPackets: 7, TxBytes: 700, RxPackets: 20, RxBytes: 2000}}
		}
		return r
	}
	kernel := func(withPeers bool) dataplane.Report {
		kernelCalls = append(kernelCalls, withPeers)
		r := dataplane.Report{Peers: 1, Counters: dataplane.Counters{TxPackets: 100, TxBytes: 10000, RxPackets: 200, RxBytes: 20000,
			Drops: map[string]uint64{"no_route": 5, "too_big": 1}, Handoffs: map[string]uint64{"ingress_policy": 3, "next_hop_unresolved": 0}}}
		if withPeers {
			// b without KernelDecap: not a peer the kernel encapsulates toward.
			r.PeerTraffic = []dataplane.PeerTraffic{{Peer: a}, {Peer: dataplane.Peer{Subnet: b.Subnet, Addr: b.Addr}}}
		}
		return r
	}
	h.SetDataPlane("udp0", 1472, PlaneReport{Path: PathUserspace, Report: user}, PlaneReport{Path: PathKernel, Report: kernel})
	return &kernelCalls
}

// With the kernel fast path beside the userspace plane, /status sums the
// counters and drops, splits the traffic by path and says which path each
// peer takes; /metrics has one series per path.
func TestStatusTwoPlanes(t *testing.T) {
	h := NewHealth(Build{Version: "test", Commit: "abc"})
	a := dataplane.Peer{Subnet: netip.MustParsePrefix("198.19.8.0/24"), Addr: netip.MustParseAddr("198.18.0.3"), KernelDecap: true}
	b := dataplane.Peer{Subnet: netip.MustParsePrefix("198.19.9.0/24"), Addr: netip.MustParseAddr("198.18.0.4")}
	kernelCalls := twoPlanes(h, a, b)
	h.SetFastPath(FastPath{Mode: "auto", Running: true, Attach: "tcx"})

	s := h.Status(true)
	c := s.Counters
	if c.TxPackets != 110 || c.TxBytes != 11000 || c.RxPackets != 220 || c.RxBytes != 22000 {
		t.Errorf("totals = %+v, want the sum of both planes", c)
	}
	if u, k := c.Paths[PathUserspace], c.Paths[PathKernel]; len(c.Paths) != 2 || u != (Traffic{10, 1000, 20, 2000}) || k != (Traffic{100, 10000, 200, 20000}) {
		t.Errorf("paths = %+v", c.Paths)
	}
	if d := c.Drops; len(d) != 3 || d["no_route"] != 7 || d["spoofed_source"] != 1 || d["too_big"] != 1 {
		t.Errorf("drops = %v, want summed by reason", d)
	}
	if s.PeerTable.Peers != 2 || !s.Offloads.UDPGSO || !s.Offload {
		t.Errorf("peer table %+v, offloads %+v: want the userspace plane's", s.PeerTable, s.Offloads)
	}
	want := []Peer{
		{Subnet: a.Subnet, PublicIP: a.Addr, Path: PathKernel, TxPackets: 3, TxBytes: 300},
		{Subnet: b.Subnet, PublicIP: b.Addr, Path: PathUserspace, TxPackets: 7, TxBytes: 700, RxPackets: 20, RxBytes: 2000},
	}
	if len(s.Peers) != 2 || s.Peers[0] != want[0] || s.Peers[1] != want[1] {
		t.Errorf("peers = %+v\nwant %+v", s.Peers, want)
	}
	if f := s.FastPath; f == nil || *f != (FastPath{Mode: "auto", Running: true, Attach: "tcx"}) {
		t.Errorf("fast path = %+v", f)
	}
	s.FastPath.Running = false
	if !h.Status(false).FastPath.Running {
		t.Error("Status returned the recorded FastPath, not a copy")
	}
	if n := len(*kernelCalls); n != 2 || (*kernelCalls)[0] != true || (*kernelCalls)[1] != false {
		t.Errorf("kernel plane called with %v, want Status's withPeers each time", *kernelCalls)
	}

	srv := h.Handler()
	body := get(t, srv, "/status").Body.String()
	for _, want := range []string{`"fastPath": {`, `"mode": "auto"`, `"running": true`, `"attach": "tcx"`, `"path": "kernel"`, `"path": "userspace"`, `"paths": {`, `"ingress_policy": 3`} {
		if !strings.Contains(body, want) {
			t.Errorf("/status lacks %s:\n%s", want, body)
		}
	}
	m := get(t, srv, "/metrics").Body.String()
	for _, want := range []string{
		`weft_tx_packets_total{path="kernel"} 100`, `weft_tx_packets_total{path="userspace"} 10`,
		`weft_tx_bytes_total{path="kernel"} 10000`, `weft_tx_bytes_total{path="userspace"} 1000`,
		`weft_rx_packets_total{path="kernel"} 200`, `weft_rx_packets_total{path="userspace"} 20`,
		`weft_rx_bytes_total{path="kernel"} 20000`, `weft_rx_bytes_total{path="userspace"} 2000`,
		`weft_drops_total{reason="no_route"} 7`, "weft_fast_path_running 1", "weft_peers 2",
		`weft_fast_path_handoffs_total{reason="ingress_policy"} 3`, `weft_fast_path_handoffs_total{reason="next_hop_unresolved"} 0`,
		"# HELP weft_tx_packets_total Inner packets sent to peers, by path: userspace (weft's process) or kernel (the eBPF fast path).",
	} {
		if !strings.Contains(m, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

// With only the userspace plane, /metrics still has the kernel's series
// (zeros), and a fast path that fell back shows as not running.
func TestMetricsOnePlane(t *testing.T) {
	h := NewHealth(Build{Version: "test", Commit: "abc"})
	setTestPeers(h, []dataplane.Peer{{Subnet: netip.MustParsePrefix("198.19.8.0/24"), Addr: netip.MustParseAddr("198.18.0.3")}})
	m := get(t, h.Handler(), "/metrics").Body.String()
	for _, want := range []string{`weft_tx_packets_total{path="userspace"} 1`, `weft_tx_packets_total{path="kernel"} 0`,
		`weft_tx_bytes_total{path="kernel"} 0`, `weft_rx_packets_total{path="kernel"} 0`, `weft_rx_bytes_total{path="kernel"} 0`} {
		if !strings.Contains(m, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if strings.Contains(m, "weft_fast_path_running") || strings.Contains(get(t, h.Handler(), "/status").Body.String(), "fastPath") {
		t.Error("fast path shown before the node set it up")
	}
	if s := h.Status(true); len(s.Peers) != 1 || s.Peers[0].Path != PathUserspace || len(s.Counters.Paths) != 1 {
		t.Errorf("one plane: peers %+v, paths %+v", s.Peers, s.Counters.Paths)
	}
	h.SetFastPath(FastPath{Mode: "auto", Reason: "kernel 5.4 lacks bpf_skb_adjust_room"})
	m = get(t, h.Handler(), "/metrics").Body.String()
	if !strings.Contains(m, "weft_fast_path_running 0") {
		t.Error("/metrics lacks weft_fast_path_running 0 after the fast path fell back")
	}
}

// The status socket: Fetch reads the document over it; a second daemon on
// the same socket is refused, not allowed to steal it; stopping removes it.
func TestStatusSocket(t *testing.T) {
	h := testHealth()
	sock := filepath.Join(t.TempDir(), "weft.sock")
	log := slog.New(slog.NewTextHandler(t.Output(), nil))
	stop, err := h.ServeSocket(sock, log)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := NewHealth(Build{}).ServeSocket(sock, log); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Errorf("second ServeSocket: %v", err)
	}
	s, raw, err := Fetch(context.Background(), sock, "")
	if err != nil || !s.Ready || s.Lease == nil || s.Lease.PublicIP.String() != "198.18.0.2" || !s.HasPeer(netip.MustParsePrefix("198.19.8.0/24")) ||
		!strings.Contains(string(raw), `"publicIP": "198.18.0.2"`) {
		t.Errorf("Fetch = %+v, %v\n%s", s, err, raw)
	}
	stop()
	if _, err := os.Stat(sock); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("socket after stop: %v, want it removed", err)
	}
	if _, _, err := Fetch(context.Background(), sock, ""); err == nil || !strings.Contains(err.Error(), "no weft daemon answers") {
		t.Errorf("Fetch without a daemon: %v", err)
	}
}
