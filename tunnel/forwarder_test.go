package tunnel_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/weft-net/weft/tunnel"
	"github.com/weft-net/weft/tunnel/tuntest"
)

var (
	subnetA = netip.MustParsePrefix("198.19.1.0/24")
	subnetB = netip.MustParsePrefix("198.19.2.0/24")
	hostA   = netip.MustParseAddr("198.19.1.5")
	hostB   = netip.MustParseAddr("198.19.2.7")
)

// transport makes the underlay for a two-node test: conns for nodes A and
// B sharing one port (weft sends every peer to its own port), and a third
// conn standing for an arbitrary sender on the network.
type transport struct {
	name  string
	conns func(t *testing.T) (a, b, other tunnel.Conn)
}

var transports = []transport{
	{"fake", fakeConns},
	{"loopback", loopbackConns},
}

func fakeConns(t *testing.T) (a, b, other tunnel.Conn) {
	n := tuntest.NewNetwork()
	listen := func(s string) tunnel.Conn {
		c, err := n.Listen(netip.MustParseAddrPort(s))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	return listen("198.18.0.1:8285"), listen("198.18.0.2:8285"), listen("198.18.0.66:8285")
}

// loopbackConns binds 127.0.0.1 and 127.0.0.2 (both loopback) on the same
// free port.
func loopbackConns(t *testing.T) (a, b, other tunnel.Conn) {
	listen := func(s string) (tunnel.Conn, error) {
		c, err := tunnel.ListenUDP(netip.MustParseAddrPort(s))
		if err == nil {
			t.Cleanup(func() { c.Close() })
		}
		return c, err
	}
	for try := 0; try < 20; try++ {
		a, err := listen("127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		b, err := listen(fmt.Sprintf("127.0.0.2:%d", a.LocalAddr().Port()))
		if errors.Is(err, syscall.EADDRINUSE) {
			a.Close()
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		other, err := listen("127.0.0.3:0")
		if err != nil {
			t.Fatal(err)
		}
		return a, b, other
	}
	t.Fatal("no port free on both 127.0.0.1 and 127.0.0.2")
	return nil, nil, nil
}

// node is one weft data path: a fake TUN and a forwarder over a Conn.
type node struct {
	dev  *tuntest.Device
	conn tunnel.Conn
	fwd  *tunnel.Forwarder
	stop func()
}

// newNode makes a forwarder for a node owning local, with strict ingress
// checks.
func newNode(t *testing.T, dev tunnel.Device, conn tunnel.Conn, local netip.Prefix, peers ...tunnel.Peer) *tunnel.Forwarder {
	t.Helper()
	fwd := tunnel.NewForwarder(tunnel.Config{
		Device: dev,
		Conn:   conn,
		Port:   conn.LocalAddr().Port(),
		Logger: slog.New(slog.NewTextHandler(t.Output(), nil)),
	})
	fwd.SetPeers(tunnel.NewTable(local, peers))
	return fwd
}

// startNode runs a forwarder on a fresh fake TUN. stop (also run at
// cleanup) cancels it and requires Run to return nil promptly.
func startNode(t *testing.T, conn tunnel.Conn, local netip.Prefix, peers ...tunnel.Peer) *node {
	t.Helper()
	n := &node{dev: tuntest.NewDevice("udp0", 1472), conn: conn}
	n.fwd = newNode(t, n.dev, conn, local, peers...)
	n.stop = runForwarder(t, n.fwd)
	return n
}

func runForwarder(t *testing.T, fwd *tunnel.Forwarder) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- fwd.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			start := time.Now()
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Run returned %v after cancel", err)
				}
				if d := time.Since(start); d > time.Second {
					t.Errorf("Run took %v to return after cancel", d)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("Run did not return within 5s of cancel")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// twoNodes starts A (198.19.1.0/24) and B (198.19.2.0/24), each knowing
// the other, and returns them with the third conn.
func twoNodes(t *testing.T, tr transport) (a, b *node, other tunnel.Conn) {
	ca, cb, other := tr.conns(t)
	a = startNode(t, ca, subnetA, tunnel.Peer{Subnet: subnetB, Addr: cb.LocalAddr().Addr()})
	b = startNode(t, cb, subnetB, tunnel.Peer{Subnet: subnetA, Addr: ca.LocalAddr().Addr()})
	return a, b, other
}

// checkLeaks fails the test if goroutines started during it outlive it.
// Call it first so its cleanup runs last.
func checkLeaks(t *testing.T) {
	before := runtime.NumGoroutine()
	t.Cleanup(func() {
		deadline := time.Now().Add(3 * time.Second)
		for runtime.NumGoroutine() > before {
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				buf = buf[:runtime.Stack(buf, true)]
				t.Fatalf("%d goroutines before, %d after:\n%s", before, runtime.NumGoroutine(), buf)
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
}

func receive(t *testing.T, dev *tuntest.Device) []byte {
	t.Helper()
	select {
	case pkt := <-dev.Written():
		return pkt
	case <-time.After(5 * time.Second):
		t.Fatalf("nothing written to %s within 5s", dev.Name())
		return nil
	}
}

func expectNothing(t *testing.T, dev *tuntest.Device) {
	t.Helper()
	select {
	case pkt := <-dev.Written():
		t.Fatalf("unexpected packet written to %s: % x", dev.Name(), pkt[:min(len(pkt), 24)])
	default:
	}
}

// requireForwarded checks got is sent with the TTL one lower and a header
// checksum that still verifies.
func requireForwarded(t *testing.T, sent, got []byte) {
	t.Helper()
	if err := tuntest.VerifyIPv4(got); err != nil {
		t.Fatalf("delivered packet: %v", err)
	}
	if len(got) != len(sent) {
		t.Fatalf("delivered %d bytes, sent %d", len(got), len(sent))
	}
	if got[8] != sent[8]-1 {
		t.Errorf("TTL %d, sent %d", got[8], sent[8])
	}
	for i := range sent {
		if i != 8 && i != 10 && i != 11 && got[i] != sent[i] {
			t.Fatalf("byte %d differs: got % x, sent % x", i, got[:min(len(got), 40)], sent[:min(len(sent), 40)])
		}
	}
}

// eventually polls cond for up to 5s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

func TestForwardTwoNodes(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			checkLeaks(t)
			a, b, _ := twoNodes(t, tr)

			udp := tuntest.IPv4UDP(hostA, hostB, []byte("hello from A"))
			a.dev.Inject(udp)
			requireForwarded(t, udp, receive(t, b.dev))

			ping := tuntest.IPv4ICMPEcho(hostB, hostA, 7, 1, []byte("ping from B"))
			b.dev.Inject(ping)
			requireForwarded(t, ping, receive(t, a.dev))

			// A burst keeps its order and loses nothing.
			const burst = 200
			var sent [][]byte
			bytesSent := len(udp)
			for i := range burst {
				pkt := tuntest.IPv4UDP(hostA, hostB, fmt.Appendf(nil, "packet %d", i))
				sent = append(sent, pkt)
				bytesSent += len(pkt)
				a.dev.Inject(pkt)
			}
			for i := range burst {
				requireForwarded(t, sent[i], receive(t, b.dev))
			}

			// Counters are updated just after the batch is handed over.
			eventually(t, "counters", func() bool {
				ca, cb := a.fwd.Counters(), b.fwd.Counters()
				return ca.TxPackets == burst+1 && cb.RxPackets == burst+1 && ca.RxPackets == 1 && cb.TxPackets == 1
			})
			ca, cb := a.fwd.Counters(), b.fwd.Counters()
			if ca.TxBytes != uint64(bytesSent) || cb.RxBytes != uint64(bytesSent) || ca.Dropped()+cb.Dropped() != 0 {
				t.Errorf("counters: A %+v, B %+v", ca, cb)
			}
			if ca.RxBytes != uint64(len(ping)) || cb.TxBytes != uint64(len(ping)) {
				t.Errorf("ping counters: A %+v, B %+v", ca, cb)
			}
		})
	}
}

func TestForwardDropsUnknownDestination(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			checkLeaks(t)
			a, b, _ := twoNodes(t, tr)
			v6 := make([]byte, 48)
			v6[0] = 0x60
			a.dev.Inject(tuntest.IPv4UDP(hostA, netip.MustParseAddr("198.19.9.9"), []byte("nowhere")))
			a.dev.Inject(v6)
			a.dev.Inject([]byte{0x45, 0, 0})
			good := tuntest.IPv4UDP(hostA, hostB, []byte("after"))
			a.dev.Inject(good)

			requireForwarded(t, good, receive(t, b.dev))
			expectNothing(t, b.dev)
			eventually(t, "tx counter", func() bool { return a.fwd.Counters().TxPackets == 1 })
			c := a.fwd.Counters()
			if c.Drops[tunnel.DropNoRoute] != 1 || c.Drops[tunnel.DropNotIPv4] != 1 ||
				c.Drops[tunnel.DropTruncated] != 1 || c.Dropped() != 3 || c.TxPackets != 1 {
				t.Errorf("A counters %+v", c)
			}
		})
	}
}

