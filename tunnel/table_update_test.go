package tunnel

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"testing"
)

// benchPeers returns n peers with /29 subnets from 198.19.0.0/16 and
// addresses in 198.18.0.0/16.
func benchPeers(n int) []Peer {
	peers := make([]Peer, n)
	for i := range peers {
		s := uint32(198)<<24 | uint32(19)<<16 | uint32(i)<<3
		peers[i] = Peer{
			Subnet: netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(s >> 24), byte(s >> 16), byte(s >> 8), byte(s)}), 29),
			Addr:   netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}),
		}
	}
	return peers
}

// BenchmarkTableUpdate: one lease changes (its address flips between two
// values) in a table of n peers, by a full rebuild and by Apply.
func BenchmarkTableUpdate(b *testing.B) {
	local := netip.MustParsePrefix("198.19.255.0/24")
	for _, n := range []int{100, 1000, 5000} {
		peers := benchPeers(n)
		moved := peers[n/2]
		moved.Addr = netip.MustParseAddr("198.18.255.254")
		b.Run(fmt.Sprintf("peers=%d/op=rebuild", n), func(b *testing.B) {
			sets := [2][]Peer{slices.Clone(peers), slices.Clone(peers)}
			sets[1][n/2] = moved
			t := NewTable(local, peers)
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				i ^= 1
				t = t.Next(local, sets[i])
			}
		})
		b.Run(fmt.Sprintf("peers=%d/op=apply", n), func(b *testing.B) {
			changes := [2][]PeerChange{{{Peer: peers[n/2]}}, {{Peer: moved}}}
			t := NewTable(local, peers)
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				i ^= 1
				t = t.Apply(local, changes[i])
			}
		})
	}
}

// updateModel is the obvious peer set that Apply must agree with: a map
// from masked subnet to address, plus the counts each peer should show.
type updateModel struct {
	local netip.Prefix // masked IPv4, or invalid
	peers map[netip.Prefix]netip.Addr
	tx    map[netip.Prefix]uint64
}

func modelLocal(p netip.Prefix) netip.Prefix {
	if !p.IsValid() || !p.Addr().Is4() {
		return netip.Prefix{}
	}
	return p.Masked()
}

// apply makes changes as Next would see them: t's peers, then the changes
// in order, then the local subnet dropped. Counters stay only where the
// subnet kept its address.
func (m *updateModel) apply(local netip.Prefix, changes []PeerChange) {
	next := maps.Clone(m.peers)
	for _, c := range changes {
		if !c.Subnet.IsValid() || !c.Subnet.Addr().Is4() {
			continue
		}
		s := c.Subnet.Masked()
		if c.Remove {
			delete(next, s)
		} else if a := c.Addr.Unmap(); a.Is4() && s != modelLocal(local) {
			next[s] = a
		}
	}
	m.local = modelLocal(local)
	delete(next, m.local)
	tx := map[netip.Prefix]uint64{}
	for s, a := range next {
		if old, ok := m.peers[s]; ok && old == a {
			tx[s] = m.tx[s]
		}
	}
	m.peers, m.tx = next, tx
}

func (m *updateModel) list() []Peer {
	var out []Peer
	for s, a := range m.peers {
		out = append(out, Peer{Subnet: s, Addr: a})
	}
	return out
}

