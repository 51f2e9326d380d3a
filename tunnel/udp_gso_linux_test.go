package tunnel

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// listenOffload opens a loopback Conn with the offloads asked for and
// checks that the kernel granted them, so a test never passes on the
// plain path by accident.
func listenOffload(t testing.TB, gso, gro bool) *udpConn {
	t.Helper()
	c, err := ListenUDPConfig(UDPConfig{Addr: loopback, GSO: gso, GRO: gro})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	uc := c.(*udpConn)
	st := uc.UDPOffload()
	if st.GSO != gso || st.GRO != gro || st.Fallbacks != 0 {
		t.Fatalf("kernel %v: offload state %+v, asked for gso %v gro %v", udpKernel(), st, gso, gro)
	}
	return uc
}

// packets returns one buffer per size, each with offset bytes of headroom
// (filled with a marker that must never be sent) and a payload that names
// its index, so a reordered, merged or cut datagram shows.
func packets(offset int, sizes ...int) [][]byte {
	bufs := make([][]byte, len(sizes))
	for i, n := range sizes {
		b := make([]byte, offset+n)
		for j := range offset {
			b[j] = 0xee
		}
		for j := offset; j < len(b); j++ {
			b[j] = byte(i*31 + j)
		}
		if n >= 4 {
			binary.BigEndian.PutUint32(b[offset:], uint32(i))
		}
		bufs[i] = b
	}
	return bufs
}

func repeat(n, size int) []int {
	s := make([]int, n)
	for i := range s {
		s[i] = size
	}
	return s
}

// expectDatagrams checks that got holds exactly the payloads of sent, in
// order, one per datagram.
func expectDatagrams(t *testing.T, got [][]byte, sent [][]byte, offset int) {
	t.Helper()
	if len(got) != len(sent) {
		t.Fatalf("received %d datagrams, sent %d", len(got), len(sent))
	}
	for i := range sent {
		if !bytes.Equal(got[i], sent[i][offset:]) {
			t.Fatalf("datagram %d: %d bytes (head % x), want %d bytes (head % x)",
				i, len(got[i]), head(got[i]), len(sent[i])-offset, head(sent[i][offset:]))
		}
	}
}

func head(b []byte) []byte { return b[:min(len(b), 8)] }

func TestGSOGroup(t *testing.T) {
	tests := []struct {
		name    string
		sizes   []int
		maxSegs int
		want    []int // group lengths, in order
	}{
		{"equal run", repeat(10, 1400), 63, []int{10}},
		{"shorter ends a group", []int{1400, 1400, 1400, 700, 1400, 1400}, 63, []int{4, 2}},
		{"longer starts a group", []int{1000, 1000, 1400, 1400, 1400}, 63, []int{2, 3}},
		{"single shorter then equal", []int{52, 1400, 1400, 52, 52}, 63, []int{1, 3, 1}},
		{"byte limit", repeat(50, 1400), 127, []int{46, 4}},
		{"segment limit", repeat(200, 100), 63, []int{63, 63, 63, 11}},
		{"segment limit 6.9", repeat(200, 100), 127, []int{127, 73}},
		{"empty datagrams stand alone", []int{100, 100, 0, 0, 100}, 63, []int{2, 1, 1, 1}},
		{"too big to pair", []int{40000, 40000, 66000, 20}, 63, []int{1, 1, 1, 1}},
		{"iovec room", repeat(10, 100), 4, []int{4, 4, 2}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			const offset = 16
			bufs := packets(offset, tt.sizes...)
			var got []int
			for len(bufs) > 0 {
				k := gsoGroup(bufs, offset, tt.maxSegs)
				// Whatever the input, a group is one the kernel cuts back
				// into the same datagrams.
				seg := len(bufs[0]) - offset
				total := 0
				for i, b := range bufs[:k] {
					l := len(b) - offset
					total += l
					if k > 1 && (l == 0 || l > seg || (l < seg && i != k-1)) {
						t.Fatalf("group %d has datagram %d of %d bytes, segment %d", len(got), i, l, seg)
					}
				}
				if k > 1 && (total > gsoMaxBytes || k > tt.maxSegs) {
					t.Fatalf("group of %d datagrams, %d bytes", k, total)
				}
				got = append(got, k)
				bufs = bufs[k:]
			}
			if fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Errorf("groups %v, want %v", got, tt.want)
			}
		})
	}
}

