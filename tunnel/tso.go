package tunnel

import "encoding/binary"

// Splitting what the kernel hands a TUN with offloads on: TSO (and USO)
// super-packets of up to 64 KB, and single packets whose L4 checksum is
// left partial. Every packet that leaves here is one whole inner IPv4
// packet with valid IP and L4 checksums, because each goes out as one UDP
// datagram and a stock flanneld peer writes it to a TUN without a vnet
// header, where its kernel checks both.

const (
	protoTCP = 6
	protoUDP = 17

	tcpFIN = 0x01
	tcpSYN = 0x02
	tcpRST = 0x04
	tcpPSH = 0x08
	tcpACK = 0x10
	tcpURG = 0x20
	tcpECE = 0x40
	tcpCWR = 0x80

	// maxHeaders bounds an IPv4 header with options plus a TCP header with
	// options.
	maxHeaders = 60 + 60
)

// segmenter cuts one super-packet into segments of gsoSize payload bytes,
// each with a copy of the super-packet's headers fixed up as the kernel's
// own GSO would (tcp_gso_segment, __udp_gso_segment, inet_gso_segment). It
// can stop when the caller's buffers run out and go on later.
type segmenter struct {
	hdr     [maxHeaders]byte // the super-packet's headers, a template
	ipLen   int
	hdrLen  int // IP + L4 header
	proto   byte
	gsoSize int
	payload []byte // not yet emitted
	seq     uint32 // TCP sequence number of payload[0]
	id      uint16 // IPv4 ID of the next segment
	first   bool   // the next segment is the first
	pseudo  uint64 // pseudo-header sum without the L4 length
}

// start prepares to split pkt, read with h. It returns false, leaving
// nothing pending, if pkt is not a TCPv4 or UDPv4 super-packet it can split
// (TCPv6 and UFO among them): the caller discards it. Header lengths come
// from the IP and TCP headers, checked against csum_start; hdr_len, which
// some kernels fill with the whole linear part, is ignored.
func (s *segmenter) start(h *virtioNetHdr, pkt []byte) bool {
	s.payload = nil
	if len(pkt) < IPv4HeaderLen || pkt[0]>>4 != 4 || h.gsoSize == 0 {
		return false
	}
	ipLen := int(pkt[0]&0x0f) * 4
	if ipLen < IPv4HeaderLen || len(pkt) < ipLen ||
		int(binary.BigEndian.Uint16(pkt[2:4])) != len(pkt) ||
		binary.BigEndian.Uint16(pkt[6:8])&0x3fff != 0 { // MF or a fragment offset
		return false
	}
	if h.flags&virtioNeedsCsum != 0 && int(h.csumStart) != ipLen {
		return false
	}
	var l4Len int
	switch h.gsoType &^ virtioGSOECN {
	case virtioGSOTCPv4:
		if pkt[9] != protoTCP || len(pkt) < ipLen+20 {
			return false
		}
		l4Len = int(pkt[ipLen+12]>>4) * 4
		if l4Len < 20 || (h.flags&virtioNeedsCsum != 0 && h.csumOffset != 16) {
			return false
		}
	case virtioGSOUDPL4:
		if pkt[9] != protoUDP {
			return false
		}
		l4Len = 8
		if h.flags&virtioNeedsCsum != 0 && h.csumOffset != 6 {
			return false
		}
	default:
		return false
	}
	hdrLen := ipLen + l4Len
	if len(pkt) <= hdrLen {
		return false // a super-packet without payload
	}
	copy(s.hdr[:], pkt[:hdrLen])
	s.ipLen, s.hdrLen, s.proto = ipLen, hdrLen, pkt[9]
	s.gsoSize = int(h.gsoSize)
	s.payload = pkt[hdrLen:]
	s.id = binary.BigEndian.Uint16(pkt[4:6])
	if s.proto == protoTCP {
		s.seq = binary.BigEndian.Uint32(pkt[ipLen+4 : ipLen+8])
	}
	s.first = true
	s.pseudo = pseudoHeaderSum(pkt, s.proto, 0)
	return true
}

// pending reports whether segments remain.
func (s *segmenter) pending() bool { return len(s.payload) > 0 }

