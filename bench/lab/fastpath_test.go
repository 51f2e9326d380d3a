package lab

// End-to-end tests of the kernel (eBPF) fast path beside the userspace
// path: a mixed cluster and a peer switching mode under traffic, the wire
// format of kernel-made datagrams, the fallback without CAP_BPF, and
// restarts in both attach modes. Like e2e_test.go they run the real weft
// binary in network namespaces as root and skip otherwise.

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/internal/netnstest"
	"github.com/weft-net/weft/status"
)

// kernelDecapAdvert is what a lease value holds while its node decapsulates
// in its kernel.
const kernelDecapAdvert = `"BackendData":{"WeftDecap":"kernel"}`

// fastPathOf is node i's /status and its FastPath, which must be there.
func fastPathOf(t *testing.T, l *Lab, i int) (*Status, status.FastPath) {
	t.Helper()
	s := mustStatus(t, l, i)
	if s.FastPath == nil {
		t.Fatalf("n%d /status has no fastPath", i)
	}
	return s, *s.FastPath
}

// requireFastPath fails unless node i runs the kernel fast path, so that a
// test meant for it cannot silently test the userspace path alone.
func requireFastPath(t *testing.T, l *Lab, i int) {
	t.Helper()
	if _, fp := fastPathOf(t, l, i); !fp.Running || fp.Attach == "" {
		t.Fatalf("n%d fast path not running: %+v", i, fp)
	}
}

// kernelTraffic is the kernel path's share of a status's counters (zero
// when the node runs no fast path).
func kernelTraffic(s *Status) status.Traffic { return s.Counters.Paths[status.PathKernel] }

// peerPath is the path s lists for subnet, "" when it lists no such peer.
func peerPath(s *Status, subnet netip.Prefix) string {
	for _, p := range s.Peers {
		if p.Subnet == subnet {
			return p.Path
		}
	}
	return ""
}

