package node

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/nftables"

	"github.com/weft-net/weft/firewall"
	"github.com/weft-net/weft/internal/netnstest"
	"github.com/weft-net/weft/status"
)

// fwTestConn returns an nftables conn into a fresh network namespace.
func fwTestConn(t *testing.T) *nftables.Conn {
	t.Helper()
	conn, err := nftables.New(nftables.WithNetNSFd(int(netnstest.New(t).Handle)))
	if err != nil {
		t.Fatal(err)
	}
	return conn
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

var (
	fwNetwork = netip.MustParsePrefix("198.19.0.0/16")
	fwLease   = netip.MustParsePrefix("198.19.7.0/24")
)

func weftRuleCount(t *testing.T, conn *nftables.Conn) int {
	t.Helper()
	tbl := &nftables.Table{Name: firewall.TableName, Family: nftables.TableFamilyIPv4}
	n := 0
	for _, c := range []string{firewall.PostroutingChain, firewall.ForwardChain} {
		rules, err := conn.GetRules(tbl, &nftables.Chain{Name: c, Table: tbl})
		if err == nil {
			n += len(rules)
		}
	}
	return n
}

// The daemon's loop repairs an outside flush within -iptables-resync and
// leaves the rules in place when it stops, as flanneld does.
func TestFirewallKeeperRepairsAndKeepsRulesOnStop(t *testing.T) {
	conn := fwTestConn(t)
	var logs syncBuffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	o := Firewall{Masquerade: true, FullyRandom: true, Forward: true, Resync: time.Second}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	var spawned []string
	spawn := func(name string, fn func(context.Context) error) {
		spawned = append(spawned, name)
		go func() { done <- fn(ctx) }()
	}
	if err := startFirewallOn(conn, o, log, fwNetwork, fwLease, spawn, nil); err != nil {
		t.Fatalf("startFirewallOn: %v", err)
	}
	if len(spawned) != 1 {
		t.Fatalf("spawned %v, want the firewall loop", spawned)
	}
	if n := weftRuleCount(t, conn); n != 8 {
		t.Fatalf("after start: %d rules, want 6 masquerade + 2 forward", n)
	}
	if !strings.Contains(logs.String(), "installed nftables rules") {
		t.Errorf("no install log line:\n%s", logs.String())
	}

	conn.FlushTable(&nftables.Table{Name: firewall.TableName, Family: nftables.TableFamilyIPv4})
	if err := conn.Flush(); err != nil {
		t.Fatalf("flush table: %v", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for weftRuleCount(t, conn) != 8 {
		if time.Now().After(deadline) {
			t.Fatalf("rules not repaired within 5 s (-iptables-resync=1)")
		}
		time.Sleep(50 * time.Millisecond)
	}
	for !strings.Contains(logs.String(), "repaired nftables rules") {
		if time.Now().After(deadline) {
			t.Fatalf("repair not logged:\n%s", logs.String())
		}
		time.Sleep(10 * time.Millisecond)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("firewall loop returned %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("firewall loop did not stop")
	}
	if n := weftRuleCount(t, conn); n != 8 {
		t.Errorf("after stop: %d rules, want all 8 kept", n)
	}
}

// A forward chain elsewhere with policy drop (Docker's, through
// iptables-nft) is named in one warning with the fix, not once per resync,
// and its removal is logged.
func TestFirewallWarnsOfForwardDrops(t *testing.T) {
	conn := fwTestConn(t)
	drop := nftables.ChainPolicyDrop
	filter := conn.AddTable(&nftables.Table{Name: "filter", Family: nftables.TableFamilyIPv4})
	conn.AddChain(&nftables.Chain{Name: "FORWARD", Table: filter, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &drop})
	if err := conn.Flush(); err != nil {
		t.Fatalf("add Docker's FORWARD chain: %v", err)
	}
	var logs syncBuffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	o := Firewall{Forward: true, Resync: time.Second}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	defer func() {
		cancel()
		if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("firewall keeper after cancel: %v", err)
		}
	}()
	spawn := func(_ string, fn func(context.Context) error) { go func() { done <- fn(ctx) }() }
	// The real reader works on the calling thread's namespace, not conn's
	// (firewall's tests cover it there): stand in for it.
	var legacy atomic.Bool
	legacyForwardDrop = func() (bool, error) { return legacy.Load(), nil }
	dropsCheckEvery = 0 // at every resync, so the test need not wait a minute
	t.Cleanup(func() { legacyForwardDrop, dropsCheckEvery = firewall.LegacyForwardDrop, time.Minute })
	h := status.NewHealth(status.Build{})
	if err := startFirewallOn(conn, o, log, fwNetwork, fwLease, spawn, h.SetFirewall); err != nil {
		t.Fatalf("startFirewallOn: %v", err)
	}
	if f := h.Status(true).Firewall; f == nil || !f.InPlace || f.Masquerade || !f.ForwardRules ||
		!slices.Equal(f.ForwardDrops, []string{"table ip filter chain FORWARD"}) {
		t.Errorf("status: %+v, want the rules in place and Docker's chain named", f)
	}
	const warning = "another forward chain drops by default"
	out := logs.String()
	for _, want := range []string{warning, `chains="table ip filter chain FORWARD"`,
		"iptables -I FORWARD -s 198.19.0.0/16 -j ACCEPT && iptables -I FORWARD -d 198.19.0.0/16 -j ACCEPT"} {
		if !strings.Contains(out, want) {
			t.Errorf("start log lacks %q:\n%s", want, out)
		}
	}

	time.Sleep(2500 * time.Millisecond) // two resyncs
	if n := strings.Count(logs.String(), warning); n != 1 {
		t.Errorf("warned %d times over two resyncs, want once:\n%s", n, logs.String())
	}

	conn.DelTable(filter)
	if err := conn.Flush(); err != nil {
		t.Fatalf("delete Docker's table: %v", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(logs.String(), "no other forward chain drops by default") {
		if time.Now().After(deadline) {
			t.Fatalf("the chain's removal was not logged within 10 s:\n%s", logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if f := h.Status(true).Firewall; f == nil || !f.InPlace || len(f.ForwardDrops) != 0 {
		t.Errorf("status after the chain went: %+v, want no drops named", f)
	}

	// iptables-legacy's FORWARD policy turns to DROP: warned of too.
	legacy.Store(true)
	for !strings.Contains(logs.String(), `chains="iptables-legacy filter FORWARD"`) {
		if time.Now().After(deadline) {
			t.Fatalf("the legacy policy was not warned of within 10 s:\n%s", logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if f := h.Status(true).Firewall; f == nil || !slices.Equal(f.ForwardDrops, []string{firewall.LegacyForwardChain}) {
		t.Errorf("status with the legacy policy: %+v", f)
	}
}

// With both flags off, a table an earlier run left goes, and nothing runs.
func TestFirewallOffRemovesLeftover(t *testing.T) {
	conn := fwTestConn(t)
	if _, err := firewall.Apply(conn, firewall.Rules{Network: fwNetwork, Subnet: fwLease, Masquerade: true}); err != nil {
		t.Fatal(err)
	}
	var logs syncBuffer
	o := Firewall{Resync: 5 * time.Second}
	spawn := func(name string, _ func(context.Context) error) { t.Errorf("spawned %s with both flags off", name) }
	if err := startFirewallOn(conn, o, slog.New(slog.NewTextHandler(&logs, nil)), fwNetwork, fwLease, spawn, nil); err != nil {
		t.Fatal(err)
	}
	if n := weftRuleCount(t, conn); n != 0 {
		t.Errorf("%d rules left, want the table removed", n)
	}
	if !strings.Contains(logs.String(), "removed the nftables table an earlier run left") {
		t.Errorf("removal not logged:\n%s", logs.String())
	}
}

// A failure is fatal with -ip-masq (pods would lose the outside world) and
// a retried warning for the forward rules alone (the default), as flanneld.
func TestFirewallFailurePolicy(t *testing.T) {
	conn, err := nftables.New() // never used: invalid rules fail before any netlink call
	if err != nil {
		t.Fatal(err)
	}
	bad := netip.Prefix{}
	var logs syncBuffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	spawned := 0
	spawn := func(string, func(context.Context) error) { spawned++ }

	h := status.NewHealth(status.Build{})
	err = startFirewallOn(conn, Firewall{Masquerade: true, FullyRandom: true, Forward: true, Resync: 5 * time.Second}, log, bad, fwLease, spawn, h.SetFirewall)
	if f := h.Status(true).Firewall; f == nil || f.InPlace || !f.Masquerade || !f.ForwardRules || !strings.Contains(f.LastError, "-ip-masq=true") {
		t.Errorf("status after the failed start: %+v, want not in place with the error", f)
	}
	if err == nil || !strings.Contains(err.Error(), "-ip-masq=true") || spawned != 0 {
		t.Errorf("with -ip-masq: err %v, spawned %d; want a fatal error naming the flags", err, spawned)
	}
	err = startFirewallOn(conn, Firewall{Forward: true, Resync: 5 * time.Second}, log, bad, fwLease, spawn, nil)
	if err != nil || spawned != 1 {
		t.Errorf("forward rules only: err %v, spawned %d; want no error and the retry loop", err, spawned)
	}
	if got := strings.Count(logs.String(), "cannot apply nftables rules"); got != 2 {
		t.Errorf("%d warnings, want one per failing start:\n%s", got, logs.String())
	}
}
