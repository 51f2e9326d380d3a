package tunnel

import (
	"cmp"
	"encoding/binary"
	"net/netip"
	"slices"
)

// Peer is one remote node: packets for Subnet go to Addr (the lease's
// PublicIP) on the backend port.
type Peer struct {
	Subnet netip.Prefix
	Addr   netip.Addr
}

// Table maps overlay subnets to peers. It is immutable once built: the
// control plane builds a new one off the hot path and swaps it in with
// Forwarder.SetPeers. A nil *Table is valid and empty.
type Table struct {
	// levels holds one map per distinct prefix length, longest first, so
	// a lookup is one masked map probe per length. Flannel leases all share
	// SubnetLen, so in practice there is a single level.
	levels []tableLevel
	peers  []Peer
}

type tableLevel struct {
	bits  int
	mask  uint32
	peers map[uint32]netip.Addr
}

// NewTable builds a table from peers. Entries that are not IPv4 (subnet or
// address) are skipped. Subnets are masked; when two entries name the same
// subnet the later one wins.
func NewTable(peers []Peer) *Table {
	bySubnet := make(map[netip.Prefix]netip.Addr, len(peers))
	for _, p := range peers {
		addr := p.Addr.Unmap()
		if !p.Subnet.IsValid() || !p.Subnet.Addr().Is4() || !addr.Is4() {
			continue
		}
		bySubnet[p.Subnet.Masked()] = addr
	}

	t := &Table{peers: make([]Peer, 0, len(bySubnet))}
	levels := map[int]map[uint32]netip.Addr{}
	for subnet, addr := range bySubnet {
		t.peers = append(t.peers, Peer{Subnet: subnet, Addr: addr})
		bits := subnet.Bits()
		if levels[bits] == nil {
			levels[bits] = map[uint32]netip.Addr{}
		}
		levels[bits][addrKey(subnet.Addr().As4())] = addr
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
	if t == nil {
		return netip.Addr{}, false
	}
	key := addrKey(dst)
	for i := range t.levels {
		if addr, ok := t.levels[i].peers[key&t.levels[i].mask]; ok {
			return addr, true
		}
	}
	return netip.Addr{}, false
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
