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
	h.SetDataPlane("udp0", 1472, func(bool) dataplane.Report {
		return dataplane.Report{Peers: 1, Counters: dataplane.Counters{Drops: map[string]uint64{"no_route": 0}},
			PeerTraffic: []dataplane.PeerTraffic{{Peer: dataplane.Peer{Subnet: netip.MustParsePrefix("198.19.8.0/24"), Addr: netip.MustParseAddr("198.18.0.3")}}}}
	})
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
		"firewall  masquerade off  forward rules on  rules in place", "DROPPED by default in table inet firewalld chain filter_FORWARD",
		"joined iptables-nft filter FORWARD (it drops by default)"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("status output lacks %q:\n%s", want, out.String())
		}
	}
	out.Reset()
	if err := execute(context.Background(), []string{"status", "--socket", sock, "-o", "json"}, &out, &bytes.Buffer{}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), `"publicIP": "198.18.0.2"`) {
		t.Errorf("json status:\n%s", out.String())
	}
	if err := execute(context.Background(), []string{"status", "--socket", filepath.Join(t.TempDir(), "none.sock")}, &out, &bytes.Buffer{}); err == nil ||
		!strings.Contains(err.Error(), "no weft daemon answers") {
		t.Errorf("status without a daemon: %v", err)
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
