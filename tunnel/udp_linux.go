package tunnel

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

const (
	// udpBatchSize is how many datagrams one recvmmsg or sendmmsg moves.
	udpBatchSize = 64
	// socketBufferSize matches wireguard-go's 7 MB, which lifted its
	// throughput by a quarter; flanneld's drops are largely UdpRcvbufErrors.
	socketBufferSize = 7 << 20
)

// udpConn is an AF_INET datagram socket driven by raw recvmmsg/sendmmsg on
// a blocking fd, off the Go netpoller. Close wakes a blocked recvmmsg with
// shutdown(2).
type udpConn struct {
	fd    int
	local netip.AddrPort

	closed    atomic.Bool
	closeOnce sync.Once
	closeErr  error

	// Each direction owns its mmsghdr, iovec and sockaddr arrays; rmu and
	// wmu serialise callers and keep Close from closing the fd under them.
	rmu   sync.Mutex
	rmsgs [udpBatchSize]unix.Mmsghdr
	riovs [udpBatchSize]unix.Iovec
	rsas  [udpBatchSize]unix.RawSockaddrInet4

	wmu   sync.Mutex
	wmsgs [udpBatchSize]unix.Mmsghdr
	wiovs [udpBatchSize]unix.Iovec
	wsa   unix.RawSockaddrInet4
}

// ListenUDP opens a UDP socket bound to laddr (the node's public IPv4
// address and the backend port) with DF set on every datagram, as flanneld
// does, and socket buffers of about 7 MB. A port already taken is reported
// with an error matching errors.Is(err, unix.EADDRINUSE).
func ListenUDP(laddr netip.AddrPort) (Conn, error) {
	addr := laddr.Addr().Unmap()
	if !addr.Is4() {
		return nil, fmt.Errorf("listen udp %s: not an IPv4 address", laddr)
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP)
	if err != nil {
		return nil, fmt.Errorf("listen udp %s: socket: %w", laddr, err)
	}
	c := &udpConn{fd: fd}
	if err := c.setup(netip.AddrPortFrom(addr, laddr.Port())); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("listen udp %s: %w", laddr, err)
	}
	return c, nil
}

func (c *udpConn) setup(laddr netip.AddrPort) error {
	// Never fragment the outer packet: the TUN MTU leaves room for it.
	err := unix.SetsockoptInt(c.fd, unix.IPPROTO_IP, unix.IP_MTU_DISCOVER, unix.IP_PMTUDISC_DO)
	if err != nil {
		return fmt.Errorf("set IP_MTU_DISCOVER: %w", err)
	}
	// The FORCE variants pass rmem_max/wmem_max but need CAP_NET_ADMIN;
	// without it settle for what the plain ones grant.
	if err := setBuffer(c.fd, unix.SO_RCVBUFFORCE, unix.SO_RCVBUF); err != nil {
		return fmt.Errorf("set receive buffer: %w", err)
	}
	if err := setBuffer(c.fd, unix.SO_SNDBUFFORCE, unix.SO_SNDBUF); err != nil {
		return fmt.Errorf("set send buffer: %w", err)
	}
	sa := &unix.SockaddrInet4{Port: int(laddr.Port()), Addr: laddr.Addr().As4()}
	if err := unix.Bind(c.fd, sa); err != nil {
		return fmt.Errorf("bind: %w", err)
	}
	bound, err := unix.Getsockname(c.fd)
	if err != nil {
		return fmt.Errorf("getsockname: %w", err)
	}
	b4, ok := bound.(*unix.SockaddrInet4)
	if !ok {
		return fmt.Errorf("getsockname: unexpected address %T", bound)
	}
	c.local = netip.AddrPortFrom(netip.AddrFrom4(b4.Addr), uint16(b4.Port))

	for i := range c.rmsgs {
		c.rmsgs[i].Hdr.Iov = &c.riovs[i]
		c.rmsgs[i].Hdr.SetIovlen(1)
		c.rmsgs[i].Hdr.Name = (*byte)(unsafe.Pointer(&c.rsas[i]))
		c.wmsgs[i].Hdr.Iov = &c.wiovs[i]
		c.wmsgs[i].Hdr.SetIovlen(1)
		c.wmsgs[i].Hdr.Name = (*byte)(unsafe.Pointer(&c.wsa))
		c.wmsgs[i].Hdr.Namelen = unix.SizeofSockaddrInet4
	}
	return nil
}

func setBuffer(fd, force, plain int) error {
	if unix.SetsockoptInt(fd, unix.SOL_SOCKET, force, socketBufferSize) == nil {
		return nil
	}
	return unix.SetsockoptInt(fd, unix.SOL_SOCKET, plain, socketBufferSize)
}

