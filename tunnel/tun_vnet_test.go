package tunnel

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The offload device's Read and Write, unprivileged: the TUN fd is one end
// of a SOCK_SEQPACKET socket pair (one message per read or write, as a TUN
// gives), the test plays the kernel on the other end.

type pairedTUN struct {
	*tun
	peer int // the kernel's end, blocking
	logs *bytes.Buffer
}

func newPairedTUN(t testing.TB) *pairedTUN {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.SetNonblock(fds[0], true); err != nil {
		t.Fatal(err)
	}
	for _, fd := range fds {
		// Room for several super-packets in flight.
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, 4<<20); err != nil {
			t.Fatal(err)
		}
	}
	evfd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		t.Fatal(err)
	}
	logs := &bytes.Buffer{}
	d := &tun{fd: fds[0], evfd: evfd, name: "pair0", mtu: 1500, segHint: 1, writev: writev,
		log: slog.New(slog.NewTextHandler(logs, nil))}
	d.initVnet()
	t.Cleanup(func() {
		d.Close()
		unix.Close(fds[1])
	})
	return &pairedTUN{tun: d, peer: fds[1], logs: logs}
}

// send writes one packet with its virtio-net header, as the kernel would.
func (p *pairedTUN) send(t testing.TB, h virtioNetHdr, pkt []byte) {
	msg := make([]byte, virtioNetHdrLen+len(pkt))
	h.encode(msg)
	copy(msg[virtioNetHdrLen:], pkt)
	if _, err := unix.Write(p.peer, msg); err != nil {
		t.Fatalf("peer write: %v", err)
	}
}

// receive reads what the device wrote: one message per writev.
func (p *pairedTUN) receive(t testing.TB) (virtioNetHdr, []byte) {
	buf := make([]byte, 70000)
	n, err := unix.Read(p.peer, buf)
	if err != nil || n < virtioNetHdrLen {
		t.Fatalf("peer read: %d, %v", n, err)
	}
	var h virtioNetHdr
	h.decode(buf)
	return h, buf[virtioNetHdrLen:n]
}

func sizedBufs(n, size int) [][]byte {
	bufs := make([][]byte, n)
	for i := range bufs {
		bufs[i] = make([]byte, size)
	}
	return bufs
}

func udpPacket(rng *rand.Rand, n int) []byte {
	pkt := TCP4{Src: tsoSrc, Dst: tsoDst}.Build()[:20]
	pkt[9] = protoUDP
	pkt = append(pkt, make([]byte, 8+n)...)
	binary.BigEndian.PutUint16(pkt[2:4], uint16(len(pkt)))
	binary.BigEndian.PutUint16(pkt[10:12], 0)
	binary.BigEndian.PutUint16(pkt[10:12], refChecksum(pkt[:20], 0))
	binary.BigEndian.PutUint16(pkt[24:26], uint16(8+n))
	copy(pkt[28:], randomBytes(rng, n))
	binary.BigEndian.PutUint16(pkt[26:28], refChecksum(pkt[20:], refPseudo(pkt, protoUDP, 8+n)))
	return pkt
}

