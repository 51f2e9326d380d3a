package tunnel

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"testing"
)

var (
	tsoSrc = [4]byte{198, 19, 1, 5}
	tsoDst = [4]byte{198, 19, 2, 7}
	// tsOpts is NOP, NOP, timestamps: what Linux puts on every segment.
	tsOpts = []byte{1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2}
)

func randomBytes(rng *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return b
}

// superTCP returns a TCPv4 super-packet as the kernel hands it to a TUN with
// TSO: total length of the whole, the TCP checksum field holding the
// pseudo-header sum, and its virtio-net header.
func superTCP(p TCP4, gsoSize int) (virtioNetHdr, []byte) {
	pkt := p.Build()
	ipLen := 20 + len(p.IPOpts)
	binary.BigEndian.PutUint16(pkt[ipLen+16:], uint16(foldSum(uint64(refPseudo(pkt, protoTCP, len(pkt)-ipLen)))))
	return virtioNetHdr{
		flags: virtioNeedsCsum, gsoType: virtioGSOTCPv4,
		hdrLen:  uint16(ipLen + 20 + len(p.TCPOpts)),
		gsoSize: uint16(gsoSize), csumStart: uint16(ipLen), csumOffset: 16,
	}, pkt
}

// splitAll splits pkt into fresh buffers of bufSize and returns the
// segments; ok is false if start refused it.
func splitAll(t testing.TB, h virtioNetHdr, pkt []byte, bufSize int) ([][]byte, bool) {
	var s segmenter
	if !s.start(&h, pkt) {
		return nil, false
	}
	var segs [][]byte
	for s.pending() {
		buf := make([]byte, bufSize)
		n, ok := s.next(buf)
		if !ok {
			t.Fatalf("segment does not fit %d bytes", bufSize)
		}
		segs = append(segs, buf[:n])
	}
	return segs, true
}

func TestSplitTCP(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	for _, tc := range []struct {
		name     string
		ipOpts   []byte
		tcpOpts  []byte
		payload  int
		gso      int
		flags    byte
		segments int
	}{
		{"even", nil, tsOpts, 10 * 1388, 1388, TCPAck | TCPPsh, 10},
		{"short tail", nil, tsOpts, 64000, 1388, TCPAck | TCPPsh | TCPFin, 47},
		{"max", nil, nil, 65535 - 40, 1460, TCPAck, 45},
		{"ip options", []byte{1, 1, 1, 0}, tsOpts, 5000, 1000, TCPAck | TCPCwr | TCPPsh, 5},
		{"one segment", nil, nil, 500, 1388, TCPAck | TCPPsh, 1},
		{"tiny mss", nil, tsOpts, 300, 7, TCPAck | TCPPsh, 43},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := TCP4{Src: tsoSrc, Dst: tsoDst, SPort: 40000, DPort: 5201, Seq: 0xfffff000, Ack: 77,
				Flags: tc.flags, Window: 501, ID: 0xfffe, TOS: 2, IPOpts: tc.ipOpts, TCPOpts: tc.tcpOpts,
				Payload: randomBytes(rng, tc.payload)}
			h, pkt := superTCP(p, tc.gso)
			orig := bytes.Clone(pkt)
			segs, ok := splitAll(t, h, pkt, 1500)
			if !ok {
				t.Fatal("start refused a valid super-packet")
			}
			if !bytes.Equal(pkt, orig) {
				t.Error("splitting into other buffers changed the super-packet")
			}
			if len(segs) != tc.segments {
				t.Fatalf("%d segments, want %d", len(segs), tc.segments)
			}
			ipLen := 20 + len(tc.ipOpts)
			hdrLen := ipLen + 20 + len(tc.tcpOpts)
			var payload []byte
			for i, seg := range segs {
				if err := VerifyPacket(seg); err != nil {
					t.Fatalf("segment %d: %v", i, err)
				}
				want := min(tc.gso, tc.payload-i*tc.gso)
				if len(seg) != hdrLen+want {
					t.Fatalf("segment %d: %d bytes, want %d", i, len(seg), hdrLen+want)
				}
				if id := binary.BigEndian.Uint16(seg[4:6]); id != p.ID+uint16(i) {
					t.Errorf("segment %d: IP ID %#x, want %#x", i, id, p.ID+uint16(i))
				}
				tcp := seg[ipLen:]
				if seq := binary.BigEndian.Uint32(tcp[4:8]); seq != p.Seq+uint32(i*tc.gso) {
					t.Errorf("segment %d: seq %#x, want %#x", i, seq, p.Seq+uint32(i*tc.gso))
				}
				wantFlags := tc.flags
				if i != len(segs)-1 {
					wantFlags &^= TCPPsh | TCPFin
				}
				if i != 0 {
					wantFlags &^= TCPCwr
				}
				if tcp[13] != wantFlags {
					t.Errorf("segment %d: flags %#x, want %#x", i, tcp[13], wantFlags)
				}
				// Everything else in the headers is the super-packet's.
				for _, r := range [][2]int{{0, 2}, {6, 10}, {12, ipLen}, {ipLen, ipLen + 4}, {ipLen + 8, ipLen + 13}, {ipLen + 14, ipLen + 16}, {ipLen + 18, hdrLen}} {
					if !bytes.Equal(seg[r[0]:r[1]], orig[r[0]:r[1]]) {
						t.Errorf("segment %d: header bytes %d..%d changed", i, r[0], r[1])
					}
				}
				payload = append(payload, seg[hdrLen:]...)
			}
			if !bytes.Equal(payload, p.Payload) {
				t.Error("segment payloads do not add up to the super-packet's")
			}
		})
	}
}

