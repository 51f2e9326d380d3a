package tunnel

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

const (
	// headroom is reserved before every packet in the forwarder's buffers,
	// so a device can prepend a virtio-net header (10 bytes) in place.
	headroom = 16
	// maxPacket bounds one packet or datagram. Buffers hold the IPv4
	// maximum, not the MTU, so GSO/GRO super-packets fit later.
	maxPacket = 65535
)

// Config is what a Forwarder needs. The forwarder opens nothing itself.
type Config struct {
	Device Device
	Conn   Conn
	// Port is the UDP port every peer listens on (flannel's Backend.Port);
	// 0 means DefaultPort.
	Port uint16
	// SourceCheck is how incoming datagrams are matched to leases
	// (SourceStrict unless set).
	SourceCheck SourceCheck
	Logger      *slog.Logger
	// SplitDirections runs each direction in a goroutine of its own even
	// when the Device and Conn can be polled together (the Linux TUN and
	// UDP socket), where one goroutine serves both by default.
	SplitDirections bool
}

// Forwarder moves packets between a Device and a Conn: TUN → peers and
// socket → TUN, in one goroutine polling both where the Device and Conn
// allow it (see joint), else one goroutine per direction.
// Each runs read → process → send to completion on its own preallocated
// batch, so the steady state allocates nothing and shares no lock with the
// control plane.
type Forwarder struct {
	dev   Device
	conn  Conn
	port  uint16
	check SourceCheck
	log   *slog.Logger

	peers   atomic.Pointer[Table]
	started atomic.Bool
	split   bool

	out outbound // owned by the TUN→UDP goroutine
	in  inbound  // owned by the UDP→TUN goroutine
}

// outbound is the TUN→UDP direction's state.
type outbound struct {
	bufs  [][]byte // headroom + maxPacket each
	sizes []int
	run   [][]byte // consecutive packets for one peer, slices of bufs
	stats dirCounters
}

// inbound is the UDP→TUN direction's state.
type inbound struct {
	bufs  [][]byte // headroom + maxPacket each
	views [][]byte // bufs[i][headroom:], what Conn.Read fills
	// lent holds datagrams in place in the Conn's memory (viewConn),
	// without headroom: the joint loop's device writes headers from iovecs
	// of its own.
	lent  [][]byte
	sizes []int
	addrs []netip.AddrPort
	ready [][]byte // accepted packets, slices of bufs or lent
	stats dirCounters
}

// NewForwarder returns a forwarder over c.Device and c.Conn with an empty
// peer table. It panics if either is nil: that is a wiring bug, not a
// runtime condition.
func NewForwarder(c Config) *Forwarder {
	if c.Device == nil || c.Conn == nil {
		panic("tunnel: NewForwarder needs a Device and a Conn")
	}
	f := &Forwarder{dev: c.Device, conn: c.Conn, port: c.Port, check: c.SourceCheck, log: c.Logger, split: c.SplitDirections}
	if f.port == 0 {
		f.port = DefaultPort
	}
	if f.log == nil {
		f.log = slog.New(slog.DiscardHandler)
	}

	n := max(c.Device.BatchSize(), 1)
	f.out = outbound{
		bufs:  makeBufs(n),
		sizes: make([]int, n),
		run:   make([][]byte, 0, n),
	}
	n = max(c.Conn.BatchSize(), 1)
	f.in = inbound{
		bufs:  makeBufs(n),
		views: make([][]byte, n),
		lent:  make([][]byte, n),
		sizes: make([]int, n),
		addrs: make([]netip.AddrPort, n),
		ready: make([][]byte, 0, n),
	}
	for i, b := range f.in.bufs {
		f.in.views[i] = b[headroom:]
	}
	return f
}

func makeBufs(n int) [][]byte {
	bufs := make([][]byte, n)
	for i := range bufs {
		bufs[i] = make([]byte, headroom+maxPacket)
	}
	return bufs
}

// UpdatePeers publishes a new table for a node owning local with peers,
// carrying over the traffic counters of peers that stay. Control plane
// only: calls must not race each other (the data path may run).
func (f *Forwarder) UpdatePeers(local netip.Prefix, peers []Peer) {
	f.peers.Store(f.peers.Load().Next(local, peers))
}

// ApplyPeers publishes the current table with changes made (see
// Table.Apply): the cheap path for a few lease changes. Control plane only,
// like UpdatePeers: calls must not race each other or UpdatePeers.
func (f *Forwarder) ApplyPeers(local netip.Prefix, changes []PeerChange) {
	f.peers.Store(f.peers.Load().Apply(local, changes))
}

// PeerTraffic returns every peer of the current table with its counters.
func (f *Forwarder) PeerTraffic() []PeerTraffic { return f.peers.Load().Traffic() }

