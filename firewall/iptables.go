package firewall

// Joining iptables' FORWARD chain. nftables runs every base chain on a
// hook, so the accepts in weft's own table cannot override a drop policy
// in iptables' filter FORWARD (Docker's). flanneld's rules live in that
// very chain, which is why its defaults make traffic into containers flow
// on a Docker host. Where filter FORWARD drops by default, weft therefore
// does what flanneld does: a chain of its own holding the two accepts,
// jumped to from the end of FORWARD (so DOCKER-USER still comes first),
// written with the iptables tool of the back end the table's owner uses,
// so `iptables -S` shows them as it shows flanneld's. Every rule carries
// IptablesComment: weft finds, repairs and never duplicates its own.

import (
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"slices"
	"strings"

	"github.com/coreos/go-iptables/iptables"
	"github.com/google/nftables"
	"golang.org/x/sys/unix"
)

// IptablesChain is weft's chain in iptables' filter table (flanneld's is
// FLANNEL-FWD).
const IptablesChain = "WEFT-FWD"

// IptablesComment marks every iptables rule weft writes.
const IptablesComment = "weft: accept the overlay network, as flanneld does"

// Backend is one of iptables' two back ends, which keep separate tables in
// the kernel: a drop policy in one is fixed only by rules in the same one.
type Backend struct {
	// Tool is the iptables binary that writes this back end's tables.
	Tool string
	// Chain names its filter FORWARD chain as ForwardDrops and
	// LegacyForwardChain do.
	Chain string
}

// The back ends, in the order weft looks at them.
var (
	BackendNFT    = Backend{Tool: "iptables-nft", Chain: "table ip filter chain FORWARD"}
	BackendLegacy = Backend{Tool: "iptables-legacy", Chain: LegacyForwardChain}
)

// Name is how logs and weft status name the chain weft joins.
func (b Backend) Name() string { return b.Tool + " filter FORWARD" }

// NFTForwardDrop reports whether iptables-nft's filter FORWARD chain
// ("table ip filter", chain FORWARD) exists with policy drop. It reads that
// one chain, cheap enough for every resync, and creates nothing.
func NFTForwardDrop(conn *nftables.Conn) (bool, error) {
	c, err := conn.ListChain(&nftables.Table{Name: "filter", Family: nftables.TableFamilyIPv4}, "FORWARD")
	if err != nil {
		// The library flattens the errno into text.
		if errors.Is(err, unix.ENOENT) || strings.HasSuffix(err.Error(), unix.ENOENT.Error()) {
			return false, nil
		}
		return false, explain(fmt.Errorf("read table ip filter chain FORWARD: %w", err))
	}
	return c.Policy != nil && *c.Policy == nftables.ChainPolicyDrop, nil
}

// Iptables writes weft's rules into one back end's filter table.
type Iptables struct {
	b   Backend
	ipt *iptables.IPTables
}

// NewIptables finds b's tool. An error says it is missing and how to get it.
func NewIptables(b Backend) (*Iptables, error) {
	path, err := exec.LookPath(b.Tool)
	if err != nil {
		return nil, fmt.Errorf("%s not found, so weft cannot accept the network in %s (Debian: apt-get install iptables): %w",
			b.Tool, b.Name(), err)
	}
	// Wait up to 5 s for the xtables lock another writer (dockerd) holds.
	ipt, err := iptables.New(iptables.Path(path), iptables.Timeout(5))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", b.Tool, err)
	}
	return &Iptables{b: b, ipt: ipt}, nil
}

// accepts are the rules of weft's chain: flanneld's two, marked.
func accepts(network netip.Prefix) [][]string {
	n := network.Masked().String()
	return [][]string{
		{"-s", n, "-m", "comment", "--comment", IptablesComment, "-j", "ACCEPT"},
		{"-d", n, "-m", "comment", "--comment", IptablesComment, "-j", "ACCEPT"},
	}
}

// jump is the rule in FORWARD that sends packets through weft's chain.
var jump = []string{"-m", "comment", "--comment", IptablesComment, "-j", IptablesChain}

// Join makes filter FORWARD jump, from its end, to weft's chain holding
// exactly flanneld's two accepts for network. It is idempotent and repairs
// what was changed or removed (Docker's restart flushes FORWARD); a second
// jump is removed. It reports whether it changed anything. In the steady
// state it runs the tool twice (one listing of each chain): it runs at
// every resync.
func (x *Iptables) Join(network netip.Prefix) (changed bool, err error) {
	if changed, err = x.keepAccepts(network); err != nil {
		return changed, err
	}
	jumps, err := x.countJumps()
	if err != nil {
		return changed, err
	}
	for ; jumps > 1; jumps-- {
		if err := x.ipt.Delete("filter", "FORWARD", jump...); err != nil {
			return true, x.wrap("delete a second jump to "+IptablesChain, err)
		}
		changed = true
	}
	if jumps == 0 {
		if err := x.ipt.Append("filter", "FORWARD", jump...); err != nil {
			return changed, x.wrap("append the jump to "+IptablesChain+" to FORWARD", err)
		}
		changed = true
	}
	return changed, nil
}

// keepAccepts makes weft's chain exist and hold exactly the two accepts,
// rewriting it whole if anything else is there. It compares the chain's
// listing with the lines the tool prints for them (the same in both back
// ends), so a chain in order costs one run of the tool.
func (x *Iptables) keepAccepts(network netip.Prefix) (changed bool, err error) {
	const table = "filter"
	want := []string{"-N " + IptablesChain}
	for _, spec := range accepts(network) {
		want = append(want, "-A "+IptablesChain+" "+render(spec))
	}
	rules, err := x.ipt.List(table, IptablesChain)
	if err != nil {
		// Most likely absent (the first join, or removed by hand).
		ok, cerr := x.ipt.ChainExists(table, IptablesChain)
		if cerr != nil || ok {
			return false, x.wrap("list chain "+IptablesChain, err)
		}
		if err := x.ipt.NewChain(table, IptablesChain); err != nil {
			return false, x.wrap("create chain "+IptablesChain, err)
		}
		rules, changed = want[:1], true
	}
	if slices.Equal(rules, want) {
		return changed, nil
	}
	if err := x.ipt.ClearChain(table, IptablesChain); err != nil {
		return changed, x.wrap("flush chain "+IptablesChain, err)
	}
	for _, spec := range accepts(network) {
		if err := x.ipt.Append(table, IptablesChain, spec...); err != nil {
			return true, x.wrap("append to chain "+IptablesChain, err)
		}
	}
	return true, nil
}

// render is a rule as iptables -S prints it: arguments with spaces quoted.
func render(spec []string) string {
	out := make([]string, len(spec))
	for i, a := range spec {
		if strings.ContainsAny(a, " \t") {
			a = `"` + a + `"`
		}
		out[i] = a
	}
	return strings.Join(out, " ")
}

// countJumps counts FORWARD's rules that jump to weft's chain.
func (x *Iptables) countJumps() (int, error) {
	rules, err := x.ipt.List("filter", "FORWARD")
	if err != nil {
		return 0, x.wrap("list FORWARD", err)
	}
	return len(slices.DeleteFunc(rules, func(r string) bool { return !strings.HasSuffix(r, "-j "+IptablesChain) })), nil
}

func (x *Iptables) wrap(what string, err error) error {
	return fmt.Errorf("%s: %s in table filter: %w", x.b.Tool, what, err)
}
