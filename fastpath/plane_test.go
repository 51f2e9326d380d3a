package fastpath

import (
	"encoding/binary"
	"maps"
	"net/netip"
	"slices"
	"testing"

	"github.com/weft-net/weft/dataplane"
	"github.com/weft-net/weft/internal/netnstest"
)

func loadForTest(tb testing.TB) *Programs {
	tb.Helper()
	netnstest.SkipUnlessRoot(tb) // maps and programs need CAP_BPF
	p, err := Load(Config{Local: netip.MustParseAddr("198.18.60.1"), Subnet: netip.MustParsePrefix("198.19.1.0/24"), Port: 8285})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { p.Close() })
	return p
}

// mapPeers reads the programs' peer map back.
func mapPeers(t *testing.T, p *Programs) map[netip.Prefix]dataplane.Peer {
	t.Helper()
	out := map[netip.Prefix]dataplane.Peer{}
	var k weftLpmKey
	var v weftPeer
	it := p.objs.Peers.Iterate()
	for it.Next(&k, &v) {
		var a, b [4]byte
		nativePut(a[:], k.Addr)
		nativePut(b[:], v.Addr)
		s := netip.PrefixFrom(netip.AddrFrom4(a), int(k.Prefixlen))
		out[s] = dataplane.Peer{Subnet: s, Addr: netip.AddrFrom4(b), KernelDecap: v.Flags&peerKernelDecap != 0}
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func peer(subnet, addr string, kernel bool) dataplane.Peer {
	return dataplane.Peer{Subnet: netip.MustParsePrefix(subnet), Addr: netip.MustParseAddr(addr), KernelDecap: kernel}
}

// The kernel plane's map follows snapshots and changes exactly as the
// userspace table does: own subnet and non-IPv4 peers left out, a snapshot
// removes what it no longer names, a change moves one entry.
func TestPlaneFeedsPeerMap(t *testing.T) {
	p := loadForTest(t)
	pl := NewPlane(p, nil, nil)
	own := netip.MustParsePrefix("198.19.1.0/24")
	a, b, c := peer("198.19.2.0/24", "198.18.60.2", true), peer("198.19.3.0/24", "198.18.60.3", false), peer("198.19.4.0/24", "198.18.60.4", true)
	check := func(what string, want ...dataplane.Peer) {
		t.Helper()
		w := map[netip.Prefix]dataplane.Peer{}
		for _, x := range want {
			w[x.Subnet] = x
		}
		if got := mapPeers(t, p); !maps.Equal(got, w) {
			t.Errorf("%s: map %v, want %v", what, got, w)
		}
		if r := pl.Report(false); r.Peers != len(want) {
			t.Errorf("%s: report %d peers, want %d", what, r.Peers, len(want))
		}
		// The report lists the peers the kernel encapsulates toward.
		var kernel []dataplane.PeerTraffic
		for _, x := range want {
			if x.KernelDecap {
				kernel = append(kernel, dataplane.PeerTraffic{Peer: x})
			}
		}
		if got := pl.Report(true).PeerTraffic; !slices.Equal(got, kernel) {
			t.Errorf("%s: report lists %v, want %v", what, got, kernel)
		}
	}
	pl.UpdatePeers(own, []dataplane.Peer{a, b, peer("198.19.1.0/24", "198.18.60.1", true), peer("198.19.5.0/24", "fd00::5", true)})
	check("snapshot", a, b)
	b2 := b
	b2.KernelDecap = true
	pl.ApplyPeers(own, []dataplane.PeerChange{{Peer: c}, {Peer: b2}, {Peer: dataplane.Peer{Subnet: a.Subnet}, Remove: true}})
	check("changes", b2, c)
	pl.UpdatePeers(own, []dataplane.Peer{c})
	check("smaller snapshot", c)
}

// One lease change at 5,000 peers, as the node applies a watch event.
func BenchmarkPlaneApplyOneAt5000(b *testing.B) {
	p := loadForTest(b)
	pl := NewPlane(p, nil, nil)
	own := netip.MustParsePrefix("198.19.0.0/29")
	peers := make([]dataplane.Peer, 5000)
	for i := range peers {
		peers[i] = dataplane.Peer{Subnet: netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 19, byte(i >> 5), byte(i&31) << 3}), 29),
			Addr: netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}), KernelDecap: true}
	}
	pl.UpdatePeers(own, peers[1:])
	if r := pl.Report(false); r.Peers != 4999 {
		b.Fatalf("%d peers in the map, want 4999", r.Peers)
	}
	b.ResetTimer()
	for i := range b.N {
		x := peers[1+i%4999]
		x.Addr = netip.AddrFrom4([4]byte{198, 18, 255, byte(i)})
		pl.ApplyPeers(own, []dataplane.PeerChange{{Peer: x}})
	}
	b.StopTimer()
	if pl.mapErrors != 0 {
		b.Fatalf("%d map writes failed", pl.mapErrors)
	}
}

// nativePut writes v as the kernel stores it: network-order bytes read as
// a native uint32 (see be32).
func nativePut(b []byte, v uint32) { binary.NativeEndian.PutUint32(b, v) }