func TestGSORefusal(t *testing.T) {
	for errno, want := range map[unix.Errno][2]bool{
		unix.EIO:          {true, true},
		unix.EINVAL:       {true, true},
		unix.EMSGSIZE:     {true, false},
		unix.EPERM:        {false, false},
		unix.EHOSTUNREACH: {false, false},
		unix.ENOBUFS:      {false, false},
	} {
		if resend, disable := gsoRefusal(errno); resend != want[0] || disable != want[1] {
			t.Errorf("%v: resend %v disable %v, want %v", errno, resend, disable, want)
		}
	}
}

func TestParseUDPKernelVersion(t *testing.T) {
	for release, want := range map[string]udpKernelVersion{
		"6.18.44-fc-v595":   {6, 18, 44},
		"5.12.0":            {5, 12, 0},
		"7.1-rc5":           {7, 1, 0},
		"4.19.0-26-amd64":   {4, 19, 0},
		"6.8.0-1015-gcp+":   {6, 8, 0},
		"":                  {0, 0, 0},
		"x.y":               {0, 0, 0},
		"7.1.4.1-something": {7, 1, 4},
	} {
		if got := parseUDPKernelVersion(release); got != want {
			t.Errorf("%q: %v, want %v", release, got, want)
		}
	}
	v := udpKernelVersion{6, 9, 0}
	if !v.atLeast(udpKernelVersion{6, 9, 0}) || !v.atLeast(udpKernelVersion{5, 12, 9}) || v.atLeast(udpKernelVersion{6, 9, 1}) {
		t.Error("atLeast is wrong")
	}
}

// cmsg encodes one control message as the kernel lays it out.
func cmsg(level, typ int32, data []byte) []byte {
	b := make([]byte, unix.CmsgSpace(len(data)))
	h := (*unix.Cmsghdr)(unsafe.Pointer(&b[0]))
	h.Level, h.Type = level, typ
	h.SetLen(unix.CmsgLen(len(data)))
	copy(b[unix.CmsgLen(0):], data)
	return b
}

func groCmsg(size int32) []byte {
	return cmsg(unix.SOL_UDP, unix.UDP_GRO, binary.NativeEndian.AppendUint32(nil, uint32(size)))
}

func TestGROSize(t *testing.T) {
	other := cmsg(unix.SOL_IP, unix.IP_TTL, []byte{64, 0, 0, 0})
	for _, tt := range []struct {
		name string
		ctl  []byte
		want int
	}{
		{"none", nil, 0},
		{"gro", groCmsg(1472), 1472},
		{"after another", append(other, groCmsg(100)...), 100},
		{"other only", other, 0},
		{"negative", groCmsg(-5), 0},
		{"truncated", groCmsg(1472)[:unix.CmsgLen(2)], 0},
		{"bad length", func() []byte { b := groCmsg(9); b[0] = 3; return b }(), 0},
	} {
		if got := groSize(tt.ctl); got != tt.want {
			t.Errorf("%s: %d, want %d", tt.name, got, tt.want)
		}
	}
}

// FuzzGROSize: any control data yields a size in range without panicking,
// and a UDP_GRO message after arbitrary well-formed ones is always found.
func FuzzGROSize(f *testing.F) {
	f.Add([]byte{}, int32(1472), uint8(0))
	f.Add(groCmsg(1400), int32(52), uint8(1))
	f.Add(cmsg(unix.SOL_IP, unix.IP_TTL, []byte{1, 2, 3, 4, 5}), int32(65000), uint8(3))
	f.Fuzz(func(t *testing.T, raw []byte, size int32, others uint8) {
		if got := groSize(raw); got < 0 {
			t.Fatalf("size %d from % x", got, raw)
		}
		var ctl []byte
		for i := range int(others % 4) {
			ctl = append(ctl, cmsg(unix.SOL_IP, int32(i+1), raw[:min(len(raw), 9)])...)
		}
		ctl = append(ctl, groCmsg(size)...)
		if got, want := groSize(ctl), max(int(size), 0); got != want {
			t.Fatalf("size %d, want %d", got, want)
		}
	})
}