// waitPeerPath waits until node i lists subnet with path want.
func waitPeerPath(t *testing.T, l *Lab, i int, subnet netip.Prefix, want string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		s, err := l.Status(i)
		if err == nil && peerPath(s, subnet) == want {
			return
		}
		if time.Now().After(deadline) {
			var peers []status.Peer
			if s != nil {
				peers = s.Peers
			}
			t.Fatalf("n%d does not list %v with path %q after %v: %+v (err %v)", i, subnet, want, timeout, peers, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// leaseValue is the etcd value of subnet's lease.
func leaseValue(t *testing.T, l *Lab, subnet netip.Prefix) string {
	t.Helper()
	leases, err := l.Leases(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	for _, le := range leases {
		if le.Subnet == subnet {
			return le.Value
		}
	}
	t.Fatalf("no lease for %v in etcd: %+v", subnet, leases)
	return ""
}

// pathWatch polls node i's /status in the background and records when
// the path it lists for one peer changes.
type pathWatch struct {
	mu      sync.Mutex
	changes []pathChange
	stop    chan struct{}
	done    chan struct{}
}

type pathChange struct {
	at   time.Time
	path string
}

func watchPeerPath(l *Lab, i int, subnet netip.Prefix) *pathWatch {
	w := &pathWatch{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		last := "?"
		for {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			s, err := l.StatusContext(ctx, i)
			cancel()
			if err == nil {
				if p := peerPath(s, subnet); p != last {
					last = p
					w.mu.Lock()
					w.changes = append(w.changes, pathChange{time.Now(), p})
					w.mu.Unlock()
				}
			}
			select {
			case <-w.stop:
				return
			case <-time.After(10 * time.Millisecond):
			}
		}
	}()
	return w
}

// wait returns when the watched path first became want at or after since.
func (w *pathWatch) wait(t *testing.T, since time.Time, want string, timeout time.Duration) time.Time {
	t.Helper()
	deadline := since.Add(timeout)
	for {
		w.mu.Lock()
		var at time.Time
		// The change that made it want: the last one before since counts
		// only if it is still the current value at since.
		for j, c := range w.changes {
			if c.path == want && (!c.at.Before(since) || j == len(w.changes)-1 || !w.changes[j+1].at.Before(since)) {
				at = c.at
				if at.Before(since) {
					at = since
				}
				break
			}
		}
		hist := slices.Clone(w.changes)
		w.mu.Unlock()
		if !at.IsZero() {
			return at
		}
		if time.Now().After(deadline) {
			t.Fatalf("path %q not seen within %v; changes: %v", want, timeout, hist)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (w *pathWatch) close() {
	close(w.stop)
	<-w.done
}

func ms(d time.Duration) string { return d.Round(time.Millisecond).String() }

// TestE2EFastPathMixed: n0 and n2 run the fast path (auto), n1 runs
// -fast-path=off. Each node says so in /status and its lease; the fast-path
// nodes encapsulate toward each other in the kernel and toward n1 in
// userspace; every ordered pair moves a TCP transfer byte-exact, the kernel
// counters moving exactly where they should. Then n2 switches to
// -fast-path=off and back while a TCP stream runs each way between n0 and
// n2: n0 follows each switch, and both streams arrive byte-exact.
func TestE2EFastPathMixed(t *testing.T) {
	t.Parallel()
	l := newE2ELab(t, Options{Nodes: 3})
	for i, args := range [][]string{nil, {"-fast-path=off"}, nil} {
		if err := l.StartWeft(i, args...); err != nil {
			t.Fatal(err)
		}
	}
	waitAllReady(t, l)
	waitMesh(t, l)
	var sub [3]netip.Prefix
	for i := range 3 {
		sub[i] = subnetOf(t, l, i)
	}

	attach := wantAttach(t)
	for _, i := range []int{0, 2} {
		if _, fp := fastPathOf(t, l, i); !fp.Running || fp.Attach != attach || fp.Mode != "auto" || fp.Reason != "" {
			t.Errorf("n%d fastPath %+v, want running, attached by %s, mode auto", i, fp, attach)
		}
		if v := leaseValue(t, l, sub[i]); !strings.Contains(v, kernelDecapAdvert) {
			t.Errorf("n%d lease %s does not advertise %s", i, v, kernelDecapAdvert)
		}
	}
	if _, fp := fastPathOf(t, l, 1); fp.Running || fp.Reason != "-fast-path=off" || fp.Mode != "off" || fp.Attach != "" {
		t.Errorf("n1 fastPath %+v, want not running, mode off, reason -fast-path=off", fp)
	}
	if v := leaseValue(t, l, sub[1]); strings.Contains(v, "WeftDecap") {
		t.Errorf("n1 (-fast-path=off) lease advertises kernel decapsulation: %s", v)
	}

	// The advertisements reach the peers through the lease watch.
	waitPeerPath(t, l, 0, sub[2], status.PathKernel, 10*time.Second)
	waitPeerPath(t, l, 2, sub[0], status.PathKernel, 10*time.Second)
	for _, i := range []int{0, 2} {
		if p := peerPath(mustStatus(t, l, i), sub[1]); p != status.PathUserspace {
			t.Errorf("n%d lists n1 (%v) with path %q, want userspace", i, sub[1], p)
		}
	}
	for _, p := range mustStatus(t, l, 1).Peers {
		if p.Path != status.PathUserspace {
			t.Errorf("n1 (-fast-path=off) lists peer %v with path %q, want userspace", p.Subnet, p.Path)
		}
	}
	for i := range 3 {
		s := mustStatus(t, l, i)
		t.Logf("n%d %v: fastPath %+v; peers %s", i, sub[i], *s.FastPath, peerPaths(s))
	}

	transferPairs(t, l)
	switchUnderTraffic(t, l, sub)
}

func peerPaths(s *Status) string {
	var b []string
	for _, p := range s.Peers {
		b = append(b, p.Subnet.String()+"="+p.Path)
	}
	return strings.Join(b, " ")
}

// transferPairs moves 4 MiB byte-exact between every ordered pair of
// TestE2EFastPathMixed's nodes and checks which kernel counters moved:
// between n0 and n2 the kernel carries the data both ways; a fast-path node
// sends to n1 (no advertisement) from userspace only; n1 has no kernel
// path. (n1's datagrams reach the fast-path nodes' eth0 as UDP GSO
// super-datagrams over the veth, which weft_decap leaves to the socket as
// not one whole packet: only the small ones are decapsulated in the kernel.)
func transferPairs(t *testing.T, l *Lab) {
	t.Helper()
	const size = 4 << 20
	fast := func(i int) bool { return i != 1 }
	for from := range 3 {
		for to := range 3 {
			if from == to {
				continue
			}
			var before [3]status.Traffic
			for i := range 3 {
				before[i] = kernelTraffic(mustStatus(t, l, i))
			}
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			r, err := l.Transfer(ctx, from, to, size)
			cancel()
			if err != nil || !r.Match() || r.Bytes != size {
				t.Fatalf("transfer n%d -> n%d: %v (%d bytes, match %v)", from, to, err, r.Bytes, r.Match())
			}
			var d [3]status.Traffic
			for i := range 3 {
				a := kernelTraffic(mustStatus(t, l, i))
				d[i] = status.Traffic{TxPackets: a.TxPackets - before[i].TxPackets, TxBytes: a.TxBytes - before[i].TxBytes,
					RxPackets: a.RxPackets - before[i].RxPackets, RxBytes: a.RxBytes - before[i].RxBytes}
			}
			t.Logf("n%d -> n%d: %d bytes byte-exact, %.2f Gb/s; kernel path: sender tx %d pkts %d B, receiver rx %d pkts %d B",
				from, to, r.Bytes, r.Gbps(), d[from].TxPackets, d[from].TxBytes, d[to].RxPackets, d[to].RxBytes)
			if (d[1] != status.Traffic{}) {
				t.Errorf("n%d -> n%d: the kernel counters of n1 (-fast-path=off) moved: %+v", from, to, d[1])
			}
			switch {
			case fast(from) && fast(to):
				if d[from].TxBytes < size*9/10 || d[to].RxBytes < size*9/10 {
					t.Errorf("n%d -> n%d: kernel path carried tx %d B, rx %d B of a %d-byte transfer, want almost all",
						from, to, d[from].TxBytes, d[to].RxBytes, size)
				}
				if d[to].TxPackets == 0 || d[from].RxPackets == 0 {
					t.Errorf("n%d -> n%d: the ACKs did not take the kernel path: %+v %+v", from, to, d[to], d[from])
				}
			case fast(from): // to n1
				if d[from].TxPackets != 0 {
					t.Errorf("n%d -> n1: n%d's kernel encapsulated %d packets toward a peer that does not advertise", from, from, d[from].TxPackets)
				}
			case fast(to): // from n1
				if d[to].TxPackets != 0 {
					t.Errorf("n1 -> n%d: n%d's kernel encapsulated %d ACKs toward n1, which does not advertise", to, to, d[to].TxPackets)
				}
			}
		}
	}
}

// switchUnderTraffic restarts n2 with -fast-path=off and back while a TCP
// stream runs each way between n0 and n2, timing how long n0 takes to
// follow each switch.
func switchUnderTraffic(t *testing.T, l *Lab, sub [3]netip.Prefix) {
	t.Helper()
	const rate = 32 << 20 // bytes/s, each way
	var streams [2]*Stream
	for k, pair := range [][2]int{{0, 2}, {2, 0}} {
		s, err := l.StartStream(t.Context(), pair[0], pair[1], rate)
		if err != nil {
			t.Fatal(err)
		}
		streams[k] = s
		defer func() { _, _ = s.Stop(time.Second) }() // a no-op after the checked Stop below
	}
	// progress waits until each stream has moved more bytes, and at least
	// 2 s have passed: a phase of the switch carries real traffic.
	progress := func(what string, more int64) {
		t.Helper()
		at := [2]int64{streams[0].Received(), streams[1].Received()}
		start := time.Now()
		for streams[0].Received() < at[0]+more || streams[1].Received() < at[1]+more || time.Since(start) < 2*time.Second {
			if time.Since(start) > 15*time.Second {
				t.Fatalf("streams stalled %s: n0->n2 %d, n2->n0 %d bytes (+%d, +%d in %v)", what,
					streams[0].Received(), streams[1].Received(), streams[0].Received()-at[0], streams[1].Received()-at[1], time.Since(start))
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	progress("before the switch", 8<<20)
	w := watchPeerPath(l, 0, sub[2])
	defer w.close()

	restart := func(args ...string) (stopAt, startAt, readyAt time.Time) {
		t.Helper()
		stopAt = time.Now()
		if code, err := l.StopWeft(2); err != nil || code != 0 {
			t.Fatalf("stop n2: exit %d, %v", code, err)
		}
		startAt = time.Now()
		if err := l.StartWeft(2, args...); err != nil {
			t.Fatal(err)
		}
		if err := l.WaitReady(2, readyTimeout); err != nil {
			t.Fatal(err)
		}
		return stopAt, startAt, time.Now()
	}

	// To -fast-path=off: the clean stop withdraws the advertisement.
	stopAt, startAt, readyAt := restart("-fast-path=off")
	seen := w.wait(t, stopAt, status.PathUserspace, 10*time.Second)
	t.Logf("n2 -> -fast-path=off: stop took %v, n2 ready %v after its start; n0 listed n2 as userspace %v after the stop began, %v after n2 was ready (negative: before)",
		ms(startAt.Sub(stopAt)), ms(readyAt.Sub(startAt)), ms(seen.Sub(stopAt)), ms(seen.Sub(readyAt)))
	if subnetOf(t, l, 2) != sub[2] {
		t.Fatalf("n2 changed subnet across the restart")
	}
	if _, fp := fastPathOf(t, l, 2); fp.Running || fp.Reason != "-fast-path=off" {
		t.Errorf("n2 after the restart with -fast-path=off: fastPath %+v", fp)
	}
	if v := leaseValue(t, l, sub[2]); strings.Contains(v, "WeftDecap") {
		t.Errorf("n2 runs -fast-path=off but its lease still advertises: %s", v)
	}
	waitPeerPath(t, l, 2, sub[0], status.PathUserspace, 5*time.Second)
	k0 := kernelTraffic(mustStatus(t, l, 0))
	progress("with n2 at -fast-path=off", 8<<20)
	k1 := kernelTraffic(mustStatus(t, l, 0))
	t.Logf("n0's kernel path while n2 runs -fast-path=off: tx +%d packets, rx +%d packets %d B (n2's datagrams that are one packet each)",
		k1.TxPackets-k0.TxPackets, k1.RxPackets-k0.RxPackets, k1.RxBytes-k0.RxBytes)
	if k1.TxPackets != k0.TxPackets {
		t.Errorf("n0's kernel encapsulated %d packets toward n2 while n2 ran -fast-path=off", k1.TxPackets-k0.TxPackets)
	}

	// And back: the start advertises again.
	stopAt, startAt, readyAt = restart()
	seen = w.wait(t, startAt, status.PathKernel, 10*time.Second)
	t.Logf("n2 -> fast path again: stop took %v, n2 ready %v after its start; n0 listed n2 as kernel %v after n2's start, %v after n2 was ready (negative: before)",
		ms(startAt.Sub(stopAt)), ms(readyAt.Sub(startAt)), ms(seen.Sub(startAt)), ms(seen.Sub(readyAt)))
	requireFastPath(t, l, 2)
	k2 := kernelTraffic(mustStatus(t, l, 0))
	progress("after n2's fast path returned", 8<<20)
	k3 := kernelTraffic(mustStatus(t, l, 0))
	if k3.TxBytes-k2.TxBytes < 4<<20 {
		t.Errorf("n0's kernel encapsulated only %d B toward n2 after n2's fast path returned", k3.TxBytes-k2.TxBytes)
	}

	for k, what := range []string{"n0 -> n2", "n2 -> n0"} {
		r, err := streams[k].Stop(20 * time.Second)
		if err != nil {
			t.Errorf("stream %s across both switches: %v", what, err)
			continue
		}
		t.Logf("stream %s: %d bytes byte-exact across both switches in %v (%.0f Mb/s)", what, r.Received, ms(r.Duration), r.Mbps())
	}
}

// requireEthtool skips without ethtool, or fails under CI=true, where
// .ci/run must install it.
func requireEthtool(t *testing.T) { netnstest.RequireTool(t, "ethtool", "ethtool") }

// wireOffloadsOff makes node i's kernel hand finished datagrams to the
// wire: no segmentation or checksum offload on the underlay (so a
// super-packet is cut into datagrams, each with its inner checksums
// computed, before it leaves), nor on the TUN.
func wireOffloadsOff(t *testing.T, l *Lab, i int) {
	t.Helper()
	nsRun(t, l, i, "ethtool", "-K", "eth0", "tx", "off", "tso", "off", "gso", "off", "tx-udp-segmentation", "off",
		"tx-udp_tnl-segmentation", "off", "tx-udp_tnl-csum-segmentation", "off", "tx-gso-list", "off")
	nsRun(t, l, i, "ethtool", "-K", "udp0", "tx", "off", "tso", "off", "gso", "off", "tx-udp-segmentation", "off")
}

// TestE2EFastPathOnWire captures, on the receiver's underlay, what the
// sender's kernel path puts on the wire while TCP (byte-exact) and UDP
// flow, with the sender's offloads off so that every datagram is final:
// each datagram to port 8285 carries exactly one whole IPv4 packet (inner
// total length = UDP payload length) with valid header and TCP/UDP
// checksums, and the outer UDP checksum is 0 or valid. Most datagrams must
// be kernel-made (outer checksum 0, which weft's socket never sends) and
// the sender's kernel counters must have moved. The same capture with the
// sender at -fast-path=off is the control: userspace datagrams only, the
// same properties.
func TestE2EFastPathOnWire(t *testing.T) {
	t.Parallel()
	requireEthtool(t)
	l := newE2ELab(t, Options{Nodes: 2})
	startAll(t, l)
	waitMesh(t, l)
	const sender, receiver = 0, 1
	requireFastPath(t, l, receiver)
	waitPeerPath(t, l, sender, subnetOf(t, l, receiver), status.PathKernel, 10*time.Second)
	wireOffloadsOff(t, l, sender)
	// The capture sees what arrives after GRO: none, as a veth has by
	// default, so that it sees the datagrams as they crossed the wire.
	nsRun(t, l, receiver, "ethtool", "-K", "eth0", "gro", "off")

	for _, mode := range []string{"kernel", "userspace"} {
		if mode == "userspace" {
			if code, err := l.StopWeft(sender); err != nil || code != 0 {
				t.Fatalf("stop n%d: exit %d, %v", sender, code, err)
			}
			if err := l.StartWeft(sender, "-fast-path=off"); err != nil {
				t.Fatal(err)
			}
			if err := l.WaitReady(sender, readyTimeout); err != nil {
				t.Fatal(err)
			}
			waitMesh(t, l)
			wireOffloadsOff(t, l, sender) // udp0 is new
		} else {
			requireFastPath(t, l, sender)
		}
		before := mustStatus(t, l, sender).Counters
		st := captureTraffic(t, l, sender, receiver)
		after := mustStatus(t, l, sender).Counters
		k := kernelTraffic(&Status{Counters: after})
		kb := kernelTraffic(&Status{Counters: before})
		t.Logf("%s sender: %d datagrams from n%d captured (%d kernel-made, %d userspace-made), inner TCP %d, UDP %d, other %d, fragments %d; capture drops %d; sender's kernel path tx +%d packets +%d B, userspace tx +%d packets",
			mode, st.datagrams, sender, st.kernelMade, st.userMade, st.tcp, st.udp, st.other, st.fragments, st.drops,
			k.TxPackets-kb.TxPackets, k.TxBytes-kb.TxBytes,
			after.Paths[status.PathUserspace].TxPackets-before.Paths[status.PathUserspace].TxPackets)
		for _, p := range st.problems {
			t.Errorf("%s sender: %s", mode, p)
		}
		if st.bad > len(st.problems) {
			t.Errorf("%s sender: %d bad datagrams in all", mode, st.bad)
		}
		if st.tcp < 1000 || st.udp < 500 {
			t.Errorf("%s sender: captured only %d TCP and %d UDP inner packets", mode, st.tcp, st.udp)
		}
		switch mode {
		case "kernel":
			if k.TxPackets == kb.TxPackets {
				t.Errorf("the sender's kernel path counters did not move: %+v -> %+v", kb, k)
			}
			if st.kernelMade*10 < st.datagrams*9 {
				t.Errorf("only %d of %d captured datagrams are kernel-made (outer UDP checksum 0)", st.kernelMade, st.datagrams)
			}
		case "userspace":
			if st.kernelMade != 0 || k != kb {
				t.Errorf("with -fast-path=off: %d datagrams with outer checksum 0, kernel counters %+v -> %+v", st.kernelMade, kb, k)
			}
		}
	}
}

// wireStats is what a capture saw.
type wireStats struct {
	datagrams, kernelMade, userMade int
	tcp, udp, other, fragments      int
	bad                             int
	problems                        []string // the first few
	drops                           uint32   // the capture socket's own
}

// captureTraffic captures on the receiver's eth0 while sender moves an
// 8 MiB TCP transfer (byte-exact) and 2,000 UDP datagrams of various sizes
// to receiver's pod address.
func captureTraffic(t *testing.T, l *Lab, sender, receiver int) wireStats {
	t.Helper()
	c, err := startCapture(l, receiver, l.Node(sender).Addr, l.Node(receiver).Addr)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	r, err := l.Transfer(ctx, sender, receiver, 8<<20)
	if err != nil || !r.Match() {
		c.stopCapture()
		t.Fatalf("transfer n%d -> n%d: %v", sender, receiver, err)
	}
	sent, got, err := udpBurst(l, sender, receiver, 2000)
	if err != nil {
		c.stopCapture()
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond) // the last datagrams
	st := c.stopCapture()
	t.Logf("TCP %d bytes byte-exact (%.2f Gb/s); UDP %d datagrams sent, %d received", r.Bytes, r.Gbps(), sent, got)
	// What crossed the wire is what is checked; the receiving socket may
	// overflow on a loaded machine (a CI run saw 1762 of 2000 arrive,
	// with all 2000 on the wire), so it only has to get some.
	if st.udp*100 < sent*95 || got == 0 {
		t.Errorf("UDP: %d of %d datagrams on the wire, %d received", st.udp, sent, got)
	}
	return st
}

// udpBurst sends n UDP datagrams of cycling sizes (1 byte to the largest
// that fits the tunnel's MTU of 1472) from sender's pod address to a
// listener on receiver's pod address, and counts what arrives.
func udpBurst(l *Lab, sender, receiver, n int) (sent, got int, err error) {
	var ln, conn *net.UDPConn
	if err := inNetns(l.nodes[receiver].ns, func() (err error) {
		ln, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(l.Pod(receiver).Addr(), 0)))
		return err
	}); err != nil {
		return 0, 0, err
	}
	defer ln.Close()
	_ = ln.SetReadBuffer(4 << 20) // fewer drops on a loaded machine; capped by rmem_max
	if err := inNetns(l.nodes[sender].ns, func() (err error) {
		conn, err = net.DialUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(l.Pod(sender).Addr(), 0)), ln.LocalAddr().(*net.UDPAddr))
		return err
	}); err != nil {
		return 0, 0, err
	}
	defer conn.Close()
	var received atomic.Int64
	go func() {
		buf := make([]byte, 2048)
		for {
			if _, err := ln.Read(buf); err != nil {
				return
			}
			received.Add(1)
		}
	}()
	sizes := []int{1, 17, 100, 512, 999, 1200, 1443, 1444}
	buf := make([]byte, 1444)
	for i := range buf {
		buf[i] = byte(i * 7)
	}
	for i := range n {
		if _, err := conn.Write(buf[:sizes[i%len(sizes)]]); err != nil {
			return sent, int(received.Load()), fmt.Errorf("udp send %d: %w", i, err)
		}
		sent++
		if i%50 == 49 {
			time.Sleep(2 * time.Millisecond) // paced: the socket buffers are not what is tested
		}
	}
	deadline := time.Now().Add(2 * time.Second)
	for int(received.Load()) < sent && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	return sent, int(received.Load()), nil
}

// capture is an AF_PACKET socket on a node's eth0 that checks every
// incoming datagram from one address to port 8285 as it arrives.
type capture struct {
	fd       int
	from, to netip.Addr
	stop     atomic.Bool
	done     chan struct{}
	st       wireStats
}

func startCapture(l *Lab, i int, from, to netip.Addr) (*capture, error) {
	c := &capture{from: from, to: to, done: make(chan struct{})}
	err := inNetns(l.nodes[i].ns, func() error {
		ifi, err := net.InterfaceByName("eth0")
		if err != nil {
			return err
		}
		// ETH_P_ALL: a tap of every protocol sees a packet before tc
		// ingress (where weft_decap takes it away); one bound to ETH_P_IP
		// only after.
		proto := int(htons(unix.ETH_P_ALL))
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, proto)
		if err != nil {
			return fmt.Errorf("AF_PACKET socket: %w", err)
		}
		c.fd = fd
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifi.Index}); err != nil {
			unix.Close(fd)
			return fmt.Errorf("bind AF_PACKET to eth0: %w", err)
		}
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 64<<20)
		_ = unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_AUXDATA, 1)
		return unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Usec: 100000})
	})
	if err != nil {
		return nil, fmt.Errorf("capture in n%d: %w", i, err)
	}
	go c.run()
	return c, nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

