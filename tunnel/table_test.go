package tunnel

import (
	"math/rand/v2"
	"net/netip"
	"testing"
)

func TestTableLookup(t *testing.T) {
	peerA := netip.MustParseAddr("198.18.0.1")
	peerB := netip.MustParseAddr("198.18.0.2")
	peerC := netip.MustParseAddr("198.18.0.3")
	peerD := netip.MustParseAddr("198.18.0.4")
	table := NewTable(netip.Prefix{}, []Peer{
		{Subnet: netip.MustParsePrefix("198.19.1.0/24"), Addr: peerA},
		{Subnet: netip.MustParsePrefix("198.19.2.77/24"), Addr: peerB},                         // masked
		{Subnet: netip.MustParsePrefix("198.19.2.128/26"), Addr: peerC},                        // more specific
		{Subnet: netip.MustParsePrefix("198.19.0.0/16"), Addr: peerD},                          // less specific
		{Subnet: netip.MustParsePrefix("198.19.3.0/24"), Addr: peerA},                          // replaced below
		{Subnet: netip.MustParsePrefix("198.19.3.0/24"), Addr: peerB},                          // later wins
		{Subnet: netip.MustParsePrefix("fd00::/64"), Addr: peerA},                              // IPv6: skipped
		{Subnet: netip.MustParsePrefix("198.19.4.0/24"), Addr: netip.MustParseAddr("fd00::1")}, // skipped
		{Subnet: netip.Prefix{}, Addr: peerA},                                                  // invalid: skipped
		{Subnet: netip.MustParsePrefix("198.19.5.0/24"), Addr: netip.MustParseAddr("::ffff:198.18.0.5")},
	})
	tests := []struct {
		dst  string
		want netip.Addr
		ok   bool
	}{
		{"198.19.1.1", peerA, true},
		{"198.19.1.255", peerA, true},
		{"198.19.2.1", peerB, true},
		{"198.19.2.127", peerB, true},
		{"198.19.2.128", peerC, true},
		{"198.19.2.191", peerC, true},
		{"198.19.2.192", peerB, true},
		{"198.19.3.9", peerB, true},
		{"198.19.4.1", peerD, true},
		{"198.19.5.1", netip.MustParseAddr("198.18.0.5"), true},
		{"198.19.200.1", peerD, true},
		{"198.18.0.1", netip.Addr{}, false},
	}
	for _, tt := range tests {
		got, ok := table.Lookup(netip.MustParseAddr(tt.dst).As4())
		if got != tt.want || ok != tt.ok {
			t.Errorf("Lookup(%s) = %v, %v; want %v, %v", tt.dst, got, ok, tt.want, tt.ok)
		}
	}
	if table.Len() != 6 {
		t.Errorf("Len = %d, want 6", table.Len())
	}
	peers := table.Peers()
	if len(peers) != 6 || peers[0].Subnet != netip.MustParsePrefix("198.19.0.0/16") {
		t.Errorf("Peers = %v", peers)
	}
	peers[0].Addr = netip.Addr{}
	if table.Peers()[0].Addr != peerD {
		t.Error("Peers returned the table's own slice")
	}
}

func TestTableNilAndEmpty(t *testing.T) {
	for _, table := range []*Table{nil, NewTable(netip.Prefix{}, nil)} {
		if _, ok := table.Lookup([4]byte{198, 19, 1, 1}); ok {
			t.Error("empty table found a peer")
		}
		if table.Len() != 0 || len(table.Peers()) != 0 {
			t.Error("empty table has peers")
		}
	}
}

func TestTableDefaultRoute(t *testing.T) {
	gw := netip.MustParseAddr("198.18.0.9")
	table := NewTable(netip.Prefix{}, []Peer{{Subnet: netip.MustParsePrefix("0.0.0.0/0"), Addr: gw}})
	if got, ok := table.Lookup([4]byte{203, 0, 113, 1}); !ok || got != gw {
		t.Errorf("Lookup via /0 = %v, %v", got, ok)
	}
}

// TestTableMatchesLinearScan compares lookups with a longest-prefix scan
// over random tables mixing a few prefix lengths.
func TestTableMatchesLinearScan(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	lengths := []int{16, 22, 24, 26, 30, 32}
	for round := 0; round < 50; round++ {
		var peers []Peer
		for i := 0; i < 1+rng.IntN(200); i++ {
			bits := lengths[rng.IntN(len(lengths))]
			a := [4]byte{198, 19, byte(rng.IntN(8)), byte(rng.IntN(256))}
			peers = append(peers, Peer{
				Subnet: netip.PrefixFrom(netip.AddrFrom4(a), bits),
				Addr:   netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}),
			})
		}
		table := NewTable(netip.Prefix{}, peers)
		for i := 0; i < 500; i++ {
			dst := [4]byte{198, 19, byte(rng.IntN(9)), byte(rng.IntN(256))}
			want, wantOK := linearLookup(peers, dst)
			got, ok := table.Lookup(dst)
			if got != want || ok != wantOK {
				t.Fatalf("round %d: Lookup(%v) = %v, %v; scan says %v, %v",
					round, dst, got, ok, want, wantOK)
			}
		}
	}
}

