package tunnel_test

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/internal/netnstest"
	"github.com/weft-net/weft/tunnel"
	"github.com/weft-net/weft/tunnel/tuntest"
)

// Root tests of the TUN offloads against the kernel: its TCP stack sends
// TSO super-packets into the device, and accepts the super-packets the
// device coalesces. The test plays the far end of the TCP connection in
// user space, with packets built and checked by the reference helpers.

// offloadTUN opens a TUN with offloads in the test's namespace n, set up
// with setUpTUN.
func offloadTUN(t *testing.T, n *netnstest.NS, logs *bytes.Buffer) tunnel.Device {
	name := tunName()
	dev, err := tunnel.OpenTUNConfig(tunnel.TUNConfig{Name: name, MTU: 1400, Offload: true,
		Logger: slog.New(slog.NewTextHandler(logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	setUpTUN(t, n, dev)
	return dev
}

func offloadState(dev tunnel.Device) tunnel.OffloadState {
	return dev.(tunnel.OffloadReporter).Offload()
}

// tcpSeg is the part of a TCP packet the user-space peer looks at.
type tcpSeg struct {
	src, dst     [4]byte
	sport, dport uint16
	seq, ack     uint32
	flags        byte
	window       uint16
	opts         []byte
	payload      []byte
}

func parseTCP(p []byte) (tcpSeg, bool) {
	if len(p) < 40 || p[0]>>4 != 4 || p[9] != 6 {
		return tcpSeg{}, false
	}
	ihl := int(p[0]&0xf) * 4
	tcp := p[ihl:]
	doff := int(tcp[12]>>4) * 4
	return tcpSeg{
		src: [4]byte(p[12:16]), dst: [4]byte(p[16:20]),
		sport: binary.BigEndian.Uint16(tcp[0:2]), dport: binary.BigEndian.Uint16(tcp[2:4]),
		seq: binary.BigEndian.Uint32(tcp[4:8]), ack: binary.BigEndian.Uint32(tcp[8:12]),
		flags: tcp[13], window: binary.BigEndian.Uint16(tcp[14:16]),
		opts: tcp[20:doff], payload: tcp[doff:],
	}, true
}

// wscale returns the window scale option of a SYN's options, or 0.
func wscale(opts []byte) uint {
	for len(opts) > 0 {
		switch opts[0] {
		case 0:
			return 0
		case 1:
			opts = opts[1:]
			continue
		}
		if len(opts) < 2 || int(opts[1]) < 2 || int(opts[1]) > len(opts) {
			return 0
		}
		if opts[0] == 3 && opts[1] == 3 {
			return uint(opts[2])
		}
		opts = opts[opts[1]:]
	}
	return 0
}

// synOpts: MSS 1360, NOP, window scale 7.
var synOpts = []byte{2, 4, 0x05, 0x50, 1, 3, 3, 7}

const farPort = 5201

var tunAddr4 = tunAddr.As4()

func writePackets(t *testing.T, dev tunnel.Device, pkts ...[]byte) {
	t.Helper()
	bufs := make([][]byte, len(pkts))
	for i, p := range pkts {
		bufs[i] = append(make([]byte, 16), p...)
	}
	if n, err := dev.Write(bufs, 16); n != len(bufs) || err != nil {
		t.Fatalf("Write = %d, %v", n, err)
	}
}

func tcpInCsumErrors(t *testing.T) int {
	b, err := os.ReadFile("/proc/net/snmp")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(b), "\n")
	for i := 0; i+1 < len(lines); i++ {
		if !strings.HasPrefix(lines[i], "Tcp: ") || !strings.HasPrefix(lines[i+1], "Tcp: ") {
			continue
		}
		names, values := strings.Fields(lines[i]), strings.Fields(lines[i+1])
		for k, n := range names {
			if n == "InCsumErrors" && k < len(values) {
				v, _ := strconv.Atoi(values[k])
				return v
			}
		}
	}
	t.Fatal("no Tcp InCsumErrors in /proc/net/snmp")
	return 0
}

func pattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i>>8)
	}
	return b
}