// TestTableApplyMatchesRebuild applies random changes (overlapping prefix
// lengths, duplicates, unmasked, non-IPv4 and local subnets, the local
// subnet itself changing now and then) and checks each result against
// NewTable on the model's peers, the counters against the model, and that
// the previous table did not change.
func TestTableApplyMatchesRebuild(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	lengths := []int{16, 24, 24, 28, 29, 29, 29}
	var subnets []netip.Prefix
	for range 60 {
		a := [4]byte{198, 19, byte(rng.IntN(4)), byte(rng.IntN(256))}
		subnets = append(subnets, netip.PrefixFrom(netip.AddrFrom4(a), lengths[rng.IntN(len(lengths))]))
	}
	subnets = append(subnets,
		netip.MustParsePrefix("198.19.2.0/24"), netip.MustParsePrefix("198.19.1.16/28"), // the locals below
		netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("fd00::/64"),
		netip.MustParsePrefix("::ffff:198.19.9.0/120"), netip.Prefix{})
	addrs := []netip.Addr{
		netip.MustParseAddr("198.18.0.1"), netip.MustParseAddr("198.18.0.2"),
		netip.MustParseAddr("198.18.0.3"), netip.MustParseAddr("198.18.0.4"),
		netip.MustParseAddr("::ffff:198.18.0.5"), netip.MustParseAddr("fd00::1"), {},
	}
	locals := []netip.Prefix{
		netip.MustParsePrefix("198.19.2.0/24"), netip.MustParsePrefix("198.19.2.77/24"),
		netip.MustParsePrefix("198.19.1.16/28"), netip.MustParsePrefix("fd00::/64"), {},
	}
	pkt := make([]byte, 20)
	pkt[0] = 0x45
	var probes [][4]byte
	for range 300 {
		probes = append(probes, [4]byte{198, 18 + byte(rng.IntN(2)), byte(rng.IntN(5)), byte(rng.IntN(256))})
	}
	type view struct {
		peers []Peer
		found []netip.Addr
	}
	snapshot := func(tb *Table) view {
		v := view{peers: tb.Peers()}
		for _, p := range probes {
			a, _ := tb.Lookup(p)
			v.found = append(v.found, a)
		}
		return v
	}

	for seq := range 20 {
		m := &updateModel{local: modelLocal(locals[0]), peers: map[netip.Prefix]netip.Addr{}, tx: map[netip.Prefix]uint64{}}
		local := locals[0]
		var tb *Table
		if seq%2 == 1 { // start from a built table rather than nil
			tb = NewTable(local, nil)
		}
		for step := range 150 {
			if rng.IntN(20) == 0 {
				local = locals[rng.IntN(len(locals))]
			}
			changes := make([]PeerChange, 1+rng.IntN(4))
			for i := range changes {
				changes[i] = PeerChange{
					Peer:   Peer{Subnet: subnets[rng.IntN(len(subnets))], Addr: addrs[rng.IntN(len(addrs))]},
					Remove: rng.IntN(3) == 0,
				}
				if i > 0 && rng.IntN(4) == 0 { // the same subnet again
					changes[i].Subnet = changes[i-1].Subnet
				}
			}
			old := tb
			before := snapshot(old)
			tb = tb.Apply(local, changes)
			m.apply(local, changes)

			want := NewTable(local, m.list())
			where := fmt.Sprintf("seq %d step %d: Apply(%v, %v)", seq, step, local, changes)
			if got := snapshot(old); !reflect.DeepEqual(got, before) {
				t.Fatalf("%s changed the old table", where)
			}
			if got, w := tb.Peers(), want.Peers(); !slices.Equal(got, w) {
				t.Fatalf("%s: Peers = %v, want %v", where, got, w)
			}
			if tb.Len() != want.Len() || tb.Local() != want.Local() {
				t.Fatalf("%s: Len %d Local %v, want %d %v", where, tb.Len(), tb.Local(), want.Len(), want.Local())
			}
			for _, p := range probes {
				got, gotOK := tb.Lookup(p)
				w, wOK := want.Lookup(p)
				if got != w || gotOK != wOK {
					t.Fatalf("%s: Lookup(%v) = %v, %v; rebuild says %v, %v", where, p, got, gotOK, w, wOK)
				}
				// p as the source, to an address in or near the local subnet.
				copy(pkt[12:16], p[:])
				copy(pkt[16:20], []byte{198, 19, byte(1 + rng.IntN(2)), byte(rng.IntN(256))})
				outer := addrs[rng.IntN(len(addrs))]
				for _, check := range []SourceCheck{SourceStrict, SourceNAT, SourceOff} {
					if got, w := tb.Accept(outer, pkt, check), want.Accept(outer, pkt, check); got != w {
						t.Fatalf("%s: Accept(%v, %v) %v = %v, rebuild says %v", where, outer, pkt[12:20], check, got, w)
					}
				}
			}
			checkTraffic(t, where, tb, m)
			// What Next makes of the same peers must agree, counters and all.
			if got, w := tb.Traffic(), old.Next(local, m.list()).Traffic(); !slices.Equal(got, w) {
				t.Fatalf("%s: Traffic = %v, Next gives %v", where, got, w)
			}

			// Traffic for some peers, as the data path counts it.
			for _, p := range tb.Peers() {
				if rng.IntN(2) == 0 {
					n := uint64(1 + rng.IntN(9))
					tb.entry(p.Subnet).stats.TxPackets.Add(n)
					m.tx[p.Subnet] += n
				}
			}
		}
	}
}

