package tunnel

import (
	"bytes"
	"encoding/binary"
	"testing"
)

// testHeaderChecksum folds the one's complement sum of an IPv4 header; a
// header with a valid checksum folds to 0xffff.
func testHeaderSum(h []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(h); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(h[i:]))
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	return uint16(sum)
}

// testPacket returns a valid IPv4 packet with an ihl-word header, the given
// TTL and payload length, and a correct header checksum.
func testPacket(ihl int, ttl byte, payload int) []byte {
	hlen := ihl * 4
	pkt := make([]byte, hlen+payload)
	pkt[0] = 0x40 | byte(ihl)
	binary.BigEndian.PutUint16(pkt[2:4], uint16(len(pkt)))
	binary.BigEndian.PutUint16(pkt[4:6], 0x1c46)
	pkt[6] = 0x40
	pkt[8] = ttl
	pkt[9] = 17
	copy(pkt[12:16], []byte{198, 19, 1, 5})
	copy(pkt[16:20], []byte{198, 19, 2, 7})
	for i := 20; i < hlen; i++ {
		pkt[i] = 1 // NOP options
	}
	for i := hlen; i < len(pkt); i++ {
		pkt[i] = byte(i)
	}
	binary.BigEndian.PutUint16(pkt[10:12], ^testHeaderSum(pkt[:hlen]))
	return pkt
}

func TestValidateIPv4(t *testing.T) {
	with := func(pkt []byte, edit func([]byte)) []byte {
		edit(pkt)
		return pkt
	}
	tests := []struct {
		name string
		pkt  []byte
		want DropReason
	}{
		{"valid", testPacket(5, 64, 100), DropNone},
		{"valid with options", testPacket(15, 64, 3), DropNone},
		{"header only", testPacket(5, 64, 0), DropNone},
		{"empty", nil, DropTruncated},
		{"ipv6", with(testPacket(5, 64, 40), func(p []byte) { p[0] = 0x60 }), DropNotIPv4},
		{"version 0", []byte{0x05}, DropNotIPv4},
		{"short header", testPacket(5, 64, 0)[:19], DropTruncated},
		{"ihl 4", with(testPacket(5, 64, 8), func(p []byte) { p[0] = 0x44 }), DropBadHeaderLen},
		{"ihl 0", with(testPacket(5, 64, 8), func(p []byte) { p[0] = 0x40 }), DropBadHeaderLen},
		{"options truncated", testPacket(6, 64, 0)[:22], DropTruncated},
		{"total below header", with(testPacket(6, 64, 4), func(p []byte) { p[3] = 20 }), DropHeaderExceedsTotal},
		{"total too long", with(testPacket(5, 64, 10), func(p []byte) { p[3]++ }), DropBadTotalLen},
		{"total too short", with(testPacket(5, 64, 10), func(p []byte) { p[3]-- }), DropBadTotalLen},
		{"trailing bytes", append(testPacket(5, 64, 10), 0), DropBadTotalLen},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			orig := bytes.Clone(tt.pkt)
			if got := ValidateIPv4(tt.pkt); got != tt.want {
				t.Errorf("ValidateIPv4 = %v, want %v", got, tt.want)
			}
			if !bytes.Equal(tt.pkt, orig) {
				t.Error("ValidateIPv4 modified the packet")
			}
		})
	}
}

func TestDecrementTTL(t *testing.T) {
	for _, ttl := range []byte{255, 128, 64, 2} {
		pkt := testPacket(5, ttl, 20)
		if r := DecrementTTL(pkt); r != DropNone {
			t.Fatalf("TTL %d: DecrementTTL = %v", ttl, r)
		}
		if pkt[8] != ttl-1 {
			t.Errorf("TTL %d: now %d", ttl, pkt[8])
		}
		want := testPacket(5, ttl-1, 20) // checksum computed from scratch
		if !bytes.Equal(pkt, want) {
			t.Errorf("TTL %d: got % x, want % x", ttl, pkt[:20], want[:20])
		}
	}
	for _, ttl := range []byte{1, 0} {
		pkt := testPacket(5, ttl, 20)
		orig := bytes.Clone(pkt)
		if r := DecrementTTL(pkt); r != DropTTLExpired {
			t.Errorf("TTL %d: DecrementTTL = %v, want ttl_expired", ttl, r)
		}
		if !bytes.Equal(pkt, orig) {
			t.Errorf("TTL %d: packet modified on drop", ttl)
		}
	}
}