func TestSplitInPlace(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	p := TCP4{Src: tsoSrc, Dst: tsoDst, SPort: 1, DPort: 2, Seq: 1000, Flags: TCPAck | TCPPsh, TCPOpts: tsOpts,
		Payload: randomBytes(rng, 4000)}
	h, pkt := superTCP(p, 1448)
	buf := make([]byte, maxPacket)
	copy(buf, pkt)
	var s segmenter
	if !s.start(&h, buf[:len(pkt)]) {
		t.Fatal("start refused")
	}
	// The first segment goes back into the buffer the super-packet is in,
	// the others elsewhere, as Read does.
	var segs [][]byte
	for i := 0; s.pending(); i++ {
		dst := buf
		if i > 0 {
			dst = make([]byte, 1500)
		}
		n, ok := s.next(dst)
		if !ok {
			t.Fatal("segment does not fit")
		}
		segs = append(segs, dst[:n])
	}
	want, _ := splitAll(t, h, pkt, 1500)
	if len(segs) != len(want) {
		t.Fatalf("%d segments in place, %d not", len(segs), len(want))
	}
	for i := range segs {
		if !bytes.Equal(segs[i], want[i]) {
			t.Errorf("segment %d differs when split in place", i)
		}
	}
}

func TestSplitUDP(t *testing.T) {
	rng := rand.New(rand.NewPCG(9, 10))
	payload := randomBytes(rng, 10*1200+17)
	udp := make([]byte, 8+len(payload))
	binary.BigEndian.PutUint16(udp[0:2], 4433)
	binary.BigEndian.PutUint16(udp[2:4], 443)
	binary.BigEndian.PutUint16(udp[4:6], uint16(len(udp)))
	copy(udp[8:], payload)
	pkt := TCP4{Src: tsoSrc, Dst: tsoDst, ID: 9}.Build()[:20]
	pkt = append(pkt, udp...)
	pkt[9] = protoUDP
	binary.BigEndian.PutUint16(pkt[2:4], uint16(len(pkt)))
	h := virtioNetHdr{flags: virtioNeedsCsum, gsoType: virtioGSOUDPL4, gsoSize: 1200, csumStart: 20, csumOffset: 6}
	segs, ok := splitAll(t, h, pkt, 1500)
	if !ok {
		t.Fatal("start refused a UDP super-packet")
	}
	if len(segs) != 11 {
		t.Fatalf("%d segments, want 11", len(segs))
	}
	var got []byte
	for i, seg := range segs {
		if err := VerifyPacket(seg); err != nil {
			t.Fatalf("segment %d: %v", i, err)
		}
		if binary.BigEndian.Uint16(seg[26:28]) == 0 {
			t.Errorf("segment %d has no UDP checksum", i)
		}
		if binary.BigEndian.Uint16(seg[4:6]) != 9+uint16(i) || binary.BigEndian.Uint16(seg[20:22]) != 4433 {
			t.Errorf("segment %d: header % x", i, seg[:28])
		}
		got = append(got, seg[28:]...)
	}
	if !bytes.Equal(got, payload) {
		t.Error("payloads do not add up")
	}
}

