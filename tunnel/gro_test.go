package tunnel

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"testing"
)

const testOffset = 16

// flow returns n consecutive segments of one TCP flow, each with headroom:
// payloads of mss bytes but the last (last bytes), IP IDs counting up,
// PSH on the last, as a sender's stack emits them.
func flow(rng *rand.Rand, n, mss, last int) [][]byte {
	pkts := make([][]byte, n)
	seq := uint32(0xffffff00) // wraps within the flow
	for i := range pkts {
		size := mss
		if i == n-1 {
			size = last
		}
		p := TCP4{Src: tsoSrc, Dst: tsoDst, SPort: 40000, DPort: 5201, Seq: seq, Ack: 99, Flags: TCPAck,
			Window: 502, ID: 100 + uint16(i), TTL: 63, TCPOpts: tsOpts, Payload: randomBytes(rng, size)}
		if i == n-1 {
			p.Flags |= TCPPsh
		}
		pkts[i] = append(make([]byte, testOffset), p.Build()...)
		seq += uint32(size)
	}
	return pkts
}

type superPacket struct {
	h   virtioNetHdr
	pkt []byte // contiguous, as the kernel sees the gathered writev
	n   int    // packets in it
}

// coalesceAll runs the coalescer over pkts as writeVnet does and returns
// what would be written: super-packets (n > 1) and single packets.
func coalesceAll(pkts [][]byte, verify, udp bool) []superPacket {
	var out []superPacket
	seg, ok := parseSegment(pkts[0][testOffset:], verify, udp)
	for i := 0; i < len(pkts); {
		n := 1
		var next segment
		nextOK := false
		if ok {
			var total int
			n, total, next, nextOK = extendRun(pkts[i:], testOffset, seg, verify, udp)
			if n > 1 {
				var hdr [maxHeaders]byte
				first := pkts[i][testOffset:]
				h := superHeader(hdr[:], first, seg, pkts[i+n-1][testOffset:], total)
				whole := append(hdr[:seg.hdrLen:seg.hdrLen], first[seg.hdrLen:]...)
				for _, p := range pkts[i+1 : i+n] {
					whole = append(whole, p[testOffset+seg.hdrLen:]...)
				}
				if len(whole) != total {
					panic(fmt.Sprintf("run of %d bytes, total says %d", len(whole), total))
				}
				out = append(out, superPacket{h, whole, n})
				i += n
				seg, ok = next, nextOK
				continue
			}
		} else if i+1 < len(pkts) {
			next, nextOK = parseSegment(pkts[i+1][testOffset:], verify, udp)
		}
		out = append(out, superPacket{pkt: pkts[i][testOffset:], n: 1})
		i++
		seg, ok = next, nextOK
	}
	return out
}

func clonePackets(pkts [][]byte) [][]byte {
	c := make([][]byte, len(pkts))
	for i, p := range pkts {
		c[i] = bytes.Clone(p)
	}
	return c
}

func TestCoalesceRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(21, 22))
	for _, tc := range []struct{ n, mss, last int }{
		{2, 1388, 1388}, {45, 1448, 1448}, {46, 1388, 100}, {10, 536, 1}, {64, 1000, 1000},
	} {
		for _, verify := range []bool{true, false} {
			want := virtioNetHdr{flags: virtioNeedsCsum, gsoType: virtioGSOTCPv4, hdrLen: 52,
				gsoSize: uint16(tc.mss), csumStart: 20, csumOffset: 16}
			checkRoundTrip(t, fmt.Sprintf("%+v", tc), flow(rng, tc.n, tc.mss, tc.last), verify, false, want)
		}
	}
}

// checkRoundTrip coalesces pkts, which must become one super-packet with
// virtio-net header want, and splits it as the kernel does: that must give
// back exactly pkts.
func checkRoundTrip(t *testing.T, name string, pkts [][]byte, verify, udp bool, want virtioNetHdr) {
	t.Helper()
	orig := clonePackets(pkts)
	out := coalesceAll(pkts, verify, udp)
	if len(out) != 1 || out[0].n != len(pkts) {
		t.Fatalf("%s: %d writes, want one super-packet of %d", name, len(out), len(pkts))
	}
	sp := out[0]
	if sp.h != want {
		t.Errorf("%s: header %+v, want %+v", name, sp.h, want)
	}
	segs, ok := splitAll(t, sp.h, sp.pkt, 1500)
	if !ok || len(segs) != len(pkts) {
		t.Fatalf("%s: split back into %d segments (%v)", name, len(segs), ok)
	}
	for i := range segs {
		if !bytes.Equal(segs[i], orig[i][testOffset:]) {
			t.Fatalf("%s: segment %d differs from the packet received\n got % x\nwant % x",
				name, i, segs[i][:want.hdrLen], orig[i][testOffset:testOffset+int(want.hdrLen)])
		}
	}
}

