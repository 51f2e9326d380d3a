package tunnel

import (
	"cmp"
	"encoding/binary"
	"net/netip"
	"slices"
	"sync/atomic"
)

// Peer is one remote node: packets for Subnet go to Addr (the lease's
// PublicIP) on the backend port.
type Peer struct {
	Subnet netip.Prefix
	Addr   netip.Addr
}

// Table is the data path's view of the cluster: this node's own subnet and
// the peers' subnets. It routes outgoing packets and decides which incoming
// ones to accept. It is immutable once built: the control plane builds a new
// one off the hot path and swaps it in with Forwarder.SetPeers. A nil
// *Table is valid and empty: it routes nothing and accepts nothing.
type Table struct {
	local     netip.Prefix // masked; invalid when unknown
	localKey  uint32
	localMask uint32

	// levels holds one map per distinct prefix length, longest first, so
	// a lookup is one masked map probe per length. Flannel leases all share
	// SubnetLen, so in practice there is a single level.
	levels []tableLevel
	peers  []Peer
	stats  map[netip.Prefix]*peerEntry
}

type tableLevel struct {
	bits  int
	mask  uint32
	peers map[uint32]*peerEntry
}

// peerEntry is one peer in a table: where to send, and its counters.
type peerEntry struct {
	addr   netip.Addr
	subnet netip.Prefix
	stats  *PeerStats
}

// PeerStats counts one peer's traffic. The data path adds with atomics (tx
// once per batch run, rx once per packet); a peer keeps its counters across
// table rebuilds for as long as its subnet and address stay the same.
type PeerStats struct {
	TxPackets, TxBytes, RxPackets, RxBytes atomic.Uint64
}

// PeerTraffic is a snapshot of one peer and its counters.
type PeerTraffic struct {
	Peer
	TxPackets, TxBytes, RxPackets, RxBytes uint64
}

// NewTable builds a table for a node that owns local and talks to peers.
// Peers that are not IPv4 (subnet or address), or are the local subnet, are
// skipped. Subnets are masked; when two entries name the same subnet the
// later one wins.
func NewTable(local netip.Prefix, peers []Peer) *Table {
	return (*Table)(nil).Next(local, peers)
}

// Next builds the table that follows t: like NewTable, but peers that are
// in t with the same subnet and address keep their traffic counters. The
// control plane calls it off the hot path; t is not changed.
func (t *Table) Next(local netip.Prefix, peers []Peer) *Table {
	prev := t
	local = local.Masked()
	bySubnet := make(map[netip.Prefix]netip.Addr, len(peers))
	for _, p := range peers {
		addr := p.Addr.Unmap()
		if !p.Subnet.IsValid() || !p.Subnet.Addr().Is4() || !addr.Is4() || p.Subnet.Masked() == local {
			continue
		}
		bySubnet[p.Subnet.Masked()] = addr
	}

	t = &Table{peers: make([]Peer, 0, len(bySubnet)), stats: make(map[netip.Prefix]*peerEntry, len(bySubnet))}
	if local.IsValid() && local.Addr().Is4() {
		t.local = local
		t.localKey = addrKey(local.Addr().As4())
		t.localMask = prefixMask(local.Bits())
	}
	levels := map[int]map[uint32]*peerEntry{}
	for subnet, addr := range bySubnet {
		t.peers = append(t.peers, Peer{Subnet: subnet, Addr: addr})
		e := &peerEntry{addr: addr, subnet: subnet, stats: &PeerStats{}}
		if old := prev.entry(subnet); old != nil && old.addr == addr {
			e.stats = old.stats
		}
		t.stats[subnet] = e
		bits := subnet.Bits()
		if levels[bits] == nil {
			levels[bits] = map[uint32]*peerEntry{}
		}
		levels[bits][addrKey(subnet.Addr().As4())] = e
	}
	slices.SortFunc(t.peers, func(a, b Peer) int {
		if c := a.Subnet.Addr().Compare(b.Subnet.Addr()); c != 0 {
			return c
		}
		return cmp.Compare(a.Subnet.Bits(), b.Subnet.Bits())
	})
	for bits, m := range levels {
		t.levels = append(t.levels, tableLevel{bits: bits, mask: prefixMask(bits), peers: m})
	}
	// Longest prefix first: a more specific subnet wins.
	slices.SortFunc(t.levels, func(a, b tableLevel) int { return cmp.Compare(b.bits, a.bits) })
	return t
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
	if t == nil {
		return nil
	}
	return t.stats[subnet]
}

// Traffic returns every peer with its counters, sorted by subnet.
func (t *Table) Traffic() []PeerTraffic {
	if t == nil {
		return nil
	}
	out := make([]PeerTraffic, 0, len(t.peers))
	for _, p := range t.peers {
		s := t.stats[p.Subnet].stats
		out = append(out, PeerTraffic{Peer: p, TxPackets: s.TxPackets.Load(), TxBytes: s.TxBytes.Load(),
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
	return len(t.peers)
}

// Peers returns a copy of the table's entries, sorted by subnet.
func (t *Table) Peers() []Peer {
	if t == nil {
		return nil
	}
	return slices.Clone(t.peers)
}

func addrKey(a [4]byte) uint32 { return binary.BigEndian.Uint32(a[:]) }

func prefixMask(bits int) uint32 {
	if bits == 0 {
		return 0
	}
	return ^uint32(0) << (32 - bits)
}