// Table returns the current peer table (immutable; nil when empty).
func (f *Forwarder) Table() *Table { return f.peers.Load() }

// SetPeers replaces the peer table. It is safe to call from any goroutine;
// each batch uses the table current when it was read. nil empties it.
func (f *Forwarder) SetPeers(t *Table) { f.peers.Store(t) }

// Counters returns a snapshot of the traffic counters.
func (f *Forwarder) Counters() Counters {
	c := Counters{
		TxPackets:  f.out.stats.packets.Load(),
		TxBytes:    f.out.stats.bytes.Load(),
		RxPackets:  f.in.stats.packets.Load(),
		RxBytes:    f.in.stats.bytes.Load(),
		ReadErrors: f.out.stats.readErrors.Load() + f.in.stats.readErrors.Load(),
	}
	for r := range c.Drops {
		c.Drops[r] = f.out.stats.drops[r].Load() + f.in.stats.drops[r].Load()
	}
	return c
}

// Run forwards until ctx is done, then closes the Device and the Conn,
// waits for both directions to stop and returns nil. Run owns the Device and
// the Conn from the moment it is called (until then they are the caller's to
// close). If either direction fails with an error other than a transient
// one, including the Device or Conn being closed by someone else, Run closes
// both and returns that error. Run may be called once.
func (f *Forwarder) Run(ctx context.Context) error {
	if !f.started.CompareAndSwap(false, true) {
		return errors.New("tunnel: forwarder already ran")
	}
	f.log.Info("forwarding", "tun", f.dev.Name(), "mtu", f.dev.MTU(),
		"udp", f.conn.LocalAddr().String(), "peer_port", f.port)

	errc := make(chan error, 2)
	pending := 2
	jd, okd := f.dev.(jointDevice)
	jc, okc := f.conn.(jointConn)
	if okd && okc && !f.split {
		pending = 1
		go func() { errc <- f.joint(jd, jc) }()
	} else {
		go func() { errc <- loop(f.tunToUDP) }()
		go func() { errc <- loop(f.udpToTUN) }()
	}

	var failure error
	select {
	case <-ctx.Done():
	case failure = <-errc:
		pending--
	}
	if err := f.dev.Close(); err != nil {
		f.log.Warn("close tun", "tun", f.dev.Name(), "err", err)
	}
	if err := f.conn.Close(); err != nil {
		f.log.Warn("close udp", "udp", f.conn.LocalAddr().String(), "err", err)
	}
	for ; pending > 0; pending-- {
		// We closed both ends, so the other loop ends with net.ErrClosed.
		if err := <-errc; !errors.Is(err, net.ErrClosed) {
			f.log.Warn("forwarding stopped with error", "err", err)
		}
	}

	c := f.Counters()
	f.log.Info("forwarder stopped", "tx_packets", c.TxPackets, "rx_packets", c.RxPackets,
		"dropped", c.Dropped())
	if failure != nil && ctx.Err() != nil && errors.Is(failure, net.ErrClosed) {
		return nil // shutdown raced with the loop noticing it
	}
	return failure
}

// jointDevice and jointConn are a Device and a Conn whose reads can be
// tried without waiting and whose readiness can be awaited together, so
// that one goroutine serves both directions. TryRead's empty reports that
// the read found the queue empty: until a wait says otherwise, another
// try would be a wasted system call. A jointDevice's Write must take
// packets without headroom (offset 0): the joint loop may hand it
// datagrams in place in the socket's memory (viewConn).
type jointDevice interface {
	TryRead(bufs [][]byte, sizes []int, offset int) (n int, empty bool, err error)
	// WaitReadable blocks until the device or fd is readable, the device
	// is closed, or timeout passes (negative: none), and reports which is
	// readable (neither on a timeout).
	WaitReadable(fd int, timeout time.Duration) (devReady, fdReady bool, err error)
}

type jointConn interface {
	TryRead(bufs [][]byte, sizes []int, addrs []netip.AddrPort) (n int, empty bool, err error)
	FD() int
}

// viewConn is a jointConn that can lend its datagrams in place instead of
// copying them into the caller's buffers (the Linux UDP conn with GRO on,
// which receives into buffers of its own anyway).
type viewConn interface {
	// TryReadViews is TryRead setting views[i] to datagram i in the
	// conn's memory, valid until the next read.
	TryReadViews(views [][]byte, sizes []int, addrs []netip.AddrPort) (n int, empty bool, err error)
	Views() bool
}

