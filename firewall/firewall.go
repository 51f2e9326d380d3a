// Package firewall keeps weft's nftables rules: flanneld's -ip-masq
// masquerading and -iptables-forward-rules FORWARD accepts, in a table of
// weft's own ("table ip weft") that nothing else writes and weft writes
// nothing outside of.
//
// The rules follow flanneld's iptables mode (its default), rule for rule:
//
//	chain postrouting (nat, hook postrouting, priority srcnat)
//	  meta mark & 0x4000 == 0x4000 return          kube-proxy's masquerade mark: no double NAT
//	  ip saddr SUBNET ip daddr NETWORK return      pod → overlay keeps its source
//	  ip saddr NETWORK ip daddr SUBNET return      overlay → local pod keeps its source
//	  ip saddr != NETWORK ip daddr SUBNET return   outside → local pod keeps its source
//	  ip saddr NETWORK ip daddr != 224.0.0.0/4 masquerade [fully-random]   pod → outside
//	  ip saddr != NETWORK ip daddr NETWORK masquerade [fully-random]       host → remote pod
//	chain forward (filter, hook forward, priority filter)
//	  ip saddr NETWORK accept
//	  ip daddr NETWORK accept
//
// flanneld's nftables mode differs in two places, both bugs there: it matches
// the mark exactly (0x4000) instead of the bit, and its fourth rule tests
// "saddr != SUBNET", which makes its last masquerade rule unreachable.
//
// nftables evaluates every base chain on a hook: an accept here does not
// override a drop in another table's forward chain (Docker's iptables FORWARD
// policy, for instance), unlike flanneld's iptables rules in that chain.
// ForwardDrops finds such chains, so that weft can say so instead of pods
// silently losing their cross-node traffic.
package firewall

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// Names of weft's table and chains.
const (
	TableName        = "weft"
	PostroutingChain = "postrouting"
	ForwardChain     = "forward"
)

// KubeProxyMark is the packet mark bit kube-proxy sets on traffic it will
// masquerade itself; flanneld leaves such traffic alone, and so do we.
const KubeProxyMark uint32 = 0x4000

// ErrUnavailable means the kernel lacks nf_tables (or a part these rules
// need: the nat chain type, masquerade).
var ErrUnavailable = errors.New("nftables not available")

// Rules is the desired state of weft's table.
type Rules struct {
	// Network is the overlay network (the config's Network).
	Network netip.Prefix
	// Subnet is this node's lease. Needed only for Masquerade.
	Subnet netip.Prefix
	// Masquerade installs flanneld's -ip-masq rules.
	Masquerade bool
	// FullyRandom masquerades with fully random source ports, as flanneld
	// does unless -ip-masq-fully-random-disable is given.
	FullyRandom bool
	// Forward installs flanneld's -iptables-forward-rules accepts.
	Forward bool
}

var table = &nftables.Table{Name: TableName, Family: nftables.TableFamilyIPv4}

// chainSpec is one chain of the desired table with its rules, in order.
type chainSpec struct {
	chain *nftables.Chain
	rules []*nftables.Rule
}

// Apply makes weft's table match r: it reads the table back and, if anything
// differs (missing, flushed, edited, extra chains, dormant), replaces the
// whole table in one atomic transaction, so there is no moment without the
// rules. Nothing is written when the table already matches, so Apply is
// cheap to call on a timer. With neither Masquerade nor Forward the table is
// removed. changed reports whether the kernel was written. Apply flushes
// conn's command queue: queue nothing else on it.
func Apply(conn *nftables.Conn, r Rules) (changed bool, err error) {
	want, err := r.desired()
	if err != nil {
		return false, err
	}
	if len(want) == 0 {
		return remove(conn)
	}
	if same, err := matches(conn, want); err == nil && same {
		return false, nil
	}
	// A read error is not final: the write below either repairs what could
	// not be read or fails with the error that matters.
	//
	// add + delete + add is the atomic replace idiom: the first add makes the
	// delete valid when the table is absent, and the kernel commits the
	// batch as one transaction.
	conn.AddTable(table)
	conn.DelTable(table)
	conn.AddTable(table)
	for _, c := range want {
		conn.AddChain(c.chain)
		for _, rule := range c.rules {
			conn.AddRule(rule)
		}
	}
	if err := conn.Flush(); err != nil {
		return false, explain(fmt.Errorf("write nftables table ip %s: %w", TableName, err))
	}
	return true, nil
}