func TestForwardDropsMalformedDatagrams(t *testing.T) {
	valid := func() []byte { return tuntest.IPv4UDP(hostA, hostB, []byte("payload")) }
	edit := func(pkt []byte, f func([]byte)) []byte { f(pkt); return pkt }
	cases := []struct {
		reason tunnel.DropReason
		pkt    []byte
	}{
		{tunnel.DropTruncated, []byte{}},
		{tunnel.DropTruncated, valid()[:12]},
		{tunnel.DropNotIPv4, edit(valid(), func(p []byte) { p[0] = 0x60 })},
		{tunnel.DropBadHeaderLen, edit(valid(), func(p []byte) { p[0] = 0x44 })},
		{tunnel.DropHeaderExceedsTotal, edit(valid(), func(p []byte) { p[0], p[2], p[3] = 0x46, 0, 20 })},
		{tunnel.DropBadTotalLen, edit(valid(), func(p []byte) { p[3]++ })},
		{tunnel.DropBadTotalLen, append(valid(), 0)},
		{tunnel.DropTTLExpired, edit(valid(), func(p []byte) { p[8] = 1 })},
		{tunnel.DropTTLExpired, edit(valid(), func(p []byte) { p[8] = 0 })},
	}
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			checkLeaks(t)
			// Sent by A, a legitimate peer, so only the packets' shape
			// is at fault.
			a, b, _ := twoNodes(t, tr)
			var want [tunnel.NumDropReasons]uint64
			for _, c := range cases {
				if err := a.conn.Write([][]byte{c.pkt}, 0, b.conn.LocalAddr()); err != nil {
					t.Fatal(err)
				}
				want[c.reason]++
			}
			good := valid()
			if err := a.conn.Write([][]byte{good}, 0, b.conn.LocalAddr()); err != nil {
				t.Fatal(err)
			}
			requireForwarded(t, good, receive(t, b.dev))
			expectNothing(t, b.dev)
			eventually(t, "counters", func() bool {
				c := b.fwd.Counters()
				return c.Drops == want && c.RxPackets == 1 && c.TxPackets == 0
			})
		})
	}
}

