// Package dataplane is the seam between the node, which owns the control
// plane (etcd, leases, routes, firewall, health), and the data planes that
// carry packets: the node hands every peer snapshot and every change to each
// plane through Plane, unaware of how a plane forwards. tunnel's Forwarder
// (userspace: TUN and UDP socket) is the first provider; a kernel provider
// sits behind the same interface. The model is Open vSwitch's datapath
// interface (lib/dpif-provider.h): one daemon, a kernel and a userspace
// provider, the daemon unaware which.
//
// The package holds only types, so that providers and the node share them
// without importing each other.
package dataplane

import (
	"context"
	"net/netip"
)

// Peer is one remote node: packets for Subnet go to Addr (the lease's
// PublicIP) on the backend port.
type Peer struct {
	Subnet netip.Prefix
	Addr   netip.Addr
	// KernelDecap: the peer decapsulates flannel's datagrams in its kernel
	// (its lease says so), so a kernel plane may leave the inner checksums
	// to offloads when it encapsulates toward it. The userspace plane, whose
	// datagrams are finished, ignores it.
	KernelDecap bool
}

// PeerChange adds or replaces (Remove false) or removes (Remove true; Addr
// is ignored) the peer for Subnet.
type PeerChange struct {
	Peer
	Remove bool
}

// Plane is one data plane as the node drives it.
//
// UpdatePeers and ApplyPeers are called by the control plane only, never
// concurrently with each other; a plane must not block the caller on its
// packets and must keep forwarding with the previous peers until the new
// ones are in place (no packet sees a half-built set).
type Plane interface {
	// UpdatePeers replaces the peer set with a full snapshot for the node
	// owning own (at start and on SIGHUP). Peers with the own subnet, or
	// that are not IPv4, are skipped.
	UpdatePeers(own netip.Prefix, peers []Peer)
	// ApplyPeers changes the peer set by one watch batch: the cost follows
	// the change, not the cluster's size.
	ApplyPeers(own netip.Prefix, changes []PeerChange)
	// Run forwards until ctx ends (then it releases what it holds and
	// returns nil) or the plane fails (it returns why). It is called once.
	Run(ctx context.Context) error
	// Report is the plane's state for /status and /metrics; withPeers adds
	// the per-peer counters, which cost in proportion to the cluster.
	Report(withPeers bool) Report
}

// Report is what a plane says of itself.
type Report struct {
	// Peers is the number of peers in the plane's table.
	Peers    int
	Counters Counters
	// PeerTraffic lists every peer with its counters, sorted by subnet
	// (only when asked for).
	PeerTraffic []PeerTraffic
	Offloads    Offloads
}

// Counters are a plane's traffic counters since it started.
type Counters struct {
	TxPackets, TxBytes uint64 // inner packets and bytes sent to peers
	RxPackets, RxBytes uint64 // inner packets and bytes delivered locally
	// Drops counts discarded packets by reason, with every reason the
	// plane knows present (zeros too), so a scrape sees each from the start.
	Drops map[string]uint64
	// Handoffs counts packets the plane left to another plane (the kernel
	// plane's to the userspace one), by reason, zeros too.
	Handoffs map[string]uint64
}

// PeerTraffic is a snapshot of one peer and its counters.
type PeerTraffic struct {
	Peer
	TxPackets, TxBytes, RxPackets, RxBytes uint64
}

// Offloads says which kernel offloads a plane uses, and how often the
// kernel refused one (the plane then fell back to the plain path).
type Offloads struct {
	TUNVnetHdr    bool
	TUNUSO        bool
	TUNCoalescing bool
	UDPGSO        bool
	UDPGRO        bool
	Fallbacks     uint64
}

// Any reports whether any offload is in use.
func (o Offloads) Any() bool { return o.TUNVnetHdr || o.UDPGSO || o.UDPGRO }

// Repairer is a plane that holds kernel state others may take away (hooks
// on devices): the node's route check calls Repair to put it back, as it
// re-applies the device's address and route.
type Repairer interface {
	// Repair restores what was taken and says what it did.
	Repair() (done []string, err error)
}