// ForwardDrops lists the base chains outside weft's table that drop
// forwarded IPv4 packets by default: hook forward in an ip or inet table,
// with policy drop, or whose last rule drops or rejects whatever reaches it
// (firewalld's filter_FORWARD ends so). Overlay traffic forwarded through
// this node dies in each of them unless a rule there accepts it, whatever
// weft's own chain says. The common cases are a Docker host, where
// iptables-nft keeps Docker's FORWARD policy in "table ip filter", and
// firewalld. Chains are named as nft names them ("table ip filter chain
// FORWARD"). iptables-legacy chains are not nftables and do not show here
// (see LegacyForwardDrop).
func ForwardDrops(conn *nftables.Conn) ([]string, error) {
	chains, err := conn.ListChains()
	if err != nil {
		return nil, explain(fmt.Errorf("list nftables chains: %w", err))
	}
	var out []string
	for _, c := range chains {
		if c.Table == nil || c.Hooknum == nil || *c.Hooknum != *nftables.ChainHookForward {
			continue
		}
		var family string
		switch c.Table.Family {
		case nftables.TableFamilyIPv4:
			if c.Table.Name == TableName {
				continue // ours accepts; an edit there is repaired by Apply
			}
			family = "ip"
		case nftables.TableFamilyINet:
			family = "inet"
		default:
			continue // bridge and ip6 chains do not see forwarded IPv4
		}
		name := fmt.Sprintf("table %s %s chain %s", family, c.Table.Name, c.Name)
		if c.Policy != nil && *c.Policy == nftables.ChainPolicyDrop {
			out = append(out, name)
			continue
		}
		// Only base chains on the forward hook are read, a handful.
		rules, err := conn.GetRules(c.Table, c)
		if err != nil {
			return nil, explain(fmt.Errorf("read the rules of %s: %w", name, err))
		}
		if len(rules) > 0 && dropsAll(rules[len(rules)-1]) {
			out = append(out, name+" (its last rule drops all)")
		}
	}
	return out, nil
}

// dropsAll reports whether r drops or rejects every packet reaching it: no
// match before the verdict, only counting and logging.
func dropsAll(r *nftables.Rule) bool {
	for _, e := range r.Exprs {
		switch e := e.(type) {
		case *expr.Counter, *expr.Log:
		case *expr.Reject:
			return true
		case *expr.Verdict:
			return e.Kind == expr.VerdictDrop
		default:
			return false // a match, a limit, a jump: not every packet
		}
	}
	return false
}

// Remove deletes weft's table and everything in it. An absent table is not
// an error. Other tables are never touched.
func Remove(conn *nftables.Conn) error {
	_, err := remove(conn)
	return err
}

func remove(conn *nftables.Conn) (bool, error) {
	// Look first, so a node that never had the table sends no write (and a
	// kernel without nf_tables gets no transaction).
	t, err := findTable(conn)
	if err != nil {
		return false, err
	}
	if t == nil {
		return false, nil
	}
	conn.DelTable(table)
	if err := conn.Flush(); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return false, nil // deleted meanwhile
		}
		return false, explain(fmt.Errorf("delete nftables table ip %s: %w", TableName, err))
	}
	return true, nil
}

func findTable(conn *nftables.Conn) (*nftables.Table, error) {
	tables, err := conn.ListTablesOfFamily(nftables.TableFamilyIPv4)
	if err != nil {
		return nil, explain(fmt.Errorf("list nftables tables: %w", err))
	}
	for _, t := range tables {
		if t.Name == TableName {
			return t, nil
		}
	}
	return nil, nil
}