func (c *capture) run() {
	defer close(c.done)
	buf := make([]byte, 1<<16)
	oob := make([]byte, 256)
	for {
		// Once stopped, what is still queued is read too: on a loaded
		// machine this loop can trail the wire by more than the wait
		// before the stop (a CI run lost all 2000 UDP datagrams so).
		flags := unix.MSG_TRUNC
		stopping := c.stop.Load()
		if stopping {
			flags |= unix.MSG_DONTWAIT
		}
		n, oobn, _, from, err := unix.Recvmsg(c.fd, buf, oob, flags)
		if err != nil {
			if errors.Is(err, unix.EAGAIN) && stopping {
				return
			}
			if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
				continue
			}
			c.problem(fmt.Sprintf("capture: %v", err))
			return
		}
		if ll, ok := from.(*unix.SockaddrLinklayer); !ok || ll.Pkttype == unix.PACKET_OUTGOING || ll.Protocol != htons(unix.ETH_P_IP) {
			continue
		}
		p := buf[:min(n, len(buf))]
		if len(p) < 28 || p[0]>>4 != 4 || p[9] != unix.IPPROTO_UDP {
			continue
		}
		hl := int(p[0]&0x0f) * 4
		if len(p) < hl+8 || netip.AddrFrom4([4]byte(p[12:16])) != c.from || binary.BigEndian.Uint16(p[hl+2:]) != 8285 {
			continue
		}
		var auxStatus uint32 // tpacket_auxdata's tp_status
		if msgs, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil {
			for _, m := range msgs {
				if m.Header.Level == unix.SOL_PACKET && m.Header.Type == unix.PACKET_AUXDATA && len(m.Data) >= 4 {
					auxStatus = binary.NativeEndian.Uint32(m.Data)
				}
			}
		}
		c.check(p, n, auxStatus)
	}
}