// TestTUNOffloadReadTCP: the kernel sends a TCP stream into the device,
// which hands over TSO super-packets; Read must return them split into
// packets of at most the MTU, each valid with contiguous sequence numbers,
// carrying the stream intact.
func TestTUNOffloadReadTCP(t *testing.T) {
	var logs bytes.Buffer
	dev := offloadTUN(t, netnstest.Enter(t), &logs)
	if st := offloadState(dev); !st.VnetHdr || !st.Coalescing || st.Fallbacks != 0 {
		t.Fatalf("offloads not on: %+v\n%s", st, logs.String())
	}

	sock, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(sock) })
	data := pattern(8 << 20)
	sent := make(chan error, 1)
	go func() {
		if err := unix.Connect(sock, &unix.SockaddrInet4{Port: farPort, Addr: farAddr4}); err != nil {
			sent <- fmt.Errorf("connect: %w", err)
			return
		}
		for off := 0; off < len(data); {
			n, err := unix.Write(sock, data[off:])
			if err != nil {
				sent <- fmt.Errorf("write: %w", err)
				return
			}
			off += n
		}
		sent <- nil
	}()

	r := newTUNReader(dev)
	synPkt, err := r.until(func(p []byte) bool {
		s, ok := parseTCP(p)
		return ok && s.dport == farPort && s.flags == tunnel.TCPSyn
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := tunnel.VerifyPacket(synPkt); err != nil {
		t.Fatalf("SYN: %v", err)
	}
	syn, _ := parseTCP(synPkt)
	const isn = 1_000_000
	reply := func(ack uint32, flags byte, opts []byte) []byte {
		return tunnel.TCP4{Src: farAddr4, Dst: tunAddr4, SPort: farPort, DPort: syn.sport, Seq: isn + 1,
			Ack: ack, Flags: flags, Window: 65535, TCPOpts: opts}.Build()
	}
	synAck := reply(syn.seq+1, tunnel.TCPSyn|tunnel.TCPAck, synOpts)
	binary.BigEndian.PutUint32(synAck[24:28], isn)
	binary.BigEndian.PutUint16(synAck[36:38], 0)
	fixTCPChecksum(synAck)
	writePackets(t, dev, synAck)

	var got bytes.Buffer
	next := syn.seq + 1
	for got.Len() < len(data) {
		n, err := dev.Read(r.bufs, r.sizes, 16)
		if err != nil {
			t.Fatal(err)
		}
		for i := range n {
			p := r.bufs[i][16 : 16+r.sizes[i]]
			s, ok := parseTCP(p)
			if !ok || s.sport != syn.sport {
				continue
			}
			if err := tunnel.VerifyPacket(p); err != nil {
				t.Fatalf("segment at seq %d: %v", s.seq, err)
			}
			if len(p) > dev.MTU() {
				t.Fatalf("segment of %d bytes, MTU %d", len(p), dev.MTU())
			}
			if len(s.payload) == 0 || s.seq-next > 1<<31 {
				continue // a pure ACK or a retransmission of what we have
			}
			if s.seq != next {
				t.Fatalf("segment at seq %d, expected %d: a gap", s.seq, next)
			}
			got.Write(s.payload)
			next += uint32(len(s.payload))
		}
		writePackets(t, dev, reply(next, tunnel.TCPAck, nil))
	}
	if !bytes.Equal(got.Bytes(), data) {
		t.Fatal("the stream arrived altered")
	}
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	st := offloadState(dev)
	if st.SuperReads == 0 || st.Segments <= st.SuperReads {
		t.Errorf("the kernel sent no super-packets: %+v", st)
	}
	t.Logf("%d super-packets split into %d segments, %+v", st.SuperReads, st.Segments, st)
}

// TestTUNOffloadReadUDPGSO: a UDP socket sending with UDP_SEGMENT makes the
// kernel hand the device a UDP (USO) super-packet where it has USO; Read
// must return the datagrams one by one, each a valid packet.
func TestTUNOffloadReadUDPGSO(t *testing.T) {
	var logs bytes.Buffer
	dev := offloadTUN(t, netnstest.Enter(t), &logs)
	if !offloadState(dev).USO {
		t.Skip("the kernel has no USO for TUN (Linux < 6.2)")
	}
	sock, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(sock)
	if err := unix.SetsockoptInt(sock, unix.SOL_UDP, unix.UDP_SEGMENT, 1000); err != nil {
		t.Fatal(err)
	}
	payload := pattern(4500)
	if err := unix.Sendto(sock, payload, 0, &unix.SockaddrInet4{Port: 9999, Addr: farAddr4}); err != nil {
		t.Fatal(err)
	}
	r := newTUNReader(dev)
	var dgrams [][]byte
	for len(dgrams) < 5 {
		n, err := dev.Read(r.bufs, r.sizes, 16)
		if err != nil {
			t.Fatalf("after %d datagrams: %v; %+v", len(dgrams), err, offloadState(dev))
		}
		for i := range n {
			if p := r.bufs[i][16 : 16+r.sizes[i]]; len(p) >= 28 && p[0] == 0x45 && p[9] == tuntest.ProtoUDP &&
				[4]byte(p[16:20]) == farAddr4 {
				dgrams = append(dgrams, bytes.Clone(p))
			}
		}
	}
	var got []byte
	for i, p := range dgrams {
		if err := tunnel.VerifyPacket(p); err != nil || binary.BigEndian.Uint16(p[26:28]) == 0 {
			t.Fatalf("datagram %d: %v (checksum %#x)", i, err, binary.BigEndian.Uint16(p[26:28]))
		}
		if want := min(1000, 4500-i*1000); len(p) != 28+want {
			t.Fatalf("datagram %d: %d bytes, want %d", i, len(p), 28+want)
		}
		got = append(got, p[28:]...)
	}
	if !bytes.Equal(got, payload) {
		t.Error("datagrams do not add up to what was sent")
	}
	if st := offloadState(dev); st.SuperReads != 1 || st.Segments != 5 {
		t.Errorf("state %+v", st)
	}
}

// fixTCPChecksum recomputes the TCP checksum of a 20-byte-IP-header packet.
func fixTCPChecksum(p []byte) {
	var sum uint32
	for i := 12; i < 20; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(p[i:]))
	}
	sum += 6 + uint32(len(p)-20)
	binary.BigEndian.PutUint16(p[36:38], 0)
	binary.BigEndian.PutUint16(p[36:38], tuntest.Checksum(p[20:], sum))
}