// Read implements Conn with one recvmmsg: it blocks for the first
// datagram and takes those already queued behind it (MSG_WAITFORONE).
// Every buffer must be at least one byte long.
func (c *udpConn) Read(bufs [][]byte, sizes []int, addrs []netip.AddrPort) (int, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	n := min(len(bufs), len(c.rmsgs))
	for i := range n {
		c.riovs[i].Base = &bufs[i][0]
		c.riovs[i].SetLen(len(bufs[i]))
		c.rmsgs[i].Hdr.Namelen = unix.SizeofSockaddrInet4
		c.rmsgs[i].Hdr.Flags = 0
		c.rmsgs[i].Len = 0
	}
	var got uintptr
	for {
		if c.closed.Load() {
			return 0, c.errClosed("read from")
		}
		r, _, errno := unix.Syscall6(unix.SYS_RECVMMSG, uintptr(c.fd),
			uintptr(unsafe.Pointer(&c.rmsgs[0])), uintptr(n), unix.MSG_WAITFORONE, 0, 0)
		if errno == unix.EINTR {
			continue
		}
		// After shutdown(2) recvmmsg returns an empty "datagram"; the flag
		// tells it from a real empty one.
		if c.closed.Load() {
			return 0, c.errClosed("read from")
		}
		if errno != 0 {
			return 0, fmt.Errorf("read from udp %s: %w", c.local, errno)
		}
		got = r
		break
	}
	for i := range int(got) {
		sizes[i] = int(c.rmsgs[i].Len)
		sa := &c.rsas[i]
		addrs[i] = netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), swapNetwork16(sa.Port))
	}
	clear(c.riovs[:n]) // drop references to the caller's buffers
	return int(got), nil
}

// Write implements Conn with sendmmsg, looping until every datagram was
// sent or refused. sendmmsg stops at the first datagram the kernel refuses
// without saying why; the next call, starting there, reports the error,
// and that datagram is skipped. Refused datagrams are returned as a
// *SendError; only a closed or broken socket yields another error.
func (c *udpConn) Write(bufs [][]byte, offset int, dst netip.AddrPort) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	addr := dst.Addr().Unmap()
	if !addr.Is4() {
		return fmt.Errorf("write to udp %s: not an IPv4 address", dst)
	}
	c.wsa.Addr = addr.As4()
	c.wsa.Port = swapNetwork16(dst.Port())
	c.wsa.Family = unix.AF_INET

	failed, failedBytes := 0, 0
	var lastErr error
	for len(bufs) > 0 {
		if c.closed.Load() {
			return c.errClosed("write to")
		}
		n := min(len(bufs), len(c.wmsgs))
		for i := range n {
			b := bufs[i][offset:]
			c.wiovs[i].Base = nil
			if len(b) > 0 {
				c.wiovs[i].Base = &b[0]
			}
			c.wiovs[i].SetLen(len(b))
		}
		r, _, errno := unix.Syscall6(unix.SYS_SENDMMSG, uintptr(c.fd),
			uintptr(unsafe.Pointer(&c.wmsgs[0])), uintptr(n), 0, 0, 0)
		switch {
		case errno == 0:
			bufs = bufs[r:]
		case errno == unix.EINTR:
		case c.closed.Load():
			return c.errClosed("write to")
		case errno == unix.EBADF || errno == unix.ENOTSOCK || errno == unix.EFAULT:
			return fmt.Errorf("write to udp %s: %w", dst, errno)
		default:
			failed++
			failedBytes += len(bufs[0]) - offset
			lastErr = errno
			bufs = bufs[1:]
		}
	}
	clear(c.wiovs[:])
	if failed > 0 {
		return &SendError{Dst: dst, Failed: failed, FailedBytes: failedBytes, Err: lastErr}
	}
	return nil
}

// BatchSize implements Conn.
func (c *udpConn) BatchSize() int { return udpBatchSize }

// LocalAddr implements Conn.
func (c *udpConn) LocalAddr() netip.AddrPort { return c.local }

// Close implements Conn. It is safe to call more than once and
// concurrently with Read and Write.
func (c *udpConn) Close() error {
	c.closeOnce.Do(func() {
		c.closed.Store(true)
		// On an unconnected socket shutdown(2) fails with ENOTCONN but
		// still wakes a blocked recvmmsg, which is all we want of it.
		if err := unix.Shutdown(c.fd, unix.SHUT_RDWR); err != nil && err != unix.ENOTCONN {
			c.closeErr = fmt.Errorf("close udp %s: shutdown: %w", c.local, err)
		}
		c.rmu.Lock()
		c.wmu.Lock()
		defer c.rmu.Unlock()
		defer c.wmu.Unlock()
		c.closeErr = errors.Join(c.closeErr, closeFD(c.fd, "close udp "+c.local.String()))
	})
	return c.closeErr
}

func (c *udpConn) errClosed(op string) error {
	return fmt.Errorf("%s udp %s: %w", op, c.local, net.ErrClosed)
}

// swapNetwork16 converts a 16-bit value between host and network byte
// order (both ways, as htons and ntohs do).
func swapNetwork16(v uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], v)
	return binary.NativeEndian.Uint16(b[:])
}