func (c *capture) problem(s string) {
	c.st.bad++
	if len(c.st.problems) < 10 {
		c.st.problems = append(c.st.problems, s)
	}
}

// check records one datagram.
func (c *capture) check(p []byte, wireLen int, auxStatus uint32) {
	c.st.datagrams++
	if wireLen > len(p) {
		c.problem(fmt.Sprintf("datagram of %d bytes, more than a capture buffer: a GSO packet reached the wire", wireLen))
		return
	}
	v := checkDatagram(p, c.to)
	if v.kernelMade {
		c.st.kernelMade++
	} else {
		c.st.userMade++
	}
	switch v.proto {
	case unix.IPPROTO_TCP:
		c.st.tcp++
	case unix.IPPROTO_UDP:
		c.st.udp++
	default:
		c.st.other++
	}
	if v.fragment {
		c.st.fragments++
	}
	if v.problem != "" {
		note := ""
		if auxStatus&unix.TP_STATUS_CSUMNOTREADY != 0 {
			note = " (the kernel marks its checksum not ready: an offloaded checksum was never finished)"
		}
		c.problem(fmt.Sprintf("%s%s: % x", v.problem, note, p[:min(len(p), 64)]))
	}
}

// stopCapture ends the capture and returns what it saw.
func (c *capture) stopCapture() wireStats {
	c.stop.Store(true)
	<-c.done
	if s, err := unix.GetsockoptTpacketStats(c.fd, unix.SOL_PACKET, unix.PACKET_STATISTICS); err == nil {
		c.st.drops = s.Drops
	}
	unix.Close(c.fd)
	return c.st
}

// datagramVerdict is what checkDatagram found in one captured datagram.
type datagramVerdict struct {
	kernelMade bool  // outer UDP checksum 0: weft's socket always sends one
	proto      uint8 // the inner packet's protocol
	fragment   bool  // the inner packet is an IP fragment (no L4 check)
	problem    string
}

