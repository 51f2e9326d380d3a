package tunnel_test

import (
	"bytes"
	"errors"
	"net/netip"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/internal/netnstest"
	"github.com/weft-net/weft/tunnel"
	"github.com/weft-net/weft/tunnel/tuntest"
)

// Root tests of the UDP offloads across a veth pair between two network
// namespaces, where the kernel behaves as on a real underlay: a device
// without TX checksum offload refuses GSO (EIO), a small MTU refuses large
// segments, and a device with GRO coalesces datagrams.

var (
	underlayA = netip.MustParseAddr("198.18.0.1")
	underlayB = netip.MustParseAddr("198.18.0.2")
)

// vethPair is two namespaces joined by a veth pair: the test goroutine
// runs in a, with devA; devB lives in b.
type vethPair struct {
	a, b       *netnstest.NS
	devA, devB string
}

// newVethPair makes the pair with the given MTU, addresses underlayA and
// underlayB on a /24, both ends up, and moves the test goroutine into a
// for the rest of the test.
func newVethPair(t *testing.T, mtu int) *vethPair {
	p := &vethPair{a: netnstest.Enter(t), b: netnstest.New(t), devA: "wga", devB: "wgb"}
	netnstest.Veth{MTU: mtu,
		A: netnstest.End{NS: p.a, Name: p.devA, Addr: underlayA.String() + "/24"},
		B: netnstest.End{NS: p.b, Name: p.devB, Addr: underlayB.String() + "/24"}}.Add(t)
	return p
}

// inB runs f in namespace b on the test's goroutine, so f may call
// t.Fatal.
func (p *vethPair) inB(t *testing.T, f func()) {
	t.Helper()
	if err := p.b.Do(func() error { f(); return nil }); err != nil {
		t.Fatal(err)
	}
}

// listenA and listenB open Conns on each end, port chosen by the kernel.
func (p *vethPair) listenA(t *testing.T, gso, gro bool) tunnel.Conn {
	t.Helper()
	return listenVeth(t, underlayA, gso, gro)
}

func (p *vethPair) listenB(t *testing.T, gso, gro bool) (c tunnel.Conn) {
	t.Helper()
	p.inB(t, func() { c = listenVeth(t, underlayB, gso, gro) })
	return c
}

func listenVeth(t *testing.T, addr netip.Addr, gso, gro bool) tunnel.Conn {
	t.Helper()
	c, err := tunnel.ListenUDPConfig(tunnel.UDPConfig{Addr: netip.AddrPortFrom(addr, 0), GSO: gso, GRO: gro})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// ethtool sets a device feature with the legacy ethtool ioctl (ethtool
// itself may not be installed), in the namespace the thread is in.
func ethtool(t *testing.T, dev string, cmd uint32, on bool) {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	value := struct{ cmd, data uint32 }{cmd: cmd}
	if on {
		value.data = 1
	}
	var ifr struct {
		name [unix.IFNAMSIZ]byte
		data unsafe.Pointer
		_    [24 - unsafe.Sizeof(uintptr(0))]byte
	}
	copy(ifr.name[:], dev)
	ifr.data = unsafe.Pointer(&value)
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCETHTOOL, uintptr(unsafe.Pointer(&ifr))); errno != 0 {
		t.Fatalf("ethtool %#x %s on %s: %v", cmd, dev, map[bool]string{true: "on", false: "off"}[on], errno)
	}
}

// receiveN reads n datagrams from c within a few seconds.
func receiveN(t *testing.T, c tunnel.Conn, n int) [][]byte {
	t.Helper()
	bufs := make([][]byte, c.BatchSize())
	for i := range bufs {
		bufs[i] = make([]byte, 65535)
	}
	sizes := make([]int, len(bufs))
	addrs := make([]netip.AddrPort, len(bufs))
	timer := time.AfterFunc(5*time.Second, func() { c.Close() })
	defer timer.Stop()
	var got [][]byte
	for len(got) < n {
		r, err := c.Read(bufs, sizes, addrs)
		if err != nil {
			t.Fatalf("after %d of %d datagrams: %v", len(got), n, err)
		}
		for i := range r {
			got = append(got, bytes.Clone(bufs[i][:sizes[i]]))
		}
	}
	return got
}

// innerPackets returns valid inner IPv4/UDP packets (checksums right) with
// the given payload lengths, each behind 16 bytes of headroom.
func innerPackets(lens ...int) [][]byte {
	bufs := make([][]byte, len(lens))
	for i, n := range lens {
		payload := make([]byte, n)
		for j := range payload {
			payload[j] = byte(i + j)
		}
		bufs[i] = append(make([]byte, 16), tuntest.IPv4UDP(hostA, hostB, payload)...)
	}
	return bufs
}

func same(n, size int) []int {
	s := make([]int, n)
	for i := range s {
		s[i] = size
	}
	return s
}

