package scale

import (
	"net/netip"
	"testing"

	"github.com/weft-net/weft/tunnel"
)

// tableMicro measures the data path's peer table at n peers, in process:
// one lease change applied incrementally (what the daemon does) and as a
// full rebuild (what it would cost otherwise), and one lookup.
func tableMicro(n int) (apply, rebuild, lookup Micro) {
	local := netip.MustParsePrefix("198.19.255.248/29")
	peers := make([]tunnel.Peer, n)
	dsts := make([][4]byte, n)
	for i := range peers {
		a := u32Addr(addrU32(netip.MustParseAddr("198.19.0.0")) + uint32(i)<<3)
		peers[i] = tunnel.Peer{Subnet: netip.PrefixFrom(a, SubnetLen), Addr: u32Addr(addrU32(netip.MustParseAddr("198.18.100.1")) + uint32(i))}
		dsts[i] = a.Next().As4()
	}
	moved := peers[n/2]
	moved.Addr = netip.MustParseAddr("198.18.255.254")
	other := append([]tunnel.Peer(nil), peers...)
	other[n/2] = moved

	measure := func(f func(b *testing.B)) Micro {
		r := testing.Benchmark(f)
		return Micro{NsPerOp: float64(r.T.Nanoseconds()) / float64(max(r.N, 1)), AllocsPerOp: r.AllocsPerOp()}
	}
	apply = measure(func(b *testing.B) {
		changes := [2][]tunnel.PeerChange{{{Peer: peers[n/2]}}, {{Peer: moved}}}
		t := tunnel.NewTable(local, peers)
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			t = t.Apply(local, changes[i&1])
		}
	})
	rebuild = measure(func(b *testing.B) {
		sets := [2][]tunnel.Peer{peers, other}
		t := tunnel.NewTable(local, peers)
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			t = t.Next(local, sets[i&1])
		}
	})
	lookup = measure(func(b *testing.B) {
		t := tunnel.NewTable(local, peers)
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			if _, ok := t.Lookup(dsts[i%n]); !ok {
				b.Fatalf("no peer for %v", dsts[i%n])
			}
		}
	})
	return apply, rebuild, lookup
}
