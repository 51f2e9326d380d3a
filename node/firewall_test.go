package node

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/nftables"

	"github.com/weft-net/weft/firewall"
	"github.com/weft-net/weft/internal/netnstest"
	"github.com/weft-net/weft/status"
)

// fwTestConn returns a fresh network namespace and an nftables conn into it.
func fwTestConn(t *testing.T) (*nftables.Conn, *netnstest.NS) {
	t.Helper()
	ns := netnstest.New(t)
	conn, err := nftables.New(nftables.WithNetNSFd(int(ns.Handle)))
	if err != nil {
		t.Fatal(err)
	}
	return conn, ns
}

// nowhere is a do for keepers that must not reach a namespace.
func nowhere(t *testing.T) func(func() error) error {
	return func(func() error) error {
		t.Error("the keeper ran something in a namespace; this test has none")
		return errors.New("no namespace")
	}
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
	conn, ns := fwTestConn(t)
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
	if err := startFirewallOn(conn, ns.Do, o, log, fwNetwork, fwLease, spawn, nil); err != nil {
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

// runKeeper starts a firewall keeper for the forward rules on conn, with
// the resync every second and the look for drop policies at every resync;
// the keeper stops when the test ends.
func runKeeper(t *testing.T, conn *nftables.Conn, ns *netnstest.NS, logs *syncBuffer) *status.Health {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("firewall keeper after cancel: %v", err)
		}
	})
	spawn := func(_ string, fn func(context.Context) error) { go func() { done <- fn(ctx) }() }
	dropsCheckEvery = 0 // so the test need not wait a minute
	t.Cleanup(func() { dropsCheckEvery = time.Minute })
	h := status.NewHealth(status.Build{})
	log := slog.New(slog.NewTextHandler(logs, nil))
	if err := startFirewallOn(conn, ns.Do, Firewall{Forward: true, Resync: time.Second}, log, fwNetwork, fwLease, spawn, h.SetFirewall); err != nil {
		t.Fatalf("startFirewallOn: %v", err)
	}
	return h
}

