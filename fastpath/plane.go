package fastpath

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"

	"github.com/weft-net/weft/dataplane"
)

// Plane is the kernel provider of the data-plane seam: the node hands it
// the same peer snapshots and changes as the userspace forwarder, and it
// keeps the programs' peer map to match, by changes only (a snapshot is
// diffed against what the map holds). It runs beside the userspace plane,
// which forwards what the programs leave.
type Plane struct {
	progs  *Programs
	attach *Attachment
	log    *slog.Logger
	// Reattach, if set, attaches the programs again (in the devices'
	// namespace), for Repair.
	Reattach func(*Programs) (*Attachment, error)
	// amu guards attach and closed between Repair and Run's end.
	amu    sync.Mutex
	closed bool
	// held is what the peer map holds, by masked subnet: snapshots are
	// diffed against it, so the map changes by what changed. Written by
	// the control plane only (UpdatePeers and ApplyPeers never run
	// concurrently); mu guards it against Report.
	mu         sync.Mutex
	held       map[netip.Prefix]dataplane.Peer
	mapErrors  uint64 // map writes that failed: the entry is then stale
	lastMapErr string
}

var _ dataplane.Plane = (*Plane)(nil)

// NewPlane drives progs, attached as a. Run detaches and closes both.
func NewPlane(progs *Programs, a *Attachment, log *slog.Logger) *Plane {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Plane{progs: progs, attach: a, log: log, held: map[netip.Prefix]dataplane.Peer{}}
}

// admit is the peer as the map keys it, and whether the map takes it: IPv4
// subnet and address, not this node's subnet (whose packets must never
// arrive from outside: the source check rejects them).
func admit(own netip.Prefix, p dataplane.Peer) (dataplane.Peer, bool) {
	p.Subnet = p.Subnet.Masked()
	p.Addr = p.Addr.Unmap()
	ok := p.Subnet.IsValid() && p.Subnet.Addr().Is4() && p.Addr.Is4() && p.Subnet != own.Masked()
	return p, ok
}

// UpdatePeers implements dataplane.Plane.
func (pl *Plane) UpdatePeers(own netip.Prefix, peers []dataplane.Peer) {
	want := make(map[netip.Prefix]dataplane.Peer, len(peers))
	for _, p := range peers {
		if p, ok := admit(own, p); ok {
			want[p.Subnet] = p
		}
	}
	for s := range pl.held {
		if _, ok := want[s]; !ok {
			pl.remove(s)
		}
	}
	for _, p := range want {
		pl.set(p)
	}
}

// ApplyPeers implements dataplane.Plane.
func (pl *Plane) ApplyPeers(own netip.Prefix, changes []dataplane.PeerChange) {
	for _, c := range changes {
		p, ok := admit(own, c.Peer)
		switch {
		case c.Remove && p.Subnet.IsValid():
			pl.remove(p.Subnet)
		case ok:
			pl.set(p)
		case p.Subnet.IsValid():
			pl.remove(p.Subnet) // now unusable (an IPv6 address): not a peer of the kernel's
		}
	}
}

func (pl *Plane) set(p dataplane.Peer) {
	if pl.held[p.Subnet] == p {
		return
	}
	if err := pl.progs.SetPeer(p.Subnet, p.Addr, p.KernelDecap); err != nil {
		pl.mapFailed(err)
		return
	}
	pl.mu.Lock()
	pl.held[p.Subnet] = p
	pl.mu.Unlock()
}

func (pl *Plane) remove(s netip.Prefix) {
	if err := pl.progs.DeletePeer(s); err != nil {
		pl.mapFailed(err)
		return
	}
	pl.mu.Lock()
	delete(pl.held, s)
	pl.mu.Unlock()
}

// mapFailed counts a failed map write and logs it once per kind: a map
// that cannot be written (full, or the kernel out of memory) must not flood
// the journal at every lease change.
func (pl *Plane) mapFailed(err error) {
	pl.mapErrors++
	if msg := err.Error(); msg != pl.lastMapErr {
		pl.lastMapErr = msg
		pl.log.Warn("kernel fast path: peer map write failed; that peer's packets take the userspace path or a stale entry", "err", err)
	}
}