// checkDatagram checks a datagram as it was on the wire (from its outer
// IPv4 header): outer header and UDP length consistent, outer checksums
// valid (UDP's may be 0), to dst, carrying exactly one whole inner IPv4
// packet with a valid header checksum and, unless it is a fragment, a
// valid TCP or UDP checksum.
func checkDatagram(p []byte, dst netip.Addr) datagramVerdict {
	var v datagramVerdict
	bad := func(f string, a ...any) datagramVerdict { v.problem = fmt.Sprintf(f, a...); return v }
	if len(p) < 20 || p[0]>>4 != 4 {
		return bad("not IPv4")
	}
	hl := int(p[0]&0x0f) * 4
	if hl < 20 || len(p) < hl+8 {
		return bad("outer header length %d in %d bytes", hl, len(p))
	}
	if tot := int(binary.BigEndian.Uint16(p[2:])); tot != len(p) {
		return bad("outer total length %d, datagram %d bytes", tot, len(p))
	}
	if ipChecksum(p[:hl]) != 0 {
		return bad("outer IPv4 header checksum wrong")
	}
	if d := netip.AddrFrom4([4]byte(p[16:20])); d != dst {
		return bad("outer destination %v, want %v", d, dst)
	}
	u := p[hl:]
	if ul := int(binary.BigEndian.Uint16(u[4:])); ul != len(u) {
		return bad("outer UDP length %d, %d bytes after the IP header", ul, len(u))
	}
	if binary.BigEndian.Uint16(u[6:]) == 0 {
		v.kernelMade = true
	} else if l4Checksum(p[12:16], p[16:20], unix.IPPROTO_UDP, u) != 0 {
		return bad("outer UDP checksum wrong")
	}
	in := u[8:]
	if len(in) < 20 || in[0]>>4 != 4 {
		return bad("payload of %d bytes is not an IPv4 packet", len(in))
	}
	ihl := int(in[0]&0x0f) * 4
	v.proto = in[9]
	if tot := int(binary.BigEndian.Uint16(in[2:])); tot != len(in) {
		return bad("inner total length %d, UDP payload %d bytes: not exactly one whole packet", tot, len(in))
	}
	if ihl < 20 || ihl > len(in) {
		return bad("inner header length %d", ihl)
	}
	if ipChecksum(in[:ihl]) != 0 {
		return bad("inner IPv4 header checksum wrong")
	}
	if binary.BigEndian.Uint16(in[6:])&0x3fff != 0 {
		v.fragment = true
		return v
	}
	seg := in[ihl:]
	switch v.proto {
	case unix.IPPROTO_TCP:
		if len(seg) < 20 {
			return bad("inner TCP segment of %d bytes", len(seg))
		}
		if l4Checksum(in[12:16], in[16:20], unix.IPPROTO_TCP, seg) != 0 {
			return bad("inner TCP checksum wrong (%d-byte segment)", len(seg))
		}
	case unix.IPPROTO_UDP:
		if len(seg) < 8 || int(binary.BigEndian.Uint16(seg[4:])) != len(seg) {
			return bad("inner UDP length wrong (%d bytes)", len(seg))
		}
		if binary.BigEndian.Uint16(seg[6:]) == 0 {
			return bad("inner UDP datagram without checksum")
		}
		if l4Checksum(in[12:16], in[16:20], unix.IPPROTO_UDP, seg) != 0 {
			return bad("inner UDP checksum wrong (%d-byte datagram)", len(seg))
		}
	}
	return v
}

