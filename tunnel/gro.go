package tunnel

import (
	"bytes"
	"encoding/binary"
)

// Coalescing on the way into the TUN: consecutive TCPv4 segments of one
// flow become one super-packet written with a GSO virtio-net header, so the
// receiving socket sees one large skb, as behind kernel VXLAN with GRO.
// Where the TUN takes UDP GSO (USO, Linux 6.2+), consecutive UDPv4
// datagrams of one flow are written the same way: one write for a burst
// instead of one per datagram; the kernel splits them back before any
// socket sees them.
//
// Only consecutive packets are merged. Merging across interleaved flows
// would reorder the batch, and Device.Write reports a refused packet by its
// index with everything before it written: a reordered batch could not say
// that. Senders emit TSO bursts back to back, so runs are long anyway.

// maxRunSegments caps the segments in one super-packet (and the iovecs of
// one writev); at a 1400-byte MSS the 64 KB limit comes first.
const maxRunSegments = 64

// segment is what the coalescer needs to know about a TCPv4 or UDPv4
// packet.
type segment struct {
	proto   byte
	ipLen   int
	hdrLen  int // IP + TCP or UDP header
	payload int
	seq     uint32 // TCP only
	flags   byte   // TCP only
}

// parseSegment reports whether pkt may be part of a super-packet: one
// whole unfragmented IPv4 packet with a payload, and, if verify is set,
// valid IP header and L4 checksums. A TCP segment must have ACK set and no
// SYN, FIN, RST, URG or CWR (those travel alone, as Linux GRO flushes on
// them). A UDP datagram qualifies only if udp is set (the TUN takes UDP
// GSO) and it carries a checksum: the super-packet's checksums are the
// kernel's to fill in, and one that had none would get one.
//
// Verifying matters because the super-packet goes to the kernel with its
// checksum marked partial, which the kernel trusts: a bad segment merged
// into it would reach the socket unchecked, where a stock flanneld node's
// kernel would have dropped it.
func parseSegment(pkt []byte, verify, udp bool) (segment, bool) {
	var s segment
	if len(pkt) < 28 || pkt[0]>>4 != 4 {
		return s, false
	}
	s.proto = pkt[9]
	s.ipLen = int(pkt[0]&0x0f) * 4
	if s.ipLen < IPv4HeaderLen || len(pkt) < s.ipLen+8 ||
		int(binary.BigEndian.Uint16(pkt[2:4])) != len(pkt) ||
		binary.BigEndian.Uint16(pkt[6:8])&0x3fff != 0 {
		return s, false
	}
	switch {
	case s.proto == protoUDP && udp:
		return parseUDP(pkt, s, verify)
	case s.proto != protoTCP || len(pkt) < s.ipLen+20:
		return s, false
	}
	tcp := pkt[s.ipLen:]
	s.hdrLen = s.ipLen + int(tcp[12]>>4)*4
	if s.hdrLen < s.ipLen+20 || len(pkt) <= s.hdrLen {
		return s, false
	}
	s.flags = tcp[13]
	if s.flags&(tcpSYN|tcpFIN|tcpRST|tcpURG|tcpCWR) != 0 || s.flags&tcpACK == 0 {
		return s, false
	}
	s.payload = len(pkt) - s.hdrLen
	s.seq = binary.BigEndian.Uint32(tcp[4:8])
	if verify && (checksum(pkt[:s.ipLen], 0) != 0 ||
		checksum(tcp, pseudoHeaderSum(pkt, protoTCP, len(tcp))) != 0) {
		return s, false
	}
	return s, true
}

// parseUDP is parseSegment for a UDP datagram, s holding its IP part.
func parseUDP(pkt []byte, s segment, verify bool) (segment, bool) {
	udp := pkt[s.ipLen:]
	s.hdrLen = s.ipLen + 8
	s.payload = len(pkt) - s.hdrLen
	if s.payload == 0 || int(binary.BigEndian.Uint16(udp[4:6])) != len(udp) ||
		binary.BigEndian.Uint16(udp[6:8]) == 0 {
		return s, false
	}
	if verify && (checksum(pkt[:s.ipLen], 0) != 0 ||
		checksum(udp, pseudoHeaderSum(pkt, protoUDP, len(udp))) != 0) {
		return s, false
	}
	return s, true
}

