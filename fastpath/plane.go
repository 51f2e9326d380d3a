package fastpath

import (
	"context"
	"log/slog"
	"net/netip"
	"sync/atomic"

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
	// held is what the peer map holds, by masked subnet: snapshots are
	// diffed against it, so the map changes by what changed. Control plane
	// only (UpdatePeers and ApplyPeers never run concurrently).
	held       map[netip.Prefix]dataplane.Peer
	count      atomic.Int64 // len(held), for Report from any goroutine
	mapErrors  uint64       // map writes that failed: the entry is then stale
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
	pl.held[p.Subnet] = p
	pl.count.Store(int64(len(pl.held)))
}

func (pl *Plane) remove(s netip.Prefix) {
	if err := pl.progs.DeletePeer(s); err != nil {
		pl.mapFailed(err)
		return
	}
	delete(pl.held, s)
	pl.count.Store(int64(len(pl.held)))
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

// Run implements dataplane.Plane: the programs work on their own; at the
// end it detaches them and releases programs and maps.
func (pl *Plane) Run(ctx context.Context) error {
	<-ctx.Done()
	var err error
	if pl.attach != nil {
		err = pl.attach.Detach()
	}
	if cerr := pl.progs.Close(); err == nil {
		err = cerr
	}
	return err
}

// Report implements dataplane.Plane, from any goroutine. The programs keep
// no per-peer counters, and drop nothing themselves but on a helper's
// failure.
func (pl *Plane) Report(bool) dataplane.Report {
	r := dataplane.Report{Peers: int(pl.count.Load()), Counters: dataplane.Counters{Drops: map[string]uint64{}}}
	c, err := pl.progs.Counters()
	if err != nil {
		return r
	}
	r.Counters.TxPackets, r.Counters.TxBytes, r.Counters.RxPackets, r.Counters.RxBytes = c.TxPackets, c.TxBytes, c.RxPackets, c.RxBytes
	return r
}
