package tunnel

import (
	"cmp"
	"encoding/binary"
	"maps"
	"net/netip"
	"slices"
	"sync/atomic"

	"github.com/weft-net/weft/dataplane"
)

// Peer is one remote node: packets for Subnet go to Addr (the lease's
// PublicIP) on the backend port. It is the data-plane seam's type, so the
// node hands the forwarder what it hands every plane.
type Peer = dataplane.Peer

// Table is the data path's view of the cluster: this node's own subnet and
// the peers' subnets. It routes outgoing packets and decides which incoming
// ones to accept. It is immutable once built: the control plane builds a new
// one off the hot path (Next, or Apply for a few changes) and swaps it in
// with Forwarder.SetPeers. A nil *Table is valid and empty: it routes
// nothing and accepts nothing.
type Table struct {
	local     netip.Prefix // masked; invalid when unknown
	localKey  uint32
	localMask uint32

	// levels holds one map per distinct prefix length, longest first, so
	// a lookup is one masked map probe per length. Flannel leases all share
	// SubnetLen, so in practice there is a single level. The levels are the
	// only record of the peers (no sorted list or index by subnet), so Apply
	// copies just the maps it changes; tables may share untouched maps.
	levels []tableLevel
	n      int // peers in all levels
}

type tableLevel struct {
	bits  int
	mask  uint32
	peers map[uint32]*peerEntry // by masked subnet address; never written once published
}

// peerEntry is one peer in a table: where to send, and its counters. It is
// immutable, so successive tables share the entries of unchanged peers.
type peerEntry struct {
	addr   netip.Addr
	subnet netip.Prefix
	stats  *PeerStats
}

// newEntry allocates an entry and its fresh counters together: one
// allocation per new peer.
func newEntry(subnet netip.Prefix, addr netip.Addr) *peerEntry {
	x := &struct {
		e peerEntry
		s PeerStats
	}{e: peerEntry{addr: addr, subnet: subnet}}
	x.e.stats = &x.s
	return &x.e
}

// PeerStats counts one peer's traffic. The data path adds with atomics (tx
// once per batch run, rx once per packet); a peer keeps its counters across
// table updates for as long as its subnet and address stay the same.
type PeerStats struct {
	TxPackets, TxBytes, RxPackets, RxBytes atomic.Uint64
}

// PeerTraffic is a snapshot of one peer and its counters.
type PeerTraffic = dataplane.PeerTraffic

// PeerChange adds or replaces (Remove false) or removes (Remove true; Addr
// is ignored) the peer for Subnet.
type PeerChange = dataplane.PeerChange

// NewTable builds a table for a node that owns local and talks to peers.
// Peers that are not IPv4 (subnet or address), or are the local subnet, are
// skipped. Subnets are masked; when two entries name the same subnet the
// later one wins.
func NewTable(local netip.Prefix, peers []Peer) *Table {
	return (*Table)(nil).Next(local, peers)
}

// Next builds the table that follows t: like NewTable, but peers that are
// in t with the same subnet and address keep their traffic counters. The
// control plane calls it off the hot path; t is not changed. It costs time
// and memory in proportion to len(peers); Apply is cheaper for a few changes.
func (t *Table) Next(local netip.Prefix, peers []Peer) *Table {
	nt := newTable(local)
	// Size each level up front: one pass to count, one to fill.
	var count [33]int
	for _, p := range peers {
		if subnet, _, ok := nt.admit(p); ok {
			count[subnet.Bits()]++
		}
	}
	for bits := 32; bits >= 0; bits-- { // longest prefix first: a more specific subnet wins
		if count[bits] > 0 {
			nt.levels = append(nt.levels, tableLevel{bits: bits, mask: prefixMask(bits), peers: make(map[uint32]*peerEntry, count[bits])})
		}
	}
	for _, p := range peers {
		subnet, addr, ok := nt.admit(p)
		if !ok {
			continue
		}
		m := nt.levels[nt.level(subnet.Bits())].peers
		key := addrKey(subnet.Addr().As4())
		if _, dup := m[key]; !dup {
			nt.n++
		}
		m[key] = t.carry(subnet, addr)
	}
	return nt
}