// canFollow reports whether q (parsed as qs) can join the run that starts
// with first (parsed as fs) and currently ends with a segment parsed as ls,
// the run holding total bytes (headers once, payloads). The rules are those
// under which splitting the super-packet gives back exactly the segments:
// headers equal but for length, ID, checksums, sequence number and PSH;
// sequence numbers contiguous; every payload as long as the first but the
// last, which may be shorter; PSH only on the last. For UDP: the same
// ports, and the same rule on lengths.
func canFollow(first []byte, fs, ls segment, q []byte, qs segment, total int) bool {
	if qs.proto != fs.proto || qs.ipLen != fs.ipLen || qs.hdrLen != fs.hdrLen ||
		ls.payload < fs.payload || qs.payload > fs.payload ||
		total+qs.payload > maxPacket {
		return false
	}
	if fs.proto == protoTCP && (ls.flags&tcpPSH != 0 ||
		qs.seq != ls.seq+uint32(ls.payload) ||
		qs.flags&^tcpPSH != fs.flags&^tcpPSH) {
		return false
	}
	ip := fs.ipLen
	// IPv4: version, IHL, TOS; flags, TTL, protocol; addresses; options.
	be := binary.BigEndian
	if be.Uint16(first[0:2]) != be.Uint16(q[0:2]) || be.Uint32(first[6:10]) != be.Uint32(q[6:10]) ||
		be.Uint64(first[12:20]) != be.Uint64(q[12:20]) ||
		(ip > IPv4HeaderLen && !bytes.Equal(first[IPv4HeaderLen:ip], q[IPv4HeaderLen:ip])) {
		return false
	}
	if fs.proto == protoUDP {
		return be.Uint32(first[ip:ip+4]) == be.Uint32(q[ip:ip+4]) // ports
	}
	// TCP: ports; ACK number; data offset; window; urgent pointer;
	// options (timestamps included, as Linux GRO requires).
	f, t := first[ip:fs.hdrLen], q[ip:qs.hdrLen]
	return be.Uint32(f[0:4]) == be.Uint32(t[0:4]) && be.Uint32(f[8:12]) == be.Uint32(t[8:12]) &&
		f[12] == t[12] && be.Uint16(f[14:16]) == be.Uint16(t[14:16]) &&
		be.Uint16(f[18:20]) == be.Uint16(t[18:20]) && bytes.Equal(f[20:], t[20:])
}

// extendRun finds the run that starts with pkts[0][offset:], parsed as fs.
// It returns the run's length n ≥ 1 and total bytes, and, if n < len(pkts),
// the parse of pkts[n] so no packet is parsed (and verified) twice.
func extendRun(pkts [][]byte, offset int, fs segment, verify, udp bool) (n, total int, next segment, nextOK bool) {
	first := pkts[0][offset:]
	total = len(first)
	ls := fs
	for n = 1; n < len(pkts); n++ {
		q := pkts[n][offset:]
		qs, ok := parseSegment(q, verify, udp)
		if !ok || n == maxRunSegments || !canFollow(first, fs, ls, q, qs, total) {
			return n, total, qs, ok
		}
		total += qs.payload
		ls = qs
	}
	return n, total, segment{}, false
}

// superHeader writes to hdr the headers of a TCPv4 or UDPv4 super-packet
// made of a run of total bytes that starts with first (parsed as fs) and
// ends with last: first's headers with the IP total length and header
// checksum redone, for TCP PSH if the last segment had it, for UDP the
// length of the whole, and the L4 checksum field holding the pseudo-header
// sum, as NEEDS_CSUM requires (the kernel adjusts it per segment). It
// returns the virtio-net header to write before them. On the wire the
// headers are followed by the payloads of the run's segments.
func superHeader(hdr, first []byte, fs segment, last []byte, total int) virtioNetHdr {
	hdr = hdr[:fs.hdrLen]
	copy(hdr, first)
	binary.BigEndian.PutUint16(hdr[2:4], uint16(total))
	setIPv4HeaderChecksum(hdr, fs.ipLen)
	l4 := hdr[fs.ipLen:]
	h := virtioNetHdr{
		flags:     virtioNeedsCsum,
		gsoType:   virtioGSOTCPv4,
		hdrLen:    uint16(fs.hdrLen),
		gsoSize:   uint16(fs.payload),
		csumStart: uint16(fs.ipLen),
	}
	if fs.proto == protoUDP {
		h.gsoType, h.csumOffset = virtioGSOUDPL4, 6
		binary.BigEndian.PutUint16(l4[4:6], uint16(total-fs.ipLen))
	} else {
		h.csumOffset = 16
		l4[13] |= last[fs.ipLen+13] & tcpPSH
	}
	partial := foldSum(pseudoHeaderSum(hdr, fs.proto, total-fs.ipLen))
	binary.BigEndian.PutUint16(l4[h.csumOffset:], uint16(partial))
	return h
}