func checkTraffic(t *testing.T, where string, tb *Table, m *updateModel) {
	t.Helper()
	got := tb.Traffic()
	if len(got) != len(m.peers) {
		t.Fatalf("%s: Traffic has %d peers, want %d", where, len(got), len(m.peers))
	}
	for i, pt := range got {
		if i > 0 && !(got[i-1].Subnet.Addr().Less(pt.Subnet.Addr()) ||
			got[i-1].Subnet.Addr() == pt.Subnet.Addr() && got[i-1].Subnet.Bits() < pt.Subnet.Bits()) {
			t.Fatalf("%s: Traffic not sorted: %v", where, got)
		}
		if m.peers[pt.Subnet] != pt.Addr || pt.TxPackets != m.tx[pt.Subnet] {
			t.Fatalf("%s: Traffic has %v with %d tx packets, want %v with %d", where,
				pt.Peer, pt.TxPackets, m.peers[pt.Subnet], m.tx[pt.Subnet])
		}
	}
}

// TestTableApplyCounters walks through the counter rules one by one.
func TestTableApplyCounters(t *testing.T) {
	local := netip.MustParsePrefix("198.19.0.0/24")
	sA, sB := netip.MustParsePrefix("198.19.1.0/24"), netip.MustParsePrefix("198.19.2.0/24")
	x, y := netip.MustParseAddr("198.18.0.1"), netip.MustParseAddr("198.18.0.2")
	tb := NewTable(local, []Peer{{Subnet: sA, Addr: x}, {Subnet: sB, Addr: x}})
	bump := func() { tb.entry(sA).stats.RxPackets.Add(1) }
	rx := func() uint64 { return tb.Traffic()[0].RxPackets }
	steps := []struct {
		what    string
		changes []PeerChange
		want    uint64
	}{
		{"same address again", []PeerChange{{Peer: Peer{Subnet: sA, Addr: x}}}, 1},
		{"same address, mapped, unmasked", []PeerChange{{Peer: Peer{Subnet: netip.MustParsePrefix("198.19.1.9/24"), Addr: netip.AddrFrom16(x.As16())}}}, 2},
		{"another peer changes", []PeerChange{{Peer: Peer{Subnet: sB, Addr: y}}}, 3},
		{"absent subnet removed", []PeerChange{{Peer: Peer{Subnet: netip.MustParsePrefix("198.19.9.0/24")}, Remove: true}}, 4},
		{"away and back in one Apply", []PeerChange{{Peer: Peer{Subnet: sA, Addr: y}}, {Peer: Peer{Subnet: sA, Addr: x}}}, 5},
		{"removed and added back in one Apply", []PeerChange{{Peer: Peer{Subnet: sA}, Remove: true}, {Peer: Peer{Subnet: sA, Addr: x}}}, 6},
		{"IPv6 address: skipped", []PeerChange{{Peer: Peer{Subnet: sA, Addr: netip.MustParseAddr("fd00::1")}}}, 7},
		{"new address", []PeerChange{{Peer: Peer{Subnet: sA, Addr: y}}}, 0},
	}
	for _, s := range steps {
		bump()
		tb = tb.Apply(local, s.changes)
		if got := rx(); got != s.want {
			t.Errorf("%s: %d rx packets, want %d", s.what, got, s.want)
		}
	}
	bump()
	tb = tb.Apply(local, []PeerChange{{Peer: Peer{Subnet: sA}, Remove: true}})
	tb = tb.Apply(local, []PeerChange{{Peer: Peer{Subnet: sA, Addr: y}}})
	if got := rx(); got != 0 {
		t.Errorf("removed and added back later: %d rx packets, want 0", got)
	}
	// A new local subnet rebuilds, keeping counters all the same.
	bump()
	tb = tb.Apply(netip.MustParsePrefix("198.19.3.0/24"), []PeerChange{{Peer: Peer{Subnet: local, Addr: x}}})
	if got := tb.Traffic(); len(got) != 3 || got[1].Subnet != sA || got[1].RxPackets != 1 {
		t.Errorf("after the local subnet changed: %+v", got)
	}
}

