package tunnel

import "encoding/binary"

// IPv4HeaderLen is the length of an IPv4 header without options.
const IPv4HeaderLen = 20

// DropReason says why the forwarder discarded a packet. The zero value,
// DropNone, means the packet was not dropped.
type DropReason uint8

const (
	DropNone DropReason = iota
	// DropNoRoute: no peer's subnet holds the destination. weft sends no
	// ICMP back (flanneld's unreachable is written with a local source
	// address, which the kernel drops anyway).
	DropNoRoute
	// DropNotIPv4: the version field is not 4 (e.g. IPv6 from the TUN).
	DropNotIPv4
	// DropTruncated: shorter than the header it announces (or than 20 bytes).
	DropTruncated
	// DropBadHeaderLen: IHL below 5.
	DropBadHeaderLen
	// DropHeaderExceedsTotal: the total length field is below the header length.
	DropHeaderExceedsTotal
	// DropBadTotalLen: the total length field differs from the datagram length.
	DropBadTotalLen
	// DropTTLExpired: the TTL would reach 0 on decrement.
	DropTTLExpired
	// DropSendError: the kernel refused to send the datagram to the peer.
	DropSendError
	// DropTUNWriteError: the kernel refused the packet written to the TUN.
	DropTUNWriteError
	// DropUnknownSource: the inner source lies in no lease's subnet.
	DropUnknownSource
	// DropSpoofedSource: the inner source's lease has another PublicIP than
	// the datagram's outer source.
	DropSpoofedSource
	// DropNotLocal: the inner destination is not in this node's subnet.
	DropNotLocal

	// NumDropReasons sizes arrays indexed by DropReason.
	NumDropReasons
)

var dropReasonNames = [NumDropReasons]string{
	DropNone:               "none",
	DropNoRoute:            "no_route",
	DropNotIPv4:            "not_ipv4",
	DropTruncated:          "truncated",
	DropBadHeaderLen:       "bad_header_len",
	DropHeaderExceedsTotal: "header_exceeds_total",
	DropBadTotalLen:        "bad_total_len",
	DropTTLExpired:         "ttl_expired",
	DropSendError:          "send_error",
	DropTUNWriteError:      "tun_write_error",
	DropUnknownSource:      "unknown_source",
	DropSpoofedSource:      "spoofed_source",
	DropNotLocal:           "not_local",
}

// String returns the reason's metric-style name, e.g. "no_route".
func (r DropReason) String() string {
	if r < NumDropReasons {
		return dropReasonNames[r]
	}
	return "unknown"
}

// DropReasonNames lists the name of every reason a packet is dropped for
// (DropNone aside), in order.
func DropReasonNames() []string {
	names := make([]string, 0, NumDropReasons-1)
	for r := DropReason(1); r < NumDropReasons; r++ {
		names = append(names, r.String())
	}
	return names
}

// ValidateIPv4 checks an inner packet received from the network, where any
// byte may be hostile: pkt must be exactly one IPv4 packet with a sane header.
// It does not verify the header checksum: the kernel does that when the
// packet is written to the TUN, exactly as for a stock flanneld receiver.
func ValidateIPv4(pkt []byte) DropReason {
	if len(pkt) == 0 {
		return DropTruncated
	}
	if pkt[0]>>4 != 4 {
		return DropNotIPv4
	}
	if len(pkt) < IPv4HeaderLen {
		return DropTruncated
	}
	hlen := int(pkt[0]&0x0f) * 4
	if hlen < IPv4HeaderLen {
		return DropBadHeaderLen
	}
	if len(pkt) < hlen {
		return DropTruncated
	}
	total := int(binary.BigEndian.Uint16(pkt[2:4]))
	if total < hlen {
		return DropHeaderExceedsTotal
	}
	if total != len(pkt) {
		return DropBadTotalLen
	}
	return DropNone
}

// DecrementTTL lowers the TTL of a packet that passed ValidateIPv4 by one and
// patches the header checksum incrementally (RFC 1624, eqn. 3), so a header
// that verified before still verifies. A packet whose TTL would reach 0 is
// left untouched and reported as DropTTLExpired.
func DecrementTTL(pkt []byte) DropReason {
	if pkt[8] <= 1 {
		return DropTTLExpired
	}
	// TTL and protocol share the 16-bit word at offset 8.
	old := binary.BigEndian.Uint16(pkt[8:10])
	pkt[8]--
	updated := binary.BigEndian.Uint16(pkt[8:10])
	sum := uint32(^binary.BigEndian.Uint16(pkt[10:12])) + uint32(^old) + uint32(updated)
	sum = (sum & 0xffff) + sum>>16
	sum = (sum & 0xffff) + sum>>16
	binary.BigEndian.PutUint16(pkt[10:12], ^uint16(sum))
	return DropNone
}

// DestinationIPv4 returns the destination address of a packet read from the
// TUN. Only IPv4 packets of at least a minimal header are forwarded; anything
// else (IPv6 neighbour discovery, say) is dropped.
func DestinationIPv4(pkt []byte) (dst [4]byte, reason DropReason) {
	if len(pkt) == 0 {
		return dst, DropTruncated
	}
	if pkt[0]>>4 != 4 {
		return dst, DropNotIPv4
	}
	if len(pkt) < IPv4HeaderLen {
		return dst, DropTruncated
	}
	return [4]byte(pkt[16:20]), DropNone
}