// TestForwardIngressChecks: B accepts a datagram only from the PublicIP of
// the lease holding the inner source, and only for its own subnet.
func TestForwardIngressChecks(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			checkLeaks(t)
			a, b, other := twoNodes(t, tr)
			cases := []struct {
				from   tunnel.Conn
				pkt    []byte
				reason tunnel.DropReason
			}{
				// A's subnet, but not from A: spoofed.
				{other, tuntest.IPv4UDP(hostA, hostB, []byte("spoofed")), tunnel.DropSpoofedSource},
				// From A, but from a subnet nobody holds.
				{a.conn, tuntest.IPv4UDP(netip.MustParseAddr("198.19.9.9"), hostB, []byte("unknown")), tunnel.DropUnknownSource},
				{other, tuntest.IPv4UDP(netip.MustParseAddr("198.18.0.66"), hostB, []byte("outside")), tunnel.DropUnknownSource},
				// From A, but not for B's subnet.
				{a.conn, tuntest.IPv4UDP(hostA, netip.MustParseAddr("198.19.3.3"), []byte("elsewhere")), tunnel.DropNotLocal},
				{a.conn, tuntest.IPv4UDP(hostA, hostA, []byte("reflected")), tunnel.DropNotLocal},
			}
			var want [tunnel.NumDropReasons]uint64
			for _, c := range cases {
				if err := c.from.Write([][]byte{c.pkt}, 0, b.conn.LocalAddr()); err != nil {
					t.Fatal(err)
				}
				want[c.reason]++
			}
			good := tuntest.IPv4UDP(hostA, hostB, []byte("legitimate"))
			if err := a.conn.Write([][]byte{good}, 0, b.conn.LocalAddr()); err != nil {
				t.Fatal(err)
			}
			requireForwarded(t, good, receive(t, b.dev))
			expectNothing(t, b.dev)
			eventually(t, "counters", func() bool {
				c := b.fwd.Counters()
				return c.Drops == want && c.RxPackets == 1
			})
		})
	}
}