// matches reports whether the kernel's table is exactly want.
func matches(conn *nftables.Conn, want []chainSpec) (bool, error) {
	t, err := findTable(conn)
	if err != nil || t == nil {
		return false, err
	}
	// A dormant table's rules do nothing. Use counts chains, sets and
	// objects: anything beyond our chains was added by someone else.
	if t.Flags != 0 || bigEndian32(t.Use) != uint32(len(want)) {
		return false, nil
	}
	for _, w := range want {
		c, err := conn.ListChain(table, w.chain.Name)
		if err != nil {
			return false, fmt.Errorf("read chain %s: %w", w.chain.Name, err)
		}
		if !sameChain(c, w.chain) {
			return false, nil
		}
		rules, err := conn.GetRules(table, w.chain)
		if err != nil {
			return false, fmt.Errorf("read rules of chain %s: %w", w.chain.Name, err)
		}
		if len(rules) != len(w.rules) {
			return false, nil
		}
		for i, have := range rules {
			if !sameRule(have, w.rules[i]) {
				return false, nil
			}
		}
	}
	return true, nil
}

// bigEndian32 undoes nftables v0.3.0's table decoding, which reads the
// big-endian NFTA_TABLE_USE in native byte order.
func bigEndian32(v uint32) uint32 {
	return binary.BigEndian.Uint32(binary.NativeEndian.AppendUint32(nil, v))
}

func sameChain(have, want *nftables.Chain) bool {
	return have.Type == want.Type &&
		have.Hooknum != nil && *have.Hooknum == *want.Hooknum &&
		have.Priority != nil && *have.Priority == *want.Priority &&
		have.Policy != nil && *have.Policy == *want.Policy
}

// sameRule compares rules by their wire encoding, which is what the kernel
// executes; handles and positions differ and do not matter.
func sameRule(have, want *nftables.Rule) bool {
	if !bytes.Equal(have.UserData, want.UserData) || len(have.Exprs) != len(want.Exprs) {
		return false
	}
	for i := range want.Exprs {
		h, err1 := expr.Marshal(byte(table.Family), have.Exprs[i])
		w, err2 := expr.Marshal(byte(table.Family), want.Exprs[i])
		if err1 != nil || err2 != nil || !bytes.Equal(h, w) {
			return false
		}
	}
	return true
}

// desired builds the table r describes; empty when nothing is wanted.
func (r Rules) desired() ([]chainSpec, error) {
	if !r.Masquerade && !r.Forward {
		return nil, nil
	}
	if !r.Network.IsValid() || !r.Network.Addr().Is4() || r.Network != r.Network.Masked() {
		return nil, fmt.Errorf("firewall rules: network %v is not an IPv4 network prefix", r.Network)
	}
	var out []chainSpec
	if r.Masquerade {
		if !r.Subnet.IsValid() || !r.Subnet.Addr().Is4() || r.Subnet != r.Subnet.Masked() {
			return nil, fmt.Errorf("firewall rules: subnet %v is not an IPv4 subnet prefix", r.Subnet)
		}
		if !r.Network.Contains(r.Subnet.Addr()) || r.Subnet.Bits() < r.Network.Bits() {
			return nil, fmt.Errorf("firewall rules: subnet %v is not inside network %v", r.Subnet, r.Network)
		}
		out = append(out, r.masqChain())
	}
	if r.Forward {
		out = append(out, r.forwardChain())
	}
	return out, nil
}

var (
	multicast    = netip.MustParsePrefix("224.0.0.0/4")
	policyAccept = nftables.ChainPolicyAccept
)