// l4Checksum is the Internet checksum over the IPv4 pseudo-header and seg:
// 0 when seg's checksum field is right.
func l4Checksum(src, dst []byte, proto uint8, seg []byte) uint16 {
	var sum uint32
	add := func(b []byte) {
		for i := 0; i+1 < len(b); i += 2 {
			sum += uint32(binary.BigEndian.Uint16(b[i:]))
		}
		if len(b)%2 == 1 {
			sum += uint32(b[len(b)-1]) << 8
		}
	}
	add(src)
	add(dst)
	sum += uint32(proto) + uint32(len(seg))
	add(seg)
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// TestCheckDatagram: the capture's verdicts on made-up datagrams.
func TestCheckDatagram(t *testing.T) {
	a, b := netip.MustParseAddr("198.18.1.10"), netip.MustParseAddr("198.18.1.11")
	pa, pb := netip.MustParseAddr("198.19.1.2"), netip.MustParseAddr("198.19.2.3")
	withL4Sum := func(pkt []byte, off int) []byte {
		binary.BigEndian.PutUint16(pkt[20+off:], 0)
		binary.BigEndian.PutUint16(pkt[20+off:], l4Checksum(pkt[12:16], pkt[16:20], pkt[9], pkt[20:]))
		return pkt
	}
	tcpSeg := make([]byte, 20+100)
	tcpSeg[12] = 5 << 4
	innerTCP := withL4Sum(ipv4(pa, pb, 64, 6, tcpSeg), 16)
	innerUDP := withL4Sum(ipv4(pa, pb, 64, 17, udp(1000, 2000, []byte("hello"))), 6)
	outer := func(inner []byte, sum bool) []byte {
		p := ipv4(a, b, 64, 17, udp(8285, 8285, inner))
		if sum {
			withL4Sum(p, 6)
		}
		return p
	}
	spoil := func(p []byte, off int) []byte { p = slices.Clone(p); p[off] ^= 0x40; return p }
	for _, tc := range []struct {
		name    string
		p       []byte
		kernel  bool
		problem string
	}{
		{"kernel-made TCP", outer(innerTCP, false), true, ""},
		{"userspace TCP", outer(innerTCP, true), false, ""},
		{"kernel-made UDP", outer(innerUDP, false), true, ""},
		{"bad outer UDP checksum", spoil(outer(innerUDP, true), 27), false, "outer UDP checksum wrong"},
		{"bad inner TCP checksum", spoil(outer(innerTCP, false), 28+20+16), true, "inner TCP checksum wrong"},
		{"bad inner UDP checksum", spoil(outer(innerUDP, false), 28+20+6), true, "inner UDP checksum wrong"},
		{"bad inner header checksum", spoil(outer(innerUDP, false), 28+10), true, "inner IPv4 header checksum wrong"},
		{"inner UDP without checksum", outer(ipv4(pa, pb, 64, 17, udp(1, 2, []byte("x"))), false), true, "inner UDP datagram without checksum"},
		{"two packets in one datagram", outer(append(slices.Clone(innerUDP), innerUDP...), false), true, "inner total length"},
	} {
		v := checkDatagram(tc.p, b)
		if v.problem == "" && tc.problem == "" {
			if v.kernelMade != tc.kernel {
				t.Errorf("%s: kernel-made %v, want %v", tc.name, v.kernelMade, tc.kernel)
			}
			continue
		}
		if tc.problem == "" || !strings.HasPrefix(v.problem, tc.problem) {
			t.Errorf("%s: problem %q, want %q", tc.name, v.problem, tc.problem)
		}
	}
}

// startWithout starts weft on node i through setpriv, without CAP_BPF and
// CAP_SYS_ADMIN in its bounding and inheritable sets (so neither is
// effective either): what a unit without them in CapabilityBoundingSet gets.
func startWithout(t *testing.T, l *Lab, i int, extraArgs ...string) {
	t.Helper()
	args := append([]string{"--bounding-set=-bpf,-sys_admin", "--inh-caps=-bpf,-sys_admin", "--", weft(t)}, l.WeftArgs(i)...)
	if err := l.StartDaemon(i, "setpriv", append(args, extraArgs...), nil); err != nil {
		t.Fatal(err)
	}
}

// capEff is the effective capability set of pid.
func capEff(t *testing.T, pid int) uint64 {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			n, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatalf("no CapEff in /proc/%d/status", pid)
	return 0
}

// TestE2EFastPathFallback: a node without CAP_BPF (nor CAP_SYS_ADMIN)
// under -fast-path=auto becomes ready on the userspace path alone, says why
// naming CAP_BPF, does not advertise, and exchanges traffic byte-exact with
// a fast-path peer (which sends it finished datagrams). With -fast-path=on
// the same node exits 1 at once, naming the flag and CAP_BPF.
func TestE2EFastPathFallback(t *testing.T) {
	t.Parallel()
	requireSetpriv(t)
	l := newE2ELab(t, Options{Nodes: 2})
	if err := l.StartWeft(0); err != nil {
		t.Fatal(err)
	}
	startWithout(t, l, 1)
	waitAllReady(t, l)
	waitMesh(t, l)
	const bpfBit, sysAdminBit = 1 << unix.CAP_BPF, 1 << unix.CAP_SYS_ADMIN
	if c := capEff(t, weftPID(t, l, 1)); c&(bpfBit|sysAdminBit) != 0 || c&(1<<unix.CAP_NET_ADMIN) == 0 {
		t.Fatalf("n1 weft runs with CapEff %#x: want CAP_NET_ADMIN without CAP_BPF and CAP_SYS_ADMIN", c)
	}
	sub0, sub1 := subnetOf(t, l, 0), subnetOf(t, l, 1)
	requireFastPath(t, l, 0)
	_, fp := fastPathOf(t, l, 1)
	if fp.Running || fp.Mode != "auto" || !strings.Contains(fp.Reason, "CAP_BPF") {
		t.Errorf("n1 without CAP_BPF: fastPath %+v, want not running, mode auto, a reason naming CAP_BPF", fp)
	}
	t.Logf("n1 without CAP_BPF: fastPath reason %q", fp.Reason)
	if v := leaseValue(t, l, sub1); strings.Contains(v, "WeftDecap") {
		t.Errorf("n1 runs no fast path but its lease advertises: %s", v)
	}
	// The userspace path alone caps the TUN's super-packets at one UDP GSO
	// message (44 segments of 1472 bytes); with the fast path they stay
	// uncapped (TestE2EThreeNodes).
	if out, err := l.Command(t.Context(), 1, "ip", "-d", "link", "show", "udp0").CombinedOutput(); err != nil ||
		!strings.Contains(string(out), "gso_max_segs 44 ") {
		t.Errorf("n1 (userspace path only) udp0 without gso_max_segs 44 (%v):\n%s", err, out)
	}
	if v := leaseValue(t, l, sub0); !strings.Contains(v, kernelDecapAdvert) {
		t.Errorf("n0 runs the fast path but its lease does not advertise: %s", v)
	}
	waitPeerPath(t, l, 1, sub0, status.PathUserspace, 5*time.Second)
	// Give n0's watch the time to have seen n1's lease as it is.
	waitPeerPath(t, l, 0, sub1, status.PathUserspace, 5*time.Second)
	for _, line := range strings.Split(l.Log(1), "\n") {
		if strings.Contains(line, "fast path") {
			t.Logf("n1 log: %s", line)
		}
	}

	const size = 4 << 20
	before := kernelTraffic(mustStatus(t, l, 0))
	for _, pair := range [][2]int{{0, 1}, {1, 0}} {
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		r, err := l.Transfer(ctx, pair[0], pair[1], size)
		cancel()
		if err != nil || !r.Match() || r.Bytes != size {
			t.Fatalf("transfer n%d -> n%d: %v", pair[0], pair[1], err)
		}
		t.Logf("n%d -> n%d: %d bytes byte-exact, %.2f Gb/s", pair[0], pair[1], r.Bytes, r.Gbps())
	}
	after := kernelTraffic(mustStatus(t, l, 0))
	if after.TxPackets != before.TxPackets {
		t.Errorf("n0's kernel encapsulated %d packets toward n1, which has no fast path", after.TxPackets-before.TxPackets)
	}
	// n1's UDP GSO super-datagrams cross the veth whole and are left to
	// n0's socket (not one packet each): only small ones are decapsulated.
	t.Logf("n0's kernel path during both transfers: tx +%d packets, rx +%d packets %d B", after.TxPackets-before.TxPackets,
		after.RxPackets-before.RxPackets, after.RxBytes-before.RxBytes)
	if s := mustStatus(t, l, 1); kernelTraffic(s) != (status.Traffic{}) {
		t.Errorf("n1 without a fast path has kernel counters %+v", s.Counters.Paths)
	}

	// -fast-path=on: the same node refuses to run without it.
	if code, err := l.StopWeft(1); err != nil || code != 0 {
		t.Fatalf("stop n1: exit %d, %v", code, err)
	}
	logAt := len(l.Log(1))
	start := time.Now()
	startWithout(t, l, 1, "-fast-path=on")
	code, err := l.WaitExit(1, 10*time.Second)
	if err != nil {
		t.Fatalf("-fast-path=on without CAP_BPF: %v\n%s", err, l.Log(1)[logAt:])
	}
	took := time.Since(start)
	var named string
	for line := range strings.Lines(l.Log(1)[logAt:]) {
		if strings.Contains(line, "-fast-path=on") && strings.Contains(line, "CAP_BPF") {
			named = strings.TrimSpace(line)
		}
	}
	if code != 1 || named == "" || took > 5*time.Second {
		t.Errorf("-fast-path=on without CAP_BPF: exit %d after %v, want 1 within 5 s with a line naming -fast-path=on and CAP_BPF; log:\n%s",
			code, ms(took), l.Log(1)[logAt:])
	}
	t.Logf("-fast-path=on without CAP_BPF: exit %d after %v: %s", code, ms(took), named)
	// The peer is undisturbed.
	if v := leaseValue(t, l, sub1); strings.Contains(v, "WeftDecap") {
		t.Errorf("n1's failed -fast-path=on start left an advertisement: %s", v)
	}
}

func requireSetpriv(t *testing.T) { netnstest.RequireTool(t, "setpriv", "util-linux") }

// weftFilters counts node i's tc filters of weft's names on dev at parent
// (0 when dev is gone).
func weftFilters(t *testing.T, l *Lab, i int, dev string, parent uint32) map[string]int {
	t.Helper()
	h := l.nodes[i].handle
	lk, err := h.LinkByName(dev)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		t.Fatalf("n%d: find %s: %v", i, dev, err)
	}
	fs, err := h.FilterList(lk, parent)
	if err != nil {
		t.Fatalf("n%d: list filters of %s: %v", i, dev, err)
	}
	out := map[string]int{}
	for _, f := range fs {
		if b, ok := f.(*netlink.BpfFilter); ok && strings.HasPrefix(b.Name, "weft") {
			out[b.Name]++
			if b.Priority != 0xc0de || !b.DirectAction {
				t.Errorf("n%d %s filter %s at priority %#x, direct action %v; want 0xc0de, direct action", i, dev, b.Name, b.Priority, b.DirectAction)
			}
		}
	}
	return out
}

func hasClsact(t *testing.T, l *Lab, i int, dev string) bool {
	t.Helper()
	lk, err := l.nodes[i].handle.LinkByName(dev)
	if err != nil {
		return false
	}
	qs, err := l.nodes[i].handle.QdiscList(lk)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range qs {
		if q.Type() == "clsact" {
			return true
		}
	}
	return false
}

