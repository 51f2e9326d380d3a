package tuntest

import (
	"fmt"
	"net"
	"net/netip"
	"sync"

	"github.com/weft-net/weft/tunnel"
)

var _ tunnel.Conn = (*Conn)(nil)

// queueLen is how many datagrams a fake Conn queues before Write blocks.
const queueLen = 1024

// Network is an in-memory UDP network: Conns listening on it reach each
// other by netip.AddrPort, so several nodes can talk in one process.
// Unlike UDP it is lossless: Write blocks while the receiver's queue is
// full. Datagrams to an address nobody listens on are lost, as on the wire.
type Network struct {
	mu    sync.Mutex
	conns map[netip.AddrPort]*Conn
}

// NewNetwork returns an empty network.
func NewNetwork() *Network {
	return &Network{conns: map[netip.AddrPort]*Conn{}}
}

// Listen returns a Conn bound to addr on the network.
func (n *Network) Listen(addr netip.AddrPort) (*Conn, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if _, ok := n.conns[addr]; ok {
		return nil, fmt.Errorf("listen on %s: address in use", addr)
	}
	c := &Conn{
		net:    n,
		local:  addr,
		queue:  make(chan datagram, queueLen),
		free:   make(chan []byte, queueLen+BatchSize),
		closed: make(chan struct{}),
	}
	n.conns[addr] = c
	return c, nil
}

// NewConnPair returns two Conns on a fresh network, bound to a and b.
func NewConnPair(a, b netip.AddrPort) (*Conn, *Conn) {
	if a == b {
		panic("tuntest: NewConnPair needs two distinct addresses")
	}
	n := NewNetwork()
	ca, _ := n.Listen(a)
	cb, _ := n.Listen(b)
	return ca, cb
}

func (n *Network) lookup(addr netip.AddrPort) *Conn {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.conns[addr]
}

// Conn is a fake tunnel.Conn on a Network.
type Conn struct {
	net   *Network
	local netip.AddrPort
	queue chan datagram
	// free recycles datagram buffers the reader is done with, so a steady
	// flow of datagrams does not allocate.
	free chan []byte

	closeOnce sync.Once
	closed    chan struct{}
}

type datagram struct {
	from netip.AddrPort
	data []byte
}

// Read implements tunnel.Conn: it blocks for the first datagram, then takes
// whatever else is queued, up to len(bufs). Datagrams longer than their
// buffer are truncated, as by recvmmsg.
func (c *Conn) Read(bufs [][]byte, sizes []int, addrs []netip.AddrPort) (int, error) {
	if c.isClosed() {
		return 0, c.errClosed("read from")
	}
	if len(bufs) == 0 {
		return 0, nil
	}
	n := 0
	select {
	case d := <-c.queue:
		c.deliver(d, bufs[0], &sizes[0], &addrs[0])
		n = 1
	case <-c.closed:
		return 0, c.errClosed("read from")
	}
	for n < len(bufs) {
		select {
		case d := <-c.queue:
			c.deliver(d, bufs[n], &sizes[n], &addrs[n])
			n++
		default:
			return n, nil
		}
	}
	return n, nil
}

func (c *Conn) deliver(d datagram, buf []byte, size *int, addr *netip.AddrPort) {
	*size = copy(buf, d.data)
	*addr = d.from
	select {
	case c.free <- d.data[:0]:
	default:
	}
}

// Write implements tunnel.Conn.
func (c *Conn) Write(bufs [][]byte, offset int, dst netip.AddrPort) error {
	if c.isClosed() {
		return c.errClosed("write to")
	}
	peer := c.net.lookup(dst)
	if peer == nil {
		return nil // lost, as UDP to a host nobody listens on
	}
	for _, b := range bufs {
		data := peer.buffer(len(b) - offset)
		copy(data, b[offset:])
		select {
		case peer.queue <- datagram{from: c.local, data: data}:
		case <-peer.closed:
			return nil // the receiver went away: lost
		case <-c.closed:
			return c.errClosed("write to")
		}
	}
	return nil
}

// buffer returns a buffer of length n for a datagram to c, recycled if one
// is free.
func (c *Conn) buffer(n int) []byte {
	select {
	case b := <-c.free:
		if cap(b) >= n {
			return b[:n]
		}
	default:
	}
	return make([]byte, n, max(n, 2048))
}

// BatchSize implements tunnel.Conn.
func (c *Conn) BatchSize() int { return BatchSize }

// LocalAddr implements tunnel.Conn.
func (c *Conn) LocalAddr() netip.AddrPort { return c.local }

// Close implements tunnel.Conn: it unbinds the address. It is safe to call
// more than once.
func (c *Conn) Close() error {
	c.closeOnce.Do(func() {
		close(c.closed)
		c.net.mu.Lock()
		if c.net.conns[c.local] == c {
			delete(c.net.conns, c.local)
		}
		c.net.mu.Unlock()
	})
	return nil
}

func (c *Conn) isClosed() bool {
	select {
	case <-c.closed:
		return true
	default:
		return false
	}
}

func (c *Conn) errClosed(op string) error {
	return fmt.Errorf("%s udp %s: %w", op, c.local, net.ErrClosed)
}