func (r Rules) masqChain() chainSpec {
	c := &nftables.Chain{
		Name:     PostroutingChain,
		Table:    table,
		Type:     nftables.ChainTypeNAT,
		Hooknum:  nftables.ChainHookPostrouting,
		Priority: nftables.ChainPriorityNATSource,
		Policy:   &policyAccept,
	}
	masq := []expr.Any{&expr.Masq{FullyRandom: r.FullyRandom}}
	ret := []expr.Any{&expr.Verdict{Kind: expr.VerdictReturn}}
	const comment = "weft ip-masq"
	rules := [][]expr.Any{
		concat(markBitSet(KubeProxyMark), ret),
		concat(match(srcOff, r.Subnet, true), match(dstOff, r.Network, true), ret),
		concat(match(srcOff, r.Network, true), match(dstOff, r.Subnet, true), ret),
		concat(match(srcOff, r.Network, false), match(dstOff, r.Subnet, true), ret),
		concat(match(srcOff, r.Network, true), match(dstOff, multicast, false), masq),
		concat(match(srcOff, r.Network, false), match(dstOff, r.Network, true), masq),
	}
	return chainSpec{chain: c, rules: makeRules(c, comment, rules)}
}

func (r Rules) forwardChain() chainSpec {
	c := &nftables.Chain{
		Name:     ForwardChain,
		Table:    table,
		Type:     nftables.ChainTypeFilter,
		Hooknum:  nftables.ChainHookForward,
		Priority: nftables.ChainPriorityFilter,
		Policy:   &policyAccept,
	}
	accept := []expr.Any{&expr.Verdict{Kind: expr.VerdictAccept}}
	const comment = "weft forward"
	rules := [][]expr.Any{
		concat(match(srcOff, r.Network, true), accept),
		concat(match(dstOff, r.Network, true), accept),
	}
	return chainSpec{chain: c, rules: makeRules(c, comment, rules)}
}

func makeRules(c *nftables.Chain, comment string, exprs [][]expr.Any) []*nftables.Rule {
	// nft shows this as the rule's comment.
	ud := userdata.AppendString(nil, userdata.TypeComment, comment)
	out := make([]*nftables.Rule, len(exprs))
	for i, e := range exprs {
		out[i] = &nftables.Rule{Table: table, Chain: c, Exprs: e, UserData: ud}
	}
	return out
}

func concat(parts ...[]expr.Any) []expr.Any {
	var out []expr.Any
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

// IPv4 header offsets of the source and destination addresses.
const (
	srcOff = 12
	dstOff = 16
)

// match is "ip saddr|daddr [!=] prefix", encoded as nft encodes it: load the
// address, mask it unless the prefix is a single address, compare.
func match(off uint32, p netip.Prefix, eq bool) []expr.Any {
	out := []expr.Any{&expr.Payload{
		DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: 4,
	}}
	if p.Bits() < 32 {
		m := binary.BigEndian.AppendUint32(nil, ^uint32(0)<<(32-p.Bits()))
		out = append(out, &expr.Bitwise{
			SourceRegister: 1, DestRegister: 1, Len: 4, Mask: m, Xor: []byte{0, 0, 0, 0},
		})
	}
	op := expr.CmpOpEq
	if !eq {
		op = expr.CmpOpNeq
	}
	a := p.Addr().As4()
	return append(out, &expr.Cmp{Op: op, Register: 1, Data: a[:]})
}

// markBitSet is "meta mark & bit == bit". The mark is a host-order value.
func markBitSet(bit uint32) []expr.Any {
	b := binary.NativeEndian.AppendUint32(nil, bit)
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: b, Xor: []byte{0, 0, 0, 0}},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: b},
	}
}

// explain turns the kernel's errnos into what an operator should do.
func explain(err error) error {
	switch {
	case errors.Is(err, unix.EPROTONOSUPPORT), errors.Is(err, unix.EOPNOTSUPP), errors.Is(err, unix.EAFNOSUPPORT):
		return fmt.Errorf("%w in this kernel: load nf_tables (modprobe nf_tables): %w", ErrUnavailable, err)
	case errors.Is(err, unix.ENOENT):
		// In our batch the table is created first, so a missing object can
		// only be a chain type or expression the kernel does not know.
		return fmt.Errorf("%w: the kernel lacks nftables NAT support (modprobe nft_chain_nat nft_masq): %w", ErrUnavailable, err)
	case errors.Is(err, unix.EPERM):
		return fmt.Errorf("%w (needs CAP_NET_ADMIN)", err)
	}
	return err
}