func waitLog(t *testing.T, logs *syncBuffer, want string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(logs.String(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("no %q logged within 10 s:\n%s", want, logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A forward chain weft does not write to (firewalld's own table) that drops
// by default is named in one warning with the fix, not once per resync, and
// its removal is logged.
func TestFirewallWarnsOfForwardDrops(t *testing.T) {
	conn, ns := fwTestConn(t)
	drop := nftables.ChainPolicyDrop
	fwd := conn.AddTable(&nftables.Table{Name: "firewalld", Family: nftables.TableFamilyINet})
	conn.AddChain(&nftables.Chain{Name: "filter_FORWARD", Table: fwd, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &drop})
	if err := conn.Flush(); err != nil {
		t.Fatalf("add firewalld's FORWARD chain: %v", err)
	}
	var logs syncBuffer
	h := runKeeper(t, conn, ns, &logs)
	if f := h.Status(true).Firewall; f == nil || !f.InPlace || f.Masquerade || !f.ForwardRules || len(f.Joined) != 0 ||
		!slices.Equal(f.ForwardDrops, []string{"table inet firewalld chain filter_FORWARD"}) {
		t.Errorf("status: %+v, want the rules in place and firewalld's chain named", f)
	}
	const warning = "another forward chain drops by default"
	out := logs.String()
	for _, want := range []string{warning, `chains="table inet firewalld chain filter_FORWARD"`,
		"firewall-cmd --permanent --zone=trusted --add-source=198.19.0.0/16 && firewall-cmd --reload"} {
		if !strings.Contains(out, want) {
			t.Errorf("start log lacks %q:\n%s", want, out)
		}
	}

	time.Sleep(2500 * time.Millisecond) // two resyncs
	if n := strings.Count(logs.String(), warning); n != 1 {
		t.Errorf("warned %d times over two resyncs, want once:\n%s", n, logs.String())
	}

	conn.DelTable(fwd)
	if err := conn.Flush(); err != nil {
		t.Fatalf("delete firewalld's table: %v", err)
	}
	waitLog(t, &logs, "no other forward chain drops the network by default")
	if f := h.Status(true).Firewall; f == nil || !f.InPlace || len(f.ForwardDrops) != 0 {
		t.Errorf("status after the chain went: %+v, want no drops named", f)
	}
}

// dockerFilter is Docker's filter table (see firewall's tests), enough for
// the drop policy and DOCKER-USER.
const dockerFilter = `*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:DOCKER-USER - [0:0]
-A FORWARD -j DOCKER-USER
-A DOCKER-USER -j RETURN
COMMIT
`

func iptablesIn(t *testing.T, ns *netnstest.NS, tool, stdin string, args ...string) string {
	t.Helper()
	if _, err := exec.LookPath(tool); err != nil {
		t.Skipf("skipping: needs %s (Debian: apt-get install iptables)", tool)
	}
	out, err := ns.Run(stdin, tool, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// Where iptables' FORWARD drops by default, in either back end, the keeper
// joins it with flanneld's accepts, says so in the status and not in a
// warning, and puts the jump back within a resync after Docker flushes
// FORWARD.
func TestFirewallJoinsIptablesForward(t *testing.T) {
	conn, ns := fwTestConn(t)
	iptablesIn(t, ns, "iptables-nft-restore", dockerFilter)
	var logs syncBuffer
	h := runKeeper(t, conn, ns, &logs)
	nft := firewall.BackendNFT.Name()
	if f := h.Status(true).Firewall; f == nil || !slices.Equal(f.Joined, []string{nft}) || len(f.ForwardDrops) != 0 {
		t.Errorf("status: %+v, want %s joined and no drops named", f, nft)
	}
	if out := logs.String(); !strings.Contains(out, "joined it with flanneld's accepts") || strings.Contains(out, "another forward chain drops") {
		t.Errorf("start log: want the join logged and no warning:\n%s", out)
	}
	if rules := iptablesIn(t, ns, "iptables-nft", "", "-S", "FORWARD"); !strings.HasSuffix(strings.TrimSpace(rules), "-j "+firewall.IptablesChain) {
		t.Errorf("FORWARD does not end with weft's jump:\n%s", rules)
	}

	iptablesIn(t, ns, "iptables-nft", "", "-F", "FORWARD") // dockerd restarts
	iptablesIn(t, ns, "iptables-nft", "", "-A", "FORWARD", "-j", "DOCKER-USER")
	waitLog(t, &logs, "repaired weft's accepts in FORWARD")
	if rules := iptablesIn(t, ns, "iptables-nft", "", "-S", "FORWARD"); strings.Count(rules, "-j "+firewall.IptablesChain) != 1 {
		t.Errorf("after Docker's flush, FORWARD has not one jump to weft's chain:\n%s", rules)
	}

	iptablesIn(t, ns, "iptables-legacy-restore", dockerFilter)
	legacy := firewall.BackendLegacy.Name()
	deadline := time.Now().Add(10 * time.Second)
	for f := h.Status(true).Firewall; f == nil || !slices.Equal(f.Joined, []string{nft, legacy}); f = h.Status(true).Firewall {
		if time.Now().After(deadline) {
			t.Fatalf("status %+v: want %s and %s joined within 10 s\n%s", f, nft, legacy, logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if rules := iptablesIn(t, ns, "iptables-legacy", "", "-S"); strings.Count(rules, "-A "+firewall.IptablesChain) != 2 {
		t.Errorf("iptables-legacy: weft's chain does not hold the two accepts:\n%s", rules)
	}
}

// With both flags off, a table an earlier run left goes, and nothing runs.
func TestFirewallOffRemovesLeftover(t *testing.T) {
	conn, _ := fwTestConn(t)
	if _, err := firewall.Apply(conn, firewall.Rules{Network: fwNetwork, Subnet: fwLease, Masquerade: true}); err != nil {
		t.Fatal(err)
	}
	var logs syncBuffer
	o := Firewall{Resync: 5 * time.Second}
	spawn := func(name string, _ func(context.Context) error) { t.Errorf("spawned %s with both flags off", name) }
	if err := startFirewallOn(conn, nowhere(t), o, slog.New(slog.NewTextHandler(&logs, nil)), fwNetwork, fwLease, spawn, nil); err != nil {
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
	err = startFirewallOn(conn, nowhere(t), Firewall{Masquerade: true, FullyRandom: true, Forward: true, Resync: 5 * time.Second}, log, bad, fwLease, spawn, h.SetFirewall)
	if f := h.Status(true).Firewall; f == nil || f.InPlace || !f.Masquerade || !f.ForwardRules || !strings.Contains(f.LastError, "-ip-masq=true") {
		t.Errorf("status after the failed start: %+v, want not in place with the error", f)
	}
	if err == nil || !strings.Contains(err.Error(), "-ip-masq=true") || spawned != 0 {
		t.Errorf("with -ip-masq: err %v, spawned %d; want a fatal error naming the flags", err, spawned)
	}
	err = startFirewallOn(conn, nowhere(t), Firewall{Forward: true, Resync: 5 * time.Second}, log, bad, fwLease, spawn, nil)
	if err != nil || spawned != 1 {
		t.Errorf("forward rules only: err %v, spawned %d; want no error and the retry loop", err, spawned)
	}
	if got := strings.Count(logs.String(), "cannot apply nftables rules"); got != 2 {
		t.Errorf("%d warnings, want one per failing start:\n%s", got, logs.String())
	}
}