// runCase is a change to a flow of three packets and the packets per
// write that the coalescer must then make.
type runCase struct {
	name string
	mod  func(p [][]byte)
	want []int
}

// changers returns functions making test cases from a flow of three
// packets: at(off, v) sets byte off of the second packet to v, rest(off, v)
// that of the second and third (making them a burst of another flow, or of
// other headers); fix redoes a changed packet's checksums.
func changers(fix func(pkt []byte)) (at, rest func(off int, v byte) func([][]byte)) {
	at = func(off int, v byte) func([][]byte) {
		return func(p [][]byte) { p[1][testOffset+off] = v; fix(p[1]) }
	}
	rest = func(off int, v byte) func([][]byte) {
		return func(p [][]byte) {
			for _, q := range p[1:] {
				q[testOffset+off] = v
				fix(q)
			}
		}
	}
	return at, rest
}

func TestCoalesceRefuses(t *testing.T) {
	rng := rand.New(rand.NewPCG(23, 24))
	// Each case changes the second of three segments (or the first); the
	// run must stop before the changed packet, or exclude a bad first.
	resum := func(p []byte) {
		ip := p[testOffset:]
		ipLen := int(ip[0]&0xf) * 4
		binary.BigEndian.PutUint16(ip[10:12], 0)
		binary.BigEndian.PutUint16(ip[10:12], refChecksum(ip[:ipLen], 0))
		tcp := ip[ipLen:]
		binary.BigEndian.PutUint16(tcp[16:18], 0)
		binary.BigEndian.PutUint16(tcp[16:18], refChecksum(tcp, refPseudo(ip, protoTCP, len(tcp))))
	}
	// at changes the second packet; rest changes the second and third,
	// making them a burst of another flow (or of other headers).
	at, rest := changers(resum)
	for _, tc := range []runCase{
		{"unchanged", func([][]byte) {}, []int{3}},
		{"source port", rest(20, 0x11), []int{1, 2}},
		{"destination address", rest(19, 8), []int{1, 2}},
		{"TOS", rest(1, 1), []int{1, 2}},
		{"TTL", rest(8, 62), []int{1, 2}},
		{"ack", rest(31, 100), []int{1, 2}},
		{"window", rest(35, 1), []int{1, 2}},
		{"timestamp", rest(51, 3), []int{1, 2}},
		{"seq gap", at(27, 0x50), []int{1, 1, 1}},
		{"ECE", rest(33, tcpACK|tcpECE), []int{1, 2}},
		{"FIN", at(33, tcpACK|tcpFIN), []int{1, 1, 1}},
		{"SYN", at(33, tcpACK|tcpSYN), []int{1, 1, 1}},
		{"RST", at(33, tcpACK|tcpRST), []int{1, 1, 1}},
		{"URG", at(33, tcpACK|tcpURG), []int{1, 1, 1}},
		{"CWR", at(33, tcpACK|tcpCWR), []int{1, 1, 1}},
		{"no ACK", at(33, tcpPSH), []int{1, 1, 1}},
		{"PSH in the middle", at(33, tcpACK|tcpPSH), []int{2, 1}},
		{"fragment", at(6, 0x60), []int{1, 1, 1}},
		{"bad TCP checksum", func(p [][]byte) { p[1][testOffset+60] ^= 1 }, []int{1, 1, 1}},
		{"bad IP checksum", func(p [][]byte) { p[1][testOffset+10] ^= 1 }, []int{1, 1, 1}},
		{"bad first", func(p [][]byte) { p[0][testOffset+60] ^= 1 }, []int{1, 2}},
		{"shorter middle", func(p [][]byte) {
			// Drop the middle segment's last byte: seq of the third no
			// longer follows, and a short segment ends a run anyway.
			ip := p[1][testOffset:]
			p[1] = p[1][:len(p[1])-1]
			binary.BigEndian.PutUint16(ip[2:4], uint16(len(ip)-1))
			resum(p[1])
		}, []int{2, 1}},
	} {
		for _, verify := range []bool{true, false} {
			if !verify && (tc.name == "bad TCP checksum" || tc.name == "bad IP checksum" || tc.name == "bad first") {
				continue
			}
			pkts := flow(rng, 3, 1000, 1000)
			pkts[2][testOffset+33] = tcpACK // PSH only where the case puts it
			resum(pkts[2])
			tc.mod(pkts)
			var got []int
			for _, w := range coalesceAll(pkts, verify, false) {
				got = append(got, w.n)
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Errorf("%s (verify %v): writes of %v packets, want %v", tc.name, verify, got, tc.want)
			}
		}
	}

	// A larger segment cannot follow, and nothing can follow a shorter one.
	big := flow(rng, 2, 1000, 1001)
	if got := coalesceAll(big, true, false); len(got) != 2 {
		t.Errorf("a larger second segment joined the run")
	}
	// Runs stop at 64 KB and at maxRunSegments.
	long := flow(rng, 70, 1400, 1400)
	var sizes []int
	for _, w := range coalesceAll(long, true, false) {
		sizes = append(sizes, w.n)
		if len(w.pkt) > maxPacket {
			t.Errorf("super-packet of %d bytes", len(w.pkt))
		}
	}
	if fmt.Sprint(sizes) != "[46 24]" {
		t.Errorf("70 segments of 1400 bytes written as %v, want [46 24]", sizes)
	}
	many := flow(rng, 70, 100, 100)
	sizes = sizes[:0]
	for _, w := range coalesceAll(many, true, false) {
		sizes = append(sizes, w.n)
	}
	if fmt.Sprint(sizes) != fmt.Sprint([]int{maxRunSegments, 70 - maxRunSegments}) {
		t.Errorf("70 small segments written as %v", sizes)
	}
}

