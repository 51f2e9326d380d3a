// Package status is what a running weft says of itself: /healthz,
// /readyz, /status (JSON) and /metrics (Prometheus), served on the healthz
// listener and on the status socket. It owns the Status document, which
// `weft status` and the lab decode, and Health, the state the node records
// into as it runs. It reads the data planes only through their reports.
package status

import (
	"net/netip"
	"strings"
	"time"

	"github.com/weft-net/weft/dataplane"
)

// The data paths a packet can take; the keys of Counters.Paths and the
// values of Peer.Path and of the path label on /metrics.
const (
	PathUserspace = "userspace" // weft's process: TUN and UDP socket
	PathKernel    = "kernel"    // the eBPF fast path
)

// Status is the /status document.
type Status struct {
	Version string `json:"version"`
	Ready   bool   `json:"ready"`
	Lease   *Lease `json:"lease,omitempty"`
	Renewal *Renew `json:"renewal,omitempty"`
	// Store is the lease store: StoreEtcd or StoreKubernetes. Etcd's Up
	// is the store's connection, whichever it is.
	Store       string      `json:"store"`
	Etcd        Etcd        `json:"etcd"`
	Kubernetes  *Kubernetes `json:"kubernetes,omitempty"`
	Device      string      `json:"device,omitempty"`
	MTU         int         `json:"mtu,omitempty"`
	SourceCheck string      `json:"sourceCheck,omitempty"`
	Offload     bool        `json:"offload"`
	Offloads    Offloads    `json:"offloads"`
	PeerTable   PeerTable   `json:"peerTable"`
	Firewall    *Firewall   `json:"firewall,omitempty"`
	// FastPath is nil until the node says how it set the fast path up.
	FastPath *FastPath `json:"fastPath,omitempty"`
	// Kernel is nil until the node has probed the kernel's features.
	Kernel *Kernel `json:"kernel,omitempty"`
	// Peers is left out by /status?peers=0: at thousands of nodes it is
	// most of the document.
	Peers    []Peer   `json:"peers,omitzero"`
	Counters Counters `json:"counters"`
}

// PeerTable describes the data path's peer table and its updates.
type PeerTable struct {
	Peers int `json:"peers"`
	// Revision is the etcd revision of the newest lease change in the
	// table: a lease written at revision R is in use once Revision ≥ R.
	Revision          int64   `json:"revision"`
	Updates           uint64  `json:"updates"`
	UpdateSeconds     float64 `json:"updateSeconds"` // total time spent updating
	LastUpdateSeconds float64 `json:"lastUpdateSeconds"`
	MaxUpdateSeconds  float64 `json:"maxUpdateSeconds"`
}

// Firewall is the state of weft's nftables rules (-ip-masq,
// -iptables-forward-rules); absent with both flags off.
type Firewall struct {
	Masquerade   bool   `json:"masquerade"`
	ForwardRules bool   `json:"forwardRules"`
	InPlace      bool   `json:"inPlace"` // the last apply or check succeeded
	LastError    string `json:"lastError,omitempty"`
	// ForwardDrops names other tables' forward chains whose policy drops
	// what weft's accepts let through (see firewall.ForwardDrops).
	ForwardDrops []string `json:"forwardDrops,omitzero"`
	// Joined names iptables' FORWARD chains that drop by default and hold
	// weft's accepts for the network ("iptables-nft filter FORWARD").
	Joined []string `json:"joined,omitzero"`
}

// FastPath is the state of the kernel (eBPF) fast path.
type FastPath struct {
	Mode    string `json:"mode"` // the -fast-path flag: auto, on or off
	Running bool   `json:"running"`
	Attach  string `json:"attach,omitempty"` // "tcx" or "clsact" while running
	// Reason says why it does not run: auto fell back, or it is off.
	Reason string `json:"reason,omitempty"`
	// SuperPackets says which path carries TCP super-packets while the fast
	// path runs: "kernel", or "userspace (why)".
	SuperPackets string `json:"superPackets,omitempty"`
}

// Kernel is the running kernel and the features of it weft looked for:
// the floor an operator reads off a node.
type Kernel struct {
	Release  string          `json:"release"` // uname -r
	Features []KernelFeature `json:"features"`
}

// KernelFeature is one kernel feature weft uses where the kernel has it.
type KernelFeature struct {
	Name     string `json:"name"`  // "tcx", "bpf_fib_lookup", "udp_gso", ...
	Since    string `json:"since"` // the first mainline release that has it
	Detected bool   `json:"detected"`
	// Detail starts with "unknown" where the probe could not tell
	// ("unknown (needs CAP_BPF)"); else it may say how weft uses the
	// feature ("in use") or why not.
	Detail  string `json:"detail,omitempty"`
	Without string `json:"without"` // what weft does without it
}

// Unknown reports whether the probe could not tell: not a "no".
func (f KernelFeature) Unknown() bool { return !f.Detected && strings.HasPrefix(f.Detail, "unknown") }