// TestUDPGSOSendsOneDatagramPerPacket sends runs the kernel segments to a
// plain receiver: what arrives must be what one send per packet would
// give, datagram for datagram (the on-the-wire rule at the socket).
func TestUDPGSOSendsOneDatagramPerPacket(t *testing.T) {
	const offset = 16
	mixed := append(repeat(44, 1400), 1400, 1400, 900, 1472, 1472, 60, 60, 60, 1)
	mixed = append(mixed, repeat(150, 100)...) // past the segment limit
	mixed = append(mixed, 0, 1400, 1400, 64000, 1300, 1300)
	for name, sizes := range map[string][]int{
		"equal":           repeat(40, 1400),
		"equal last tiny": append(repeat(40, 1400), 40),
		"mixed":           mixed,
	} {
		t.Run(name, func(t *testing.T) {
			a, b := listenOffload(t, true, false), listenLoopback(t)
			bufs := packets(offset, sizes...)
			wantGroups := 0
			for rest := bufs; len(rest) > 0; {
				k := gsoGroup(rest, offset, a.gsoSegs)
				if k > 1 {
					wantGroups++
				}
				rest = rest[k:]
			}
			if err := a.Write(bufs, offset, b.LocalAddr()); err != nil {
				t.Fatal(err)
			}
			data, from := readN(t, b, len(bufs))
			expectDatagrams(t, data, bufs, offset)
			for i := range from {
				if from[i] != a.LocalAddr() {
					t.Fatalf("datagram %d from %v", i, from[i])
				}
			}
			if st := a.UDPOffload(); st.GSOSends != uint64(wantGroups) || !st.GSO {
				t.Errorf("offload state %+v, want %d GSO sends", st, wantGroups)
			}
		})
	}
}

// TestUDPGROSplitsIntoDatagrams receives with GRO from a GSO sender (the
// kernel hands the whole run over as one message) and from a plain one,
// through a reader with fewer and smaller buffers than datagrams, so
// leftovers wait for the next Read.
func TestUDPGROSplitsIntoDatagrams(t *testing.T) {
	const offset = 16
	sizes := append(repeat(44, 1400), 700)
	sizes = append(sizes, 1400, 1400, 0, 52, 52, 52, 1000, 1000, 1000, 999)
	for _, gsoSender := range []bool{true, false} {
		t.Run(fmt.Sprintf("gso-sender=%v", gsoSender), func(t *testing.T) {
			a, b := listenOffload(t, gsoSender, false), listenOffload(t, false, true)
			bufs := packets(offset, sizes...)
			for range 3 {
				if err := a.Write(bufs, offset, b.LocalAddr()); err != nil {
					t.Fatal(err)
				}
			}
			var got [][]byte
			in := [][]byte{make([]byte, 1500), make([]byte, 1500), make([]byte, 1500)}
			sz := make([]int, len(in))
			addrs := make([]netip.AddrPort, len(in))
			timer := time.AfterFunc(5*time.Second, func() { b.Close() })
			defer timer.Stop()
			for len(got) < 3*len(bufs) {
				n, err := b.Read(in, sz, addrs)
				if err != nil {
					t.Fatalf("after %d datagrams: %v", len(got), err)
				}
				for i := range n {
					if addrs[i] != a.LocalAddr() {
						t.Fatalf("datagram from %v", addrs[i])
					}
					got = append(got, bytes.Clone(in[i][:sz[i]]))
				}
			}
			expectDatagrams(t, got, append(append(bufs[:len(bufs):len(bufs)], bufs...), bufs...), offset)
			st := b.UDPOffload()
			if gsoSender && st.GROReceives == 0 {
				t.Errorf("no message carried several datagrams: %+v", st)
			}
			if !gsoSender && st.GROReceives != 0 {
				// Loopback has no GRO engine: only GSO skbs arrive whole.
				t.Logf("loopback coalesced plain sends: %+v", st)
			}
		})
	}
}