// TestCoalesceInterleaved: flows interleaved packet by packet do not merge
// (only consecutive segments do); back-to-back bursts do, around a
// packet of another protocol.
func TestCoalesceInterleaved(t *testing.T) {
	rng := rand.New(rand.NewPCG(25, 26))
	a := flow(rng, 4, 1000, 1000)
	b := flow(rng, 4, 1000, 1000)
	for _, p := range b {
		p[testOffset+20] = 0x22 // another source port
		ip := p[testOffset:]
		binary.BigEndian.PutUint16(ip[36:38], 0)
		binary.BigEndian.PutUint16(ip[36:38], refChecksum(ip[20:], refPseudo(ip, protoTCP, len(ip)-20)))
	}
	udp := append(make([]byte, testOffset), TCP4{Src: tsoSrc, Dst: tsoDst}.Build()...)
	udp[testOffset+9] = protoUDP
	batch := [][]byte{a[0], b[0], a[1], b[1], a[2], a[3], udp, b[2], b[3]}
	var got []int
	for _, w := range coalesceAll(batch, true, true) {
		got = append(got, w.n)
	}
	if fmt.Sprint(got) != "[1 1 1 1 2 1 2]" {
		t.Errorf("writes of %v packets", got)
	}
}

// FuzzCoalesce feeds arbitrary packets (length-prefixed in the input) to
// the coalescer, with and without checksum verification. It must never
// panic, every super-packet must fit 64 KB and split back into exactly the
// packets it was made of (but for IP ID and, unverified, checksums), and
// no packet may be modified.
func FuzzCoalesce(f *testing.F) {
	rng := rand.New(rand.NewPCG(27, 28))
	enc := func(pkts [][]byte) []byte {
		var b []byte
		for _, p := range pkts {
			b = binary.BigEndian.AppendUint16(b, uint16(len(p)-testOffset))
			b = append(b, p[testOffset:]...)
		}
		return b
	}
	f.Add(enc(flow(rng, 3, 100, 100)))
	f.Add(enc(flow(rng, 5, 64, 10)))
	two := flow(rng, 2, 40, 40)
	f.Add(enc(append(two, flow(rng, 2, 40, 30)...)))
	f.Add([]byte{0, 20, 0x45})
	f.Add(enc(udpFlow(rng, 3, 50, 20)))
	f.Add(enc(append(udpFlow(rng, 2, 30, 30), flow(rng, 2, 30, 30)...)))

	f.Fuzz(func(t *testing.T, in []byte) {
		var pkts [][]byte
		for len(in) >= 2 && len(pkts) < 80 {
			n := min(int(binary.BigEndian.Uint16(in)), len(in)-2)
			pkts = append(pkts, append(make([]byte, testOffset), in[2:2+n]...))
			in = in[2+n:]
		}
		if len(pkts) == 0 {
			return
		}
		for _, mode := range []struct{ verify, udp bool }{{true, true}, {false, true}, {true, false}, {false, false}} {
			verify := mode.verify
			work := clonePackets(pkts)
			i := 0
			for _, w := range coalesceAll(work, verify, mode.udp) {
				if w.n == 1 {
					if !bytes.Equal(work[i], pkts[i]) {
						t.Fatalf("packet %d written singly was modified", i)
					}
					i++
					continue
				}
				if len(w.pkt) > maxPacket {
					t.Fatalf("super-packet of %d bytes", len(w.pkt))
				}
				for k := range w.n {
					if !bytes.Equal(work[i+k], pkts[i+k]) {
						t.Fatalf("packet %d coalesced was modified", i+k)
					}
				}
				segs, ok := splitAll(t, w.h, w.pkt, len(w.pkt))
				if !ok || len(segs) != w.n {
					t.Fatalf("super-packet of %d packets splits into %d (%v)", w.n, len(segs), ok)
				}
				for k, seg := range segs {
					want := pkts[i+k][testOffset:]
					if len(seg) != len(want) {
						t.Fatalf("segment %d: %d bytes, packet had %d", k, len(seg), len(want))
					}
					ipLen := int(want[0]&0xf) * 4
					csum := ipLen + 16 // TCP checksum
					if want[9] == protoUDP {
						csum = ipLen + 6
					}
					for j := range seg {
						switch {
						case j >= 4 && j < 6, j >= 10 && j < 12: // IP ID, header checksum
						case !verify && (j == csum || j == csum+1): // L4 checksum
						default:
							if seg[j] != want[j] {
								t.Fatalf("segment %d differs at byte %d: %#x, packet had %#x", k, j, seg[j], want[j])
							}
						}
					}
					if verify {
						if err := VerifyPacket(seg); err != nil {
							t.Fatalf("segment %d: %v", k, err)
						}
					}
				}
				i += w.n
			}
			if i != len(pkts) {
				t.Fatalf("wrote %d of %d packets", i, len(pkts))
			}
		}
	})
}