func TestSplitRefuses(t *testing.T) {
	good := func() (virtioNetHdr, []byte) {
		return superTCP(TCP4{Src: tsoSrc, Dst: tsoDst, Flags: TCPAck, Payload: make([]byte, 3000)}, 1000)
	}
	for _, tc := range []struct {
		name string
		mod  func(h *virtioNetHdr, pkt []byte) []byte
	}{
		{"TCPv6", func(h *virtioNetHdr, pkt []byte) []byte { h.gsoType = virtioGSOTCPv6; return pkt }},
		{"UFO", func(h *virtioNetHdr, pkt []byte) []byte { h.gsoType = virtioGSOUDP; return pkt }},
		{"gso size 0", func(h *virtioNetHdr, pkt []byte) []byte { h.gsoSize = 0; return pkt }},
		{"IPv6 packet", func(h *virtioNetHdr, pkt []byte) []byte { pkt[0] = 0x60; return pkt }},
		{"total length", func(h *virtioNetHdr, pkt []byte) []byte { return pkt[:len(pkt)-1] }},
		{"fragment", func(h *virtioNetHdr, pkt []byte) []byte { pkt[6] |= 0x20; return pkt }},
		{"csum_start", func(h *virtioNetHdr, pkt []byte) []byte { h.csumStart = 24; return pkt }},
		{"csum_offset", func(h *virtioNetHdr, pkt []byte) []byte { h.csumOffset = 6; return pkt }},
		{"UDP type, TCP packet", func(h *virtioNetHdr, pkt []byte) []byte { h.gsoType = virtioGSOUDPL4; h.csumOffset = 6; return pkt }},
		{"data offset 4", func(h *virtioNetHdr, pkt []byte) []byte { pkt[32] = 4 << 4; return pkt }},
		{"headers only", func(h *virtioNetHdr, pkt []byte) []byte {
			pkt = pkt[:40]
			binary.BigEndian.PutUint16(pkt[2:4], 40)
			return pkt
		}},
		{"IHL 4", func(h *virtioNetHdr, pkt []byte) []byte { pkt[0] = 0x44; return pkt }},
	} {
		h, pkt := good()
		pkt = tc.mod(&h, pkt)
		var s segmenter
		if s.start(&h, pkt) || s.pending() {
			t.Errorf("%s: accepted", tc.name)
		}
	}
	h, pkt := good()
	if segs, ok := splitAll(t, h, pkt, 1500); !ok || len(segs) != 3 {
		t.Fatalf("the unmodified packet: %d segments, %v", len(segs), ok)
	}
	// A segment that does not fit the buffer is refused, leaving it alone.
	var s segmenter
	s.start(&h, pkt)
	small := make([]byte, 1039)
	if n, ok := s.next(small); ok || n != 0 || !bytes.Equal(small, make([]byte, 1039)) {
		t.Errorf("next into a short buffer = %d, %v", n, ok)
	}
}