// tcxPrograms names the programs attached by TCX to node i's dev at at
// (nil when dev is gone).
func tcxPrograms(t *testing.T, l *Lab, i int, dev string, at ebpf.AttachType) []string {
	t.Helper()
	lk, err := l.nodes[i].handle.LinkByName(dev)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil // a device that is gone has no programs
		}
		t.Fatalf("n%d: find %s: %v", i, dev, err)
	}
	var names []string
	err = inNetns(l.nodes[i].ns, func() error {
		// The ifindex is resolved in the calling thread's namespace.
		r, err := link.QueryPrograms(link.QueryOptions{Target: lk.Attrs().Index, Attach: at})
		if err != nil {
			return fmt.Errorf("query %s programs of %s: %w", at, dev, err)
		}
		for _, p := range r.Programs {
			prog, err := ebpf.NewProgramFromID(p.ID)
			if err != nil {
				return fmt.Errorf("program %d: %w", p.ID, err)
			}
			info, err := prog.Info()
			prog.Close()
			if err != nil {
				return fmt.Errorf("program %d info: %w", p.ID, err)
			}
			names = append(names, info.Name)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("n%d: %v", i, err)
	}
	return names
}

func countOf(names []string, name string) int {
	n := 0
	for _, s := range names {
		if s == name {
			n++
		}
	}
	return n
}

// TestE2EFastPathRestart: kill -9 and clean stops in both attach modes.
// With -fast-path-attach=clsact, a start puts exactly one weft_encap filter
// on udp0's egress and one weft_decap on eth0's ingress; kill -9 leaves the
// eth0 filter behind, and the next start replaces it (still exactly one);
// traffic flows; a clean stop leaves no weft filter. With TCX (the
// default), kill -9 takes the programs with the process, a restart attaches
// exactly one of each again, and a clean stop leaves none.
func TestE2EFastPathRestart(t *testing.T) {
	t.Parallel()
	l := newE2ELab(t, Options{Nodes: 2})
	if err := l.StartWeft(1); err != nil {
		t.Fatal(err)
	}
	if err := l.WaitReady(1, readyTimeout); err != nil {
		t.Fatal(err)
	}
	const size = 4 << 20
	traffic := func(what string) {
		t.Helper()
		waitMesh(t, l)
		waitPeerPath(t, l, 0, subnetOf(t, l, 1), status.PathKernel, 10*time.Second)
		waitPeerPath(t, l, 1, subnetOf(t, l, 0), status.PathKernel, 10*time.Second)
		before := kernelTraffic(mustStatus(t, l, 0))
		for _, pair := range [][2]int{{0, 1}, {1, 0}} {
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			r, err := l.Transfer(ctx, pair[0], pair[1], size)
			cancel()
			if err != nil || !r.Match() {
				t.Fatalf("%s: transfer n%d -> n%d: %v", what, pair[0], pair[1], err)
			}
		}
		after := kernelTraffic(mustStatus(t, l, 0))
		t.Logf("%s: 2 × %d bytes byte-exact; n0's kernel path tx +%d B, rx +%d B", what, size, after.TxBytes-before.TxBytes, after.RxBytes-before.RxBytes)
		if after.TxBytes-before.TxBytes < size*9/10 || after.RxBytes-before.RxBytes < size*9/10 {
			t.Errorf("%s: n0's kernel path did not carry the transfers: %+v -> %+v", what, before, after)
		}
	}
	start := func(what string, args ...string) {
		t.Helper()
		if err := l.StartWeft(0, args...); err != nil {
			t.Fatal(err)
		}
		if err := l.WaitReady(0, readyTimeout); err != nil {
			t.Fatal(err)
		}
		_, fp := fastPathOf(t, l, 0)
		want := "tcx"
		if len(args) > 0 {
			want = "clsact"
		}
		if !fp.Running || fp.Attach != want {
			t.Fatalf("%s: n0 fastPath %+v, want running by %s", what, fp, want)
		}
	}

	// clsact.
	clsact := func(what string, encap, decap int) {
		t.Helper()
		e := weftFilters(t, l, 0, "udp0", netlink.HANDLE_MIN_EGRESS)
		d := weftFilters(t, l, 0, "eth0", netlink.HANDLE_MIN_INGRESS)
		t.Logf("%s: udp0 egress %v, eth0 ingress %v", what, e, d)
		if e["weft_encap"] != encap || len(e) > min(encap, 1) {
			t.Errorf("%s: udp0 egress filters %v, want %d weft_encap", what, e, encap)
		}
		if d["weft_decap"] != decap || len(d) > min(decap, 1) {
			t.Errorf("%s: eth0 ingress filters %v, want %d weft_decap", what, d, decap)
		}
		// weft never has filters elsewhere.
		for dev, parent := range map[string]uint32{"udp0": netlink.HANDLE_MIN_INGRESS, "eth0": netlink.HANDLE_MIN_EGRESS} {
			if f := weftFilters(t, l, 0, dev, parent); len(f) != 0 {
				t.Errorf("%s: weft filters on the other side of %s: %v", what, dev, f)
			}
		}
	}
	start("clsact start", "-fast-path-attach=clsact")
	clsact("clsact after start", 1, 1)
	if err := l.KillWeft(0); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 2*time.Second, func() bool { _, err := nsOut(l, 0, "ip", "link", "show", "udp0"); return err != nil })
	clsact("clsact after kill -9", 0, 1) // udp0 went with the process; eth0's filter stays
	start("clsact restart", "-fast-path-attach=clsact")
	clsact("clsact after kill -9 and restart", 1, 1)
	traffic("clsact after kill -9 and restart")
	if code, err := l.StopWeft(0); err != nil || code != 0 {
		t.Fatalf("stop n0: exit %d, %v", code, err)
	}
	clsact("clsact after a clean stop", 0, 0)
	t.Logf("clsact qdisc on eth0 after the clean stop: %v", hasClsact(t, l, 0, "eth0"))

	// TCX.
	tcx := func(what string, want int) {
		t.Helper()
		e := tcxPrograms(t, l, 0, "udp0", ebpf.AttachTCXEgress)
		d := tcxPrograms(t, l, 0, "eth0", ebpf.AttachTCXIngress)
		t.Logf("%s: udp0 tcx egress %v, eth0 tcx ingress %v", what, e, d)
		if countOf(e, "weft_encap") != want || countOf(d, "weft_decap") != want || len(e) != want || len(d) != want {
			t.Errorf("%s: udp0 tcx egress %v, eth0 tcx ingress %v; want %d weft_encap and %d weft_decap", what, e, d, want, want)
		}
		if f := weftFilters(t, l, 0, "eth0", netlink.HANDLE_MIN_INGRESS); len(f) != 0 {
			t.Errorf("%s: clsact filters on eth0 with TCX: %v", what, f)
		}
	}
	start("tcx start")
	tcx("tcx after start", 1)
	if err := l.KillWeft(0); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 2*time.Second, func() bool { return len(tcxPrograms(t, l, 0, "eth0", ebpf.AttachTCXIngress)) == 0 })
	tcx("tcx after kill -9", 0)
	start("tcx restart")
	tcx("tcx after kill -9 and restart", 1)
	traffic("tcx after kill -9 and restart")
	if code, err := l.StopWeft(0); err != nil || code != 0 {
		t.Fatalf("stop n0: exit %d, %v", code, err)
	}
	tcx("tcx after a clean stop", 0)
}