// TestTableApplySharesUntouched: Apply copies only the levels it changes;
// the others stay shared with the old table.
func TestTableApplySharesUntouched(t *testing.T) {
	local := netip.MustParsePrefix("198.19.255.0/24")
	peers := append(benchPeers(100), Peer{Subnet: netip.MustParsePrefix("198.19.0.0/16"), Addr: netip.MustParseAddr("198.18.1.1")})
	old := NewTable(local, peers)
	tb := old.Apply(local, []PeerChange{{Peer: Peer{Subnet: peers[5].Subnet, Addr: netip.MustParseAddr("198.18.2.2")}}})
	if len(old.levels) != 2 || len(tb.levels) != 2 {
		t.Fatalf("levels: %d and %d, want 2", len(old.levels), len(tb.levels))
	}
	ptr := func(m map[uint32]*peerEntry) uintptr { return reflect.ValueOf(m).Pointer() }
	if ptr(tb.levels[0].peers) == ptr(old.levels[0].peers) {
		t.Error("the changed /29 level is shared with the old table")
	}
	if ptr(tb.levels[1].peers) != ptr(old.levels[1].peers) {
		t.Error("the untouched /16 level was copied")
	}
	if same := tb.Apply(local, []PeerChange{{Peer: Peer{Subnet: peers[7].Subnet, Addr: netip.AddrFrom16(peers[7].Addr.As16())}}}); ptr(same.levels[0].peers) != ptr(tb.levels[0].peers) {
		t.Error("a change to what the peer already was copied its level")
	}
	if tb2 := tb.Apply(local, []PeerChange{{Peer: peers[5]}, {Peer: Peer{Subnet: peers[100].Subnet}, Remove: true}}); len(tb2.levels) != 1 || tb2.Len() != 100 {
		t.Errorf("emptied level not dropped: %d levels, %d peers", len(tb2.levels), tb2.Len())
	}
	if len(tb.levels) != 2 || tb.Len() != 101 {
		t.Errorf("Apply changed its input: %d levels, %d peers", len(tb.levels), tb.Len())
	}
}

// TestTableApplyAllocs: one change to a 5,000-peer table allocates a map
// copy and a few small objects, where building the table allocates at
// least one object per peer.
func TestTableApplyAllocs(t *testing.T) {
	local := netip.MustParsePrefix("198.19.255.0/24")
	peers := benchPeers(5000)
	moved := Peer{Subnet: peers[2500].Subnet, Addr: netip.MustParseAddr("198.18.255.254")}
	changes := [2][]PeerChange{{{Peer: peers[2500]}}, {{Peer: moved}}}
	tb := NewTable(local, peers)
	i := 0
	allocs := testing.AllocsPerRun(50, func() {
		i ^= 1
		tb = tb.Apply(local, changes[i])
	})
	if allocs >= 50 {
		t.Errorf("Apply of one change allocates %.0f objects; want < 50", allocs)
	}
	if build := testing.AllocsPerRun(2, func() { NewTable(local, peers) }); build < 5000 {
		t.Errorf("NewTable allocates %.0f objects; the bound above means nothing", build)
	}
}

// TestForwarderApplyPeers runs lookups and counting, as the data path
// does, while the control plane applies changes: with -race this checks
// that Apply never writes to a map a published table uses.
func TestForwarderApplyPeers(t *testing.T) {
	local := netip.MustParsePrefix("198.19.255.0/24")
	peers := benchPeers(500)
	f := &Forwarder{}
	f.UpdatePeers(local, peers)
	done := make(chan struct{})
	var lookups int
	go func() {
		defer close(done)
		for i := 0; ; i++ {
			tb := f.peers.Load()
			if tb.Len() == 0 {
				return
			}
			if e := tb.lookup(peers[i%len(peers)].Subnet.Addr().As4()); e != nil {
				e.stats.TxPackets.Add(1)
			}
			lookups++
		}
	}()
	rng := rand.New(rand.NewPCG(5, 6))
	for range 2000 {
		p := peers[rng.IntN(len(peers))]
		if rng.IntN(2) == 0 {
			p.Addr = netip.MustParseAddr("198.18.255.1")
		}
		f.ApplyPeers(local, []PeerChange{{Peer: p}, {Peer: Peer{Subnet: peers[rng.IntN(len(peers))].Subnet}, Remove: rng.IntN(4) == 0}})
	}
	var all []PeerChange
	for _, p := range f.peers.Load().Peers() {
		all = append(all, PeerChange{Peer: p, Remove: true})
	}
	f.ApplyPeers(local, all)
	<-done
	if got := f.PeerTraffic(); len(got) != 0 {
		t.Errorf("after removing every peer: %v", got)
	}
	t.Logf("%d lookups during the updates", lookups)
}