func TestForwardSetPeersWhileRunning(t *testing.T) {
	checkLeaks(t)
	ca, cb, _ := fakeConns(t)
	a := startNode(t, ca, subnetA)
	b := startNode(t, cb, subnetB, tunnel.Peer{Subnet: subnetA, Addr: ca.LocalAddr().Addr()})
	first := tuntest.IPv4UDP(hostA, hostB, []byte("no table yet"))
	a.dev.Inject(first)
	eventually(t, "no_route", func() bool { return a.fwd.Counters().Drops[tunnel.DropNoRoute] == 1 })

	a.fwd.SetPeers(tunnel.NewTable(subnetA, []tunnel.Peer{{Subnet: subnetB, Addr: cb.LocalAddr().Addr()}}))
	second := tuntest.IPv4UDP(hostA, hostB, []byte("table now"))
	a.dev.Inject(second)
	requireForwarded(t, second, receive(t, b.dev))

	a.fwd.SetPeers(nil)
	a.dev.Inject(second)
	eventually(t, "second no_route", func() bool { return a.fwd.Counters().Drops[tunnel.DropNoRoute] == 2 })
	expectNothing(t, b.dev)
}

// recordingConn records the shape of each Write.
type recordingConn struct {
	tunnel.Conn
	writes []string
}

func (c *recordingConn) Write(bufs [][]byte, offset int, dst netip.AddrPort) error {
	c.writes = append(c.writes, fmt.Sprintf("%d to %v", len(bufs), dst.Addr()))
	return c.Conn.Write(bufs, offset, dst)
}

// TestForwardGroupsRunsPerPeer checks that one batch becomes one Write per
// run of consecutive packets for the same peer, in order.
func TestForwardGroupsRunsPerPeer(t *testing.T) {
	n := tuntest.NewNetwork()
	conn, _ := n.Listen(netip.MustParseAddrPort("198.18.0.1:8285"))
	peerX, _ := n.Listen(netip.MustParseAddrPort("198.18.0.2:8285"))
	peerY, _ := n.Listen(netip.MustParseAddrPort("198.18.0.3:8285"))
	rec := &recordingConn{Conn: conn}
	dev := tuntest.NewDevice("udp0", 1472)
	fwd := newNode(t, dev, rec, subnetA,
		tunnel.Peer{Subnet: subnetB, Addr: peerX.LocalAddr().Addr()},
		tunnel.Peer{Subnet: netip.MustParsePrefix("198.19.3.0/24"), Addr: peerY.LocalAddr().Addr()})
	x, y := hostB, netip.MustParseAddr("198.19.3.3")
	for i, dst := range []netip.Addr{x, x, netip.MustParseAddr("198.19.99.1"), x, y, y, x} {
		dev.Inject(tuntest.IPv4UDP(hostA, dst, []byte{byte(i)}))
	}
	if err := fwd.StepTUNToUDP(); err != nil {
		t.Fatal(err)
	}
	want := "3 to 198.18.0.2, 2 to 198.18.0.3, 1 to 198.18.0.2"
	if got := strings.Join(rec.writes, ", "); got != want {
		t.Errorf("writes: %s; want %s", got, want)
	}
	// The unknown destination did not split X's first run.
	if c := fwd.Counters(); c.TxPackets != 6 || c.Drops[tunnel.DropNoRoute] != 1 {
		t.Errorf("counters %+v", c)
	}
}

