package tunnel_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/internal/netnstest"
	"github.com/weft-net/weft/tunnel"
	"github.com/weft-net/weft/tunnel/tuntest"
)

var tunSeq atomic.Int32

// tunName returns a device name unique across parallel test processes.
func tunName() string {
	return fmt.Sprintf("wt%d-%d", os.Getpid()%1000000, tunSeq.Add(1))
}

// openTestTUN opens a TUN in the test's namespace n and sets it up with
// setUpTUN.
func openTestTUN(t *testing.T, n *netnstest.NS) tunnel.Device {
	name := tunName()
	dev, err := tunnel.OpenTUN(name, 1400)
	if err != nil {
		t.Fatal(err)
	}
	setUpTUN(t, n, dev)
	if dev.Name() != name || dev.MTU() != 1400 || dev.BatchSize() < 1 {
		t.Fatalf("device %q mtu %d batch %d", dev.Name(), dev.MTU(), dev.BatchSize())
	}
	return dev
}

// setUpTUN configures dev in n as weft's route package will:
// 198.19.1.0/32 on it, its MTU, up, 198.19.2.0/24 routed to it. A stuck
// Read fails the test instead of hanging it: dev closes after 30 s.
func setUpTUN(t *testing.T, n *netnstest.NS, dev tunnel.Device) {
	configureTUN(t, n, dev, "198.19.1.0", "198.19.2.0/24")
	timer := time.AfterFunc(30*time.Second, func() { dev.Close() })
	t.Cleanup(func() { timer.Stop() })
}

// configureTUN gives dev in n the address addr/32 and its MTU, sets it up
// and routes routed to it. dev closes when the test ends.
func configureTUN(t *testing.T, n *netnstest.NS, dev tunnel.Device, addr, routed string) {
	t.Helper()
	t.Cleanup(func() { dev.Close() })
	link := n.Link(t, dev.Name())
	n.AddAddr(t, dev.Name(), addr+"/32")
	if err := n.Netlink.LinkSetMTU(link, dev.MTU()); err != nil {
		t.Fatalf("set mtu of %s: %v", dev.Name(), err)
	}
	n.LinkUp(t, dev.Name())
	_, dst, _ := net.ParseCIDR(routed)
	if err := n.Netlink.RouteAdd(&netlink.Route{LinkIndex: link.Attrs().Index, Dst: dst, Scope: netlink.SCOPE_LINK}); err != nil {
		t.Fatalf("route %s to %s: %v", routed, dev.Name(), err)
	}
}

// tunReader reads packets from a device with preallocated buffers.
type tunReader struct {
	dev   tunnel.Device
	bufs  [][]byte
	sizes []int
}

func newTUNReader(dev tunnel.Device) *tunReader {
	r := &tunReader{dev: dev, bufs: make([][]byte, dev.BatchSize()), sizes: make([]int, dev.BatchSize())}
	for i := range r.bufs {
		r.bufs[i] = make([]byte, 16+65535)
	}
	return r
}

// until reads until match accepts a packet (others, such as IPv6
// neighbour discovery, are skipped) and returns it; it is valid until the
// next read.
func (r *tunReader) until(match func(pkt []byte) bool) ([]byte, error) {
	for {
		n, err := r.dev.Read(r.bufs, r.sizes, 16)
		if err != nil {
			return nil, err
		}
		for i := range n {
			if pkt := r.bufs[i][16 : 16+r.sizes[i]]; match(pkt) {
				return pkt, nil
			}
		}
	}
}

var (
	tunAddr  = netip.MustParseAddr("198.19.1.0")
	farAddr  = netip.MustParseAddr("198.19.2.5")
	farAddr4 = farAddr.As4()
)

func isEchoReply(seq uint16) func([]byte) bool {
	return func(p []byte) bool {
		return len(p) >= 28 && p[0] == 0x45 && p[9] == tuntest.ProtoICMP && p[20] == 0 &&
			binary.BigEndian.Uint16(p[26:28]) == seq && [4]byte(p[16:20]) == farAddr4
	}
}