// checkOnePacketEach asserts that every datagram is exactly one of the
// sent inner packets, in order, and a valid IPv4 packet.
func checkOnePacketEach(t *testing.T, got, sent [][]byte) {
	t.Helper()
	if len(got) != len(sent) {
		t.Fatalf("received %d datagrams, sent %d", len(got), len(sent))
	}
	for i := range got {
		if !bytes.Equal(got[i], sent[i][16:]) {
			t.Fatalf("datagram %d: %d bytes, want the %d-byte inner packet", i, len(got[i]), len(sent[i])-16)
		}
		if err := tuntest.VerifyIPv4(got[i]); err != nil {
			t.Fatalf("datagram %d: invalid inner packet: %v", i, err)
		}
	}
}

func offload(c tunnel.Conn) tunnel.UDPOffloadState {
	return c.(tunnel.UDPOffloader).UDPOffload()
}

// TestUDPGSOWithoutTXChecksum turns TX checksum offload off on the
// sender's veth. Kernels before about 6.11 refuse GSO sends there with EIO
// (weft must fall back once and resend); later ones checksum and segment
// in software. Either way every datagram must be one valid inner packet.
func TestUDPGSOWithoutTXChecksum(t *testing.T) {
	p := newVethPair(t, 1500)
	ethtool(t, p.devA, unix.ETHTOOL_STXCSUM, false)
	a, b := p.listenA(t, true, false), p.listenB(t, false, false)
	if !offload(a).GSO {
		t.Fatalf("GSO off at open: %+v", offload(a))
	}
	sent := innerPackets(append(same(30, 1400), 500)...)
	for range 2 {
		if err := a.Write(sent, 16, b.LocalAddr()); err != nil {
			t.Fatal(err)
		}
		checkOnePacketEach(t, receiveN(t, b, len(sent)), sent)
	}
	switch st := offload(a); {
	case st.Fallbacks == 1 && !st.GSO && st.GSOSends == 0:
		t.Log("kernel refused GSO without TX checksum offload; fell back")
	case st.Fallbacks == 0 && st.GSO && st.GSOSends == 2:
		t.Log("kernel segmented and checksummed in software")
	default:
		t.Errorf("offload state %+v", st)
	}
}

// TestUDPGSOPathMTU sends GSO runs whose segments exceed the path MTU:
// the kernel refuses the message (EMSGSIZE) and weft resends it one
// datagram per message, so exactly the datagrams a plain send refuses are
// reported, a short last one still gets through, and GSO stays on.
func TestUDPGSOPathMTU(t *testing.T) {
	p := newVethPair(t, 1000)
	a, b := p.listenA(t, true, false), p.listenB(t, false, false)
	sent := innerPackets(append(same(5, 1400), 800)...)
	err := a.Write(sent, 16, b.LocalAddr())
	var se *tunnel.SendError
	if !errors.As(err, &se) || se.Failed != 5 || !errors.Is(err, unix.EMSGSIZE) {
		t.Fatalf("Write = %v, want 5 datagrams refused with EMSGSIZE", err)
	}
	checkOnePacketEach(t, receiveN(t, b, 1), sent[5:])
	fits := innerPackets(same(20, 900)...)
	if err := a.Write(fits, 16, b.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	checkOnePacketEach(t, receiveN(t, b, len(fits)), fits)
	if st := offload(a); !st.GSO || st.Fallbacks != 0 || st.GSOSends != 1 {
		t.Errorf("offload state %+v, want GSO on after EMSGSIZE, 1 GSO send", st)
	}
}

// TestUDPOffloadOverVeth crosses a veth with GRO on at the receiver, in
// every combination of offloads at each end (a cluster half upgraded):
// every datagram carries exactly one valid inner packet, in order.
func TestUDPOffloadOverVeth(t *testing.T) {
	p := newVethPair(t, 1500)
	p.inB(t, func() { ethtool(t, p.devB, unix.ETHTOOL_SGRO, true) })
	sizes := append(same(44, 1400), 600)
	sizes = append(sizes, same(10, 1444)...)
	sizes = append(sizes, 20, 20, 20, 1000)
	sent := innerPackets(sizes...)
	for _, m := range []struct{ gso, gro bool }{{false, false}, {true, false}, {false, true}, {true, true}} {
		a, b := p.listenA(t, m.gso, false), p.listenB(t, false, m.gro)
		for range 5 {
			if err := a.Write(sent, 16, b.LocalAddr()); err != nil {
				t.Fatal(err)
			}
			checkOnePacketEach(t, receiveN(t, b, len(sent)), sent)
		}
		sa, sb := offload(a), offload(b)
		if sa.GSO != m.gso || sb.GRO != m.gro || m.gso && sa.GSOSends == 0 || m.gso && m.gro && sb.GROReceives == 0 {
			t.Errorf("gso %v gro %v: sender %+v receiver %+v", m.gso, m.gro, sa, sb)
		}
		t.Logf("gso %v gro %v: %d GSO sends, %d GRO receives", m.gso, m.gro, sa.GSOSends, sb.GROReceives)
	}
}