// joint runs both directions in one goroutine: a batch each way while
// there is work, one poll on both when there is none. A TCP flow's data
// and its ACKs then share a thread's wakeups: after a TUN write the kernel
// has usually queued the ACK already, and it goes out without the sleep
// and wakeup a second thread would need. Measured on two vCPUs: request/
// response +35%, voluntary context switches a quarter, single-stream
// throughput the same (bench/README.md). A side found empty is not read
// again until the poll says so, except the TUN right after a write to it
// (the local stack answers within the write: an ACK, an echo reply).
//
// It also keeps the Go scheduler from adding wakeups of its own. The
// runtime takes the P of a goroutine that has run, or sat in one system
// call, for 10 ms; when that leaves every P idle its monitor thread
// (sysmon) sleeps, and the next return from a system call wakes it to run
// every 20 µs for a millisecond, on the CPU the packets are being forwarded
// on (seen on every ping, with perf sched). So the loop yields every
// yieldEvery, and while traffic is recent (keepFor) it waits in polls that
// end when the next yield is due; after that it sleeps without a timeout.
func (f *Forwarder) joint(d jointDevice, c jointConn) error {
	o, in := &f.out, &f.in
	vc, lend := c.(viewConn)
	lend = lend && vc.Views()
	lastYield := time.Now()
	lastTraffic := lastYield.Add(-keepFor) // none yet: wait without a timeout
	devMore, connMore := true, true
	for {
		now := time.Now()
		if now.Sub(lastYield) >= yieldEvery {
			runtime.Gosched()
			lastYield = now
		}
		if devMore {
			n, empty, err := d.TryRead(o.bufs, o.sizes, headroom)
			devMore = !empty
			if n > 0 || err != nil {
				lastTraffic = now
				if err := f.forwardOut(n, err); err != nil {
					return err
				}
			}
		}
		if connMore {
			var m int
			var empty bool
			var err error
			pkts, off := in.bufs, headroom
			if lend {
				m, empty, err = vc.TryReadViews(in.lent, in.sizes, in.addrs)
				pkts, off = in.lent, 0
			} else {
				m, empty, err = c.TryRead(in.views, in.sizes, in.addrs)
			}
			connMore = !empty
			if m > 0 || err != nil {
				lastTraffic = now
				if err := f.forwardIn(pkts, off, m, err); err != nil {
					return err
				}
				devMore = true
			}
		}
		if devMore || connMore {
			continue
		}
		timeout := time.Duration(-1)
		if now.Sub(lastTraffic) < keepFor {
			timeout = max(lastYield.Add(yieldEvery).Sub(now), time.Millisecond)
		}
		var err error
		devMore, connMore, err = d.WaitReadable(c.FD(), timeout)
		if err != nil {
			return err
		}
	}
}

// The joint loop's scheduler settings (see joint). yieldEvery stays under
// the runtime's 10 ms with a margin for one batch's work. Each yield and
// each poll that times out costs a wakeup (the runtime also wakes an idle
// thread to look for other work when the loop yields): at 8 ms that is
// 250 a second while traffic is recent, so keepFor is short; a stream of
// sparse packets (health checks every second) keeps the P only a quarter
// of the time, and a packet after a quiet spell pays the runtime's wakeup.
const (
	yieldEvery = 8 * time.Millisecond
	keepFor    = 250 * time.Millisecond
)

func loop(step func() error) error {
	for {
		if err := step(); err != nil {
			return err
		}
	}
}

// tunToUDP reads one batch from the TUN and sends each packet to the peer
// owning its destination. Consecutive packets for the same peer go out in
// one Conn.Write, which preserves their order.
func (f *Forwarder) tunToUDP() error {
	o := &f.out
	n, err := f.dev.Read(o.bufs, o.sizes, headroom)
	return f.forwardOut(n, err)
}

// forwardOut handles the outcome of a TUN read: n packets in f.out.bufs,
// then err.
func (f *Forwarder) forwardOut(n int, err error) error {
	o := &f.out
	peers := f.peers.Load()
	run := o.run[:0]
	var runPeer *peerEntry
	for i := range n {
		size := o.sizes[i]
		dst, reason := DestinationIPv4(o.bufs[i][headroom : headroom+size])
		if reason != DropNone {
			o.stats.drop(reason, 1)
			continue
		}
		peer := peers.lookup(dst)
		if peer == nil {
			o.stats.drop(DropNoRoute, 1)
			continue
		}
		if len(run) > 0 && peer != runPeer {
			if err := f.send(run, runPeer); err != nil {
				return err
			}
			run = run[:0]
		}
		run = append(run, o.bufs[i][:headroom+size])
		runPeer = peer
	}
	if len(run) > 0 {
		if err := f.send(run, runPeer); err != nil {
			return err
		}
	}
	if err != nil {
		return readFailed(&o.stats, n, err, "read from tun "+f.dev.Name())
	}
	return nil
}