func TestTUNReadWrite(t *testing.T) {
	dev := openTestTUN(t, netnstest.Enter(t))
	r := newTUNReader(dev)

	// Kernel → device: a UDP datagram routed to the TUN.
	sock, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(sock)
	payload := []byte("weft tun test")
	if err := unix.Sendto(sock, payload, 0, &unix.SockaddrInet4{Port: 9999, Addr: farAddr4}); err != nil {
		t.Fatal(err)
	}
	pkt, err := r.until(func(p []byte) bool {
		return len(p) >= 28 && p[0]>>4 == 4 && p[9] == tuntest.ProtoUDP && [4]byte(p[16:20]) == farAddr4
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := tuntest.VerifyIPv4(pkt); err != nil {
		t.Errorf("packet from the kernel: %v", err)
	}
	if string(pkt[28:]) != string(payload) || [4]byte(pkt[12:16]) != tunAddr.As4() {
		t.Errorf("read % x", pkt)
	}

	// Device → kernel: an echo request to the TUN's address is answered
	// back through the TUN.
	ping := append(make([]byte, 16), tuntest.IPv4ICMPEcho(farAddr, tunAddr, 77, 1, []byte("ping"))...)
	if n, err := dev.Write([][]byte{ping}, 16); n != 1 || err != nil {
		t.Fatalf("Write = %d, %v", n, err)
	}
	reply, err := r.until(isEchoReply(1))
	if err != nil {
		t.Fatal(err)
	}
	if err := tuntest.VerifyIPv4(reply); err != nil {
		t.Errorf("echo reply: %v", err)
	}

	// A packet the kernel refuses stops Write at its index with the error.
	junk := make([]byte, 16+40) // version 0
	ping2 := append(make([]byte, 16), tuntest.IPv4ICMPEcho(farAddr, tunAddr, 77, 2, nil)...)
	n, err := dev.Write([][]byte{ping2, junk, ping2}, 16)
	if n != 1 || !errors.Is(err, unix.EINVAL) {
		t.Errorf("Write with junk = %d, %v; want 1, EINVAL", n, err)
	}
	if _, err := r.until(isEchoReply(2)); err != nil {
		t.Fatal(err)
	}
}

// TestTUNAllocs asserts a Write and the Reads that bring back the answer,
// including the poll wait, allocate nothing.
func TestTUNAllocs(t *testing.T) {
	dev := openTestTUN(t, netnstest.Enter(t))
	if allocs := echoAllocs(t, dev, 3); allocs != 0 {
		t.Errorf("TUN write + read allocates %.1f times", allocs)
	}
}

// echoAllocs is how many times a Write of an echo request to dev and the
// Reads that bring back the reply allocate, on average.
func echoAllocs(t *testing.T, dev tunnel.Device, seq uint16) float64 {
	t.Helper()
	r := newTUNReader(dev)
	ping := append(make([]byte, 16), tuntest.IPv4ICMPEcho(farAddr, tunAddr, 77, seq, nil)...)
	match := isEchoReply(seq)
	pings := [][]byte{ping}
	var failed error
	allocs := testing.AllocsPerRun(100, func() {
		if _, err := dev.Write(pings, 16); err != nil {
			failed = err
			return
		}
		if _, err := r.until(match); err != nil {
			failed = err
		}
	})
	if failed != nil {
		t.Fatal(failed)
	}
	return allocs
}

func TestTUNCloseWakesRead(t *testing.T) {
	n := netnstest.Enter(t)
	dev := openTestTUN(t, n)
	checkCloseWakesRead(t, dev)
	if err := dev.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, err := dev.Write([][]byte{make([]byte, 40)}, 0); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Write after Close: %v", err)
	}
	// Closing the fd removed the (non-persistent) device.
	if _, err := n.Netlink.LinkByName(dev.Name()); err == nil {
		t.Error("device still exists after Close")
	}
}

// checkCloseWakesRead closes dev while a Read is blocked in poll: the Read
// must return net.ErrClosed within a second.
func checkCloseWakesRead(t *testing.T, dev tunnel.Device) {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		_, err := newTUNReader(dev).until(func([]byte) bool { return false })
		done <- err
	}()
	time.Sleep(50 * time.Millisecond) // let Read block in poll
	if err := dev.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Errorf("Read after Close: %v, want net.ErrClosed", err)
		}
	case <-time.After(time.Second):
		t.Fatal("Read still blocked 1s after Close")
	}
}

