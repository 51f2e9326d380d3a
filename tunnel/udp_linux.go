package tunnel

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

const (
	// udpBatchSize is how many datagrams one Read returns at most, and how
	// many messages one recvmmsg or sendmmsg moves.
	udpBatchSize = 64
	// udpMaxIovecs bounds the iovecs of one sendmmsg: with GSO a message
	// has one per datagram, so this is about a 64-packet TUN batch of
	// 64 KB super-packets split into segments.
	udpMaxIovecs = udpBatchSize * 64
	// socketBufferSize matches wireguard-go's 7 MB, which lifted its
	// throughput by a quarter; flanneld's drops are largely UdpRcvbufErrors.
	socketBufferSize = 7 << 20
)

// UDPConfig configures ListenUDPConfig.
type UDPConfig struct {
	// Addr is the node's public IPv4 address and the backend port.
	Addr netip.AddrPort
	// GSO sends runs of equal-size datagrams to one peer as one message
	// the kernel segments (UDP_SEGMENT); GRO receives same-flow datagrams
	// the kernel coalesced as one message (UDP_GRO). Each is used only if
	// the kernel supports it, and GSO turns itself off if the kernel
	// refuses it at run time. false is the kill switch.
	GSO, GRO bool
	// Logger gets one line per offload turned off; nil discards.
	Logger *slog.Logger
}

// udpConn is an AF_INET datagram socket driven by raw recvmmsg/sendmmsg on
// a blocking fd, off the Go netpoller. Close wakes a blocked recvmmsg with
// shutdown(2).
type udpConn struct {
	fd    int
	local netip.AddrPort
	log   *slog.Logger

	closed    atomic.Bool
	closeOnce sync.Once
	closeErr  error

	gsoOn     atomic.Bool // cleared for good when the kernel refuses GSO
	groOn     bool        // fixed at open
	gsoSegs   int         // most datagrams in one GSO message
	fallbacks atomic.Uint64
	gsoSends  atomic.Uint64
	groRecvs  atomic.Uint64

	// Each direction owns its mmsghdr, iovec, sockaddr and control
	// arrays; rmu and wmu serialise callers and keep Close from closing
	// the fd under them.
	rmu   sync.Mutex
	rmsgs [udpBatchSize]unix.Mmsghdr
	riovs [udpBatchSize]unix.Iovec
	rsas  [udpBatchSize]unix.RawSockaddrInet4
	rctl  [udpBatchSize][8]uint64 // uint64 keeps each cmsghdr aligned
	// With GRO a message may hold many datagrams, so recvmmsg fills
	// slots of our own and Read splits them into the caller's buffers;
	// what does not fit waits for the next Read.
	rslots [][]byte // udpSlotSize each, only with GRO
	rgso   [udpBatchSize]int
	rgot   int // messages in the slots
	rnext  int // first message not fully handed out
	roff   int // how much of rnext was handed out
	// rdrained: the recvmmsg that filled the slots emptied the queue.
	rdrained bool

	wmu   sync.Mutex
	wmsgs [udpBatchSize]unix.Mmsghdr
	wiovs [udpMaxIovecs]unix.Iovec
	wctl  [udpBatchSize][4]uint64 // one UDP_SEGMENT cmsg each
	wsegs [udpBatchSize]int       // datagrams in each wmsgs entry
	wsa   unix.RawSockaddrInet4
}

var _ UDPOffloader = (*udpConn)(nil)

// ListenUDP opens a UDP socket bound to laddr without offloads; it is
// ListenUDPConfig(UDPConfig{Addr: laddr}).
func ListenUDP(laddr netip.AddrPort) (Conn, error) {
	return ListenUDPConfig(UDPConfig{Addr: laddr})
}