func BenchmarkCoalesce(b *testing.B) {
	rng := rand.New(rand.NewPCG(29, 30))
	pkts := flow(rng, 46, 1388, 1388)
	var hdr [maxHeaders]byte
	first := pkts[0][testOffset:]
	bytes := 0
	for _, p := range pkts {
		bytes += len(p) - testOffset
	}
	for _, verify := range []bool{true, false} {
		b.Run(fmt.Sprintf("verify=%v", verify), func(b *testing.B) {
			b.SetBytes(int64(bytes))
			b.ReportAllocs()
			for b.Loop() {
				fs, ok := parseSegment(first, verify, false)
				if !ok {
					b.Fatal("not a segment")
				}
				n, total, _, _ := extendRun(pkts, testOffset, fs, verify, false)
				if n != len(pkts) {
					b.Fatalf("run of %d", n)
				}
				superHeader(hdr[:], first, fs, pkts[len(pkts)-1][testOffset:], total)
			}
			b.ReportMetric(float64(b.N*len(pkts))/b.Elapsed().Seconds(), "segments/s")
		})
	}
}

// udpFlow returns n consecutive UDPv4 datagrams of one flow, each with
// headroom: payloads of size bytes but the last (last bytes), valid
// checksums, IP IDs counting up.
func udpFlow(rng *rand.Rand, n, size, last int) [][]byte {
	pkts := make([][]byte, n)
	for i := range pkts {
		l := size
		if i == n-1 {
			l = last
		}
		p := make([]byte, 28+l)
		p[0], p[8], p[9] = 0x45, 63, protoUDP
		binary.BigEndian.PutUint16(p[2:4], uint16(len(p)))
		binary.BigEndian.PutUint16(p[4:6], 200+uint16(i))
		binary.BigEndian.PutUint16(p[6:8], 0x4000) // DF
		copy(p[12:16], tsoSrc[:])
		copy(p[16:20], tsoDst[:])
		binary.BigEndian.PutUint16(p[10:12], refChecksum(p[:20], 0))
		binary.BigEndian.PutUint16(p[20:22], 40000)
		binary.BigEndian.PutUint16(p[22:24], 5201)
		binary.BigEndian.PutUint16(p[24:26], uint16(8+l))
		copy(p[28:], randomBytes(rng, l))
		resumUDP(p)
		pkts[i] = append(make([]byte, testOffset), p...)
	}
	return pkts
}

