package tunnel_test

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/weft-net/weft/tunnel"
	"github.com/weft-net/weft/tunnel/tuntest"
)

// Micro-benchmarks of the forwarder's own work per packet and per batch:
// header checks, peer lookup, TTL, grouping and counting. The device and
// socket below hand out and swallow copies of one packet, so the numbers
// leave out syscalls and copies by the kernel (make bench measures those).

// sourceDevice returns n copies of pkt on every Read and swallows writes.
type sourceDevice struct {
	pkt []byte
	n   int
}

func (d *sourceDevice) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	n := min(d.n, len(bufs))
	for i := range n {
		sizes[i] = copy(bufs[i][offset:], d.pkt)
	}
	return n, nil
}
func (d *sourceDevice) Write(bufs [][]byte, offset int) (int, error) { return len(bufs), nil }
func (d *sourceDevice) BatchSize() int                               { return 64 }
func (d *sourceDevice) MTU() int                                     { return 1472 }
func (d *sourceDevice) Name() string                                 { return "bench0" }
func (d *sourceDevice) Close() error                                 { return nil }

// sourceConn returns n copies of a datagram from src on every Read and
// swallows writes.
type sourceConn struct {
	pkt []byte
	src netip.AddrPort
	n   int
}

func (c *sourceConn) Read(bufs [][]byte, sizes []int, addrs []netip.AddrPort) (int, error) {
	n := min(c.n, len(bufs))
	for i := range n {
		sizes[i] = copy(bufs[i], c.pkt)
		addrs[i] = c.src
	}
	return n, nil
}
func (c *sourceConn) Write(bufs [][]byte, offset int, dst netip.AddrPort) error { return nil }
func (c *sourceConn) BatchSize() int                                            { return 64 }
func (c *sourceConn) LocalAddr() netip.AddrPort                                 { return c.src }
func (c *sourceConn) Close() error                                              { return nil }

var (
	_ tunnel.Device = (*sourceDevice)(nil)
	_ tunnel.Conn   = (*sourceConn)(nil)
)

var benchSizes = []int{64, 1400}
var benchBatches = []int{1, 64}

// BenchmarkEncapsulate: TUN → UDP, per packet (batch 1) and per batch of 64.
func BenchmarkEncapsulate(b *testing.B) {
	for _, size := range benchSizes {
		for _, batch := range benchBatches {
			b.Run(fmt.Sprintf("size=%d/batch=%d", size, batch), func(b *testing.B) {
				pkt := tuntest.IPv4UDP(hostA, hostB, make([]byte, size-28))
				dev := &sourceDevice{pkt: pkt, n: batch}
				conn := &sourceConn{src: netip.MustParseAddrPort("198.18.0.1:8285")}
				f := tunnel.NewForwarder(tunnel.Config{Device: dev, Conn: conn})
				f.SetPeers(tunnel.NewTable(subnetA, []tunnel.Peer{{Subnet: subnetB, Addr: netip.MustParseAddr("198.18.0.2")}}))
				b.SetBytes(int64(len(pkt) * batch))
				b.ReportAllocs()
				for b.Loop() {
					if err := f.StepTUNToUDP(); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(b.N*batch)/b.Elapsed().Seconds(), "pkts/s")
				if c := f.Counters(); c.Dropped() != 0 || c.TxPackets == 0 {
					b.Fatalf("counters %+v", c)
				}
			})
		}
	}
}

// BenchmarkDecapsulate: UDP → TUN, per packet and per batch of 64.
func BenchmarkDecapsulate(b *testing.B) {
	for _, size := range benchSizes {
		for _, batch := range benchBatches {
			b.Run(fmt.Sprintf("size=%d/batch=%d", size, batch), func(b *testing.B) {
				pkt := tuntest.IPv4UDP(hostA, hostB, make([]byte, size-28))
				dev := &sourceDevice{}
				conn := &sourceConn{pkt: pkt, src: netip.MustParseAddrPort("198.18.0.1:8285"), n: batch}
				f := tunnel.NewForwarder(tunnel.Config{Device: dev, Conn: conn})
				// Strict ingress checks on: the sender holds hostA's subnet.
				f.SetPeers(tunnel.NewTable(subnetB, []tunnel.Peer{{Subnet: subnetA, Addr: conn.src.Addr()}}))
				b.SetBytes(int64(len(pkt) * batch))
				b.ReportAllocs()
				for b.Loop() {
					if err := f.StepUDPToTUN(); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(b.N*batch)/b.Elapsed().Seconds(), "pkts/s")
				if c := f.Counters(); c.Dropped() != 0 || c.RxPackets == 0 {
					b.Fatalf("counters %+v", c)
				}
			})
		}
	}
}

// BenchmarkPeerLookup at cluster sizes up to Kubernetes' 5,000 nodes. The
// subnets are /28s carved from 198.18.0.0/15, so 5,000 fit.
func BenchmarkPeerLookup(b *testing.B) {
	for _, n := range []int{10, 1000, 5000} {
		b.Run(fmt.Sprintf("peers=%d", n), func(b *testing.B) {
			peers := make([]tunnel.Peer, n)
			dsts := make([][4]byte, n)
			for i := range peers {
				base := uint32(198)<<24 | uint32(18)<<16 | uint32(i)<<4
				a := netip.AddrFrom4([4]byte{byte(base >> 24), byte(base >> 16), byte(base >> 8), byte(base)})
				peers[i] = tunnel.Peer{Subnet: netip.PrefixFrom(a, 28), Addr: netip.AddrFrom4([4]byte{198, 19, byte(i >> 8), byte(i)})}
				dsts[i] = a.Next().As4()
			}
			table := tunnel.NewTable(netip.Prefix{}, peers)
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				if _, ok := table.Lookup(dsts[i]); !ok {
					b.Fatalf("no peer for %v", dsts[i])
				}
				if i++; i == n {
					i = 0
				}
			}
		})
	}
}