// send writes pkts (each with headroom) to peer and counts the outcome,
// in total and for the peer.
func (f *Forwarder) send(pkts [][]byte, peer *peerEntry) error {
	s := &f.out.stats
	dst := netip.AddrPortFrom(peer.addr, f.port)
	bytes := 0
	for _, p := range pkts {
		bytes += len(p) - headroom
	}
	err := f.conn.Write(pkts, headroom, dst)
	if err == nil {
		s.packets.Add(uint64(len(pkts)))
		s.bytes.Add(uint64(bytes))
		peer.stats.TxPackets.Add(uint64(len(pkts)))
		peer.stats.TxBytes.Add(uint64(bytes))
		return nil
	}
	var se *SendError
	switch {
	case errors.As(err, &se):
		failed := min(max(se.Failed, 0), len(pkts))
		sent, sentBytes := uint64(len(pkts)-failed), uint64(max(bytes-se.FailedBytes, 0))
		s.packets.Add(sent)
		s.bytes.Add(sentBytes)
		peer.stats.TxPackets.Add(sent)
		peer.stats.TxBytes.Add(sentBytes)
		s.drop(DropSendError, failed)
		return nil
	case !errors.Is(err, net.ErrClosed) && transient(err):
		s.drop(DropSendError, len(pkts))
		return nil
	}
	return fmt.Errorf("write to udp %s: %w", dst, err)
}

// udpToTUN reads one batch of datagrams, checks each inner packet (shape,
// then whether the sender may send it to us), lowers its TTL and writes the
// survivors to the TUN in one call.
func (f *Forwarder) udpToTUN() error {
	in := &f.in
	n, err := f.conn.Read(in.views, in.sizes, in.addrs)
	return f.forwardIn(in.bufs, headroom, n, err)
}

// forwardIn handles the outcome of a socket read: n datagrams, each
// pkts[i][off:] (off bytes of headroom before it), then err.
func (f *Forwarder) forwardIn(pkts [][]byte, off, n int, err error) error {
	in := &f.in
	peers := f.peers.Load()
	ready := in.ready[:0]
	for i := range n {
		pkt := pkts[i][off : off+in.sizes[i]]
		reason := ValidateIPv4(pkt)
		var from *peerEntry
		if reason == DropNone {
			from, reason = peers.accept(in.addrs[i].Addr(), pkt, f.check)
		}
		if reason == DropNone {
			reason = DecrementTTL(pkt)
		}
		if reason != DropNone {
			in.stats.drop(reason, 1)
			continue
		}
		if from != nil {
			from.stats.RxPackets.Add(1)
			from.stats.RxBytes.Add(uint64(len(pkt)))
		}
		ready = append(ready, pkts[i][:off+len(pkt)])
	}
	if werr := f.writeTUN(ready, off); werr != nil {
		return werr
	}
	if err != nil {
		return readFailed(&in.stats, n, err, "read from udp "+f.conn.LocalAddr().String())
	}
	return nil
}

// writeTUN writes pkts (each with off bytes of headroom) to the TUN. A
// packet the kernel refuses is counted and skipped; only a closed device
// stops the loop.
func (f *Forwarder) writeTUN(pkts [][]byte, off int) error {
	s := &f.in.stats
	for len(pkts) > 0 {
		n, err := f.dev.Write(pkts, off)
		n = min(max(n, 0), len(pkts))
		bytes := 0
		for _, p := range pkts[:n] {
			bytes += len(p) - off
		}
		s.packets.Add(uint64(n))
		s.bytes.Add(uint64(bytes))
		if err == nil || n == len(pkts) {
			return nil
		}
		if errors.Is(err, net.ErrClosed) {
			return fmt.Errorf("write to tun %s: %w", f.dev.Name(), err)
		}
		s.drop(DropTUNWriteError, 1)
		pkts = pkts[n+1:]
	}
	return nil
}

// readFailed decides whether a read error ends the loop. Transient errors
// are counted; if the read brought nothing, a short pause keeps a
// persistent one (memory pressure, say) from spinning a core.
func readFailed(s *dirCounters, n int, err error, op string) error {
	if errors.Is(err, net.ErrClosed) || !transient(err) {
		if strings.HasPrefix(err.Error(), op) {
			return err // the device or socket named itself already (ours do)
		}
		return fmt.Errorf("%s: %w", op, err)
	}
	s.readErrors.Add(1)
	if n == 0 {
		time.Sleep(time.Millisecond)
	}
	return nil
}

// transient reports errors that concern one packet or one moment, not the
// device or socket: the loop counts them and goes on.
func transient(err error) bool {
	var errno syscall.Errno
	if !errors.As(err, &errno) {
		return false
	}
	switch errno {
	case syscall.EAGAIN, syscall.EINTR, syscall.ENOBUFS, syscall.ENOMEM,
		syscall.ECONNREFUSED, syscall.EHOSTUNREACH, syscall.ENETUNREACH,
		syscall.EHOSTDOWN, syscall.ENETDOWN, syscall.EMSGSIZE, syscall.EPERM:
		return true
	}
	return false
}