// TestForwardAllocs asserts the steady-state forward path, one batch each
// way, allocates nothing.
func TestForwardAllocs(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			ca, cb, _ := tr.conns(t)
			devA, devB := tuntest.NewDevice("udp0", 1472), tuntest.NewDevice("udp0", 1472)
			fa := newNode(t, devA, ca, subnetA, tunnel.Peer{Subnet: subnetB, Addr: cb.LocalAddr().Addr()})
			fb := newNode(t, devB, cb, subnetB, tunnel.Peer{Subnet: subnetA, Addr: ca.LocalAddr().Addr()})
			delivered := 0
			devB.SetWriteHook(func(pkt []byte) error { delivered++; return nil })

			const perBatch = 8
			var pkts [][]byte
			for i := range perBatch {
				pkts = append(pkts, tuntest.IPv4UDP(hostA, hostB, bytes.Repeat([]byte{byte(i)}, 1000)))
			}
			var failed error
			step := func() {
				for _, p := range pkts {
					devA.Inject(p)
				}
				if err := fa.StepTUNToUDP(); err != nil {
					failed = err
					return
				}
				// On loopback a batch may arrive in more than one recvmmsg.
				for want := delivered + perBatch; delivered < want; {
					if err := fb.StepUDPToTUN(); err != nil {
						failed = err
						return
					}
				}
			}
			allocs := testing.AllocsPerRun(200, step)
			if failed != nil {
				t.Fatal(failed)
			}
			if allocs != 0 {
				t.Errorf("one batch each way allocates %.1f times", allocs)
			}
			if c := fb.Counters(); c.RxPackets != uint64(delivered) || c.Dropped() != 0 || delivered < 200*perBatch {
				t.Errorf("delivered %d, counters %+v", delivered, c)
			}
		})
	}
}

// faultyDevice returns queued read errors before reading.
type faultyDevice struct {
	*tuntest.Device
	readErrs chan error
}

func (d *faultyDevice) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	select {
	case err := <-d.readErrs:
		return 0, err
	default:
		return d.Device.Read(bufs, sizes, offset)
	}
}

