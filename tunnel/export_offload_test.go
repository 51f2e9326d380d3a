package tunnel

import (
	"encoding/binary"
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// Test helpers for the offload code, shared by the internal tests and (being
// exported) the external root tests. The checksums here are computed by a
// plain reference implementation, independent of checksum.go.

// refChecksum is RFC 1071 the obvious way: 16-bit big-endian words.
func refChecksum(b []byte, initial uint32) uint16 {
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

func refPseudo(pkt []byte, proto byte, l4Len int) uint32 {
	var s uint32
	for i := 12; i < 20; i += 2 {
		s += uint32(binary.BigEndian.Uint16(pkt[i:]))
	}
	return s + uint32(proto) + uint32(l4Len)
}

// TCP4 describes a TCPv4 packet; Build makes it with valid checksums.
type TCP4 struct {
	Src, Dst     [4]byte
	SPort, DPort uint16
	Seq, Ack     uint32
	Flags        byte
	Window       uint16
	ID           uint16
	TTL, TOS     byte
	IPOpts       []byte // a multiple of 4 bytes
	TCPOpts      []byte // a multiple of 4 bytes
	Payload      []byte
}

// TCP flags for TCP4.Flags.
const (
	TCPFin = tcpFIN
	TCPSyn = tcpSYN
	TCPRst = tcpRST
	TCPPsh = tcpPSH
	TCPAck = tcpACK
	TCPCwr = tcpCWR
)

func (p TCP4) Build() []byte {
	ipLen := 20 + len(p.IPOpts)
	tcpLen := 20 + len(p.TCPOpts)
	pkt := make([]byte, ipLen+tcpLen+len(p.Payload))
	pkt[0] = 0x40 | byte(ipLen/4)
	pkt[1] = p.TOS
	binary.BigEndian.PutUint16(pkt[2:4], uint16(len(pkt)))
	binary.BigEndian.PutUint16(pkt[4:6], p.ID)
	binary.BigEndian.PutUint16(pkt[6:8], 0x4000) // DF
	pkt[8] = p.TTL
	if pkt[8] == 0 {
		pkt[8] = 64
	}
	pkt[9] = protoTCP
	copy(pkt[12:16], p.Src[:])
	copy(pkt[16:20], p.Dst[:])
	copy(pkt[20:], p.IPOpts)
	binary.BigEndian.PutUint16(pkt[10:12], refChecksum(pkt[:ipLen], 0))
	tcp := pkt[ipLen:]
	binary.BigEndian.PutUint16(tcp[0:2], p.SPort)
	binary.BigEndian.PutUint16(tcp[2:4], p.DPort)
	binary.BigEndian.PutUint32(tcp[4:8], p.Seq)
	binary.BigEndian.PutUint32(tcp[8:12], p.Ack)
	tcp[12] = byte(tcpLen/4) << 4
	tcp[13] = p.Flags
	binary.BigEndian.PutUint16(tcp[14:16], p.Window)
	copy(tcp[20:], p.TCPOpts)
	copy(tcp[tcpLen:], p.Payload)
	binary.BigEndian.PutUint16(tcp[16:18], refChecksum(tcp, refPseudo(pkt, protoTCP, len(tcp))))
	return pkt
}

// VerifyPacket checks pkt as a receiving kernel would: one IPv4 packet with
// consistent lengths, a valid header checksum and, for TCP and UDP, a
// valid L4 checksum (UDP's may be absent).
func VerifyPacket(pkt []byte) error {
	if len(pkt) < 20 || pkt[0]>>4 != 4 {
		return errors.New("not an IPv4 packet")
	}
	ipLen := int(pkt[0]&0x0f) * 4
	if ipLen < 20 || len(pkt) < ipLen || int(binary.BigEndian.Uint16(pkt[2:4])) != len(pkt) {
		return fmt.Errorf("bad lengths: ihl %d, total %d, have %d", ipLen, binary.BigEndian.Uint16(pkt[2:4]), len(pkt))
	}
	if refChecksum(pkt[:ipLen], 0) != 0 {
		return errors.New("bad IPv4 header checksum")
	}
	l4 := pkt[ipLen:]
	switch pkt[9] {
	case protoTCP:
		if len(l4) < 20 || int(l4[12]>>4)*4 < 20 || int(l4[12]>>4)*4 > len(l4) {
			return errors.New("bad TCP header length")
		}
		if refChecksum(l4, refPseudo(pkt, protoTCP, len(l4))) != 0 {
			return errors.New("bad TCP checksum")
		}
	case protoUDP:
		if len(l4) < 8 || int(binary.BigEndian.Uint16(l4[4:6])) != len(l4) {
			return errors.New("bad UDP length")
		}
		if binary.BigEndian.Uint16(l4[6:8]) != 0 && refChecksum(l4, refPseudo(pkt, protoUDP, len(l4))) != 0 {
			return errors.New("bad UDP checksum")
		}
	}
	return nil
}

// OpenTUNRefusingOffloads opens c as OpenTUNConfig does, with a
// TUNSETOFFLOAD that fails with errno, as on a kernel without offloads.
func OpenTUNRefusingOffloads(c TUNConfig, errno unix.Errno) (Device, error) {
	c.setOffload = func(int, int) error { return errno }
	return OpenTUNConfig(c)
}

// FailGSOWrites makes dev's writes of super-packets fail with errno, as on
// a kernel that broke them; plain writes still reach the kernel.
func FailGSOWrites(dev Device, errno unix.Errno) {
	t := dev.(*tun)
	t.wmu.Lock()
	defer t.wmu.Unlock()
	t.writev = func(fd int, iov []unix.Iovec) error {
		if iov[0].Base == &t.wvh[0] && t.wvh[1] != virtioGSONone {
			return errno
		}
		return writev(fd, iov)
	}
}