func TestCompleteChecksum(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 12))
	for _, n := range []int{0, 1, 2, 3, 100, 1371} {
		// TCP: the kernel leaves the pseudo-header sum in the field.
		p := TCP4{Src: tsoSrc, Dst: tsoDst, Flags: TCPAck | TCPPsh, Payload: randomBytes(rng, n)}
		pkt := p.Build()
		binary.BigEndian.PutUint16(pkt[36:38], uint16(foldSum(uint64(refPseudo(pkt, protoTCP, len(pkt)-20)))))
		h := virtioNetHdr{flags: virtioNeedsCsum, csumStart: 20, csumOffset: 16}
		if !completeChecksum(&h, pkt) {
			t.Fatalf("TCP %d: refused", n)
		}
		if err := VerifyPacket(pkt); err != nil {
			t.Errorf("TCP %d: %v", n, err)
		}

		// UDP.
		u := append(bytes.Clone(pkt[:20]), make([]byte, 8+n)...)
		u[9] = protoUDP
		binary.BigEndian.PutUint16(u[2:4], uint16(len(u)))
		binary.BigEndian.PutUint16(u[24:26], uint16(8+n))
		copy(u[28:], p.Payload)
		binary.BigEndian.PutUint16(u[10:12], 0)
		binary.BigEndian.PutUint16(u[10:12], refChecksum(u[:20], 0))
		h.csumOffset = 6
		if !completeChecksum(&h, u) {
			t.Fatalf("UDP %d: refused", n)
		}
		if err := VerifyPacket(u); err != nil || binary.BigEndian.Uint16(u[26:28]) == 0 {
			t.Errorf("UDP %d: %v", n, err)
		}
	}

	// Not IPv4 TCP/UDP: the kernel's way, from the partial sum in the
	// field, so the region then sums (with that partial) to zero.
	b := randomBytes(rng, 200)
	b[0] = 0x60
	binary.BigEndian.PutUint16(b[46:48], 0x1234)
	want := refChecksum(b[40:], 0)
	if want == 0 {
		want = 0xffff
	}
	h := virtioNetHdr{flags: virtioNeedsCsum, csumStart: 40, csumOffset: 6}
	if !completeChecksum(&h, b) {
		t.Fatal("generic: refused")
	}
	if got := binary.BigEndian.Uint16(b[46:48]); got != want {
		t.Errorf("generic checksum %#04x, reference %#04x", got, want)
	}

	for _, h := range []virtioNetHdr{
		{flags: virtioNeedsCsum, csumStart: 200, csumOffset: 0},
		{flags: virtioNeedsCsum, csumStart: 190, csumOffset: 9},
		{flags: virtioNeedsCsum, csumStart: 0, csumOffset: 199},
	} {
		if completeChecksum(&h, make([]byte, 200)) {
			t.Errorf("offsets %d+%d accepted in 200 bytes", h.csumStart, h.csumOffset)
		}
	}
}