// TestUDPOffloadRoundTrip runs the plain round trip in every combination
// of GSO and GRO at each end, as in a cluster half upgraded.
func TestUDPOffloadRoundTrip(t *testing.T) {
	const offset = 16
	var sizes []int
	for i := range 150 {
		sizes = append(sizes, 1+i*7) // all different: nothing to group
	}
	sizes = append(sizes, repeat(100, 1472)...)
	for _, gso := range []bool{false, true} {
		for _, gro := range []bool{false, true} {
			t.Run(fmt.Sprintf("gso=%v/gro=%v", gso, gro), func(t *testing.T) {
				a, b := listenOffload(t, gso, gro), listenOffload(t, gso, gro)
				bufs := packets(offset, sizes...)
				if err := a.Write(bufs, offset, b.LocalAddr()); err != nil {
					t.Fatal(err)
				}
				data, _ := readN(t, b, len(bufs))
				expectDatagrams(t, data, bufs, offset)
				// And back.
				if err := b.Write(bufs, offset, a.LocalAddr()); err != nil {
					t.Fatal(err)
				}
				data, _ = readN(t, a, len(bufs))
				expectDatagrams(t, data, bufs, offset)
			})
		}
	}
}

// TestUDPGSOFallback makes the kernel refuse GSO at run time: with
// SO_NO_CHECK it rejects every GSO send with EINVAL (as it rejects them
// with EIO when the egress device lacks TX checksum offload). The refused
// run must still arrive whole, GSO must turn off once, be counted, and
// stay off.
func TestUDPGSOFallback(t *testing.T) {
	const offset = 16
	a, b := listenOffload(t, true, false), listenLoopback(t)
	if err := unix.SetsockoptInt(a.fd, unix.SOL_SOCKET, unix.SO_NO_CHECK, 1); err != nil {
		t.Fatal(err)
	}
	bufs := packets(offset, append(repeat(30, 1400), 1000, 52)...)
	for range 2 {
		if err := a.Write(bufs, offset, b.LocalAddr()); err != nil {
			t.Fatal(err)
		}
		data, _ := readN(t, b, len(bufs))
		expectDatagrams(t, data, bufs, offset)
	}
	st := a.UDPOffload()
	if st.GSO || st.Fallbacks != 1 || st.GSOSends != 0 {
		t.Errorf("after a refused GSO send: %+v, want GSO off, 1 fallback, no GSO sends", st)
	}
}

// TestUDPGSORefusedDatagram: a datagram the kernel refuses next to GSO
// runs is skipped and reported alone.
func TestUDPGSORefusedDatagram(t *testing.T) {
	const offset = 2
	a, b := listenOffload(t, true, false), listenLoopback(t)
	sizes := append(repeat(5, 1000), 66000)
	sizes = append(sizes, repeat(5, 1000)...)
	bufs := packets(offset, sizes...)
	err := a.Write(bufs, offset, b.LocalAddr())
	var se *SendError
	if !errors.As(err, &se) || se.Failed != 1 || se.FailedBytes != 66000 || !errors.Is(err, unix.EMSGSIZE) {
		t.Fatalf("Write = %v, want one refused datagram of 66000 bytes", err)
	}
	data, _ := readN(t, b, 10)
	expectDatagrams(t, data, append(bufs[:5:5], bufs[6:]...), offset)
	if st := a.UDPOffload(); !st.GSO || st.Fallbacks != 0 || st.GSOSends != 2 {
		t.Errorf("offload state %+v", st)
	}
}

func TestUDPOffloadKillSwitch(t *testing.T) {
	c, err := ListenUDPConfig(UDPConfig{Addr: loopback})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if st := c.(UDPOffloader).UDPOffload(); st != (UDPOffloadState{}) {
		t.Errorf("offloads off: state %+v", st)
	}
	gro, _ := unix.GetsockoptInt(c.(*udpConn).fd, unix.SOL_UDP, unix.UDP_GRO)
	if gro != 0 {
		t.Error("UDP_GRO set with GRO off")
	}
	on := listenOffload(t, true, true)
	if gro, err := unix.GetsockoptInt(on.fd, unix.SOL_UDP, unix.UDP_GRO); err != nil || gro != 1 {
		t.Errorf("UDP_GRO = %d, %v with GRO on", gro, err)
	}
}