// Apply returns the table that follows t after changes, applied in order,
// for a node that owns local: the table Next would build from t's peers with
// the changes made. Changes that are not IPv4 (subnet or, to add, address)
// or name the local subnet are skipped, subnets are masked, and removing an
// absent subnet does nothing. As with Next, a peer keeps its counters when t
// has it with the same address. t is not changed.
//
// Apply copies only the per-prefix-length maps that the changes touch, so a
// single change costs one map copy rather than a rebuild. If local is not
// t's, it rebuilds (that happens only when the node's own lease changes).
func (t *Table) Apply(local netip.Prefix, changes []PeerChange) *Table {
	nt := newTable(local)
	if t == nil || nt.local != t.local {
		return t.nextApplied(local, changes)
	}
	nt.n = t.n
	nt.levels = slices.Clone(t.levels)
	var owned uint64 // bit b: nt's level for b bits is a map of its own, free to change
	for _, c := range changes {
		subnet, addr, ok := nt.admit(c.Peer)
		if !ok && !(c.Remove && subnet.IsValid()) {
			continue
		}
		bits := subnet.Bits()
		key := addrKey(subnet.Addr().As4())
		i := nt.level(bits)
		if c.Remove {
			if i < 0 {
				continue
			}
			if _, ok := nt.levels[i].peers[key]; !ok {
				continue
			}
			if nt.n--; len(nt.levels[i].peers) == 1 {
				nt.levels = slices.Delete(nt.levels, i, i+1)
				owned &^= 1 << bits
				continue
			}
		} else if i < 0 {
			// A new prefix length: insert its level in longest-first order.
			i = len(nt.levels)
			for j, l := range nt.levels {
				if l.bits < bits {
					i = j
					break
				}
			}
			nt.levels = slices.Insert(nt.levels, i, tableLevel{bits: bits, mask: prefixMask(bits), peers: map[uint32]*peerEntry{}})
			owned |= 1 << bits
		} else if e := nt.levels[i].peers[key]; e != nil && e.addr == addr {
			continue // no change: don't copy the map for it
		}
		if owned&(1<<bits) == 0 {
			// The map may be shared with t (and the data path): copy it.
			nt.levels[i].peers = maps.Clone(nt.levels[i].peers)
			owned |= 1 << bits
		}
		m := nt.levels[i].peers
		if c.Remove {
			delete(m, key)
			continue
		}
		if _, ok := m[key]; !ok {
			nt.n++
		}
		m[key] = t.carry(subnet, addr)
	}
	return nt
}

// nextApplied is Apply by a full rebuild: Next with t's peers after changes.
func (t *Table) nextApplied(local netip.Prefix, changes []PeerChange) *Table {
	set := make(map[netip.Prefix]netip.Addr, t.Len()+len(changes))
	for _, p := range t.Peers() {
		set[p.Subnet] = p.Addr
	}
	for _, c := range changes {
		// The old local subnet may become a peer, so filter only what
		// Next would skip anyway (it checks the new local subnet itself).
		subnet, addr := c.Subnet.Masked(), c.Addr.Unmap()
		switch {
		case !subnet.IsValid() || !subnet.Addr().Is4():
		case c.Remove:
			delete(set, subnet)
		case addr.Is4():
			set[subnet] = addr
		}
	}
	peers := make([]Peer, 0, len(set))
	for subnet, addr := range set {
		peers = append(peers, Peer{Subnet: subnet, Addr: addr})
	}
	return t.Next(local, peers)
}

// newTable returns an empty table for a node that owns local.
func newTable(local netip.Prefix) *Table {
	t := &Table{}
	if local.IsValid() && local.Addr().Is4() {
		t.local = local.Masked()
		t.localKey = addrKey(t.local.Addr().As4())
		t.localMask = prefixMask(t.local.Bits())
	}
	return t
}

// admit normalizes p for t: its masked subnet and unmapped address, and
// whether t may hold it (both IPv4, not the local subnet). The subnet is
// returned valid whenever it is IPv4, so removals can ignore the address.
func (t *Table) admit(p Peer) (netip.Prefix, netip.Addr, bool) {
	if !p.Subnet.IsValid() || !p.Subnet.Addr().Is4() {
		return netip.Prefix{}, netip.Addr{}, false
	}
	subnet, addr := p.Subnet.Masked(), p.Addr.Unmap()
	if subnet == t.local {
		return netip.Prefix{}, netip.Addr{}, false
	}
	return subnet, addr, addr.Is4()
}

// carry returns the entry for subnet at addr in a table that follows t:
// t's own entry, counters and all, if t has the same peer, else a new one.
func (t *Table) carry(subnet netip.Prefix, addr netip.Addr) *peerEntry {
	if old := t.entry(subnet); old != nil && old.addr == addr {
		return old
	}
	return newEntry(subnet, addr)
}

// level returns the index of the level for bits, or -1.
func (t *Table) level(bits int) int {
	for i := range t.levels {
		if t.levels[i].bits == bits {
			return i
		}
	}
	return -1
}

// Lookup returns the peer address for the IPv4 destination dst. It does
// not allocate.
func (t *Table) Lookup(dst [4]byte) (netip.Addr, bool) {
	if e := t.lookup(dst); e != nil {
		return e.addr, true
	}
	return netip.Addr{}, false
}

func (t *Table) lookup(dst [4]byte) *peerEntry {
	if t == nil {
		return nil
	}
	key := addrKey(dst)
	for i := range t.levels {
		if e, ok := t.levels[i].peers[key&t.levels[i].mask]; ok {
			return e
		}
	}
	return nil
}