// FuzzSplit feeds arbitrary virtio-net headers and packets to the splitter.
// It must never panic, never write past a segment, and every packet it
// produces must be a valid IPv4 packet whose payloads add up to the input's
// with contiguous sequence numbers; otherwise it must refuse the input.
func FuzzSplit(f *testing.F) {
	rng := rand.New(rand.NewPCG(13, 14))
	add := func(h virtioNetHdr, pkt []byte) {
		var b [virtioNetHdrLen]byte
		h.encode(b[:])
		f.Add(append(b[:], pkt...))
	}
	add(superTCP(TCP4{Src: tsoSrc, Dst: tsoDst, Flags: TCPAck | TCPPsh, TCPOpts: tsOpts, Payload: randomBytes(rng, 3000)}, 1000))
	add(superTCP(TCP4{Src: tsoSrc, Dst: tsoDst, Flags: TCPAck | TCPFin | TCPCwr, IPOpts: []byte{1, 1, 1, 0}, Payload: randomBytes(rng, 100)}, 7))
	h, pkt := superTCP(TCP4{Src: tsoSrc, Dst: tsoDst, Flags: TCPAck, Payload: randomBytes(rng, 300)}, 100)
	h.gsoType = virtioGSOUDPL4
	h.csumOffset = 6
	pkt[9] = protoUDP
	add(h, pkt)
	add(virtioNetHdr{flags: virtioNeedsCsum, csumStart: 20, csumOffset: 16},
		TCP4{Src: tsoSrc, Dst: tsoDst, Flags: TCPAck, Payload: []byte("hello")}.Build())
	add(virtioNetHdr{}, []byte{0x45, 0, 0, 20})

	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) < virtioNetHdrLen {
			return
		}
		var h virtioNetHdr
		h.decode(in)
		pkt := bytes.Clone(in[virtioNetHdrLen:])
		orig := bytes.Clone(pkt)
		if h.gsoType == virtioGSONone {
			if h.flags&virtioNeedsCsum == 0 || !completeChecksum(&h, pkt) {
				return
			}
			// IPv4 TCP/UDP with the offsets of their checksum fields must
			// come out valid; other input only has to keep its length.
			if len(pkt) != len(orig) {
				t.Fatal("completeChecksum changed the length")
			}
			ipv4L4 := len(pkt) >= 20 && pkt[0]>>4 == 4 && int(pkt[0]&0xf)*4 == int(h.csumStart) &&
				int(binary.BigEndian.Uint16(pkt[2:4])) == len(pkt) &&
				((pkt[9] == protoTCP && h.csumOffset == 16) || (pkt[9] == protoUDP && h.csumOffset == 6))
			if ipv4L4 && refChecksum(pkt[:20], 0) == 0 && pkt[0]&0xf == 5 && binary.BigEndian.Uint16(pkt[6:8])&0x3fff == 0 {
				if pkt[9] == protoTCP && (len(pkt) < 40 || pkt[32]>>4 < 5 || int(pkt[32]>>4)*4 > len(pkt)-20) {
					return // VerifyPacket also checks the TCP header length
				}
				if err := VerifyPacket(pkt); err != nil {
					t.Fatalf("completed packet: %v\n% x", err, pkt)
				}
			}
			return
		}
		var s segmenter
		if !s.start(&h, pkt) {
			if s.pending() {
				t.Fatal("refused, yet segments pending")
			}
			return
		}
		if !bytes.Equal(pkt, orig) {
			t.Fatal("start modified the packet")
		}
		hdrLen := s.hdrLen
		ipLen := s.ipLen
		var payload []byte
		seq := binary.BigEndian.Uint32(pkt[ipLen+4:])
		for i := 0; s.pending(); i++ {
			if i > maxPacket {
				t.Fatal("endless segments")
			}
			buf := make([]byte, hdrLen+int(h.gsoSize)+8)
			for j := range buf {
				buf[j] = 0xa5
			}
			n, ok := s.next(buf)
			if !ok {
				t.Fatalf("segment %d does not fit %d bytes", i, len(buf))
			}
			for _, c := range buf[n:] {
				if c != 0xa5 {
					t.Fatal("next wrote past the segment")
				}
			}
			seg := buf[:n]
			if err := VerifyPacket(seg); err != nil {
				t.Fatalf("segment %d: %v", i, err)
			}
			if n-hdrLen > int(h.gsoSize) {
				t.Fatalf("segment %d carries %d bytes, gso_size %d", i, n-hdrLen, h.gsoSize)
			}
			if s.proto == protoTCP {
				if got := binary.BigEndian.Uint32(seg[ipLen+4:]); got != seq+uint32(len(payload)) {
					t.Fatalf("segment %d: seq %d, want %d", i, got, seq+uint32(len(payload)))
				}
			}
			payload = append(payload, seg[hdrLen:]...)
		}
		if !bytes.Equal(payload, pkt[hdrLen:]) {
			t.Fatal("payloads do not add up")
		}
	})
}

func BenchmarkSplit(b *testing.B) {
	rng := rand.New(rand.NewPCG(15, 16))
	for _, mss := range []int{1388, 8948} {
		payload := (maxPacket - 52) / mss * mss
		h, pkt := superTCP(TCP4{Src: tsoSrc, Dst: tsoDst, Flags: TCPAck | TCPPsh, TCPOpts: tsOpts, Payload: randomBytes(rng, payload)}, mss)
		bufs := make([][]byte, (payload+mss-1)/mss)
		for i := range bufs {
			bufs[i] = make([]byte, 16+maxPacket)
		}
		b.Run(fmt.Sprintf("mss=%d", mss), func(b *testing.B) {
			b.SetBytes(int64(len(pkt)))
			b.ReportAllocs()
			var s segmenter
			for b.Loop() {
				if !s.start(&h, pkt) {
					b.Fatal("refused")
				}
				for i := 0; s.pending(); i++ {
					if _, ok := s.next(bufs[i][16:]); !ok {
						b.Fatal("does not fit")
					}
				}
			}
			b.ReportMetric(float64(b.N*len(bufs))/b.Elapsed().Seconds(), "segments/s")
		})
	}
}
