package tuntest_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"syscall"
	"testing"

	"github.com/weft-net/weft/tunnel/tuntest"
)

var (
	src = netip.MustParseAddr("198.19.1.5")
	dst = netip.MustParseAddr("198.19.2.7")
)

func TestBuilders(t *testing.T) {
	udp := tuntest.IPv4UDP(src, dst, []byte("hello"))
	if err := tuntest.VerifyIPv4(udp); err != nil {
		t.Fatal(err)
	}
	if len(udp) != 20+8+5 || udp[0] != 0x45 || udp[8] != 64 || udp[9] != tuntest.ProtoUDP ||
		!bytes.Equal(udp[12:16], src.AsSlice()) || !bytes.Equal(udp[16:20], dst.AsSlice()) ||
		binary.BigEndian.Uint16(udp[22:24]) != tuntest.UDPDstPort || string(udp[28:]) != "hello" {
		t.Errorf("IPv4UDP = % x", udp)
	}
	// Checksums computed independently (Python, RFC 1071) for this packet.
	if got := binary.BigEndian.Uint16(udp[10:12]); got != 0xab99 {
		t.Errorf("header checksum %#04x, want 0xab99", got)
	}
	if got := binary.BigEndian.Uint16(udp[26:28]); got != 0x9085 {
		t.Errorf("UDP checksum %#04x, want 0x9085", got)
	}

	echo := tuntest.IPv4ICMPEcho(src, dst, 0x1234, 9, []byte("ping"))
	if err := tuntest.VerifyIPv4(echo); err != nil {
		t.Fatal(err)
	}
	if echo[9] != tuntest.ProtoICMP || echo[20] != 8 || binary.BigEndian.Uint16(echo[24:26]) != 0x1234 ||
		binary.BigEndian.Uint16(echo[26:28]) != 9 {
		t.Errorf("IPv4ICMPEcho = % x", echo)
	}

	// VerifyIPv4 notices corruption anywhere.
	for _, i := range []int{1, 8, 15, 19, 21, 26, len(udp) - 1} {
		bad := bytes.Clone(udp)
		bad[i] ^= 0x10
		if tuntest.VerifyIPv4(bad) == nil {
			t.Errorf("flipping byte %d went unnoticed", i)
		}
	}
	bad := bytes.Clone(echo)
	bad[len(bad)-1] ^= 1
	if tuntest.VerifyIPv4(bad) == nil {
		t.Error("corrupt ICMP payload went unnoticed")
	}

	tcp := tuntest.IPv4TCP(src, dst, 7, []byte("odd length"))
	if err := tuntest.VerifyIPv4(tcp); err != nil {
		t.Fatal(err)
	}
	for _, i := range []int{24, 32, len(tcp) - 1} { // sequence, data offset, payload
		bad := bytes.Clone(tcp)
		bad[i] ^= 0x10
		if tuntest.VerifyIPv4(bad) == nil {
			t.Errorf("flipping TCP byte %d went unnoticed", i)
		}
	}
}

func TestDevice(t *testing.T) {
	d := tuntest.NewDevice("udp0", 1472)
	if d.Name() != "udp0" || d.MTU() != 1472 || d.BatchSize() != tuntest.BatchSize {
		t.Error("wrong attributes")
	}
	for i := range 3 {
		d.Inject([]byte{byte(i), 1, 2})
	}
	bufs := [][]byte{make([]byte, 10), make([]byte, 10)}
	sizes := make([]int, 2)
	n, err := d.Read(bufs, sizes, 4)
	if err != nil || n != 2 || sizes[1] != 3 || bufs[1][4] != 1 {
		t.Fatalf("Read = %d, %v, sizes %v, bufs %v", n, err, sizes, bufs)
	}
	n, _ = d.Read(bufs, sizes, 4)
	if n != 1 || bufs[0][4] != 2 {
		t.Fatalf("second Read = %d, %v", n, bufs[0])
	}

	buf := []byte{0xff, 0xff, 7, 8}
	if n, err := d.Write([][]byte{buf}, 2); n != 1 || err != nil {
		t.Fatalf("Write = %d, %v", n, err)
	}
	buf[2] = 0 // the device kept a copy
	if got := <-d.Written(); !bytes.Equal(got, []byte{7, 8}) {
		t.Errorf("Written %v", got)
	}

	d.SetWriteHook(func(pkt []byte) error {
		if pkt[0] == 0 {
			return syscall.EINVAL
		}
		return nil
	})
	n, err = d.Write([][]byte{{1}, {0}, {2}}, 0)
	if n != 1 || !errors.Is(err, syscall.EINVAL) {
		t.Errorf("Write with refusing hook = %d, %v", n, err)
	}

	d.Close()
	d.Close()
	if _, err := d.Read(bufs, sizes, 0); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Read after Close: %v", err)
	}
	if _, err := d.Write(bufs, 0); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Write after Close: %v", err)
	}
	if d.Inject([]byte{1}) {
		t.Error("Inject after Close succeeded")
	}
}

func TestNetwork(t *testing.T) {
	n := tuntest.NewNetwork()
	addrA := netip.MustParseAddrPort("198.18.0.1:8285")
	addrB := netip.MustParseAddrPort("198.18.0.2:8285")
	a, err := n.Listen(addrA)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := n.Listen(addrB)
	if _, err := n.Listen(addrA); err == nil {
		t.Error("address bound twice")
	}
	if err := a.Write([][]byte{[]byte("..one"), []byte("..two")}, 2, addrB); err != nil {
		t.Fatal(err)
	}
	// To nobody: lost, not an error.
	if err := a.Write([][]byte{[]byte("lost")}, 0, netip.MustParseAddrPort("198.18.0.9:8285")); err != nil {
		t.Fatal(err)
	}
	bufs := [][]byte{make([]byte, 10), make([]byte, 2), make([]byte, 10)}
	sizes := make([]int, 3)
	addrs := make([]netip.AddrPort, 3)
	got, err := b.Read(bufs, sizes, addrs)
	if err != nil || got != 2 {
		t.Fatalf("Read = %d, %v", got, err)
	}
	if string(bufs[0][:sizes[0]]) != "one" || string(bufs[1][:sizes[1]]) != "tw" || addrs[0] != addrA {
		t.Errorf("read %q %q from %v", bufs[0][:sizes[0]], bufs[1][:sizes[1]], addrs[0])
	}

	a.Close()
	if err := a.Write([][]byte{{1}}, 0, addrB); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Write after Close: %v", err)
	}
	if _, err := a.Read(bufs, sizes, addrs); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Read after Close: %v", err)
	}
	// The address is free again.
	if _, err := n.Listen(addrA); err != nil {
		t.Errorf("Listen after Close: %v", err)
	}

	c1, c2 := tuntest.NewConnPair(addrA, addrB)
	if c1.LocalAddr() != addrA || c2.LocalAddr() != addrB {
		t.Error("NewConnPair addresses")
	}
}