// resumUDP redoes the IP header and UDP checksums of ip.
func resumUDP(ip []byte) {
	binary.BigEndian.PutUint16(ip[10:12], 0)
	binary.BigEndian.PutUint16(ip[10:12], refChecksum(ip[:20], 0))
	binary.BigEndian.PutUint16(ip[26:28], 0)
	c := refChecksum(ip[20:], refPseudo(ip, protoUDP, len(ip)-20))
	if c == 0 {
		c = 0xffff
	}
	binary.BigEndian.PutUint16(ip[26:28], c)
}

// TestCoalesceUDP: a burst of one UDP flow becomes one USO super-packet
// that the kernel's split (our segmenter does the same) turns back into
// exactly the datagrams, and only where the TUN takes USO; anything that
// would not split back the same stays out of the run.
func TestCoalesceUDP(t *testing.T) {
	rng := rand.New(rand.NewPCG(31, 32))
	for _, tc := range []struct{ n, size, last int }{{2, 64, 64}, {64, 36, 36}, {40, 1444, 1000}, {10, 1, 1}} {
		for _, verify := range []bool{true, false} {
			pkts := udpFlow(rng, tc.n, tc.size, tc.last)
			if out := coalesceAll(clonePackets(pkts), verify, false); len(out) != tc.n {
				t.Fatalf("%+v: without USO, %d writes for %d datagrams", tc, len(out), tc.n)
			}
			want := virtioNetHdr{flags: virtioNeedsCsum, gsoType: virtioGSOUDPL4, hdrLen: 28,
				gsoSize: uint16(tc.size), csumStart: 20, csumOffset: 6}
			checkRoundTrip(t, fmt.Sprintf("%+v", tc), pkts, verify, true, want)
		}
	}

	at, rest := changers(func(p []byte) { resumUDP(p[testOffset:]) })
	for _, tc := range []runCase{
		{"unchanged", func([][]byte) {}, []int{3}},
		{"source port", rest(21, 0x11), []int{1, 2}},
		{"destination port", rest(23, 0x11), []int{1, 2}},
		{"destination address", rest(19, 8), []int{1, 2}},
		{"TTL", rest(8, 62), []int{1, 2}},
		{"DF", rest(6, 0), []int{1, 2}},
		{"fragment", at(6, 0x20), []int{1, 1, 1}},
		{"no checksum", func(p [][]byte) { p[1][testOffset+26], p[1][testOffset+27] = 0, 0 }, []int{1, 1, 1}},
		{"bad checksum", func(p [][]byte) { p[1][testOffset+40] ^= 1 }, []int{1, 1, 1}},
		{"UDP length", func(p [][]byte) { p[1][testOffset+25]--; resumUDP(p[1][testOffset:]) }, []int{1, 1, 1}},
		{"shorter middle", func(p [][]byte) {
			ip := p[1][testOffset:]
			p[1] = p[1][:len(p[1])-1]
			binary.BigEndian.PutUint16(ip[2:4], uint16(len(ip)-1))
			binary.BigEndian.PutUint16(ip[24:26], uint16(len(ip)-21))
			resumUDP(ip[:len(ip)-1])
		}, []int{2, 1}},
	} {
		verify := tc.name != "no checksum"
		pkts := udpFlow(rng, 3, 100, 100)
		tc.mod(pkts)
		var got []int
		for _, w := range coalesceAll(pkts, verify, true) {
			got = append(got, w.n)
		}
		if fmt.Sprint(got) != fmt.Sprint(tc.want) {
			t.Errorf("%s: writes of %v datagrams, want %v", tc.name, got, tc.want)
		}
	}
	// TCP and UDP never share a run.
	mixed := append(udpFlow(rng, 2, 100, 100), flow(rng, 2, 100, 100)...)
	var got []int
	for _, w := range coalesceAll(mixed, true, true) {
		got = append(got, w.n)
	}
	if fmt.Sprint(got) != "[2 2]" {
		t.Errorf("UDP then TCP written as %v", got)
	}
}