// segments returns how many segments remain.
func (s *segmenter) segments() int { return (len(s.payload) + s.gsoSize - 1) / s.gsoSize }

// reset drops what remains.
func (s *segmenter) reset() { s.payload = nil }

// next writes the next segment to dst and returns its length. It returns
// false if dst cannot hold it (nothing is written then). dst may be the very
// buffer the super-packet was read into: the first segment is then fixed
// up in place without moving its payload.
func (s *segmenter) next(dst []byte) (int, bool) {
	n := min(s.gsoSize, len(s.payload))
	size := s.hdrLen + n
	if n == 0 || len(dst) < size {
		return 0, false
	}
	last := n == len(s.payload)
	inPlace := &dst[s.hdrLen] == &s.payload[0]
	copy(dst, s.hdr[:s.hdrLen])
	if !inPlace {
		copy(dst[s.hdrLen:size], s.payload[:n])
	}
	ip := dst[:s.ipLen]
	binary.BigEndian.PutUint16(ip[2:4], uint16(size))
	binary.BigEndian.PutUint16(ip[4:6], s.id)
	setIPv4HeaderChecksum(ip, s.ipLen)

	l4 := dst[s.ipLen:size]
	sum := s.pseudo + uint64(len(l4))
	if s.proto == protoTCP {
		binary.BigEndian.PutUint32(l4[4:8], s.seq)
		flags := l4[13]
		if !last {
			flags &^= tcpFIN | tcpPSH
		}
		if !s.first {
			flags &^= tcpCWR
		}
		l4[13] = flags
		l4[16], l4[17] = 0, 0
		binary.BigEndian.PutUint16(l4[16:18], checksum(l4, sum))
	} else {
		binary.BigEndian.PutUint16(l4[4:6], uint16(len(l4)))
		l4[6], l4[7] = 0, 0
		binary.BigEndian.PutUint16(l4[6:8], udpChecksum(checksum(l4, sum)))
	}

	s.payload = s.payload[n:]
	s.seq += uint32(n)
	s.id++
	s.first = false
	return size, true
}

// udpChecksum maps a computed UDP checksum of 0 to 0xffff: 0 in the field
// means "no checksum" (RFC 768).
func udpChecksum(c uint16) uint16 {
	if c == 0 {
		return 0xffff
	}
	return c
}

// completeChecksum finishes the L4 checksum of a single packet the kernel
// left partial (NEEDS_CSUM without GSO). It returns false if the offsets do
// not fit the packet: the caller discards it.
//
// For IPv4 TCP and UDP the checksum is computed from scratch with the
// pseudo-header, so the result is valid whatever the field held; anything
// else (IPv6, say, which the forwarder drops anyway) is finished the
// kernel's way (skb_checksum_help), from the partial sum in the field.
func completeChecksum(h *virtioNetHdr, pkt []byte) bool {
	start, off := int(h.csumStart), int(h.csumOffset)
	if start >= len(pkt) || off+2 > len(pkt)-start {
		return false
	}
	l4 := pkt[start:]
	if len(pkt) >= IPv4HeaderLen && pkt[0]>>4 == 4 && start == int(pkt[0]&0x0f)*4 &&
		int(binary.BigEndian.Uint16(pkt[2:4])) == len(pkt) {
		switch {
		case pkt[9] == protoTCP && off == 16:
			l4[16], l4[17] = 0, 0
			binary.BigEndian.PutUint16(l4[16:18], checksum(l4, pseudoHeaderSum(pkt, protoTCP, len(l4))))
			return true
		case pkt[9] == protoUDP && off == 6:
			if len(l4) < 8 || int(binary.BigEndian.Uint16(l4[4:6])) != len(l4) {
				return false
			}
			l4[6], l4[7] = 0, 0
			binary.BigEndian.PutUint16(l4[6:8], udpChecksum(checksum(l4, pseudoHeaderSum(pkt, protoUDP, len(l4)))))
			return true
		}
	}
	binary.BigEndian.PutUint16(l4[off:off+2], udpChecksum(checksum(l4, 0)))
	return true
}