func TestRunFailsOnReadError(t *testing.T) {
	checkLeaks(t)
	ca, _, _ := fakeConns(t)
	dev := &faultyDevice{Device: tuntest.NewDevice("udp0", 1472), readErrs: make(chan error, 1)}
	boom := errors.New("device vanished")
	dev.readErrs <- boom
	fwd := newNode(t, dev, ca, subnetA)
	done := make(chan error, 1)
	go func() { done <- fwd.Run(context.Background()) }()
	select {
	case err := <-done:
		if !errors.Is(err, boom) || !strings.Contains(err.Error(), "read from tun udp0") {
			t.Errorf("Run = %v, want the wrapped read error", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not fail")
	}
	// Run closed both ends.
	if _, err := ca.Read(make([][]byte, 1), make([]int, 1), make([]netip.AddrPort, 1)); !errors.Is(err, net.ErrClosed) {
		t.Errorf("conn after Run: %v, want closed", err)
	}
	if err := fwd.Run(context.Background()); err == nil {
		t.Error("second Run returned nil")
	}
}

func TestRunRidesTransientReadError(t *testing.T) {
	checkLeaks(t)
	ca, cb, _ := fakeConns(t)
	dev := &faultyDevice{Device: tuntest.NewDevice("udp0", 1472), readErrs: make(chan error, 1)}
	dev.readErrs <- fmt.Errorf("read tun: %w", syscall.ENOBUFS)
	fa := newNode(t, dev, ca, subnetA, tunnel.Peer{Subnet: subnetB, Addr: cb.LocalAddr().Addr()})
	runForwarder(t, fa)
	b := startNode(t, cb, subnetB, tunnel.Peer{Subnet: subnetA, Addr: ca.LocalAddr().Addr()})
	pkt := tuntest.IPv4UDP(hostA, hostB, nil)
	dev.Inject(pkt)
	requireForwarded(t, pkt, receive(t, b.dev))
	if c := fa.Counters(); c.ReadErrors != 1 {
		t.Errorf("ReadErrors = %d, want 1", c.ReadErrors)
	}
}

func TestRunCancelledBeforeStart(t *testing.T) {
	checkLeaks(t)
	ca, _, _ := fakeConns(t)
	fwd := newNode(t, tuntest.NewDevice("udp0", 1472), ca, subnetA)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := fwd.Run(ctx); err != nil {
		t.Errorf("Run = %v", err)
	}
}

func TestForwardCountsTUNWriteErrors(t *testing.T) {
	checkLeaks(t)
	a, b, _ := twoNodes(t, transports[0])
	var mu sync.Mutex
	var written []string
	b.dev.SetWriteHook(func(pkt []byte) error {
		payload := string(pkt[28:])
		if payload == "refuse" {
			return syscall.EINVAL
		}
		mu.Lock()
		written = append(written, payload)
		mu.Unlock()
		return nil
	})
	for _, s := range []string{"one", "refuse", "two", "refuse", "three"} {
		a.dev.Inject(tuntest.IPv4UDP(hostA, hostB, []byte(s)))
	}
	eventually(t, "three packets", func() bool { return b.fwd.Counters().RxPackets == 3 })
	mu.Lock()
	defer mu.Unlock()
	if got := strings.Join(written, " "); got != "one two three" {
		t.Errorf("written %q", got)
	}
	if c := b.fwd.Counters(); c.Drops[tunnel.DropTUNWriteError] != 2 {
		t.Errorf("counters %+v", c)
	}
}

// TestForwardCountsSendErrors sends an inner packet no UDP datagram can
// carry: the kernel refuses it (EMSGSIZE) and the forwarder counts it and
// carries on.
func TestForwardCountsSendErrors(t *testing.T) {
	checkLeaks(t)
	a, b, _ := twoNodes(t, transports[1])
	huge := tuntest.IPv4UDP(hostA, hostB, make([]byte, 65535-28))
	small := tuntest.IPv4UDP(hostA, hostB, []byte("fits"))
	a.dev.Inject(huge)
	a.dev.Inject(small)
	requireForwarded(t, small, receive(t, b.dev))
	eventually(t, "tx counter", func() bool { return a.fwd.Counters().TxPackets == 1 })
	c := a.fwd.Counters()
	if c.Drops[tunnel.DropSendError] != 1 || c.TxPackets != 1 || c.TxBytes != uint64(len(small)) {
		t.Errorf("counters %+v", c)
	}
}

// Per-peer counters: counted on both sides, kept across table updates while
// the peer stays the same, reset when its address changes.
func TestForwardPeerTraffic(t *testing.T) {
	checkLeaks(t)
	a, b, _ := twoNodes(t, transports[0])
	for i := range 3 {
		pkt := tuntest.IPv4UDP(hostA, hostB, bytes.Repeat([]byte{1}, 100+i))
		a.dev.Inject(pkt)
		receive(t, b.dev)
	}
	peerA := tunnel.Peer{Subnet: subnetA, Addr: a.conn.LocalAddr().Addr()}
	want := uint64(3*128 + 3) // 3 packets of 28 + 100..102 bytes
	check := func(what string, got []tunnel.PeerTraffic, tx, rx uint64) {
		t.Helper()
		if len(got) != 1 || got[0].TxPackets != tx || got[0].RxPackets != rx {
			t.Errorf("%s: %+v, want tx %d rx %d packets", what, got, tx, rx)
		}
	}
	eventually(t, "b's count of A", func() bool {
		pt := b.fwd.PeerTraffic()
		return len(pt) == 1 && pt[0].RxPackets == 3
	})
	// A counts a batch once its send returns, which may be after B has
	// already written the packet out.
	eventually(t, "a's count of B", func() bool {
		pt := a.fwd.PeerTraffic()
		return len(pt) == 1 && pt[0].TxPackets == 3
	})
	check("A's view of B", a.fwd.PeerTraffic(), 3, 0)
	check("B's view of A", b.fwd.PeerTraffic(), 0, 3)
	if pt := b.fwd.PeerTraffic(); pt[0].RxBytes != want || pt[0].Peer != peerA {
		t.Errorf("B's view of A: %+v, want %d bytes from %v", pt[0], want, peerA)
	}

	// A new peer joins: A's counters survive the rebuild.
	other := tunnel.Peer{Subnet: netip.MustParsePrefix("198.19.3.0/24"), Addr: netip.MustParseAddr("198.18.0.3")}
	b.fwd.UpdatePeers(subnetB, []tunnel.Peer{peerA, other})
	pt := b.fwd.PeerTraffic()
	if len(pt) != 2 || pt[0].RxPackets != 3 || pt[1].RxPackets != 0 {
		t.Errorf("after a peer joined: %+v", pt)
	}
	// A's subnet moves to another address: a new peer, fresh counters.
	b.fwd.UpdatePeers(subnetB, []tunnel.Peer{{Subnet: subnetA, Addr: netip.MustParseAddr("198.18.0.9")}})
	check("after A's address changed", b.fwd.PeerTraffic(), 0, 0)
}
