package tuntest

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
)

// Ports used by IPv4UDP and IPv4TCP.
const (
	UDPSrcPort = 40000
	UDPDstPort = 9 // discard
)

// IPv4 protocol numbers used by the builders.
const (
	ProtoICMP = 1
	ProtoTCP  = 6
	ProtoUDP  = 17
)

// IPv4 returns an IPv4 packet (20-byte header, DF set, TTL 64) carrying
// payload as protocol proto, with a correct header checksum. src and dst
// must be IPv4.
func IPv4(src, dst netip.Addr, proto byte, payload []byte) []byte {
	pkt := make([]byte, 20+len(payload))
	pkt[0] = 0x45
	binary.BigEndian.PutUint16(pkt[2:4], uint16(len(pkt)))
	binary.BigEndian.PutUint16(pkt[6:8], 0x4000) // DF
	pkt[8] = 64
	pkt[9] = proto
	s, d := src.As4(), dst.As4()
	copy(pkt[12:16], s[:])
	copy(pkt[16:20], d[:])
	binary.BigEndian.PutUint16(pkt[10:12], Checksum(pkt[:20], 0))
	copy(pkt[20:], payload)
	return pkt
}

// IPv4UDP returns an IPv4 UDP packet from src:UDPSrcPort to dst:UDPDstPort
// with valid IP and UDP checksums.
func IPv4UDP(src, dst netip.Addr, payload []byte) []byte {
	udp := make([]byte, 8+len(payload))
	binary.BigEndian.PutUint16(udp[0:2], UDPSrcPort)
	binary.BigEndian.PutUint16(udp[2:4], UDPDstPort)
	binary.BigEndian.PutUint16(udp[4:6], uint16(len(udp)))
	copy(udp[8:], payload)
	sum := Checksum(udp, pseudoHeaderSum(src, dst, ProtoUDP, len(udp)))
	if sum == 0 {
		sum = 0xffff // 0 means "no checksum" in UDP
	}
	binary.BigEndian.PutUint16(udp[6:8], sum)
	return IPv4(src, dst, ProtoUDP, udp)
}

// IPv4TCP returns an IPv4 TCP segment (ACK|PSH, 20-byte header) from
// src:UDPSrcPort to dst:UDPDstPort with valid IP and TCP checksums.
func IPv4TCP(src, dst netip.Addr, seq uint32, payload []byte) []byte {
	tcp := make([]byte, 20+len(payload))
	binary.BigEndian.PutUint16(tcp[0:2], UDPSrcPort)
	binary.BigEndian.PutUint16(tcp[2:4], UDPDstPort)
	binary.BigEndian.PutUint32(tcp[4:8], seq)
	tcp[12] = 5 << 4
	tcp[13] = 0x18 // ACK|PSH
	binary.BigEndian.PutUint16(tcp[14:16], 0xffff)
	copy(tcp[20:], payload)
	binary.BigEndian.PutUint16(tcp[16:18], Checksum(tcp, pseudoHeaderSum(src, dst, ProtoTCP, len(tcp))))
	return IPv4(src, dst, ProtoTCP, tcp)
}

// IPv4ICMPEcho returns an ICMP echo request from src to dst with valid
// checksums.
func IPv4ICMPEcho(src, dst netip.Addr, id, seq uint16, payload []byte) []byte {
	icmp := make([]byte, 8+len(payload))
	icmp[0] = 8 // echo request
	binary.BigEndian.PutUint16(icmp[4:6], id)
	binary.BigEndian.PutUint16(icmp[6:8], seq)
	copy(icmp[8:], payload)
	binary.BigEndian.PutUint16(icmp[2:4], Checksum(icmp, 0))
	return IPv4(src, dst, ProtoICMP, icmp)
}

// Checksum returns the Internet checksum (RFC 1071) of b, starting from the
// partial sum initial.
func Checksum(b []byte, initial uint32) uint16 {
	sum := initial
	for len(b) >= 2 {
		sum += uint32(binary.BigEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		sum += uint32(b[0]) << 8
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

func pseudoHeaderSum(src, dst netip.Addr, proto byte, length int) uint32 {
	s, d := src.As4(), dst.As4()
	return uint32(binary.BigEndian.Uint16(s[0:2])) + uint32(binary.BigEndian.Uint16(s[2:4])) +
		uint32(binary.BigEndian.Uint16(d[0:2])) + uint32(binary.BigEndian.Uint16(d[2:4])) +
		uint32(proto) + uint32(length)
}

// VerifyIPv4 checks that pkt is one IPv4 packet whose header checksum and,
// for TCP, UDP and ICMP, payload checksum are valid: what a receiving kernel
// checks.
func VerifyIPv4(pkt []byte) error {
	if len(pkt) < 20 || pkt[0]>>4 != 4 {
		return errors.New("not an IPv4 packet")
	}
	hlen := int(pkt[0]&0x0f) * 4
	if hlen < 20 || len(pkt) < hlen || int(binary.BigEndian.Uint16(pkt[2:4])) != len(pkt) {
		return fmt.Errorf("bad lengths: ihl %d, total %d, have %d",
			hlen, binary.BigEndian.Uint16(pkt[2:4]), len(pkt))
	}
	if Checksum(pkt[:hlen], 0) != 0 {
		return errors.New("bad IPv4 header checksum")
	}
	src := netip.AddrFrom4([4]byte(pkt[12:16]))
	dst := netip.AddrFrom4([4]byte(pkt[16:20]))
	body := pkt[hlen:]
	switch pkt[9] {
	case ProtoTCP:
		if len(body) < 20 || int(body[12]>>4)*4 < 20 || int(body[12]>>4)*4 > len(body) {
			return errors.New("bad TCP header length")
		}
		if Checksum(body, pseudoHeaderSum(src, dst, ProtoTCP, len(body))) != 0 {
			return errors.New("bad TCP checksum")
		}
	case ProtoUDP:
		if len(body) < 8 || int(binary.BigEndian.Uint16(body[4:6])) != len(body) {
			return errors.New("bad UDP length")
		}
		if binary.BigEndian.Uint16(body[6:8]) != 0 &&
			Checksum(body, pseudoHeaderSum(src, dst, ProtoUDP, len(body))) != 0 {
			return errors.New("bad UDP checksum")
		}
	case ProtoICMP:
		if Checksum(body, 0) != 0 {
			return errors.New("bad ICMP checksum")
		}
	}
	return nil
}