func TestDestinationIPv4(t *testing.T) {
	dst, r := DestinationIPv4(testPacket(5, 64, 0))
	if r != DropNone || dst != [4]byte{198, 19, 2, 7} {
		t.Errorf("DestinationIPv4 = %v, %v", dst, r)
	}
	if _, r := DestinationIPv4(testPacket(5, 64, 0)[:19]); r != DropTruncated {
		t.Errorf("19 bytes: %v, want truncated", r)
	}
	if _, r := DestinationIPv4(nil); r != DropTruncated {
		t.Errorf("empty: %v, want truncated", r)
	}
	v6 := make([]byte, 40)
	v6[0] = 0x60
	if _, r := DestinationIPv4(v6); r != DropNotIPv4 {
		t.Errorf("IPv6: %v, want not_ipv4", r)
	}
}

func TestDropReasonString(t *testing.T) {
	seen := map[string]bool{}
	for r := DropNone; r < NumDropReasons; r++ {
		s := r.String()
		if s == "" || s == "unknown" || seen[s] {
			t.Errorf("DropReason(%d).String() = %q: empty, unknown or duplicate", r, s)
		}
		seen[s] = true
	}
	if DropNoRoute.String() != "no_route" || DropTTLExpired.String() != "ttl_expired" {
		t.Error("metric names changed")
	}
	if NumDropReasons.String() != "unknown" {
		t.Errorf("out of range: %q", NumDropReasons.String())
	}
}

// FuzzIPv4 feeds arbitrary datagrams through the receive-side checks and
// the TUN-side destination read, asserting what the forwarder relies on.
func FuzzIPv4(f *testing.F) {
	f.Add(testPacket(5, 64, 100))
	f.Add(testPacket(5, 1, 0))
	f.Add(testPacket(5, 2, 1))
	f.Add(testPacket(15, 255, 7))
	f.Add(testPacket(6, 64, 4)[:22])
	f.Add([]byte{})
	f.Add([]byte{0x45})
	f.Add([]byte{0x60, 0, 0, 0})
	p := testPacket(5, 64, 0)
	p[10], p[11] = 0, 0 // wrong checksum
	f.Add(p)
	p = testPacket(5, 64, 0)
	p[3] = 10 // total below header
	f.Add(p)

	f.Fuzz(func(t *testing.T, pkt []byte) {
		orig := bytes.Clone(pkt)

		dst, r := DestinationIPv4(pkt)
		if r >= NumDropReasons {
			t.Fatalf("DestinationIPv4 reason %d out of range", r)
		}
		if r == DropNone {
			if len(pkt) < IPv4HeaderLen || pkt[0]>>4 != 4 {
				t.Fatalf("DestinationIPv4 accepted % x", pkt)
			}
			if !bytes.Equal(dst[:], pkt[16:20]) {
				t.Fatalf("destination %v, header says % x", dst, pkt[16:20])
			}
		} else if len(pkt) >= IPv4HeaderLen && pkt[0]>>4 == 4 {
			t.Fatalf("DestinationIPv4 refused an IPv4 packet: %v", r)
		}

		r = ValidateIPv4(pkt)
		if !bytes.Equal(pkt, orig) {
			t.Fatal("ValidateIPv4 modified the packet")
		}
		if r >= NumDropReasons || r == DropNoRoute || r == DropTTLExpired || r == DropSendError {
			t.Fatalf("ValidateIPv4 returned %v", r)
		}
		if r != DropNone {
			return
		}
		hlen := int(pkt[0]&0x0f) * 4
		if pkt[0]>>4 != 4 || hlen < IPv4HeaderLen || len(pkt) < hlen ||
			int(binary.BigEndian.Uint16(pkt[2:4])) != len(pkt) {
			t.Fatalf("ValidateIPv4 accepted a bad header: % x", pkt[:min(len(pkt), 24)])
		}

		verified := testHeaderSum(pkt[:hlen]) == 0xffff
		ttl := pkt[8]
		r = DecrementTTL(pkt)
		if ttl <= 1 {
			if r != DropTTLExpired || !bytes.Equal(pkt, orig) {
				t.Fatalf("TTL %d: reason %v, modified %v", ttl, r, !bytes.Equal(pkt, orig))
			}
			return
		}
		if r != DropNone || pkt[8] != ttl-1 {
			t.Fatalf("TTL %d: reason %v, now %d", ttl, r, pkt[8])
		}
		for i := range pkt {
			if pkt[i] != orig[i] && i != 8 && i != 10 && i != 11 {
				t.Fatalf("DecrementTTL changed byte %d", i)
			}
		}
		if verified && testHeaderSum(pkt[:hlen]) != 0xffff {
			t.Fatalf("checksum no longer verifies: before % x, after % x", orig[:hlen], pkt[:hlen])
		}
	})
}