// Repair attaches the programs again if they were taken off their hooks,
// saying so. It runs on the control plane's route check, never
// concurrently with Run's end.
func (pl *Plane) Repair() ([]string, error) {
	pl.amu.Lock()
	defer pl.amu.Unlock()
	if pl.attach == nil || pl.Reattach == nil || pl.closed {
		return nil, nil
	}
	ok, err := pl.attach.Intact()
	if err != nil || ok {
		return nil, err
	}
	derr := pl.attach.Detach() // what is left of the set
	a, err := pl.Reattach(pl.progs)
	if err != nil {
		return nil, errors.Join(fmt.Errorf("fastpath: re-attach: %w", err), derr)
	}
	pl.attach = a
	return []string{"re-attached the fast path's programs (" + string(a.Mode) + "), which were taken off their hooks"}, nil
}

// Run implements dataplane.Plane: the programs work on their own; at the
// end it detaches them and releases programs and maps.
func (pl *Plane) Run(ctx context.Context) error {
	<-ctx.Done()
	pl.amu.Lock()
	defer pl.amu.Unlock()
	pl.closed = true
	var err error
	if pl.attach != nil {
		err = pl.attach.Detach()
	}
	if cerr := pl.progs.Close(); err == nil {
		err = cerr
	}
	return err
}

// DropKernelError is the drop reason of packets the programs dropped
// because a helper failed (the kernel out of memory, mostly); everything
// else the programs do not take goes on to the userspace path, which
// counts its drops under its own reasons.
const DropKernelError = "kernel_error"

// Reasons the programs leave a packet to the userspace path.
const (
	// HandoffNoKernelPeer: sent to a peer that does not decapsulate in
	// its kernel, or to no peer (the userspace path counts it no_route).
	HandoffNoKernelPeer = "no_kernel_peer"
	// HandoffNextHop: the underlay's next hop is not resolved yet (or
	// forwarding is off): the userspace send resolves it.
	HandoffNextHop = "next_hop_unresolved"
	// HandoffIngressPolicy: a datagram to weft's port that is not one
	// whole, well-formed packet passing the ingress policy (a coalesced
	// UDP GRO packet is one too): the userspace path checks, splits or
	// drops it, counting its drops by reason.
	HandoffIngressPolicy = "ingress_policy"
	// HandoffSuperPacket: a TCP super-packet, left to the userspace
	// path's UDP GSO where the underlay cannot segment UDP tunnel packets
	// (Config.GSOToUserspace).
	HandoffSuperPacket = "super_packet"
)

// Report implements dataplane.Plane, from any goroutine. The programs keep
// no per-peer counters: with withPeers, PeerTraffic lists the peers whose
// packets the kernel encapsulates, with zero counters.
func (pl *Plane) Report(withPeers bool) dataplane.Report {
	r := dataplane.Report{Counters: dataplane.Counters{Drops: map[string]uint64{DropKernelError: 0}}}
	pl.mu.Lock()
	r.Peers = len(pl.held)
	if withPeers {
		for _, p := range pl.held {
			if p.KernelDecap {
				r.PeerTraffic = append(r.PeerTraffic, dataplane.PeerTraffic{Peer: p})
			}
		}
	}
	pl.mu.Unlock()
	slices.SortFunc(r.PeerTraffic, func(a, b dataplane.PeerTraffic) int { return a.Subnet.Addr().Compare(b.Subnet.Addr()) })
	c, err := pl.progs.Counters()
	if err != nil {
		return r
	}
	r.Counters.TxPackets, r.Counters.TxBytes, r.Counters.RxPackets, r.Counters.RxBytes = c.TxPackets, c.TxBytes, c.RxPackets, c.RxBytes
	r.Counters.Drops[DropKernelError] = c.Errors
	r.Counters.Handoffs = map[string]uint64{
		HandoffNoKernelPeer: c.PassNoPeer, HandoffNextHop: c.PassNoNeigh, HandoffIngressPolicy: c.PassCheck,
		HandoffSuperPacket: c.PassGSO,
	}
	return r
}
