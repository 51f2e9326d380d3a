package tunnel

import "encoding/binary"

// A TUN opened with IFF_VNET_HDR prefixes every packet read or written with
// a struct virtio_net_hdr (include/uapi/linux/virtio_net.h). Its fields are
// in the device's vnet byte order, which for a legacy header is the host's.
const virtioNetHdrLen = 10

// virtio_net_hdr flags.
const (
	// virtioNeedsCsum: the L4 checksum is partial. The field at
	// csumStart+csumOffset holds the pseudo-header sum; the rest of the sum
	// over the bytes from csumStart is still to be added.
	virtioNeedsCsum = 1
	// (2, VIRTIO_NET_HDR_F_DATA_VALID, is never written: the kernel checks
	// a packet written alone, and weft checks the segments it merges; see
	// parseSegment.)
)

// virtio_net_hdr gso types.
const (
	virtioGSONone  = 0
	virtioGSOTCPv4 = 1
	virtioGSOUDP   = 3 // UFO: IP fragmentation, never enabled
	virtioGSOTCPv6 = 4
	virtioGSOUDPL4 = 5 // USO
	virtioGSOECN   = 0x80
)

// TUNSETOFFLOAD flags (include/uapi/linux/if_tun.h); x/sys/unix lacks them.
const (
	tunFCsum = 0x01
	tunFTSO4 = 0x02
	tunFTSO6 = 0x04
	tunFUSO4 = 0x20
	tunFUSO6 = 0x40
)

type virtioNetHdr struct {
	flags      uint8
	gsoType    uint8
	hdrLen     uint16
	gsoSize    uint16
	csumStart  uint16
	csumOffset uint16
}

func (h *virtioNetHdr) decode(b []byte) {
	_ = b[virtioNetHdrLen-1]
	h.flags = b[0]
	h.gsoType = b[1]
	h.hdrLen = binary.NativeEndian.Uint16(b[2:4])
	h.gsoSize = binary.NativeEndian.Uint16(b[4:6])
	h.csumStart = binary.NativeEndian.Uint16(b[6:8])
	h.csumOffset = binary.NativeEndian.Uint16(b[8:10])
}

func (h *virtioNetHdr) encode(b []byte) {
	_ = b[virtioNetHdrLen-1]
	b[0] = h.flags
	b[1] = h.gsoType
	binary.NativeEndian.PutUint16(b[2:4], h.hdrLen)
	binary.NativeEndian.PutUint16(b[4:6], h.gsoSize)
	binary.NativeEndian.PutUint16(b[6:8], h.csumStart)
	binary.NativeEndian.PutUint16(b[8:10], h.csumOffset)
}