// TestVnetReadSplits sends a mix of super-packets and single packets from
// the "kernel" and reads them with batches of several shapes: big buffers
// (read in place), small ones (through the device's buffer), batches
// smaller than a super-packet (the rest waits for the next Read).
func TestVnetReadSplits(t *testing.T) {
	rng := rand.New(rand.NewPCG(31, 32))
	type input struct {
		h   virtioNetHdr
		pkt []byte
	}
	var inputs []input
	var want [][]byte
	plain := udpPacket(rng, 300)
	inputs = append(inputs, input{virtioNetHdr{}, plain})
	want = append(want, plain)
	for _, n := range []int{46, 30} {
		h, sp := superTCP(TCP4{Src: tsoSrc, Dst: tsoDst, SPort: uint16(n), Seq: 5, Flags: TCPAck | TCPPsh, TCPOpts: tsOpts,
			Payload: randomBytes(rng, (n-1)*1388+700)}, 1388)
		inputs = append(inputs, input{h, sp})
		segs, _ := splitAll(t, h, bytes.Clone(sp), 1500)
		want = append(want, segs...)

		// A small packet with its checksum left to us.
		ack := TCP4{Src: tsoSrc, Dst: tsoDst, Flags: TCPAck, Payload: []byte{byte(n)}}.Build()
		full := bytes.Clone(ack)
		binary.BigEndian.PutUint16(ack[36:38], uint16(foldSum(uint64(refPseudo(ack, protoTCP, len(ack)-20)))))
		inputs = append(inputs, input{virtioNetHdr{flags: virtioNeedsCsum, csumStart: 20, csumOffset: 16}, ack})
		want = append(want, full)
	}
	// A TCPv6 super-packet is discarded.
	v6 := make([]byte, 3000)
	v6[0] = 0x60
	inputs = append(inputs, input{virtioNetHdr{flags: virtioNeedsCsum, gsoType: virtioGSOTCPv6, gsoSize: 1000, csumStart: 40, csumOffset: 16}, v6})
	// A UDP (USO) super-packet.
	usp := udpPacket(rng, 5000)
	uh := virtioNetHdr{flags: virtioNeedsCsum, gsoType: virtioGSOUDPL4, gsoSize: 1200, csumStart: 20, csumOffset: 6}
	inputs = append(inputs, input{uh, usp})
	segs, _ := splitAll(t, uh, bytes.Clone(usp), 1500)
	want = append(want, segs...)
	end := udpPacket(rng, 1)
	inputs = append(inputs, input{virtioNetHdr{}, end})
	want = append(want, end)

	for _, shape := range []struct {
		name      string
		n, size   int
		supers    uint64
		discarded uint64
	}{
		{"64 big", 64, 16 + maxPacket, 3, 1},
		{"64 small", 64, 16 + 1500, 3, 1},
		{"10 big", 10, 16 + maxPacket, 3, 1},
		{"7 small", 7, 16 + 1500, 3, 1},
		{"1 big", 1, 16 + maxPacket, 3, 1},
	} {
		t.Run(shape.name, func(t *testing.T) {
			d := newPairedTUN(t)
			go func() {
				for _, in := range inputs {
					msg := make([]byte, virtioNetHdrLen+len(in.pkt))
					in.h.encode(msg)
					copy(msg[virtioNetHdrLen:], in.pkt)
					if _, err := unix.Write(d.peer, msg); err != nil {
						return // the test failed and closed it
					}
				}
			}()
			bufs := sizedBufs(shape.n, shape.size)
			sizes := make([]int, shape.n)
			var got [][]byte
			for len(got) < len(want) {
				n, err := d.Read(bufs, sizes, testOffset)
				if err != nil {
					t.Fatal(err)
				}
				if n == 0 {
					t.Fatal("Read returned nothing")
				}
				for i := range n {
					got = append(got, bytes.Clone(bufs[i][testOffset:testOffset+sizes[i]]))
				}
			}
			if len(got) != len(want) {
				t.Fatalf("read %d packets, want %d", len(got), len(want))
			}
			for i := range got {
				if !bytes.Equal(got[i], want[i]) {
					t.Fatalf("packet %d differs\n got % x\nwant % x", i, got[i][:min(len(got[i]), 60)], want[i][:min(len(want[i]), 60)])
				}
				if err := VerifyPacket(got[i]); err != nil {
					t.Fatalf("packet %d: %v", i, err)
				}
			}
			st := d.Offload()
			if st.SuperReads != shape.supers || st.Segments != 46+30+5 || st.Discarded != shape.discarded {
				t.Errorf("state %+v", st)
			}
		})
	}
}

func TestVnetReadDiscards(t *testing.T) {
	d := newPairedTUN(t)
	rng := rand.New(rand.NewPCG(33, 34))
	// A short message, a super-packet whose segments exceed the caller's
	// buffers, a packet larger than them, bad checksum offsets; then a
	// good packet.
	if _, err := unix.Write(d.peer, []byte{1, 2, 3}); err != nil {
		t.Fatal(err)
	}
	h, sp := superTCP(TCP4{Src: tsoSrc, Dst: tsoDst, Flags: TCPAck, Payload: randomBytes(rng, 9000)}, 3000)
	d.send(t, h, sp)
	d.send(t, virtioNetHdr{}, udpPacket(rng, 1500))
	d.send(t, virtioNetHdr{flags: virtioNeedsCsum, csumStart: 20, csumOffset: 200}, udpPacket(rng, 10))
	good := udpPacket(rng, 10)
	d.send(t, virtioNetHdr{}, good)
	bufs := sizedBufs(8, testOffset+1500)
	sizes := make([]int, 8)
	n, err := d.Read(bufs, sizes, testOffset)
	if err != nil || n != 1 || !bytes.Equal(bufs[0][testOffset:testOffset+sizes[0]], good) {
		t.Fatalf("Read = %d, %v", n, err)
	}
	if st := d.Offload(); st.Discarded != 4 || st.SuperReads != 1 || st.Segments != 0 {
		t.Errorf("state %+v", st)
	}
}

