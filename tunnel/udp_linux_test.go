package tunnel

import (
	"bytes"
	"errors"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

var loopback = netip.MustParseAddrPort("127.0.0.1:0")

func listenLoopback(t *testing.T) Conn {
	t.Helper()
	c, err := ListenUDP(loopback)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// readN reads from c until it has n datagrams or a deadline passes.
func readN(t *testing.T, c Conn, n int) (data [][]byte, from []netip.AddrPort) {
	t.Helper()
	bufs := make([][]byte, c.BatchSize())
	for i := range bufs {
		bufs[i] = make([]byte, 65535)
	}
	sizes := make([]int, len(bufs))
	addrs := make([]netip.AddrPort, len(bufs))
	timer := time.AfterFunc(5*time.Second, func() { c.Close() })
	defer timer.Stop()
	for len(data) < n {
		got, err := c.Read(bufs, sizes, addrs)
		if err != nil {
			t.Fatalf("after %d of %d datagrams: %v", len(data), n, err)
		}
		for i := range got {
			data = append(data, bytes.Clone(bufs[i][:sizes[i]]))
			from = append(from, addrs[i])
		}
	}
	return data, from
}

func TestUDPRoundTrip(t *testing.T) {
	a, b := listenLoopback(t), listenLoopback(t)
	if a.LocalAddr().Port() == 0 || a.LocalAddr().Addr() != loopback.Addr() {
		t.Fatalf("LocalAddr = %v", a.LocalAddr())
	}
	const n = 150 // more than one sendmmsg and one recvmmsg batch
	const offset = 16
	var bufs [][]byte
	for i := range n {
		buf := make([]byte, offset+1+i*7)
		buf[0] = 0xee // headroom must not be sent
		for j := offset; j < len(buf); j++ {
			buf[j] = byte(i + j)
		}
		bufs = append(bufs, buf)
	}
	if err := a.Write(bufs, offset, b.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	data, from := readN(t, b, n)
	for i := range n {
		if !bytes.Equal(data[i], bufs[i][offset:]) {
			t.Fatalf("datagram %d: got %d bytes, want %d", i, len(data[i]), len(bufs[i])-offset)
		}
		if from[i] != a.LocalAddr() {
			t.Fatalf("datagram %d from %v, want %v", i, from[i], a.LocalAddr())
		}
	}
}

func TestUDPSocketOptions(t *testing.T) {
	c := listenLoopback(t).(*udpConn)
	pmtu, err := unix.GetsockoptInt(c.fd, unix.IPPROTO_IP, unix.IP_MTU_DISCOVER)
	if err != nil || pmtu != unix.IP_PMTUDISC_DO {
		t.Errorf("IP_MTU_DISCOVER = %d, %v; want IP_PMTUDISC_DO (DF)", pmtu, err)
	}
	rcv, err1 := unix.GetsockoptInt(c.fd, unix.SOL_SOCKET, unix.SO_RCVBUF)
	snd, err2 := unix.GetsockoptInt(c.fd, unix.SOL_SOCKET, unix.SO_SNDBUF)
	if err1 != nil || err2 != nil {
		t.Fatal(err1, err2)
	}
	// With CAP_NET_ADMIN the FORCE options bypass rmem_max; the kernel
	// reports twice the requested size.
	if os.Geteuid() == 0 && (rcv < socketBufferSize || snd < socketBufferSize) {
		t.Errorf("buffers rcv %d snd %d, want at least %d", rcv, snd, socketBufferSize)
	}
	reuse, _ := unix.GetsockoptInt(c.fd, unix.SOL_SOCKET, unix.SO_REUSEADDR)
	if reuse != 0 {
		t.Error("SO_REUSEADDR is set")
	}
}

func TestUDPAddressInUse(t *testing.T) {
	a := listenLoopback(t)
	_, err := ListenUDP(a.LocalAddr())
	if !errors.Is(err, unix.EADDRINUSE) {
		t.Fatalf("second bind: %v, want EADDRINUSE", err)
	}
	if !strings.Contains(err.Error(), a.LocalAddr().String()) {
		t.Errorf("error %q does not name %v", err, a.LocalAddr())
	}
	if _, err := ListenUDP(netip.MustParseAddrPort("[::1]:0")); err == nil {
		t.Error("IPv6 address accepted")
	}
}

// TestUDPRefusedDatagram checks that a datagram the kernel refuses
// (EMSGSIZE: larger than any UDP payload) is skipped and reported, and the
// others in the batch are still sent.
func TestUDPRefusedDatagram(t *testing.T) {
	a, b := listenLoopback(t), listenLoopback(t)
	bufs := [][]byte{[]byte("xxfirst"), make([]byte, 2+66000), []byte("xxthird")}
	err := a.Write(bufs, 2, b.LocalAddr())
	var se *SendError
	if !errors.As(err, &se) {
		t.Fatalf("Write = %v, want a *SendError", err)
	}
	if se.Failed != 1 || se.FailedBytes != 66000 || !errors.Is(err, unix.EMSGSIZE) || se.Dst != b.LocalAddr() {
		t.Errorf("SendError = %+v", se)
	}
	data, _ := readN(t, b, 2)
	if string(data[0]) != "first" || string(data[1]) != "third" {
		t.Errorf("received %q", data)
	}
}

func TestUDPCloseWakesRead(t *testing.T) {
	c, err := ListenUDP(loopback)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		bufs := [][]byte{make([]byte, 1500)}
		_, err := c.Read(bufs, make([]int, 1), make([]netip.AddrPort, 1))
		done <- err
	}()
	time.Sleep(50 * time.Millisecond) // let Read block in recvmmsg
	start := time.Now()
	if err := c.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Errorf("Read after Close: %v, want net.ErrClosed", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Read still blocked 2s after Close")
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("Close took %v", d)
	}
	if err := c.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if err := c.Write([][]byte{[]byte("x")}, 0, loopback); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Write after Close: %v", err)
	}
	_, err = c.Read([][]byte{make([]byte, 10)}, make([]int, 1), make([]netip.AddrPort, 1))
	if !errors.Is(err, net.ErrClosed) {
		t.Errorf("Read after Close: %v", err)
	}
}

// TestUDPCloseDuringTraffic closes a socket while one goroutine sends
// through it and another receives; run with -race.
func TestUDPCloseDuringTraffic(t *testing.T) {
	a := listenLoopback(t)
	stop := make(chan struct{})
	errs := make(chan error, 2)
	go func() {
		bufs := [][]byte{make([]byte, 100), make([]byte, 100)}
		for {
			if err := a.Write(bufs, 0, a.LocalAddr()); err != nil {
				errs <- err
				return
			}
			select {
			case <-stop:
				errs <- nil
				return
			default:
			}
		}
	}()
	go func() {
		bufs := [][]byte{make([]byte, 2000), make([]byte, 2000)}
		for {
			if _, err := a.Read(bufs, make([]int, 2), make([]netip.AddrPort, 2)); err != nil {
				errs <- err
				return
			}
		}
	}()
	time.Sleep(20 * time.Millisecond)
	a.Close()
	close(stop)
	for range 2 {
		select {
		case err := <-errs:
			if err != nil && !errors.Is(err, net.ErrClosed) {
				t.Errorf("loop ended with %v", err)
			}
		case <-time.After(2 * time.Second):
			t.Fatal("a loop did not stop after Close")
		}
	}
}

func TestUDPAllocs(t *testing.T) {
	a, b := listenLoopback(t), listenLoopback(t)
	const n = 8
	out := make([][]byte, n)
	for i := range out {
		out[i] = make([]byte, 16+1400)
	}
	in := make([][]byte, b.BatchSize())
	for i := range in {
		in[i] = make([]byte, 2048)
	}
	sizes := make([]int, len(in))
	addrs := make([]netip.AddrPort, len(in))
	dst := b.LocalAddr()
	var failed error
	allocs := testing.AllocsPerRun(200, func() {
		if err := a.Write(out, 16, dst); err != nil {
			failed = err
			return
		}
		for got := 0; got < n; {
			r, err := b.Read(in, sizes, addrs)
			if err != nil {
				failed = err
				return
			}
			got += r
		}
	})
	if failed != nil {
		t.Fatal(failed)
	}
	if allocs != 0 {
		t.Errorf("Write+Read of %d datagrams allocates %.1f times", n, allocs)
	}
}