// linearLookup is the obvious longest-prefix match, later entries winning
// over earlier ones for the same subnet.
func linearLookup(peers []Peer, dst [4]byte) (netip.Addr, bool) {
	addr := netip.AddrFrom4(dst)
	best, bestBits := netip.Addr{}, -1
	for _, p := range peers {
		if p.Subnet.Contains(addr) && p.Subnet.Bits() >= bestBits {
			best, bestBits = p.Addr, p.Subnet.Bits()
		}
	}
	return best, bestBits >= 0
}

func TestTableLookupAllocs(t *testing.T) {
	var peers []Peer
	for i := 0; i < 256; i++ {
		peers = append(peers, Peer{
			Subnet: netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 19, byte(i), 0}), 24),
			Addr:   netip.AddrFrom4([4]byte{198, 18, 0, byte(i)}),
		})
	}
	peers = append(peers, Peer{Subnet: netip.MustParsePrefix("198.19.7.64/26"), Addr: peers[0].Addr})
	table := NewTable(netip.Prefix{}, peers)
	var sink bool
	allocs := testing.AllocsPerRun(1000, func() {
		_, ok1 := table.Lookup([4]byte{198, 19, 7, 70})
		_, ok2 := table.Lookup([4]byte{198, 20, 7, 70})
		sink = ok1 && !ok2
	})
	if allocs != 0 {
		t.Errorf("Lookup allocates %.1f times per run", allocs)
	}
	if !sink {
		t.Error("lookups gave wrong answers")
	}
}

func TestTableAccept(t *testing.T) {
	local := netip.MustParsePrefix("198.19.2.0/24")
	peerA := netip.MustParseAddr("198.18.0.1")
	table := NewTable(local, []Peer{
		{Subnet: netip.MustParsePrefix("198.19.1.0/24"), Addr: peerA},
		{Subnet: netip.MustParsePrefix("198.19.3.0/24"), Addr: netip.MustParseAddr("198.18.0.3")},
		// Our own lease listed as a peer is ignored.
		{Subnet: local, Addr: netip.MustParseAddr("198.18.0.2")},
	})
	pkt := func(src, dst string) []byte {
		p := make([]byte, 20)
		p[0] = 0x45
		s, d := netip.MustParseAddr(src).As4(), netip.MustParseAddr(dst).As4()
		copy(p[12:16], s[:])
		copy(p[16:20], d[:])
		return p
	}
	stranger := netip.MustParseAddr("198.18.0.99")
	cases := []struct {
		outer    netip.Addr
		src, dst string
		want     [3]DropReason // strict, nat, off
	}{
		{peerA, "198.19.1.5", "198.19.2.7", [3]DropReason{DropNone, DropNone, DropNone}},
		{peerA, "198.19.1.5", "198.19.2.0", [3]DropReason{DropNone, DropNone, DropNone}}, // the device address
		{netip.AddrFrom16(peerA.As16()), "198.19.1.5", "198.19.2.7", [3]DropReason{DropNone, DropNone, DropNone}},
		{stranger, "198.19.1.5", "198.19.2.7", [3]DropReason{DropSpoofedSource, DropNone, DropNone}},
		{peerA, "198.19.3.5", "198.19.2.7", [3]DropReason{DropSpoofedSource, DropNone, DropNone}},
		{peerA, "198.19.9.5", "198.19.2.7", [3]DropReason{DropUnknownSource, DropUnknownSource, DropNone}},
		{peerA, "198.19.2.5", "198.19.2.7", [3]DropReason{DropUnknownSource, DropUnknownSource, DropNone}}, // our own subnet as source
		{peerA, "198.19.1.5", "198.19.3.7", [3]DropReason{DropNotLocal, DropNotLocal, DropNotLocal}},
		{peerA, "198.19.1.5", "198.18.0.2", [3]DropReason{DropNotLocal, DropNotLocal, DropNotLocal}},
	}
	for _, c := range cases {
		for i, check := range []SourceCheck{SourceStrict, SourceNAT, SourceOff} {
			if got := table.Accept(c.outer, pkt(c.src, c.dst), check); got != c.want[i] {
				t.Errorf("%s: %v sends %s -> %s: %v, want %v", check, c.outer, c.src, c.dst, got, c.want[i])
			}
		}
	}
	var nilTable *Table
	if got := nilTable.Accept(peerA, pkt("198.19.1.5", "198.19.2.7"), SourceOff); got != DropNotLocal {
		t.Errorf("nil table accepted a packet: %v", got)
	}
	good := pkt("198.19.1.5", "198.19.2.7")
	if allocs := testing.AllocsPerRun(100, func() { table.Accept(peerA, good, SourceStrict) }); allocs != 0 {
		t.Errorf("Accept allocates %.1f times", allocs)
	}
	for _, s := range []string{"strict", "nat", "off"} {
		if c, ok := ParseSourceCheck(s); !ok || c.String() != s {
			t.Errorf("ParseSourceCheck(%q) = %v, %v", s, c, ok)
		}
	}
	if _, ok := ParseSourceCheck("loose"); ok {
		t.Error("ParseSourceCheck accepted loose")
	}
}