// TestE2EFastPathStaleClsactFilter: kill -9 of a daemon attached by clsact
// leaves its weft_decap filter on eth0, and a restart that does not attach
// by clsact must still remove it: with -fast-path=off (or auto falling
// back) the stale filter would take every well-formed datagram and
// redirect it to the dead TUN's ifindex, where it is dropped; with TCX it
// would sit behind the new program as a second weft_decap. (Every start
// removes such leftovers: fastpath.RemoveLeftovers.)
func TestE2EFastPathStaleClsactFilter(t *testing.T) {
	t.Parallel()
	for _, next := range []string{"-fast-path=off", "-fast-path-attach=auto"} {
		t.Run(next, func(t *testing.T) {
			t.Parallel()
			l := newE2ELab(t, Options{Nodes: 2})
			if err := l.StartWeft(1); err != nil {
				t.Fatal(err)
			}
			if err := l.StartWeft(0, "-fast-path-attach=clsact"); err != nil {
				t.Fatal(err)
			}
			waitAllReady(t, l)
			waitMesh(t, l)
			if err := l.KillWeft(0); err != nil {
				t.Fatal(err)
			}
			if err := l.StartWeft(0, next); err != nil {
				t.Fatal(err)
			}
			if err := l.WaitReady(0, readyTimeout); err != nil {
				t.Fatal(err)
			}
			waitMesh(t, l)
			if f := weftFilters(t, l, 0, "eth0", netlink.HANDLE_MIN_INGRESS); len(f) != 0 {
				t.Errorf("after kill -9 of a clsact run and a restart with %s: weft filters on eth0 ingress %v, want none", next, f)
			}
			pingPairs(t, l, []int{0, 1}, 3)
		})
	}
}

// TestE2EFastPathSuperPackets: on an underlay that cannot segment UDP tunnel
// packets (a NIC without tx-udp_tnl-segmentation, emulated with ethtool
// before weft starts), weft leaves TCP super-packets to the userspace
// path's UDP GSO and keeps the rest (the ACKs) in the kernel; /status says
// so, and a transfer arrives byte-exact.
func TestE2EFastPathSuperPackets(t *testing.T) {
	t.Parallel()
	requireEthtool(t)
	l := newE2ELab(t, Options{Nodes: 2})
	for i := range 2 {
		nsRun(t, l, i, "ethtool", "-K", "eth0", "tx-udp_tnl-segmentation", "off", "tx-udp_tnl-csum-segmentation", "off")
	}
	startAll(t, l)
	waitMesh(t, l)
	for i := range 2 {
		_, f := fastPathOf(t, l, i)
		if !f.Running || !strings.HasPrefix(f.SuperPackets, status.PathUserspace) || !strings.Contains(f.SuperPackets, "eth0") {
			t.Fatalf("n%d fast path %+v: want running, super-packets by the userspace path because of eth0", i, f)
		}
	}
	waitPeerPath(t, l, 0, subnetOf(t, l, 1), status.PathKernel, 10*time.Second)
	before := [2]*Status{mustStatus(t, l, 0), mustStatus(t, l, 1)}
	const size = 32 << 20
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	r, err := l.Transfer(ctx, 0, 1, size)
	cancel()
	if err != nil || !r.Match() || r.Bytes != size {
		t.Fatalf("transfer n0 -> n1: %v (%d bytes, match %v)", err, r.Bytes, r.Match())
	}
	after := [2]*Status{mustStatus(t, l, 0), mustStatus(t, l, 1)}
	user := after[0].Counters.Paths[status.PathUserspace].TxBytes - before[0].Counters.Paths[status.PathUserspace].TxBytes
	handed := after[0].Counters.Handoffs["super_packet"] - before[0].Counters.Handoffs["super_packet"]
	acks := kernelTraffic(after[1]).TxPackets - kernelTraffic(before[1]).TxPackets
	t.Logf("n0 -> n1: %d bytes byte-exact, %.2f Gb/s; n0's userspace path sent %d B, %d super-packets handed to it; n1's kernel path sent %d packets (ACKs)",
		r.Bytes, r.Gbps(), user, handed, acks)
	if user < size*9/10 || handed == 0 {
		t.Errorf("the userspace path sent %d B of a %d-byte transfer after %d handoffs, want almost all", user, size, handed)
	}
	if acks == 0 {
		t.Error("the receiver's ACKs did not take the kernel path")
	}
}

// TestE2EFastPathForwardedToPod: a decapsulated super-packet forwarded on
// to a pod behind a device without any offload (no UDP tunnel or TCP
// segmentation, no checksum offload: a VM's tap, say) is segmented and
// checksummed in software and arrives intact: the kernel path leaves no
// tunnel state on it that would spoil that. 32 MiB, sha256 compared.
func TestE2EFastPathForwardedToPod(t *testing.T) {
	t.Parallel()
	requireEthtool(t)
	l := newE2ELab(t, Options{Nodes: 2})
	startAll(t, l)
	waitMesh(t, l)
	requireFastPath(t, l, 1)
	waitPeerPath(t, l, 0, subnetOf(t, l, 1), status.PathKernel, 10*time.Second)
	pod := netnstest.New(t)
	sub := subnetOf(t, l, 1)
	podAddr, gw := nthHost(sub, 50), nthHost(sub, 1)
	nsRun(t, l, 1, "ip", "link", "add", "podA", "type", "veth", "peer", "name", "podB", "netns", pod.Name)
	nsRun(t, l, 1, "ip", "link", "set", "podA", "up")
	nsRun(t, l, 1, "ip", "route", "add", podAddr.String()+"/32", "dev", "podA")
	nsRun(t, l, 1, "sysctl", "-qw", "net.ipv4.conf.podA.proxy_arp=1")
	nsRun(t, l, 1, "ethtool", "-K", "podA", "tx", "off", "tso", "off", "gso", "off",
		"tx-udp_tnl-segmentation", "off", "tx-udp_tnl-csum-segmentation", "off")
	pod.LinkUp(t, "podB")
	pod.AddAddr(t, "podB", podAddr.String()+"/32")
	for _, args := range [][]string{{"route", "add", gw.String() + "/32", "dev", "podB"}, {"route", "add", "default", "via", gw.String(), "dev", "podB", "onlink"}} {
		if out, err := pod.Run("", "ip", args...); err != nil {
			t.Fatalf("ip %v in the pod: %v\n%s", args, err, out)
		}
	}
	var ln net.Listener
	if err := pod.Do(func() (err error) { ln, err = net.Listen("tcp4", podAddr.String()+":7300"); return err }); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	const size = 32 << 20
	got := make(chan [sha256.Size]byte, 1)
	go func() {
		h := sha256.New()
		if c, err := ln.Accept(); err == nil {
			_, _ = io.Copy(h, c)
			c.Close()
		}
		got <- [sha256.Size]byte(h.Sum(nil))
	}()
	payload := make([]byte, size)
	if _, err := rand.Read(payload); err != nil {
		t.Fatal(err)
	}
	before := kernelTraffic(mustStatus(t, l, 1))
	err := inNetns(l.nodes[0].ns, func() error {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: l.Pod(0).Addr().AsSlice()}, Timeout: 5 * time.Second}
		c, err := d.Dial("tcp4", podAddr.String()+":7300")
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(30 * time.Second))
		_, err = c.Write(payload)
		return err
	})
	if err != nil {
		t.Fatalf("send to the pod: %v", err)
	}
	select {
	case sum := <-got:
		if sum != sha256.Sum256(payload) {
			t.Fatal("the pod received other bytes than were sent")
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the pod did not receive the transfer within 30 s")
	}
	rx := kernelTraffic(mustStatus(t, l, 1)).RxBytes - before.RxBytes
	t.Logf("n0 -> pod behind n1 (no offloads on its device): %d bytes byte-exact; n1's kernel path received %d B", size, rx)
	if rx < size*9/10 {
		t.Errorf("n1's kernel path received %d B of a %d-byte transfer, want almost all", rx, size)
	}
}