// ListenUDPConfig opens a UDP socket bound to cfg.Addr (the node's public
// IPv4 address and the backend port) with DF set on every datagram, as
// flanneld does, socket buffers of about 7 MB and the offloads cfg asks
// for and the kernel has. The Conn implements UDPOffloader. A port already
// taken is reported with an error matching errors.Is(err, unix.EADDRINUSE).
func ListenUDPConfig(cfg UDPConfig) (Conn, error) {
	laddr := cfg.Addr
	addr := laddr.Addr().Unmap()
	if !addr.Is4() {
		return nil, fmt.Errorf("listen udp %s: not an IPv4 address", laddr)
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP)
	if err != nil {
		return nil, fmt.Errorf("listen udp %s: socket: %w", laddr, err)
	}
	c := &udpConn{fd: fd, log: cfg.Logger, gsoSegs: 1}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	if err := c.setup(netip.AddrPortFrom(addr, laddr.Port())); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("listen udp %s: %w", laddr, err)
	}
	c.setupOffloads(cfg.GSO, cfg.GRO)
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
// Every buffer must be at least one byte long; a datagram longer than its
// buffer is cut short. With GRO, datagrams left over from the last
// recvmmsg are returned first, without a system call.
func (c *udpConn) Read(bufs [][]byte, sizes []int, addrs []netip.AddrPort) (int, error) {
	n, _, err := c.read(bufs, sizes, addrs, unix.MSG_WAITFORONE)
	return n, err
}

// TryRead is Read that returns 0 datagrams instead of waiting for one;
// empty reports that it found the queue empty, so more needs a wait.
func (c *udpConn) TryRead(bufs [][]byte, sizes []int, addrs []netip.AddrPort) (n int, empty bool, err error) {
	return c.read(bufs, sizes, addrs, unix.MSG_DONTWAIT)
}

// TryReadViews is TryRead without copying: views[i] is set to datagram i
// in the conn's own memory, valid until the next read. Only with GRO on
// (Views): then datagrams are received into the conn's slots anyway.
func (c *udpConn) TryReadViews(views [][]byte, sizes []int, addrs []netip.AddrPort) (n int, empty bool, err error) {
	if !c.groOn {
		return 0, false, errors.New("read views from udp " + c.local.String() + ": GRO is off")
	}
	c.rmu.Lock()
	defer c.rmu.Unlock()
	return c.readGRO(views, sizes, addrs, unix.MSG_DONTWAIT, true)
}

// Views reports whether TryReadViews works.
func (c *udpConn) Views() bool { return c.groOn }

// FD is the socket, for polling it together with a device.
func (c *udpConn) FD() int { return c.fd }

func (c *udpConn) read(bufs [][]byte, sizes []int, addrs []netip.AddrPort, flags int) (int, bool, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	if c.groOn {
		return c.readGRO(bufs, sizes, addrs, flags, false)
	}
	// Without GRO every message is one datagram: receive straight into
	// the caller's buffers.
	n := min(len(bufs), len(c.rmsgs))
	for i := range n {
		c.riovs[i].Base = &bufs[i][0]
		c.riovs[i].SetLen(len(bufs[i]))
	}
	got, err := c.recvmmsg(n, flags)
	for i := range got {
		sizes[i] = int(c.rmsgs[i].Len)
		addrs[i] = c.source(i)
	}
	clear(c.riovs[:n]) // drop references to the caller's buffers
	// recvmmsg takes what is queued: fewer than asked for is all of it.
	return got, err == nil && got < n, err
}

// recvmmsg receives up to n messages into c.rmsgs as set up by the caller,
// blocking for the first unless flags hold MSG_DONTWAIT (then nothing
// queued is 0 messages, not an error).
func (c *udpConn) recvmmsg(n, flags int) (int, error) {
	for i := range n {
		h := &c.rmsgs[i].Hdr
		h.Namelen = unix.SizeofSockaddrInet4
		h.Flags = 0
		if c.groOn {
			h.SetControllen(len(c.rctl[i]) * 8)
		}
		c.rmsgs[i].Len = 0
	}
	for {
		if c.closed.Load() {
			return 0, c.errClosed("read from")
		}
		r, _, errno := unix.Syscall6(unix.SYS_RECVMMSG, uintptr(c.fd),
			uintptr(unsafe.Pointer(&c.rmsgs[0])), uintptr(n), uintptr(flags), 0, 0)
		if errno == unix.EINTR {
			continue
		}
		if errno == unix.EAGAIN && flags&unix.MSG_DONTWAIT != 0 && !c.closed.Load() {
			return 0, nil
		}
		// After shutdown(2) recvmmsg returns an empty "datagram"; the flag
		// tells it from a real empty one.
		if c.closed.Load() {
			return 0, c.errClosed("read from")
		}
		if errno != 0 {
			return 0, fmt.Errorf("read from udp %s: %w", c.local, errno)
		}
		return int(r), nil
	}
}