func (t *Table) entry(subnet netip.Prefix) *peerEntry {
	if t == nil || !subnet.Addr().Is4() {
		return nil
	}
	i := t.level(subnet.Bits())
	if i < 0 {
		return nil
	}
	if e := t.levels[i].peers[addrKey(subnet.Addr().As4())]; e != nil && e.subnet == subnet {
		return e
	}
	return nil
}

// entries returns the table's entries sorted by subnet. Sorting here, not
// on every update, keeps updates cheap; only the control plane lists peers.
func (t *Table) entries() []*peerEntry {
	if t == nil {
		return nil
	}
	out := make([]*peerEntry, 0, t.n)
	for _, l := range t.levels {
		for _, e := range l.peers {
			out = append(out, e)
		}
	}
	slices.SortFunc(out, func(a, b *peerEntry) int {
		if c := a.subnet.Addr().Compare(b.subnet.Addr()); c != 0 {
			return c
		}
		return cmp.Compare(a.subnet.Bits(), b.subnet.Bits())
	})
	return out
}

// Traffic returns every peer with its counters, sorted by subnet.
func (t *Table) Traffic() []PeerTraffic {
	if t == nil {
		return nil
	}
	out := make([]PeerTraffic, 0, t.n)
	for _, e := range t.entries() {
		s := e.stats
		out = append(out, PeerTraffic{Peer: Peer{Subnet: e.subnet, Addr: e.addr}, TxPackets: s.TxPackets.Load(), TxBytes: s.TxBytes.Load(),
			RxPackets: s.RxPackets.Load(), RxBytes: s.RxBytes.Load()})
	}
	return out
}

// Local returns this node's subnet (invalid if the table has none).
func (t *Table) Local() netip.Prefix {
	if t == nil {
		return netip.Prefix{}
	}
	return t.local
}

// SourceCheck says how strictly incoming datagrams are matched to leases.
type SourceCheck uint8

const (
	// SourceStrict (the default): the inner source must lie in a lease's
	// subnet and the datagram must come from that lease's PublicIP.
	SourceStrict SourceCheck = iota
	// SourceNAT: the inner source must lie in a lease's subnet; the outer
	// source is not checked, for nodes behind NAT whose PublicIP is not the
	// address their datagrams arrive from.
	SourceNAT
	// SourceOff: no source check (flanneld's behaviour). The destination
	// is still checked.
	SourceOff
)

// ParseSourceCheck parses "strict", "nat" or "off".
func ParseSourceCheck(s string) (SourceCheck, bool) {
	switch s {
	case "strict":
		return SourceStrict, true
	case "nat":
		return SourceNAT, true
	case "off":
		return SourceOff, true
	}
	return 0, false
}

func (c SourceCheck) String() string {
	switch c {
	case SourceStrict:
		return "strict"
	case SourceNAT:
		return "nat"
	case SourceOff:
		return "off"
	}
	return "unknown"
}

// Accept decides whether an inner packet that arrived from outer may enter
// this node: its destination must be in the local subnet (which holds the
// device address too) and, per check, its source must belong to the peer
// that sent it. pkt must have passed ValidateIPv4. It does not allocate.
func (t *Table) Accept(outer netip.Addr, pkt []byte, check SourceCheck) DropReason {
	_, r := t.accept(outer, pkt, check)
	return r
}

// accept is Accept that also returns the sending peer's entry, when the
// check looked it up (not with SourceOff).
func (t *Table) accept(outer netip.Addr, pkt []byte, check SourceCheck) (*peerEntry, DropReason) {
	if t == nil || !t.local.IsValid() {
		return nil, DropNotLocal
	}
	if addrKey([4]byte(pkt[16:20]))&t.localMask != t.localKey {
		return nil, DropNotLocal
	}
	if check == SourceOff {
		return nil, DropNone
	}
	owner := t.lookup([4]byte(pkt[12:16]))
	if owner == nil {
		return nil, DropUnknownSource
	}
	if check == SourceStrict && owner.addr != outer.Unmap() {
		return nil, DropSpoofedSource
	}
	return owner, DropNone
}

// Len returns the number of peers.
func (t *Table) Len() int {
	if t == nil {
		return 0
	}
	return t.n
}

// Peers returns a copy of the table's entries, sorted by subnet.
func (t *Table) Peers() []Peer {
	if t == nil {
		return nil
	}
	out := make([]Peer, 0, t.n)
	for _, e := range t.entries() {
		out = append(out, Peer{Subnet: e.subnet, Addr: e.addr})
	}
	return out
}

func addrKey(a [4]byte) uint32 { return binary.BigEndian.Uint32(a[:]) }

func prefixMask(bits int) uint32 {
	if bits == 0 {
		return 0
	}
	return ^uint32(0) << (32 - bits)
}
