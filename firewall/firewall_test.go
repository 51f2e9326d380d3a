package firewall

import (
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// assertKernel reads weft's table back from the kernel and compares it with
// the expected rule texts; a nil list means the chain must be absent.
func assertKernel(t *testing.T, n *testNS, wantMasq, wantFwd []string) {
	t.Helper()
	tbl, err := findTable(n.nft)
	if err != nil {
		t.Fatalf("list tables: %v", err)
	}
	if tbl == nil {
		t.Fatalf("table ip %s is missing", TableName)
	}
	chains := 0
	for _, c := range []struct {
		name, typ   string
		hook        nftables.ChainHook
		prio        nftables.ChainPriority
		want        []string
		description string
	}{
		{PostroutingChain, "nat", *nftables.ChainHookPostrouting, 100, wantMasq, "nat postrouting srcnat"},
		{ForwardChain, "filter", *nftables.ChainHookForward, 0, wantFwd, "filter forward filter"},
	} {
		got, err := n.nft.ListChain(table, c.name)
		if c.want == nil {
			if err == nil {
				t.Errorf("chain %s exists, want it absent", c.name)
			}
			continue
		}
		chains++
		if err != nil {
			t.Fatalf("chain %s: %v", c.name, err)
		}
		if string(got.Type) != c.typ || got.Hooknum == nil || *got.Hooknum != c.hook ||
			got.Priority == nil || *got.Priority != c.prio || got.Policy == nil || *got.Policy != nftables.ChainPolicyAccept {
			t.Errorf("chain %s = type %s hook %v prio %v policy %v, want %s policy accept",
				c.name, got.Type, got.Hooknum, got.Priority, got.Policy, c.description)
		}
		rules, err := n.nft.GetRules(table, got)
		if err != nil {
			t.Fatalf("rules of %s: %v", c.name, err)
		}
		assertLines(t, c.name, describeAll(rules), c.want)
	}
	if use := bigEndian32(tbl.Use); use != uint32(chains) {
		t.Errorf("table holds %d objects, want %d chains", use, chains)
	}
}

func assertTableAbsent(t *testing.T, n *testNS) {
	t.Helper()
	tbl, err := findTable(n.nft)
	if err != nil {
		t.Fatalf("list tables: %v", err)
	}
	if tbl != nil {
		t.Errorf("table ip %s still exists", TableName)
	}
}

func mustApply(t *testing.T, n *testNS, r Rules, wantChanged bool) {
	t.Helper()
	changed, err := Apply(n.nft, r)
	if err != nil {
		t.Fatalf("Apply: %v", err)
	}
	if changed != wantChanged {
		t.Fatalf("Apply changed = %v, want %v", changed, wantChanged)
	}
}

// nftList returns `nft list table ip weft` in n, or "" when nft is not
// installed (the check is then skipped: the tests must not need it).
func nftList(t *testing.T, n *testNS) string {
	t.Helper()
	if _, err := exec.LookPath("nft"); err != nil {
		t.Log("nft not installed: skipping the check against nft's own listing")
		return ""
	}
	out, err := exec.Command("ip", "netns", "exec", n.Name, "nft", "list", "table", "ip", TableName).CombinedOutput()
	if err != nil {
		t.Fatalf("nft list table: %v\n%s", err, out)
	}
	return string(out)
}

func TestApplyReadBack(t *testing.T) {
	n := newTestNS(t)
	mustApply(t, n, testRules(), true)
	assertKernel(t, n, expectedMasq(true), expectedForward)

	if out := nftList(t, n); out != "" {
		for _, want := range append(append([]string{
			"type nat hook postrouting priority srcnat; policy accept;",
			"type filter hook forward priority filter; policy accept;",
		}, expectedMasq(true)...), expectedForward...) {
			if !strings.Contains(out, want) {
				t.Errorf("nft list table ip %s lacks %q:\n%s", TableName, want, out)
			}
		}
	}
}

func TestApplyIdempotent(t *testing.T) {
	n := newTestNS(t)
	r := testRules()
	mustApply(t, n, r, true)
	mustApply(t, n, r, false)
	mustApply(t, n, r, false)

	// A new lease (weft restarted and leased another subnet) rewrites.
	r.Subnet = mustPrefix(t, "198.19.7.0/24")
	mustApply(t, n, r, false)
	r.Subnet = mustPrefix(t, "198.19.8.0/24")
	mustApply(t, n, r, true)
	got := strings.Join(kernelRules(t, n, PostroutingChain), "\n")
	if !strings.Contains(got, "ip saddr 198.19.8.0/24 ip daddr 198.19.0.0/16 return") || strings.Contains(got, "198.19.7.0/24") {
		t.Errorf("after the subnet change the rules are:\n%s", got)
	}
	mustApply(t, n, r, false)

	// -ip-masq-fully-random-disable changes the masquerade rules.
	r.Subnet = mustPrefix(t, "198.19.7.0/24")
	r.FullyRandom = false
	mustApply(t, n, r, true)
	assertKernel(t, n, expectedMasq(false), expectedForward)
	mustApply(t, n, r, false)
}

func TestApplyRepairs(t *testing.T) {
	n := newTestNS(t)
	r := testRules()
	other, err := nftables.New(nftables.WithNetNSFd(int(n.Handle)))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name     string
		sabotage func(t *testing.T)
	}{
		{"flush table", func(*testing.T) { other.FlushTable(table) }},
		{"delete table", func(*testing.T) { other.DelTable(table) }},
		{"delete forward chain", func(t *testing.T) {
			other.FlushChain(&nftables.Chain{Name: ForwardChain, Table: table})
			other.DelChain(&nftables.Chain{Name: ForwardChain, Table: table})
		}},
		{"delete one rule", func(t *testing.T) {
			rules := kernelRuleObjs(t, n, PostroutingChain)
			if err := other.DelRule(rules[4]); err != nil {
				t.Fatal(err)
			}
		}},
		{"accept inserted first (stops masquerading)", func(t *testing.T) {
			other.InsertRule(&nftables.Rule{Table: table, Chain: &nftables.Chain{Name: PostroutingChain, Table: table},
				Exprs: []expr.Any{&expr.Verdict{Kind: expr.VerdictAccept}}})
		}},
		{"rule replaced by plain masquerade", func(t *testing.T) {
			rules := kernelRuleObjs(t, n, PostroutingChain)
			old := rules[4]
			exprs := append([]expr.Any(nil), old.Exprs[:len(old.Exprs)-1]...)
			other.ReplaceRule(&nftables.Rule{Table: table, Chain: old.Chain, Handle: old.Handle,
				Exprs: append(exprs, &expr.Masq{}), UserData: old.UserData})
		}},
		{"comment changed", func(t *testing.T) {
			rules := kernelRuleObjs(t, n, ForwardChain)
			other.ReplaceRule(&nftables.Rule{Table: table, Chain: rules[0].Chain, Handle: rules[0].Handle, Exprs: rules[0].Exprs})
		}},
		{"forward policy drop", func(*testing.T) {
			drop := nftables.ChainPolicyDrop
			other.AddChain(&nftables.Chain{Name: ForwardChain, Table: table, Type: nftables.ChainTypeFilter,
				Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &drop})
		}},
		{"extra chain", func(*testing.T) { other.AddChain(&nftables.Chain{Name: "extra", Table: table}) }},
		{"dormant table", func(t *testing.T) {
			if _, err := exec.LookPath("nft"); err != nil {
				t.Skip("nft not installed: cannot set the dormant flag")
			}
			if out, err := exec.Command("ip", "netns", "exec", n.Name, "nft", "add table ip "+TableName+" { flags dormant; }").CombinedOutput(); err != nil {
				t.Fatalf("nft: %v\n%s", err, out)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mustApply(t, n, r, len(kernelTables(t, n)) == 0)
			tc.sabotage(t)
			if err := other.Flush(); err != nil {
				t.Fatalf("sabotage: %v", err)
			}
			mustApply(t, n, r, true)
			assertKernel(t, n, expectedMasq(true), expectedForward)
			tbl, _ := findTable(n.nft)
			if tbl != nil && tbl.Flags != 0 {
				t.Errorf("table flags = %#x after repair, want 0", tbl.Flags)
			}
			mustApply(t, n, r, false)
		})
	}
}

func TestApplyTogglesAndRemove(t *testing.T) {
	n := newTestNS(t)
	// Someone else's table, with a chain on the same hook and a rule: it
	// must survive everything weft does.
	foreign := &nftables.Table{Name: "operator", Family: nftables.TableFamilyIPv4}
	n.nft.AddTable(foreign)
	fc := n.nft.AddChain(&nftables.Chain{Name: "post", Table: foreign, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource})
	n.nft.AddRule(&nftables.Rule{Table: foreign, Chain: fc, Exprs: []expr.Any{&expr.Verdict{Kind: expr.VerdictReturn}}})
	if err := n.nft.Flush(); err != nil {
		t.Fatalf("create foreign table: %v", err)
	}
	assertForeign := func() {
		t.Helper()
		rules, err := n.nft.GetRules(foreign, fc)
		if err != nil || len(rules) != 1 {
			t.Fatalf("foreign table's rules = %d, %v; want 1 rule", len(rules), err)
		}
	}

	r := testRules()
	mustApply(t, n, r, true)

	r.Forward = false
	mustApply(t, n, r, true)
	assertKernel(t, n, expectedMasq(true), nil)
	mustApply(t, n, r, false)

	r.Forward, r.Masquerade = true, false
	mustApply(t, n, r, true)
	assertKernel(t, n, nil, expectedForward)
	mustApply(t, n, r, false)

	r.Forward = false
	mustApply(t, n, r, true) // nothing wanted: the table goes
	assertTableAbsent(t, n)
	mustApply(t, n, r, false)
	assertForeign()

	mustApply(t, n, testRules(), true)
	if err := Remove(n.nft); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	assertTableAbsent(t, n)
	if err := Remove(n.nft); err != nil {
		t.Fatalf("Remove of an absent table: %v", err)
	}
	assertForeign()
	if got := kernelTables(t, n); len(got) != 1 || got[0] != "operator" {
		t.Errorf("tables after Remove = %v, want only the operator's", got)
	}
}

func TestApplyRejectsBadRules(t *testing.T) {
	n := newTestNS(t)
	r := testRules()
	r.Subnet = mustPrefix(t, "198.18.7.0/24")
	if _, err := Apply(n.nft, r); err == nil || !strings.Contains(err.Error(), "not inside network") {
		t.Fatalf("Apply with a subnet outside the network: %v", err)
	}
	assertTableAbsent(t, n) // nothing half-written
}

func kernelTables(t *testing.T, n *testNS) []string {
	t.Helper()
	tables, err := n.nft.ListTablesOfFamily(nftables.TableFamilyIPv4)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, tb := range tables {
		names = append(names, tb.Name)
	}
	return names
}

func kernelRuleObjs(t *testing.T, n *testNS, chain string) []*nftables.Rule {
	t.Helper()
	rules, err := n.nft.GetRules(table, &nftables.Chain{Name: chain, Table: table})
	if err != nil {
		t.Fatalf("rules of %s: %v", chain, err)
	}
	return rules
}

func kernelRules(t *testing.T, n *testNS, chain string) []string {
	t.Helper()
	return describeAll(kernelRuleObjs(t, n, chain))
}

func mustPrefix(t *testing.T, s string) netip.Prefix {
	t.Helper()
	p, err := netip.ParsePrefix(s)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestForwardDrops: the base chains of other tables that drop forwarded
// IPv4 by default are found (Docker's iptables-nft FORWARD chain, an inet
// one), and nothing else is: weft's own chain, chains with policy accept,
// regular chains, IPv6 and bridge tables.
func TestForwardDrops(t *testing.T) {
	n := newTestNS(t)
	mustApply(t, n, testRules(), true)
	assertDrops(t, n) // none yet

	drop, accept := nftables.ChainPolicyDrop, nftables.ChainPolicyAccept
	base := func(family nftables.TableFamily, table, chain string, hook *nftables.ChainHook, policy *nftables.ChainPolicy) {
		tbl := n.nft.AddTable(&nftables.Table{Name: table, Family: family})
		c := &nftables.Chain{Name: chain, Table: tbl, Policy: policy}
		if hook != nil {
			c.Type, c.Hooknum, c.Priority = nftables.ChainTypeFilter, hook, nftables.ChainPriorityFilter
		}
		n.nft.AddChain(c)
	}
	base(nftables.TableFamilyIPv4, "filter", "FORWARD", nftables.ChainHookForward, &drop) // iptables-nft, Docker's policy
	base(nftables.TableFamilyIPv4, "filter", "INPUT", nftables.ChainHookInput, &drop)
	base(nftables.TableFamilyIPv4, "filter", "DOCKER-USER", nil, nil)
	base(nftables.TableFamilyINet, "host", "fwd", nftables.ChainHookForward, &drop)
	base(nftables.TableFamilyINet, "open", "fwd", nftables.ChainHookForward, &accept)
	base(nftables.TableFamilyIPv6, "filter", "FORWARD", nftables.ChainHookForward, &drop)
	base(nftables.TableFamilyBridge, "br", "fwd", nftables.ChainHookForward, &drop)
	if err := n.nft.Flush(); err != nil {
		t.Fatalf("add the other tables: %v", err)
	}
	assertDrops(t, n, "table inet host chain fwd", "table ip filter chain FORWARD")

	// Policy accept, but the last rule drops or rejects everything
	// (firewalld's filter_FORWARD ends in "reject with icmpx
	// admin-prohibited"); a last rule that matches first does not count.
	fwd := func(table string, last ...expr.Any) {
		tbl := n.nft.AddTable(&nftables.Table{Name: table, Family: nftables.TableFamilyINet})
		c := n.nft.AddChain(&nftables.Chain{Name: "filter_FORWARD", Table: tbl, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &accept})
		n.nft.AddRule(&nftables.Rule{Table: tbl, Chain: c, Exprs: concat(match(srcOff, mustPrefix(t, "198.18.0.0/24"), true),
			[]expr.Any{&expr.Verdict{Kind: expr.VerdictAccept}})})
		n.nft.AddRule(&nftables.Rule{Table: tbl, Chain: c, Exprs: last})
	}
	fwd("firewalld", &expr.Reject{Type: unix.NFT_REJECT_ICMPX_UNREACH, Code: unix.NFT_REJECT_ICMPX_ADMIN_PROHIBITED})
	fwd("counted", &expr.Counter{}, &expr.Verdict{Kind: expr.VerdictDrop})
	fwd("matched", concat(match(dstOff, mustPrefix(t, "198.18.1.0/24"), true), []expr.Any{&expr.Verdict{Kind: expr.VerdictDrop}})...)
	fwd("accepting", &expr.Counter{}, &expr.Verdict{Kind: expr.VerdictAccept})
	if err := n.nft.Flush(); err != nil {
		t.Fatalf("add the chains ending in a verdict: %v", err)
	}
	assertDrops(t, n, "table inet counted chain filter_FORWARD (its last rule drops all)",
		"table inet firewalld chain filter_FORWARD (its last rule drops all)",
		"table inet host chain fwd", "table ip filter chain FORWARD")

	// A drop policy written into weft's own chain is not reported: Apply
	// puts the chain back.
	c := &nftables.Chain{Name: ForwardChain, Table: table, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &drop}
	n.nft.AddChain(c)
	if err := n.nft.Flush(); err != nil {
		t.Fatalf("set weft's forward policy to drop: %v", err)
	}
	assertDrops(t, n, "table inet counted chain filter_FORWARD (its last rule drops all)",
		"table inet firewalld chain filter_FORWARD (its last rule drops all)",
		"table inet host chain fwd", "table ip filter chain FORWARD")
	mustApply(t, n, testRules(), true)
}

func assertDrops(t *testing.T, n *testNS, want ...string) {
	t.Helper()
	got, err := ForwardDrops(n.nft)
	if err != nil {
		t.Fatalf("ForwardDrops: %v", err)
	}
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Errorf("ForwardDrops = %q, want %q", got, want)
	}
}