// source returns the sender of received message i.
func (c *udpConn) source(i int) netip.AddrPort {
	sa := &c.rsas[i]
	return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), swapNetwork16(sa.Port))
}

// Write implements Conn with sendmmsg, looping until every datagram was
// sent or refused. With GSO, runs of equal-size datagrams (the last may
// be shorter) go as one message pointing at them in place, which the
// kernel cuts back into the same datagrams. sendmmsg stops at the first
// message the kernel refuses without saying why; the next call, starting
// there, reports the error. A GSO message refused before it reached the
// wire (EIO, EINVAL, EMSGSIZE) is sent again one datagram per message, so
// the outcome is the plain one; any other refusal skips its datagrams.
// Refused datagrams are returned as a *SendError; only a closed or broken
// socket yields another error.
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
	usedIovs := 0
	// bufs[:plainEnd] go one datagram per message: a GSO message holding
	// them was refused.
	plainEnd := 0
	for len(bufs) > 0 {
		if c.closed.Load() {
			clear(c.wiovs[:usedIovs])
			return c.errClosed("write to")
		}
		nmsg, niov := c.buildMessages(bufs, offset, plainEnd)
		usedIovs = max(usedIovs, niov)
		r, _, errno := unix.Syscall6(unix.SYS_SENDMMSG, uintptr(c.fd),
			uintptr(unsafe.Pointer(&c.wmsgs[0])), uintptr(nmsg), 0, 0, 0)
		switch {
		case errno == 0:
			sent := 0
			for _, k := range c.wsegs[:r] {
				sent += k
				if k > 1 {
					c.gsoSends.Add(1)
				}
			}
			bufs = bufs[sent:]
			plainEnd = max(plainEnd-sent, 0)
		case errno == unix.EINTR:
		case c.closed.Load():
			clear(c.wiovs[:usedIovs])
			return c.errClosed("write to")
		case errno == unix.EBADF || errno == unix.ENOTSOCK || errno == unix.EFAULT:
			clear(c.wiovs[:usedIovs])
			return fmt.Errorf("write to udp %s: %w", dst, errno)
		default:
			k := c.wsegs[0]
			if resend, disable := gsoRefusal(errno); k > 1 && resend {
				if disable {
					c.disableGSO(errno)
				}
				plainEnd = k
				continue
			}
			for _, b := range bufs[:k] {
				failedBytes += len(b) - offset
			}
			failed += k
			lastErr = errno
			bufs = bufs[k:]
			plainEnd = max(plainEnd-k, 0)
		}
	}
	clear(c.wiovs[:usedIovs]) // drop references to the caller's buffers
	if failed > 0 {
		return &SendError{Dst: dst, Failed: failed, FailedBytes: failedBytes, Err: lastErr}
	}
	return nil
}

// buildMessages fills c.wmsgs from the head of bufs: one message per GSO
// group, or per datagram without GSO and for bufs[:plain]. It returns how
// many messages and iovecs it used.
func (c *udpConn) buildMessages(bufs [][]byte, offset, plain int) (nmsg, niov int) {
	gso := c.gsoOn.Load()
	for nmsg < len(c.wmsgs) && len(bufs) > 0 && niov < len(c.wiovs) {
		k := 1
		if gso && plain <= 0 {
			k = gsoGroup(bufs, offset, min(c.gsoSegs, len(c.wiovs)-niov))
		}
		h := &c.wmsgs[nmsg].Hdr
		h.Iov = &c.wiovs[niov]
		h.SetIovlen(k)
		for i, b := range bufs[:k] {
			b = b[offset:]
			iov := &c.wiovs[niov+i]
			iov.Base = nil
			if len(b) > 0 {
				iov.Base = &b[0]
			}
			iov.SetLen(len(b))
		}
		if k > 1 {
			c.setSegmentSize(nmsg, len(bufs[0])-offset)
		} else {
			h.SetControllen(0)
		}
		c.wsegs[nmsg] = k
		nmsg++
		niov += k
		bufs = bufs[k:]
		plain -= k
	}
	return nmsg, niov
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
		if err := unix.Close(c.fd); err != nil {
			c.closeErr = errors.Join(c.closeErr, fmt.Errorf("close udp %s: %w", c.local, err))
		}
		c.rslots = nil
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