// TestTUNOffloadWriteTCP: the test sends a TCP stream to a kernel listener
// through Write, in batches the device coalesces into super-packets; the
// kernel must accept them (no checksum errors, everything acknowledged)
// and the listener read the stream intact. Both checksum modes run.
func TestTUNOffloadWriteTCP(t *testing.T) {
	n := netnstest.Enter(t)
	errsBefore := tcpInCsumErrors(t)
	for i, verify := range []bool{false, true} {
		var logs bytes.Buffer
		name := tunName()
		dev, err := tunnel.OpenTUNConfig(tunnel.TUNConfig{Name: name, MTU: 1400, Offload: true,
			VerifyCoalesced: verify, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
		if err != nil {
			t.Fatal(err)
		}
		setUpTUN(t, n, dev)
		writeStream(t, dev, uint16(5300+i))
		st := offloadState(dev)
		if st.SuperWrites == 0 || st.Coalesced < 2*st.SuperWrites || !st.Coalescing || st.Fallbacks != 0 {
			t.Errorf("verify %v: no coalescing: %+v\n%s", verify, st, logs.String())
		}
		t.Logf("verify %v: %d super-packets of %d segments", verify, st.SuperWrites, st.Coalesced)
		dev.Close()
	}
	if n := tcpInCsumErrors(t) - errsBefore; n != 0 {
		t.Errorf("the kernel counted %d TCP checksum errors", n)
	}
}

// receiveStream listens on addr:port in the thread's namespace and sends
// on received what the first connection brings, up to want bytes (nil if
// the accept fails). The listener closes when the test ends.
func receiveStream(t *testing.T, addr [4]byte, port uint16, want int) (ln int, received <-chan []byte) {
	t.Helper()
	ln, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(ln) })
	if err := unix.Bind(ln, &unix.SockaddrInet4{Port: int(port), Addr: addr}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(ln, 1); err != nil {
		t.Fatal(err)
	}
	ch := make(chan []byte, 1)
	go func() {
		c, _, err := unix.Accept(ln)
		if err != nil {
			ch <- nil
			return
		}
		defer unix.Close(c)
		got := make([]byte, 0, want)
		buf := make([]byte, 256<<10)
		for len(got) < want {
			n, err := unix.Read(c, buf)
			if err != nil || n == 0 {
				break
			}
			got = append(got, buf[:n]...)
		}
		ch <- got
	}()
	return ln, ch
}

func writeStream(t *testing.T, dev tunnel.Device, port uint16) {
	data := pattern(4 << 20)
	_, received := receiveStream(t, tunAddr4, port, len(data))

	const clientPort, isn, mss = 40001, 77_000, 1360
	r := newTUNReader(dev)
	client := func(seq uint32, ack uint32, flags byte, opts, payload []byte) []byte {
		return tunnel.TCP4{Src: farAddr4, Dst: tunAddr4, SPort: clientPort, DPort: port, Seq: seq, Ack: ack,
			Flags: flags, Window: 65535, TTL: 63, TCPOpts: opts, Payload: payload}.Build()
	}
	writePackets(t, dev, client(isn, 0, tunnel.TCPSyn, synOpts, nil))
	fromServer := func(p []byte) bool {
		s, ok := parseTCP(p)
		return ok && s.sport == port && s.dport == clientPort
	}
	synAckPkt, err := r.until(fromServer)
	if err != nil {
		t.Fatal(err)
	}
	if err := tunnel.VerifyPacket(synAckPkt); err != nil {
		t.Fatalf("SYN-ACK: %v", err)
	}
	synAck, _ := parseTCP(synAckPkt)
	if synAck.flags != tunnel.TCPSyn|tunnel.TCPAck || synAck.ack != isn+1 {
		t.Fatalf("expected a SYN-ACK, got flags %#x ack %d", synAck.flags, synAck.ack)
	}
	shift := wscale(synAck.opts)
	ack := synAck.seq + 1
	seq := uint32(isn + 1)
	writePackets(t, dev, client(seq, ack, tunnel.TCPAck, nil, nil))

	acked, window := seq, uint32(synAck.window)<<shift
	id := uint16(1)
	for off := 0; off < len(data) || acked != seq; {
		// Send what the window allows, up to 40 segments per batch.
		var batch [][]byte
		for len(batch) < 40 && off < len(data) && seq+mss-acked <= window {
			n := min(mss, len(data)-off)
			flags := byte(tunnel.TCPAck)
			p := client(seq, ack, flags, nil, data[off:off+n])
			binary.BigEndian.PutUint16(p[4:6], id)
			p[10], p[11] = 0, 0
			binary.BigEndian.PutUint16(p[10:12], tuntest.Checksum(p[:20], 0))
			batch = append(batch, p)
			id++
			seq += uint32(n)
			off += n
		}
		if len(batch) > 0 {
			// PSH on the last, as a sender flushing its buffer does.
			last := batch[len(batch)-1]
			last[33] |= tunnel.TCPPsh
			fixTCPChecksum(last)
			writePackets(t, dev, batch...)
		}
		// Wait for the kernel to acknowledge something new, taking the
		// latest acknowledgement of each batch read.
		for moved := false; !moved; {
			n, err := dev.Read(r.bufs, r.sizes, 16)
			if err != nil {
				t.Fatalf("waiting for an ACK (sent up to %d, acked %d): %v", seq, acked, err)
			}
			for i := range n {
				p := r.bufs[i][16 : 16+r.sizes[i]]
				if s, ok := parseTCP(p); ok && fromServer(p) && s.ack-acked > 0 && s.ack-acked < 1<<31 {
					acked, window, moved = s.ack, uint32(s.window)<<shift, true
				}
			}
		}
	}
	select {
	case got := <-received:
		if !bytes.Equal(got, data) {
			t.Fatalf("the listener read %d bytes, altered or short of %d", len(got), len(data))
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the listener did not read the stream")
	}
	// Leave the connection to die with the namespace.
	writePackets(t, dev, client(seq, ack, tunnel.TCPRst|tunnel.TCPAck, nil, nil))
}

// TestTUNOffloadRefusedAtStart: a kernel refusing TUNSETOFFLOAD gets the
// plain device, which works, says so, and counts the fallback.
func TestTUNOffloadRefusedAtStart(t *testing.T) {
	n := netnstest.Enter(t)
	var logs bytes.Buffer
	dev, err := tunnel.OpenTUNRefusingOffloads(tunnel.TUNConfig{Name: tunName(), MTU: 1400, Offload: true,
		Logger: slog.New(slog.NewTextHandler(&logs, nil))}, unix.EINVAL)
	if err != nil {
		t.Fatal(err)
	}
	setUpTUN(t, n, dev)
	if st := offloadState(dev); st.VnetHdr || st.Coalescing || st.Fallbacks != 1 {
		t.Errorf("state %+v", st)
	}
	if !strings.Contains(logs.String(), "offloads refused") || !strings.Contains(logs.String(), "invalid argument") {
		t.Errorf("log:\n%s", logs.String())
	}
	// The plain device reads and writes bare packets.
	r := newTUNReader(dev)
	writePackets(t, dev, tuntest.IPv4ICMPEcho(farAddr, tunAddr, 77, 5, []byte("ping")))
	reply, err := r.until(isEchoReply(5))
	if err != nil {
		t.Fatal(err)
	}
	if err := tunnel.VerifyPacket(reply); err != nil {
		t.Error(err)
	}

	// Asking for no offloads is not a fallback.
	plain, err := tunnel.OpenTUNConfig(tunnel.TUNConfig{Name: tunName(), MTU: 1400})
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	if st := offloadState(plain); st != (tunnel.OffloadState{}) {
		t.Errorf("plain device state %+v", st)
	}
}

// TestTUNOffloadAllocs: with offloads, a Write and the Reads bringing the
// answer back allocate nothing.
func TestTUNOffloadAllocs(t *testing.T) {
	var logs bytes.Buffer
	dev := offloadTUN(t, netnstest.Enter(t), &logs)
	if allocs := echoAllocs(t, dev, 6); allocs != 0 {
		t.Errorf("TUN write + read with offloads allocates %.1f times", allocs)
	}
}

// TestTUNOffloadCloseWakesRead: Close wakes a Read blocked in poll.
func TestTUNOffloadCloseWakesRead(t *testing.T) {
	var logs bytes.Buffer
	checkCloseWakesRead(t, offloadTUN(t, netnstest.Enter(t), &logs))
}

// checkingConn verifies every datagram its Conn receives, before the
// forwarder sees it: each must be exactly one whole, valid inner IPv4
// packet (the wire rule a stock flanneld receiver depends on).
type checkingConn struct {
	tunnel.Conn
	good, bad       atomic.Uint64
	firstBad        atomic.Pointer[string]
	reads, tryReads atomic.Uint64 // which path the forwarder took
	viewReads       atomic.Uint64 // of tryReads, datagrams taken in place
}

// jointConn is what the forwarder needs to serve both directions in one
// goroutine; the Linux UDP conn has it.
type jointConn interface {
	TryRead(bufs [][]byte, sizes []int, addrs []netip.AddrPort) (int, bool, error)
	FD() int
}

func (c *checkingConn) Read(bufs [][]byte, sizes []int, addrs []netip.AddrPort) (int, error) {
	c.reads.Add(1)
	n, err := c.Conn.Read(bufs, sizes, addrs)
	c.check(bufs, sizes, n)
	return n, err
}

func (c *checkingConn) TryRead(bufs [][]byte, sizes []int, addrs []netip.AddrPort) (int, bool, error) {
	c.tryReads.Add(1)
	n, empty, err := c.Conn.(jointConn).TryRead(bufs, sizes, addrs)
	c.check(bufs, sizes, n)
	return n, empty, err
}

func (c *checkingConn) FD() int { return c.Conn.(jointConn).FD() }

// viewConn is what lets the forwarder take datagrams in place; the Linux
// UDP conn has it with GRO on.
type viewConn interface {
	TryReadViews(views [][]byte, sizes []int, addrs []netip.AddrPort) (int, bool, error)
	Views() bool
}

func (c *checkingConn) TryReadViews(views [][]byte, sizes []int, addrs []netip.AddrPort) (int, bool, error) {
	c.tryReads.Add(1)
	c.viewReads.Add(1)
	n, empty, err := c.Conn.(viewConn).TryReadViews(views, sizes, addrs)
	c.check(views, sizes, n)
	return n, empty, err
}

func (c *checkingConn) Views() bool {
	v, ok := c.Conn.(viewConn)
	return ok && v.Views()
}

func (c *checkingConn) check(bufs [][]byte, sizes []int, n int) {
	for i := range n {
		if verr := tunnel.VerifyPacket(bufs[i][:sizes[i]]); verr != nil {
			if c.bad.Add(1) == 1 {
				msg := fmt.Sprintf("%v: % x", verr, bufs[i][:min(sizes[i], 60)])
				c.firstBad.Store(&msg)
			}
			continue
		}
		c.good.Add(1)
	}
}

// tunNode is one side of TestForwardTCPThroughOffloadTUNs.
type tunNode struct {
	dev  tunnel.Device
	conn *checkingConn
	logs bytes.Buffer
}

// openTUNNode opens a TUN (with or without offloads) in n, addressed
// addr/32 with route routed through it.
func openTUNNode(t *testing.T, n *netnstest.NS, offload bool, addr, routed string) *tunNode {
	node := &tunNode{}
	err := n.Do(func() (err error) {
		node.dev, err = tunnel.OpenTUNConfig(tunnel.TUNConfig{Name: tunName(), MTU: 1472, Offload: offload,
			Logger: slog.New(slog.NewTextHandler(&node.logs, nil))})
		return err
	})
	if err != nil {
		t.Fatalf("open tun in netns %s: %v", n.Name, err)
	}
	configureTUN(t, n, node.dev, addr, routed)
	if offload {
		// As the daemon does: one super-packet is one GSO message.
		if err := n.Netlink.LinkSetGSOMaxSegs(n.Link(t, node.dev.Name()), tunnel.GSOSegments(node.dev.MTU())); err != nil {
			t.Fatalf("set gso_max_segs of %s: %v", node.dev.Name(), err)
		}
	}
	return node
}

// TestForwardTCPThroughOffloadTUNs runs two weft data paths in two
// namespaces joined by a veth pair (UDP offloads on), with a kernel TCP
// stream from a socket routed into A's TUN to a listener behind B's: with
// TUN offloads on both sides, and mixed pairs (on one side, off on the
// other). The stream must arrive intact, every datagram on the wire must be
// one valid inner packet, and the offloads must have been used.
//
// By default each forwarder serves both directions from one goroutine;
// split runs the one-goroutine-per-direction path.
func TestForwardTCPThroughOffloadTUNs(t *testing.T) {
	for _, tc := range []struct{ a, b, split bool }{{true, true, false}, {true, false, false}, {false, true, false}, {true, true, true}, {false, false, true}} {
		t.Run(fmt.Sprintf("A=%v/B=%v/split=%v", tc.a, tc.b, tc.split), func(t *testing.T) {
			testForwardTCPThroughTUNs(t, tc.a, tc.b, tc.split)
		})
	}
}

// forwardingTUNs runs two weft data paths in two namespaces joined by a
// veth pair (UDP offloads on): A (198.19.1.1 on its TUN, 198.19.1.0/24) in
// the test's namespace, B (198.19.2.1, 198.19.2.0/24) in the pair's other.
// stop stops both forwarders.
func forwardingTUNs(t *testing.T, offloadA, offloadB, split bool) (p *vethPair, a, b *tunNode, stop func()) {
	p = newVethPair(t, 1500)
	checkLeaks(t)
	subA, subB := netip.MustParsePrefix("198.19.1.0/24"), netip.MustParsePrefix("198.19.2.0/24")
	a = openTUNNode(t, p.a, offloadA, "198.19.1.1", "198.19.2.0/24")
	a.conn = &checkingConn{Conn: p.listenA(t, true, true)}
	b = openTUNNode(t, p.b, offloadB, "198.19.2.1", "198.19.1.0/24")
	b.conn = &checkingConn{Conn: p.listenB(t, true, true)}

	fwdA := tunnel.NewForwarder(tunnel.Config{Device: a.dev, Conn: a.conn, Port: b.conn.LocalAddr().Port(), SplitDirections: split})
	fwdA.SetPeers(tunnel.NewTable(subA, []tunnel.Peer{{Subnet: subB, Addr: underlayB}}))
	fwdB := tunnel.NewForwarder(tunnel.Config{Device: b.dev, Conn: b.conn, Port: a.conn.LocalAddr().Port(), SplitDirections: split})
	fwdB.SetPeers(tunnel.NewTable(subB, []tunnel.Peer{{Subnet: subA, Addr: underlayA}}))
	stopA, stopB := runForwarder(t, fwdA), runForwarder(t, fwdB)
	return p, a, b, func() { stopA(); stopB() }
}

func testForwardTCPThroughTUNs(t *testing.T, offloadA, offloadB, split bool) {
	p, a, b, stop := forwardingTUNs(t, offloadA, offloadB, split)

	// The listener lives in B, the client in A; sockets belong to the
	// namespace they were made in, so the goroutines may run anywhere.
	data := pattern(64 << 20)
	var ln int
	var received <-chan []byte
	p.inB(t, func() { ln, received = receiveStream(t, [4]byte{198, 19, 2, 1}, 5201, len(data)) })
	client, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(client)
	// A stuck stream fails the test instead of hanging it.
	timer := time.AfterFunc(30*time.Second, func() { _ = unix.Shutdown(client, unix.SHUT_RDWR); _ = unix.Shutdown(ln, unix.SHUT_RDWR) })
	defer timer.Stop()

	start := time.Now()
	if err := unix.Connect(client, &unix.SockaddrInet4{Port: 5201, Addr: [4]byte{198, 19, 2, 1}}); err != nil {
		t.Fatalf("connect through the tunnel: %v", err)
	}
	for off := 0; off < len(data); {
		n, err := unix.Write(client, data[off:])
		if err != nil {
			t.Fatalf("write after %d bytes: %v", off, err)
		}
		off += n
	}
	got := <-received
	elapsed := time.Since(start)
	if !bytes.Equal(got, data) {
		t.Fatalf("the listener read %d bytes, altered or short of %d", len(got), len(data))
	}
	stop()

	stA, stB := offloadState(a.dev), offloadState(b.dev)
	t.Logf("%.2f Gb/s; A %+v; B %+v", float64(len(data))*8/elapsed.Seconds()/1e9, stA, stB)
	for name, c := range map[string]*checkingConn{"A": a.conn, "B": b.conn} {
		if c.bad.Load() != 0 {
			t.Errorf("%s received %d datagrams that are not one valid inner packet, first: %s", name, c.bad.Load(), *c.firstBad.Load())
		}
	}
	for name, c := range map[string]*checkingConn{"A": a.conn, "B": b.conn} {
		if r, tr := c.reads.Load(), c.tryReads.Load(); split && tr != 0 || !split && r != 0 {
			t.Errorf("%s: %d blocking reads and %d tries with split=%v: the forwarder took the other path", name, r, tr, split)
		}
		// One goroutine with GRO on takes datagrams in place.
		if v, tr := c.viewReads.Load(), c.tryReads.Load(); !split && v != tr {
			t.Errorf("%s: %d of %d tries took datagrams in place", name, v, tr)
		}
	}
	if b.conn.good.Load() < uint64(len(data)/1472) {
		t.Errorf("B received only %d valid datagrams", b.conn.good.Load())
	}
	if offloadA && (stA.SuperReads == 0 || !stA.VnetHdr) {
		t.Errorf("A split no super-packets: %+v\n%s", stA, a.logs.String())
	}
	if offloadB && stB.SuperWrites == 0 {
		t.Errorf("B coalesced nothing: %+v\n%s", stB, b.logs.String())
	}
	if !offloadA && stA.VnetHdr || !offloadB && stB.VnetHdr {
		t.Errorf("offloads on where not asked for: A %+v, B %+v", stA, stB)
	}
	if stA.Fallbacks+stB.Fallbacks != 0 {
		t.Errorf("fallbacks: A %+v, B %+v", stA, stB)
	}
}

// TestForwardJointLoopIdles checks the one-goroutine loop's waiting: idle,
// it makes no reads at all (a side found empty is only read again when the
// poll says so, and a poll that times out reads nothing), and after the
// quiet period, when it waits without a timeout, the next datagram still
// gets through promptly, in both directions.
func TestForwardJointLoopIdles(t *testing.T) {
	a, b, sockA, sockB, stop := udpThroughTUNs(t)
	defer stop()
	// Each echo crosses both forwarders twice.
	echo := func(when string) {
		t.Helper()
		msg := []byte("weft " + when)
		if err := unix.Sendto(sockA, msg, 0, &unix.SockaddrInet4{Port: 7, Addr: [4]byte{198, 19, 2, 1}}); err != nil {
			t.Fatal(err)
		}
		got, from := recvWithin(t, sockB, 2*time.Second)
		if !bytes.Equal(got, msg) {
			t.Fatalf("%s: B got %q, want %q", when, got, msg)
		}
		if err := unix.Sendto(sockB, got, 0, from); err != nil {
			t.Fatal(err)
		}
		if back, _ := recvWithin(t, sockA, 2*time.Second); !bytes.Equal(back, msg) {
			t.Fatalf("%s: A got %q back, want %q", when, back, msg)
		}
	}
	echo("at start")
	time.Sleep(50 * time.Millisecond)
	before := a.conn.tryReads.Load() + b.conn.tryReads.Load()
	time.Sleep(300 * time.Millisecond) // polls time out every 8 ms, then wait for good
	if n := a.conn.tryReads.Load() + b.conn.tryReads.Load() - before; n != 0 {
		t.Errorf("idle forwarders read their sockets %d times in 300 ms: the loop spins instead of waiting", n)
	}
	time.Sleep(time.Second) // past the quiet period: polls without a timeout
	echo("after a quiet period")
	echo("right after")
}

// udpThroughTUNs is forwardingTUNs with offloads on both sides and a UDP
// socket on each side's TUN address, port 7.
func udpThroughTUNs(t *testing.T) (a, b *tunNode, sockA, sockB int, stop func()) {
	p, a, b, stop := forwardingTUNs(t, true, true, false)
	sockA = udpSocket(t, [4]byte{198, 19, 1, 1})
	p.inB(t, func() { sockB = udpSocket(t, [4]byte{198, 19, 2, 1}) })
	return a, b, sockA, sockB, stop
}

// udpSocket is a UDP socket bound to addr:7 in the thread's namespace.
func udpSocket(t *testing.T, addr [4]byte) int {
	t.Helper()
	s, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(s) })
	if err := unix.Bind(s, &unix.SockaddrInet4{Port: 7, Addr: addr}); err != nil {
		t.Fatal(err)
	}
	return s
}

