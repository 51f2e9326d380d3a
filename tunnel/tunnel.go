// Package tunnel is weft's data path: it moves inner IPv4 packets between a
// TUN device and a UDP socket, one inner packet per datagram, as flannel's
// udp backend does on the wire.
//
// The package knows nothing of etcd, leases or netlink: the control plane
// hands it immutable peer tables (see Table) and it hands back counters.
package tunnel

import (
	"net/netip"
)

// Overhead is what flannel's udp encapsulation adds to each inner packet:
// an outer IPv4 header (20) and a UDP header (8). The TUN MTU is the
// underlay MTU minus Overhead.
const Overhead = 28

// DefaultPort is flannel's udp backend port (Backend.Port default).
const DefaultPort = 8285

// Device is a batch-shaped TUN device carrying raw IPv4 packets (IFF_NO_PI).
//
// Read fills bufs[i][offset:] with up to len(bufs) packets, stores each
// packet's length in sizes[i] and returns how many it filled. It blocks until
// at least one packet is available. len(sizes) >= len(bufs); every buffer must
// hold offset+MTU bytes at least.
//
// Write writes each bufs[i][offset:] as one packet and returns how many were
// written. If the kernel refuses a packet, Write stops there and returns its
// index with the error; the caller counts that packet and may go on with
// bufs[n+1:]. The bytes before offset are scratch space the device may use
// (a later virtio-net header lives there), so callers reserve offset bytes
// of headroom.
//
// BatchSize is the largest number of packets Read returns at once; callers
// size bufs to it. After Close, Read and Write return an error wrapping
// net.ErrClosed.
type Device interface {
	Read(bufs [][]byte, sizes []int, offset int) (n int, err error)
	Write(bufs [][]byte, offset int) (n int, err error)
	BatchSize() int
	MTU() int
	Name() string
	Close() error
}

// Conn is a batch-shaped UDP socket bound to the node's public address and
// the backend port.
//
// Read fills bufs[i] with up to len(bufs) datagrams, their lengths in
// sizes[i] and their sources in addrs[i], and returns how many. It blocks
// until at least one datagram arrives. len(sizes), len(addrs) >= len(bufs).
//
// Write sends each bufs[i][offset:] as one datagram to dst. The bytes before
// offset are scratch space the connection may use. Datagrams the kernel
// refuses (an unreachable peer, a full queue) are skipped and reported
// together as a *SendError once the rest are sent, so the caller counts them
// and one dead peer cannot stall the others. Any other error means the
// connection is closed or broken.
//
// After Close, Read and Write return an error wrapping net.ErrClosed.
type Conn interface {
	Read(bufs [][]byte, sizes []int, addrs []netip.AddrPort) (n int, err error)
	Write(bufs [][]byte, offset int, dst netip.AddrPort) error
	BatchSize() int
	LocalAddr() netip.AddrPort
	Close() error
}