func TestUDPGROCloseWakesRead(t *testing.T) {
	c := listenOffload(t, true, true)
	done := make(chan error, 1)
	go func() {
		_, err := c.Read([][]byte{make([]byte, 1500)}, make([]int, 1), make([]netip.AddrPort, 1))
		done <- err
	}()
	time.Sleep(50 * time.Millisecond) // let Read block in recvmmsg
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Errorf("Read after Close: %v, want net.ErrClosed", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Read still blocked 2s after Close")
	}
	_, err := c.Read([][]byte{make([]byte, 10)}, make([]int, 1), make([]netip.AddrPort, 1))
	if !errors.Is(err, net.ErrClosed) {
		t.Errorf("Read after Close: %v", err)
	}
}

// TestUDPGROCloseWithLeftovers closes a Conn holding datagrams a Read has
// not handed out yet: the next Read reports the close.
func TestUDPGROCloseWithLeftovers(t *testing.T) {
	a, b := listenOffload(t, true, false), listenOffload(t, false, true)
	bufs := packets(0, repeat(20, 1000)...)
	if err := a.Write(bufs, 0, b.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	in := [][]byte{make([]byte, 1500)}
	if n, err := b.Read(in, make([]int, 1), make([]netip.AddrPort, 1)); n != 1 || err != nil {
		t.Fatalf("Read = %d, %v", n, err)
	}
	b.Close()
	if _, err := b.Read(in, make([]int, 1), make([]netip.AddrPort, 1)); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Read after Close: %v", err)
	}
}

func TestUDPOffloadAllocs(t *testing.T) {
	for _, tt := range []struct{ gso, gro, views bool }{{true, false, false}, {false, true, false}, {true, true, false}, {true, true, true}} {
		t.Run(fmt.Sprintf("gso=%v/gro=%v/views=%v", tt.gso, tt.gro, tt.views), func(t *testing.T) {
			a, b := listenOffload(t, tt.gso, false), listenOffload(t, false, tt.gro)
			out := packets(16, append(repeat(40, 1400), 300, 1400, 52)...)
			in := make([][]byte, 16) // fewer than sent: leftovers too
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
				for got := 0; got < len(out); {
					read := b.Read
					if tt.views { // loopback delivers within Write: no wait needed
						read = func(v [][]byte, s []int, a []netip.AddrPort) (int, error) {
							n, _, err := b.TryReadViews(v, s, a)
							return n, err
						}
					}
					r, err := read(in, sizes, addrs)
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
				t.Errorf("Write+Read of %d datagrams allocates %.1f times", len(out), allocs)
			}
			if tt.gso && a.UDPOffload().GSOSends == 0 || tt.gso && tt.gro && b.UDPOffload().GROReceives == 0 {
				t.Errorf("offloads idle: sender %+v receiver %+v", a.UDPOffload(), b.UDPOffload())
			}
		})
	}
}

// BenchmarkUDPLoopback sends batches of 64 equal datagrams (the forwarder's
// TUN batch for one peer) over loopback and reads them back, with and
// without each offload. One goroutine does both, so nothing is lost and
// the figure is the cost of the syscalls and copies per datagram.
func BenchmarkUDPLoopback(b *testing.B) {
	const batch, offset = 64, 16
	for _, size := range []int{100, 1400} {
		for _, mode := range []struct {
			name     string
			gso, gro bool
		}{{"plain", false, false}, {"gso", true, false}, {"gro", false, true}, {"gso+gro", true, true}} {
			b.Run(fmt.Sprintf("size=%d/%s", size, mode.name), func(b *testing.B) {
				tx, rx := listenOffload(b, mode.gso, false), listenOffload(b, false, mode.gro)
				out := packets(offset, repeat(batch, size)...)
				in := make([][]byte, batch)
				for i := range in {
					in[i] = make([]byte, headroom+maxPacket)[headroom:]
				}
				sizes := make([]int, batch)
				addrs := make([]netip.AddrPort, batch)
				dst := rx.LocalAddr()
				b.SetBytes(int64(batch * size))
				b.ReportAllocs()
				for b.Loop() {
					if err := tx.Write(out, offset, dst); err != nil {
						b.Fatal(err)
					}
					for got := 0; got < batch; {
						n, err := rx.Read(in, sizes, addrs)
						if err != nil {
							b.Fatal(err)
						}
						got += n
					}
				}
				b.ReportMetric(float64(b.N*batch)/b.Elapsed().Seconds(), "datagrams/s")
			})
		}
	}
}