// writeBatch is a batch as the forwarder hands it to Write: a run of one
// flow, a UDP packet, a run of another flow, a lone ACK.
func writeBatch(rng *rand.Rand) (batch [][]byte, runs []int) {
	a := flow(rng, 10, 1388, 500)
	b := flow(rng, 5, 1388, 1388)
	for _, p := range b {
		p[testOffset+17] = 99 // another destination
		ip := p[testOffset:]
		binary.BigEndian.PutUint16(ip[10:12], 0)
		binary.BigEndian.PutUint16(ip[10:12], refChecksum(ip[:20], 0))
		binary.BigEndian.PutUint16(ip[36:38], 0)
		binary.BigEndian.PutUint16(ip[36:38], refChecksum(ip[20:], refPseudo(ip, protoTCP, len(ip)-20)))
	}
	ack := append(make([]byte, testOffset), TCP4{Src: tsoDst, Dst: tsoSrc, Flags: TCPAck}.Build()...)
	udp := append(make([]byte, testOffset), udpPacket(rng, 100)...)
	batch = append(append(append(a, udp), b...), ack)
	return batch, []int{10, 1, 5, 1}
}

func TestVnetWriteCoalesces(t *testing.T) {
	for _, verify := range []bool{false, true} {
		t.Run(fmt.Sprintf("verify=%v", verify), func(t *testing.T) { testVnetWriteCoalesces(t, verify) })
	}
}

func testVnetWriteCoalesces(t *testing.T, verify bool) {
	d := newPairedTUN(t)
	d.verify = verify
	batch, runs := writeBatch(rand.New(rand.NewPCG(35, 36)))
	orig := clonePackets(batch)
	if n, err := d.Write(batch, testOffset); n != len(batch) || err != nil {
		t.Fatalf("Write = %d, %v", n, err)
	}
	for i := range batch {
		if !bytes.Equal(batch[i], orig[i]) {
			t.Fatalf("Write modified packet %d", i)
		}
	}
	i := 0
	for _, run := range runs {
		h, pkt := d.receive(t)
		if run == 1 {
			if h != (virtioNetHdr{}) || !bytes.Equal(pkt, orig[i][testOffset:]) {
				t.Fatalf("packet %d: header %+v, % x", i, h, pkt[:20])
			}
			i++
			continue
		}
		segs, ok := splitAll(t, h, pkt, 1500)
		if !ok || len(segs) != run {
			t.Fatalf("super-packet at %d: %d segments (%v), want %d", i, len(segs), ok, run)
		}
		for k, seg := range segs {
			if !bytes.Equal(seg, orig[i+k][testOffset:]) {
				t.Fatalf("packet %d differs after the round trip", i+k)
			}
		}
		i += run
	}
	st := d.Offload()
	if st.SuperWrites != 2 || st.Coalesced != 15 || !st.Coalescing || st.Fallbacks != 0 {
		t.Errorf("state %+v", st)
	}
}

// TestVnetWriteFallback: the kernel refuses a super-packet with EINVAL (or
// EIO): the packets go singly, unchanged, coalescing stops for good, once
// logged and counted.
func TestVnetWriteFallback(t *testing.T) {
	for _, errno := range []unix.Errno{unix.EINVAL, unix.EIO} {
		t.Run(errno.Error(), func(t *testing.T) {
			d := newPairedTUN(t)
			FailGSOWrites(d.tun, errno)
			rng := rand.New(rand.NewPCG(37, 38))
			for round := range 2 {
				batch, _ := writeBatch(rng)
				orig := clonePackets(batch)
				if n, err := d.Write(batch, testOffset); n != len(batch) || err != nil {
					t.Fatalf("round %d: Write = %d, %v", round, n, err)
				}
				for i := range batch {
					h, pkt := d.receive(t)
					if h != (virtioNetHdr{}) || !bytes.Equal(pkt, orig[i][testOffset:]) {
						t.Fatalf("round %d packet %d: header %+v, changed %v", round, i, h, !bytes.Equal(pkt, orig[i][testOffset:]))
					}
				}
			}
			st := d.Offload()
			if st.Coalescing || st.Fallbacks != 1 || st.SuperWrites != 0 {
				t.Errorf("state %+v", st)
			}
			if c := strings.Count(d.logs.String(), "refused a coalesced write"); c != 1 {
				t.Errorf("logged %d times:\n%s", c, d.logs)
			}
		})
	}
}

