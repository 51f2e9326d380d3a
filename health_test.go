package main

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/subnet"
	"github.com/weft-net/weft/tunnel"
	"github.com/weft-net/weft/tunnel/tuntest"
)

// setTestPeers gives h a forwarder (over fakes) whose table holds peers, as
// the daemon's does.
func setTestPeers(h *health, peers []tunnel.Peer) {
	conn, _ := tuntest.NewConnPair(netip.MustParseAddrPort("198.18.0.2:8285"), netip.MustParseAddrPort("198.18.0.3:8285"))
	f := tunnel.NewForwarder(tunnel.Config{Device: tuntest.NewDevice("udp0", 1472), Conn: conn})
	f.UpdatePeers(netip.Prefix{}, peers)
	h.setForwarder(f, "udp0", 1472)
}

func get(t *testing.T, h http.Handler, path string) *httptest.ResponseRecorder {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	return rec
}

func TestHealthEndpoints(t *testing.T) {
	h := newHealth()
	srv := h.handler()
	if rec := get(t, srv, "/healthz"); rec.Code != http.StatusOK {
		t.Errorf("/healthz = %d, want 200 while alive", rec.Code)
	}
	if rec := get(t, srv, "/readyz"); rec.Code != http.StatusServiceUnavailable {
		t.Errorf("/readyz = %d before ready, want 503", rec.Code)
	}

	exp := time.Date(2026, 11, 23, 0, 0, 0, 0, time.UTC)
	h.setLease(subnet.Lease{Subnet: netip.MustParsePrefix("198.19.7.0/24"),
		Attrs: subnet.Attrs{PublicIP: netip.MustParseAddr("198.18.0.2")}, Expiration: exp, ID: 42})
	setTestPeers(h, []tunnel.Peer{{Subnet: netip.MustParsePrefix("198.19.8.0/24"), Addr: netip.MustParseAddr("198.18.0.3")}})
	if rec := get(t, srv, "/readyz"); rec.Code != http.StatusServiceUnavailable {
		t.Errorf("/readyz = %d with a lease but no subnet file yet, want 503", rec.Code)
	}
	h.setReady()
	if rec := get(t, srv, "/readyz"); rec.Code != http.StatusOK {
		t.Errorf("/readyz = %d once ready, want 200", rec.Code)
	}

	rec := get(t, srv, "/status")
	var s Status
	if err := json.Unmarshal(rec.Body.Bytes(), &s); err != nil {
		t.Fatalf("/status: %v\n%s", err, rec.Body)
	}
	if !s.Ready || s.Lease == nil || s.Lease.Subnet.String() != "198.19.7.0/24" || s.Lease.PublicIP.String() != "198.18.0.2" ||
		!s.Lease.Expiration.Equal(exp) || s.Lease.Reserved || len(s.Peers) != 1 || s.Peers[0].PublicIP.String() != "198.18.0.3" {
		t.Errorf("/status = %s", rec.Body)
	}
}

// A renewal in trouble shows on /readyz and /status at the first failed
// attempt, hours before the lease could expire, and clears on success.
func TestHealthRenewalFailing(t *testing.T) {
	h := newHealth()
	srv := h.handler()
	l := subnet.Lease{Subnet: netip.MustParsePrefix("198.19.7.0/24"), Expiration: time.Now().Add(time.Hour), ID: 7}
	h.setLease(l)
	h.setReady()
	now := time.Now()
	h.renewFailed(errors.New("etcd at [http://198.18.0.1:2379] unreachable: context deadline exceeded"), now)
	h.renewFailed(errors.New("still down"), now.Add(time.Minute))
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
	h.renewed(l)
	if rec := get(t, srv, "/readyz"); rec.Code != http.StatusOK {
		t.Errorf("/readyz after a successful renewal = %d", rec.Code)
	}
}

// /status?peers=0 is the cheap form for large clusters: no per-peer list,
// but the table's size, revision and update costs, and etcd's request
// counts; /metrics carries the same.
func TestStatusPeerTable(t *testing.T) {
	h := newHealth()
	srv := h.handler()
	setTestPeers(h, []tunnel.Peer{{Subnet: netip.MustParsePrefix("198.19.8.0/24"), Addr: netip.MustParseAddr("198.18.0.3")}})
	h.tableUpdated(1, 40, 3*time.Millisecond)
	h.tableUpdated(1, 42, time.Millisecond)
	h.tableUpdated(1, 41, time.Millisecond) // an older list never moves the revision back
	h.setEtcdRequests(func() map[string]uint64 { return map[string]uint64{"Range": 3, "Watch": 1} })

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