// TestUDPGROWholeMessages: a Read starts a received message only if all of
// its datagrams fit the buffers left, so a run the TUN side coalesces back
// into one super-packet is not cut at the batch's end; a message larger
// than the whole batch is still handed out in pieces.
func TestUDPGROWholeMessages(t *testing.T) {
	const offset = 16
	a, b := listenOffload(t, true, false), listenOffload(t, false, true)
	groups := [][]int{repeat(5, 1000), repeat(5, 900), repeat(12, 800)}
	var want [][]byte
	for _, g := range groups {
		bufs := packets(offset, g...)
		want = append(want, bufs...)
		if err := a.Write(bufs, offset, b.LocalAddr()); err != nil {
			t.Fatal(err)
		}
	}
	in := make([][]byte, 8)
	for i := range in {
		in[i] = make([]byte, 1500)
	}
	sz := make([]int, len(in))
	addrs := make([]netip.AddrPort, len(in))
	timer := time.AfterFunc(5*time.Second, func() { b.Close() })
	defer timer.Stop()
	var got [][]byte
	var counts []int
	for len(got) < len(want) {
		n, err := b.Read(in, sz, addrs)
		if err != nil {
			t.Fatalf("after %d datagrams: %v", len(got), err)
		}
		counts = append(counts, n)
		for i := range n {
			got = append(got, bytes.Clone(in[i][:sz[i]]))
		}
	}
	expectDatagrams(t, got, want, offset)
	if st := b.UDPOffload(); st.GROReceives != 3 {
		t.Skipf("the kernel delivered %d multi-datagram messages, not the 3 sent: %+v", st.GROReceives, st)
	}
	if !slices.Equal(counts, []int{5, 5, 8, 4}) {
		t.Errorf("Reads returned %v datagrams, want [5 5 8 4]: whole messages, and the 12 in two", counts)
	}
}

// TestUDPGROViews: with GRO on, TryReadViews hands out the same datagrams
// as Read, in place in the conn's memory; with GRO off it refuses.
func TestUDPGROViews(t *testing.T) {
	const offset = 16
	a, b := listenOffload(t, true, false), listenOffload(t, false, true)
	if a.Views() {
		t.Fatal("a conn without GRO says it lends views")
	} else if _, _, err := a.TryReadViews(make([][]byte, 1), make([]int, 1), make([]netip.AddrPort, 1)); err == nil {
		t.Fatal("TryReadViews without GRO did not fail")
	}
	if !b.Views() {
		t.Fatal("a conn with GRO does not lend views")
	}
	var _ viewConn = b // what the forwarder looks for
	var want [][]byte
	for _, g := range [][]int{repeat(5, 1000), repeat(12, 800), {300}} {
		bufs := packets(offset, g...)
		want = append(want, bufs...)
		if err := a.Write(bufs, offset, b.LocalAddr()); err != nil {
			t.Fatal(err)
		}
	}
	views := make([][]byte, 8)
	sz := make([]int, len(views))
	addrs := make([]netip.AddrPort, len(views))
	deadline := time.Now().Add(5 * time.Second)
	var got [][]byte
	for len(got) < len(want) && time.Now().Before(deadline) {
		n, _, err := b.TryReadViews(views, sz, addrs)
		if err != nil {
			t.Fatalf("after %d datagrams: %v", len(got), err)
		}
		for i := range n {
			if len(views[i]) != sz[i] || addrs[i] != a.LocalAddr() {
				t.Fatalf("view %d: %d bytes for size %d, from %v", i, len(views[i]), sz[i], addrs[i])
			}
			got = append(got, bytes.Clone(views[i]))
		}
	}
	expectDatagrams(t, got, want, offset)
}
