package tunnel

import "github.com/weft-net/weft/dataplane"

// The forwarder is the userspace provider of the data-plane seam.
var _ dataplane.Plane = (*Forwarder)(nil)

// Report implements dataplane.Plane: counters with every drop reason
// named, the peers' counters when asked, and the offloads the device and
// socket report (where they can).
func (f *Forwarder) Report(withPeers bool) dataplane.Report {
	t := f.peers.Load()
	c := f.Counters()
	r := dataplane.Report{
		Peers: t.Len(),
		Counters: dataplane.Counters{TxPackets: c.TxPackets, TxBytes: c.TxBytes,
			RxPackets: c.RxPackets, RxBytes: c.RxBytes, Drops: make(map[string]uint64, NumDropReasons-1)},
	}
	for reason := DropReason(1); reason < NumDropReasons; reason++ {
		r.Counters.Drops[reason.String()] = c.Drops[reason]
	}
	if withPeers {
		r.PeerTraffic = t.Traffic()
	}
	if o, ok := f.dev.(OffloadReporter); ok {
		s := o.Offload()
		r.Offloads.TUNVnetHdr, r.Offloads.TUNUSO, r.Offloads.TUNCoalescing = s.VnetHdr, s.USO, s.Coalescing
		r.Offloads.Fallbacks = s.Fallbacks
	}
	if o, ok := f.conn.(UDPOffloader); ok {
		s := o.UDPOffload()
		r.Offloads.UDPGSO, r.Offloads.UDPGRO = s.GSO, s.GRO
		r.Offloads.Fallbacks += s.Fallbacks
	}
	return r
}