// Offloads says which kernel offloads the data path uses, and how often
// the kernel refused one (weft then fell back to the plain path).
type Offloads struct {
	TUNVnetHdr    bool   `json:"tunVnetHdr"`
	TUNUSO        bool   `json:"tunUSO"`
	TUNCoalescing bool   `json:"tunCoalescing"`
	UDPGSO        bool   `json:"udpGSO"`
	UDPGRO        bool   `json:"udpGRO"`
	Fallbacks     uint64 `json:"fallbacks"`
}

// Etcd is the connection to etcd and what the node did over it.
type Etcd struct {
	Up            bool              `json:"up"`
	Endpoints     string            `json:"endpoints"`
	Renewals      map[string]uint64 `json:"renewals"`
	WatchRestarts map[string]uint64 `json:"watchRestarts"`
	// Requests counts what this daemon sent etcd, by gRPC method.
	Requests map[string]uint64 `json:"requests,omitempty"`
}

// The lease stores.
const (
	StoreEtcd       = "etcd"
	StoreKubernetes = "kubernetes"
)

// Kubernetes is the Kubernetes API as the lease store (-kube-subnet-mgr):
// the leases are the Nodes.
type Kubernetes struct {
	Up        bool   `json:"up"`
	Server    string `json:"server"`
	Node      string `json:"node"`   // this node's Node
	Synced    bool   `json:"synced"` // the first list of Nodes is in
	LastError string `json:"lastError,omitempty"`
	Nodes     int    `json:"nodes"`  // Nodes seen
	Leases    int    `json:"leases"` // Nodes in the lease table, this one's too
	// Skipped counts the Nodes that lease through the API but are not
	// routed to, by reason (bad_public_ip, backend_type, ...).
	Skipped map[string]int `json:"skipped"`
}

// Lease is this node's own lease.
type Lease struct {
	Subnet     netip.Prefix `json:"subnet"`
	PublicIP   netip.Addr   `json:"publicIP"`
	Expiration time.Time    `json:"expiration"`
	Reserved   bool         `json:"reserved"`
}

// Renew is present while lease renewals fail.
type Renew struct {
	FailingSince time.Time `json:"failingSince"`
	LastError    string    `json:"lastError"`
}

// Peer is one peer in the data path's table, with its counters.
type Peer struct {
	Subnet    netip.Prefix `json:"subnet"`
	PublicIP  netip.Addr   `json:"publicIP"`
	TxPackets uint64       `json:"txPackets"`
	TxBytes   uint64       `json:"txBytes"`
	RxPackets uint64       `json:"rxPackets"`
	RxBytes   uint64       `json:"rxBytes"`
	// Path is the path this node's packets to the peer take (PathKernel or
	// PathUserspace). The counters are the userspace path's only: the
	// kernel has no per-peer counters.
	Path string `json:"path,omitempty"`
}

// Counters are the data path's traffic counters. The totals are the sum
// over Paths, so readers from before the fast path keep working.
type Counters struct {
	Traffic                   // the sum over paths (its fields inline in JSON)
	Drops   map[string]uint64 `json:"drops"`
	// Paths splits the totals by the path that carried the packets.
	Paths map[string]Traffic `json:"paths,omitempty"`
	// Handoffs counts packets the kernel fast path left to the userspace
	// path, by reason (absent without the fast path).
	Handoffs map[string]uint64 `json:"handoffs,omitempty"`
}

// Traffic is packets and bytes each way: a path's, or all of them.
type Traffic struct {
	TxPackets uint64 `json:"txPackets"`
	TxBytes   uint64 `json:"txBytes"`
	RxPackets uint64 `json:"rxPackets"`
	RxBytes   uint64 `json:"rxBytes"`
}

// plus is t with a plane's counters added.
func (t Traffic) plus(c dataplane.Counters) Traffic {
	return Traffic{TxPackets: t.TxPackets + c.TxPackets, TxBytes: t.TxBytes + c.TxBytes,
		RxPackets: t.RxPackets + c.RxPackets, RxBytes: t.RxBytes + c.RxBytes}
}

// DropTotal sums every drop reason.
func (c Counters) DropTotal() uint64 {
	var t uint64
	for _, v := range c.Drops {
		t += v
	}
	return t
}

// HasPeer reports whether the status lists subnet as a peer.
func (s *Status) HasPeer(subnet netip.Prefix) bool {
	for _, p := range s.Peers {
		if p.Subnet == subnet {
			return true
		}
	}
	return false
}

// HasPeerAt reports whether the status lists subnet as a peer at addr.
func (s *Status) HasPeerAt(subnet netip.Prefix, addr netip.Addr) bool {
	for _, p := range s.Peers {
		if p.Subnet == subnet && p.PublicIP == addr {
			return true
		}
	}
	return false
}