// TestVnetWriteRefusedPacket: the contract of Write holds with coalescing:
// a refused packet is reported by its index with all before it written,
// also when it sat in a run whose super-packet failed for another reason
// (which does not stop coalescing).
func TestVnetWriteRefusedPacket(t *testing.T) {
	d := newPairedTUN(t)
	batch, _ := writeBatch(rand.New(rand.NewPCG(39, 40)))
	bad := &batch[3][testOffset]
	d.writev = func(fd int, iov []unix.Iovec) error {
		if iov[0].Base == &d.wvh[0] {
			return unix.ENOBUFS
		}
		if iov[1].Base == bad {
			return unix.EINVAL
		}
		return writev(fd, iov)
	}
	n, err := d.Write(batch, testOffset)
	if n != 3 || !errors.Is(err, unix.EINVAL) {
		t.Fatalf("Write = %d, %v; want 3, EINVAL", n, err)
	}
	for i := range 3 {
		if h, pkt := d.receive(t); h != (virtioNetHdr{}) || !bytes.Equal(pkt, batch[i][testOffset:]) {
			t.Fatalf("packet %d not written as it was", i)
		}
	}
	if st := d.Offload(); !st.Coalescing || st.Fallbacks != 0 {
		t.Errorf("state %+v", st)
	}
	// The caller goes on after the refused packet.
	d.writev = writev
	if n, err := d.Write(batch[4:], testOffset); n != len(batch)-4 || err != nil {
		t.Fatalf("Write of the rest = %d, %v", n, err)
	}
	if h, _ := d.receive(t); h.gsoType != virtioGSOTCPv4 {
		t.Errorf("the rest of the first run was not coalesced: %+v", h)
	}
}

// TestVnetAllocs: in steady state neither Read (splitting a super-packet,
// through both buffers) nor Write (coalescing) allocates.
func TestVnetAllocs(t *testing.T) {
	d := newPairedTUN(t)
	rng := rand.New(rand.NewPCG(41, 42))
	h, sp := superTCP(TCP4{Src: tsoSrc, Dst: tsoDst, Flags: TCPAck, TCPOpts: tsOpts, Payload: randomBytes(rng, 45*1388)}, 1388)
	msg := make([]byte, virtioNetHdrLen+len(sp))
	h.encode(msg)
	copy(msg[virtioNetHdrLen:], sp)
	bufs := sizedBufs(64, testOffset+maxPacket)
	sizes := make([]int, 64)
	batch, _ := writeBatch(rng)
	sink := make([]byte, 70000)
	var failed error
	allocs := testing.AllocsPerRun(200, func() {
		if _, err := unix.Write(d.peer, msg); err != nil {
			failed = err
			return
		}
		for got := 0; got < 45; {
			n, err := d.Read(bufs, sizes, testOffset)
			if err != nil {
				failed = err
				return
			}
			got += n
		}
		if _, err := d.Write(batch, testOffset); err != nil {
			failed = err
			return
		}
		for range 4 {
			if _, err := unix.Read(d.peer, sink); err != nil {
				failed = err
				return
			}
		}
	})
	if failed != nil {
		t.Fatal(failed)
	}
	if allocs != 0 {
		t.Errorf("Read + Write allocate %.1f times per round", allocs)
	}
	if st := d.Offload(); st.SuperWrites == 0 || st.SuperReads == 0 {
		t.Errorf("state %+v", st)
	}
}

func TestVnetCloseWakesRead(t *testing.T) {
	d := newPairedTUN(t)
	done := make(chan error, 1)
	go func() {
		_, err := d.Read(sizedBufs(1, 2000), make([]int, 1), testOffset)
		done <- err
	}()
	time.Sleep(20 * time.Millisecond)
	d.Close()
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Errorf("Read after Close: %v", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Read still blocked after Close")
	}
	if _, err := d.Write([][]byte{make([]byte, 60)}, testOffset); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Write after Close: %v", err)
	}
}

// BenchmarkVnetRead reads 64 KB super-packets through the socket pair and
// splits them: into big buffers (in place, where the batch has room) or
// small ones (through the device's buffer). The socket copies are the
// kernel's share, as a TUN's would be.
func BenchmarkVnetRead(b *testing.B) {
	rng := rand.New(rand.NewPCG(43, 44))
	h, sp := superTCP(TCP4{Src: tsoSrc, Dst: tsoDst, Flags: TCPAck, TCPOpts: tsOpts, Payload: randomBytes(rng, 46*1388)}, 1388)
	msg := make([]byte, virtioNetHdrLen+len(sp))
	h.encode(msg)
	copy(msg[virtioNetHdrLen:], sp)
	for _, size := range []int{testOffset + maxPacket, testOffset + 1500} {
		b.Run(fmt.Sprintf("buf=%d", size), func(b *testing.B) {
			d := newPairedTUN(b)
			bufs := sizedBufs(64, size)
			sizes := make([]int, 64)
			var wg sync.WaitGroup
			stop := make(chan struct{})
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					select {
					case <-stop:
						return
					default:
					}
					if _, err := unix.Write(d.peer, msg); err != nil {
						return
					}
				}
			}()
			b.SetBytes(int64(len(sp)))
			b.ReportAllocs()
			segs := 0
			for b.Loop() {
				for segs < 46 {
					n, err := d.Read(bufs, sizes, testOffset)
					if err != nil {
						b.Fatal(err)
					}
					segs += n
				}
				segs -= 46
			}
			close(stop)
			d.Close()
			_ = unix.Shutdown(d.peer, unix.SHUT_RDWR)
			wg.Wait()
		})
	}
}