// recvWithin reads one datagram from s, failing the test after d.
func recvWithin(t *testing.T, s int, d time.Duration) ([]byte, unix.Sockaddr) {
	t.Helper()
	tv := unix.NsecToTimeval(d.Nanoseconds())
	if err := unix.SetsockoptTimeval(s, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 2048)
	n, from, err := unix.Recvfrom(s, buf, 0)
	if err != nil {
		t.Fatalf("no datagram within %v: %v", d, err)
	}
	return buf[:n], from
}

// TestForwardUDPBurstCoalesced sends bursts of UDP datagrams through two
// forwarders with TUN offloads: every datagram must reach the socket behind
// B intact and in order, and where the TUN takes USO, B must have written
// bursts as super-packets (one write, split by the kernel).
func TestForwardUDPBurstCoalesced(t *testing.T) {
	a, b, sockA, sockB, stop := udpThroughTUNs(t)
	defer stop()
	if err := unix.SetsockoptInt(sockB, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 8<<20); err != nil {
		t.Fatal(err)
	}
	const bursts, perBurst = 20, 200
	for k := range bursts {
		for i := range perBurst {
			msg := fmt.Appendf(nil, "datagram %05d of a burst of equal lengths", k*perBurst+i)
			if err := unix.Sendto(sockA, msg, 0, &unix.SockaddrInet4{Port: 7, Addr: [4]byte{198, 19, 2, 1}}); err != nil {
				t.Fatal(err)
			}
		}
		for i := range perBurst {
			want := fmt.Appendf(nil, "datagram %05d of a burst of equal lengths", k*perBurst+i)
			if got, _ := recvWithin(t, sockB, 2*time.Second); !bytes.Equal(got, want) {
				t.Fatalf("got %q, want %q", got, want)
			}
		}
	}
	stop()
	st := offloadState(b.dev)
	t.Logf("B: %+v", st)
	if st.USO && st.SuperWrites == 0 {
		t.Errorf("B takes USO but wrote no UDP super-packet: %+v\n%s", st, b.logs.String())
	}
	if bad := a.conn.bad.Load() + b.conn.bad.Load(); bad != 0 {
		t.Errorf("%d datagrams on the wire were not one valid inner packet", bad)
	}
}