// TestForwarderOnRealDevices runs a forwarder over a real TUN and a real
// socket whose only peer is itself: a datagram the kernel routes to the
// TUN goes out over UDP, comes back in, loses one TTL and is written back
// to the TUN (where the kernel, not forwarding, drops it).
func TestForwarderOnRealDevices(t *testing.T) {
	n := netnstest.Enter(t) // lo up
	checkLeaks(t)
	dev := openTestTUN(t, n)
	conn, err := tunnel.ListenUDP(netip.MustParseAddrPort("127.0.0.1:0"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	// The node is its own peer: what leaves the TUN comes back to it. Its
	// local subnet is the whole network so the returning packet is
	// addressed to it, and the source check is off: the device address is
	// in no lease.
	fwd := tunnel.NewForwarder(tunnel.Config{Device: dev, Conn: conn, Port: conn.LocalAddr().Port(), SourceCheck: tunnel.SourceOff})
	fwd.SetPeers(tunnel.NewTable(netip.MustParsePrefix("198.19.0.0/16"),
		[]tunnel.Peer{{Subnet: netip.MustParsePrefix("198.19.2.0/24"), Addr: conn.LocalAddr().Addr()}}))
	stop := runForwarder(t, fwd)

	sock, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(sock)
	if err := unix.Sendto(sock, []byte("round trip"), 0, &unix.SockaddrInet4{Port: 9999, Addr: farAddr4}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the datagram to go out and come back", func() bool {
		c := fwd.Counters()
		return c.TxPackets >= 1 && c.RxPackets >= 1
	})
	stop()
}

func TestOpenTUNInvalid(t *testing.T) {
	if _, err := tunnel.OpenTUN("a-name-far-too-long-for-linux", 1400); err == nil {
		t.Error("overlong name accepted")
	}
	if _, err := tunnel.OpenTUN("udp0", 0); err == nil {
		t.Error("mtu 0 accepted")
	}
}

// TestTUNDeletedUnderForwarder: `ip link del` on the device stops the
// forwarder with an error that says what happened and what to do, names
// the device once, and still wraps EBADFD; with and without offloads.
func TestTUNDeletedUnderForwarder(t *testing.T) {
	n := netnstest.Enter(t)
	for _, offload := range []bool{false, true} {
		name := tunName()
		dev, err := tunnel.OpenTUNConfig(tunnel.TUNConfig{Name: name, MTU: 1400, Offload: offload})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { dev.Close() })
		conn, err := tunnel.ListenUDP(netip.MustParseAddrPort("127.0.0.1:0"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		fwd := tunnel.NewForwarder(tunnel.Config{Device: dev, Conn: conn, Port: conn.LocalAddr().Port()})
		done := make(chan error, 1)
		go func() { done <- fwd.Run(context.Background()) }()

		n.LinkUp(t, name)
		time.Sleep(50 * time.Millisecond) // let the loop block in poll
		if err := n.Netlink.LinkDel(n.Link(t, name)); err != nil {
			t.Fatalf("delete %s: %v", name, err)
		}
		select {
		case err := <-done:
			msg := fmt.Sprint(err)
			if !errors.Is(err, unix.EBADFD) || !strings.Contains(msg, "deleted outside weft") ||
				!strings.Contains(msg, "restart weft") || strings.Count(msg, "tun "+name) != 1 {
				t.Errorf("offload %v: Run returned %q, want EBADFD explained, naming tun %s once", offload, msg, name)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("offload %v: forwarder still running 5 s after its device was deleted", offload)
		}
	}
}

// TestOpenTUNTakenName: a name another process holds, or that a device of
// another kind has, is refused with the cause, the errno still wrapped.
func TestOpenTUNTakenName(t *testing.T) {
	n := netnstest.Enter(t)
	held := openTestTUN(t, n)
	_, err := tunnel.OpenTUNConfig(tunnel.TUNConfig{Name: held.Name(), MTU: 1400, Offload: true})
	if !errors.Is(err, unix.EBUSY) || !strings.Contains(fmt.Sprint(err), "another process has the device open") {
		t.Errorf("opening a held TUN: %v", err)
	}
	name := tunName()
	netnstest.Veth{A: netnstest.End{NS: n, Name: name}, B: netnstest.End{NS: n, Name: name + "p"}, Down: true}.Add(t)
	_, err = tunnel.OpenTUNConfig(tunnel.TUNConfig{Name: name, MTU: 1400})
	if !errors.Is(err, unix.EINVAL) || !strings.Contains(fmt.Sprint(err), "exists and is not a TUN: delete it with `ip link del "+name+"`") {
		t.Errorf("opening a veth's name: %v", err)
	}
}
