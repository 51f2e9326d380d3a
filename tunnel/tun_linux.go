package tunnel

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// tunBatchSize is how many packets one Read returns at most.
const tunBatchSize = 64

// TUNConfig says how to open a TUN device.
type TUNConfig struct {
	// Name is the device's name (e.g. "udp0"); it is created if missing.
	Name string
	// MTU is only reported by Device.MTU: configuring the device belongs
	// to the caller.
	MTU int
	// Offload opens the device with a virtio-net header and asks the
	// kernel for checksum and segmentation offloads (TSO4/TSO6, and
	// USO4/USO6 where the kernel has them): Read splits the kernel's
	// super-packets into MSS-sized packets with valid checksums, and Write
	// coalesces consecutive TCP segments of a flow into one super-packet.
	// If the kernel refuses, the plain device is opened instead, logged
	// and counted (see OffloadReporter).
	Offload bool
	// VerifyCoalesced makes Write check the IP and TCP checksums of each
	// segment before merging it into a super-packet, whose checksum the
	// kernel then trusts. Off, the outer UDP checksum the kernel verified
	// on receipt is relied on (segments that are not merged are always
	// checked by the kernel). On costs a checksum pass over every byte:
	// about 5 µs per 64 KB here, some 10 % of a core at 10 Gb/s.
	VerifyCoalesced bool
	// Logger receives the one-off notices about offloads; nil discards.
	Logger *slog.Logger

	// setOffload replaces the TUNSETOFFLOAD ioctl in tests.
	setOffload func(fd, flags int) error
}

// OffloadReporter is implemented by devices that can report their
// offload state. Find it by type assertion on a Device.
type OffloadReporter interface {
	Offload() OffloadState
}

// OffloadState is a snapshot of a TUN device's offloads and their
// counters.
type OffloadState struct {
	// VnetHdr: the device reads and writes a virtio-net header, and the
	// kernel accepted checksum offload and TSO4/TSO6.
	VnetHdr bool
	// USO: the kernel also hands over UDP super-packets (Linux ≥ 6.2).
	USO bool
	// Coalescing: Write sends runs of TCP segments as super-packets. It
	// turns off for good if the kernel refuses such a write.
	Coalescing bool
	// Fallbacks counts offloads the kernel refused: at open (the device
	// then runs plain) or at run time (coalescing then stops).
	Fallbacks uint64
	// SuperReads is how many super-packets Read split, into Segments
	// packets.
	SuperReads, Segments uint64
	// SuperWrites is how many super-packets Write sent, made of Coalesced
	// packets.
	SuperWrites, Coalesced uint64
	// Discarded counts what Read dropped itself: malformed reads, GSO
	// types it does not split (TCPv6), segments too big for the buffers.
	Discarded uint64
}

// tun is a Linux TUN device driven through a raw non-blocking fd kept off
// the Go netpoller: Read polls the fd together with an eventfd that Close
// signals, then reads until EAGAIN or the batch is full.
type tun struct {
	fd   int
	evfd int // readable once Close has been called
	name string
	mtu  int
	log  *slog.Logger

	// vnet: every read and write carries a virtio-net header and the
	// offloads are on. Fixed at open.
	vnet bool
	uso  bool

	closed    atomic.Bool
	closeOnce sync.Once
	closeErr  error
	// rmu and wmu are held by Read and Write around their use of the fds
	// and of their own state below; Close takes both before closing the
	// fds, so a number is never reused under a Read or Write in flight.
	rmu, wmu sync.Mutex

	// Read state (rmu). A super-packet is read either straight into the
	// caller's buffer, when it is large enough and enough buffers remain
	// for its segments, or into rbuf; what does not fit in one Read waits
	// in seg (its payload moved to rbuf if it was in the caller's buffer).
	rvh         [virtioNetHdrLen]byte
	riov        [2]unix.Iovec
	rbuf        []byte
	seg         segmenter
	segBorrowed bool // seg's payload lies in the caller's buffer
	segHint     int  // segments in the last packet read

	// Write state (wmu).
	wvh      [virtioNetHdrLen]byte // a super-packet's header
	zvh      [virtioNetHdrLen]byte // all zero: a plain packet
	wiov     []unix.Iovec
	one      [2]unix.Iovec
	hdr      [maxHeaders]byte // a super-packet's IP and TCP headers
	coalesce atomic.Bool
	verify   bool
	writev   func(fd int, iov []unix.Iovec) error

	st offloadCounters
}

type offloadCounters struct {
	fallbacks, superReads, segments, superWrites, coalesced, discarded atomic.Uint64
}

// OpenTUN creates (or attaches to) the TUN device name in IFF_TUN|IFF_NO_PI
// mode, without offloads. It configures nothing: addresses, MTU and link
// state belong to the caller; mtu is only reported by MTU. The device
// disappears when the Device is closed, unless it was made persistent
// elsewhere.
func OpenTUN(name string, mtu int) (Device, error) {
	return OpenTUNConfig(TUNConfig{Name: name, MTU: mtu})
}

// OpenTUNConfig opens the TUN device c describes, as OpenTUN does, with
// offloads if c.Offload is set and the kernel grants them. The Device also
// implements OffloadReporter.
func OpenTUNConfig(c TUNConfig) (Device, error) {
	if c.MTU <= 0 || c.MTU > maxPacket {
		return nil, fmt.Errorf("open tun %s: invalid mtu %d", c.Name, c.MTU)
	}
	if _, err := unix.NewIfreq(c.Name); err != nil {
		return nil, fmt.Errorf("open tun %q: %w", c.Name, err)
	}
	t := &tun{name: c.Name, mtu: c.MTU, log: c.Logger, fd: -1, segHint: 1, writev: writev}
	if t.log == nil {
		t.log = slog.New(slog.DiscardHandler)
	}
	var refused error
	if c.Offload {
		refused = t.openOffload(c)
	}
	if !t.vnet {
		fd, name, err := attachTUN(c.Name, unix.IFF_TUN|unix.IFF_NO_PI, t.log)
		if err != nil {
			return nil, err
		}
		t.fd, t.name = fd, name
		if refused != nil {
			t.st.fallbacks.Add(1)
			t.log.Warn("tun offloads refused by the kernel: running without them", "tun", t.name, "err", refused)
		}
	}
	evfd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(t.fd)
		return nil, fmt.Errorf("open tun %s: eventfd: %w", t.name, err)
	}
	t.evfd = evfd
	return t, nil
}

// openOffload attaches with IFF_VNET_HDR and enables the offloads. On
// failure it closes what it opened and returns why.
func (t *tun) openOffload(c TUNConfig) error {
	fd, name, err := attachTUN(c.Name, unix.IFF_TUN|unix.IFF_NO_PI|unix.IFF_VNET_HDR, t.log)
	if err != nil {
		return err
	}
	set := c.setOffload
	if set == nil {
		set = func(fd, flags int) error { return unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, flags) }
	}
	// The header size belongs to the device and outlives us if it is
	// persistent: set it rather than assume the default.
	if err := unix.IoctlSetPointerInt(fd, unix.TUNSETVNETHDRSZ, virtioNetHdrLen); err != nil {
		unix.Close(fd)
		return fmt.Errorf("open tun %s: TUNSETVNETHDRSZ: %w", name, err)
	}
	// TSO needs checksum offload; USO is newer (Linux 6.2), so optional.
	base := tunFCsum | tunFTSO4 | tunFTSO6
	if err := set(fd, base); err != nil {
		unix.Close(fd)
		return fmt.Errorf("open tun %s: TUNSETOFFLOAD csum,tso4,tso6: %w", name, err)
	}
	t.uso = set(fd, base|tunFUSO4|tunFUSO6) == nil
	t.fd, t.name = fd, name
	t.initVnet()
	t.verify = c.VerifyCoalesced
	t.log.Info("tun offloads on", "tun", name, "tso", true, "uso", t.uso)
	return nil
}

// initVnet sets t up to read and write virtio-net headers.
func (t *tun) initVnet() {
	t.vnet = true
	t.coalesce.Store(true)
	t.rbuf = make([]byte, maxPacket+1)
	t.riov[0] = iovec(t.rvh[:])
	t.wiov = make([]unix.Iovec, 0, maxRunSegments+2)
}

// attachTUN opens /dev/net/tun (creating it if missing, see cloneDevice)
// and attaches it to the device name with flags, returning the fd and the
// kernel's name for the device.
func attachTUN(name string, flags uint16, log *slog.Logger) (int, string, error) {
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return -1, "", fmt.Errorf("open tun %q: %w", name, err)
	}
	fd, err := tunClone.open(log)
	if err != nil {
		return -1, "", fmt.Errorf("open tun %s: %w", name, err)
	}
	ifr.SetUint16(flags)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return -1, "", fmt.Errorf("open tun %s: TUNSETIFF: %w%s", name, err, attachHint(name, err))
	}
	return fd, ifr.Name(), nil
}

// Where the TUN clone device lives, and its numbers (Documentation/
// networking/tuntap.rst): character device 10:200.
const (
	tunPath  = "/dev/net/tun"
	tunMajor = 10
	tunMinor = 200
	// tunMode is the mode of the node weft creates: the kernel's own
	// (devtmpfs makes it crw------- root), not udev's 0666. weft runs as
	// root, as flanneld's containers do, and is the only user of the
	// container's /dev; 0666 would let any other user there attach to a
	// persistent TUN without an owner (TUNSETIFF checks CAP_NET_ADMIN only
	// to create one, or to attach to one owned by someone else).
	tunMode = 0o600
)

// cloneDevice opens the TUN clone device at path. A container's /dev
// (kube-flannel.yml's securityContext: not privileged, no device mounted)
// has no net/tun, though the runtime's device cgroup allows c 10:200 and
// its default capabilities include CAP_MKNOD: flanneld fails there
// (flannel-io/flannel#1267); weft creates the node the kernel would, and
// opens it.
type cloneDevice struct {
	path  string
	mknod func(path string, mode uint32, dev int) error // unix.Mknod but in tests
}

// tunClone is the real device; tests open others.
var tunClone = cloneDevice{path: tunPath, mknod: unix.Mknod}

// open opens the clone device, creating it first if it is missing (said
// at INFO). It fails with one error naming the fix when it cannot.
func (c cloneDevice) open(log *slog.Logger) (int, error) {
	fd, err := unix.Open(c.path, unix.O_RDWR|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err == nil {
		return fd, nil
	}
	if !errors.Is(err, unix.ENOENT) {
		return -1, fmt.Errorf("open %s: %w", c.path, err)
	}
	if cerr := c.create(); cerr != nil {
		fix := "mount the host's " + tunPath + " into the container (Kubernetes: a hostPath volume of type CharDevice)"
		if errors.Is(cerr, unix.EPERM) {
			fix = "give the container CAP_MKNOD (a default of containerd and Docker, not of CRI-O) or " + fix
		}
		return -1, fmt.Errorf("open %s: %w, and creating it failed (%w): %s", c.path, err, cerr, fix)
	}
	log.Info("created the missing TUN clone device", "path", c.path,
		"device", fmt.Sprintf("c %d:%d", tunMajor, tunMinor), "mode", fmt.Sprintf("%#o", tunMode))
	fd, err = unix.Open(c.path, unix.O_RDWR|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		hint := ""
		switch {
		case errors.Is(err, unix.ENODEV), errors.Is(err, unix.ENXIO):
			hint = ": the kernel has no TUN driver (CONFIG_TUN; modprobe tun on the host)"
		case errors.Is(err, unix.EPERM), errors.Is(err, unix.EACCES):
			hint = fmt.Sprintf(": the container's device cgroup does not allow c %d:%d (a runtime's default rules do), or its /dev is mounted nodev",
				tunMajor, tunMinor)
		}
		return -1, fmt.Errorf("open %s (created by weft): %w%s", c.path, err, hint)
	}
	return fd, nil
}

// create makes the clone device's node and its directory. Another process
// creating it first is no failure.
func (c cloneDevice) create() error {
	dir := filepath.Dir(c.path)
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err // *PathError: "mkdir /dev/net: read-only file system"
		}
		if err := os.Chmod(dir, 0o755); err != nil { // whatever the umask
			return err
		}
	}
	err := c.mknod(c.path, unix.S_IFCHR|tunMode, int(unix.Mkdev(tunMajor, tunMinor)))
	if errors.Is(err, unix.EEXIST) {
		return nil
	}
	if err != nil {
		return &os.PathError{Op: "mknod", Path: c.path, Err: err}
	}
	// The umask has taken bits off the mode.
	if err := unix.Chmod(c.path, tunMode); err != nil {
		return &os.PathError{Op: "chmod", Path: c.path, Err: err}
	}
	return nil
}

// attachHint names the likely cause of a refused TUNSETIFF: the two a
// restart or a migration from flanneld runs into.
func attachHint(name string, err error) string {
	switch {
	case errors.Is(err, unix.EBUSY):
		return " (another process has the device open: a flanneld or a second weft still running?)"
	case errors.Is(err, unix.EINVAL):
		if _, e := net.InterfaceByName(name); e == nil {
			return fmt.Sprintf(" (a device named %s exists and is not a TUN: delete it with `ip link del %s` or use another name)", name, name)
		}
	}
	return ""
}

// Offload implements OffloadReporter.
func (t *tun) Offload() OffloadState {
	return OffloadState{
		VnetHdr:     t.vnet,
		USO:         t.uso,
		Coalescing:  t.coalesce.Load(),
		Fallbacks:   t.st.fallbacks.Load(),
		SuperReads:  t.st.superReads.Load(),
		Segments:    t.st.segments.Load(),
		SuperWrites: t.st.superWrites.Load(),
		Coalesced:   t.st.coalesced.Load(),
		Discarded:   t.st.discarded.Load(),
	}
}

// Read implements Device.
func (t *tun) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	n, _, err := t.read(bufs, sizes, offset, true)
	return n, err
}

// TryRead is Read that returns 0 packets instead of waiting for one;
// empty reports that it found the queue empty, so more needs a wait.
func (t *tun) TryRead(bufs [][]byte, sizes []int, offset int) (n int, empty bool, err error) {
	return t.read(bufs, sizes, offset, false)
}

// WaitReadable blocks until the TUN or fd (another device's, polled
// alongside) has something to read, the TUN is closed, or timeout passes
// (negative: no timeout); it reports which of the two is ready (neither
// on a timeout).
func (t *tun) WaitReadable(fd int, timeout time.Duration) (tunReady, fdReady bool, err error) {
	fds, err := t.waitFor(unix.POLLIN, int32(fd), timeout)
	return fds[0].Revents != 0, fds[2].Revents != 0, err
}

func (t *tun) read(bufs [][]byte, sizes []int, offset int, block bool) (n int, empty bool, err error) {
	t.rmu.Lock()
	defer t.rmu.Unlock()
	if t.vnet {
		return t.readVnet(bufs, sizes, offset, block)
	}
	for {
		if t.closed.Load() {
			return 0, false, t.errClosed("read from")
		}
		// Read before polling: under load the queue is rarely empty and
		// the poll would be a wasted syscall.
		n, empty = 0, false
		for n < len(bufs) {
			r, err := unix.Read(t.fd, bufs[n][offset:])
			if err == nil {
				sizes[n] = r
				n++
				continue
			}
			if err == unix.EINTR {
				continue
			}
			if err == unix.EAGAIN {
				empty = true
				break
			}
			if n > 0 {
				return n, false, nil // the error, if lasting, recurs on the next call
			}
			return 0, false, t.ioErr("read from", err)
		}
		if n > 0 || !block {
			return n, empty, nil
		}
		if err := t.wait(unix.POLLIN); err != nil {
			return 0, false, err
		}
	}
}

// readStats are one Read's counts, added to the device's once per call.
type readStats struct {
	superReads, segments, discarded uint64
}

func (t *tun) readVnet(bufs [][]byte, sizes []int, offset int, block bool) (n int, empty bool, err error) {
	var st readStats
	defer t.addReadStats(&st)
	for {
		if t.closed.Load() {
			return 0, false, t.errClosed("read from")
		}
		n, empty = t.drain(bufs, sizes, offset, 0, &st), false
		for n < len(bufs) {
			// The header goes to its own iovec (no headroom needed); the
			// packet goes straight to the caller if a whole super-packet
			// fits there and its segments will too.
			dst, direct := t.rbuf, false
			if b := bufs[n][offset:]; len(b) >= maxPacket && len(bufs)-n >= t.segHint {
				dst, direct = b, true
			}
			t.riov[1] = iovec(dst)
			r, _, errno := unix.Syscall(unix.SYS_READV, uintptr(t.fd), uintptr(unsafe.Pointer(&t.riov[0])), 2)
			if errno == unix.EINTR {
				continue
			}
			if errno == unix.EAGAIN {
				empty = true
				break
			}
			if errno != 0 {
				if n > 0 {
					return n, false, nil // the error, if lasting, recurs on the next call
				}
				return 0, false, t.ioErr("read from", errno)
			}
			n = t.receive(bufs, sizes, offset, n, dst, direct, int(r), &st)
		}
		if n > 0 || !block {
			return n, empty && !t.seg.pending(), nil
		}
		if err := t.wait(unix.POLLIN); err != nil {
			return 0, false, err
		}
	}
}

// receive handles one read of r bytes (virtio-net header in t.rvh, packet
// in dst) and returns the new count of filled buffers.
func (t *tun) receive(bufs [][]byte, sizes []int, offset, n int, dst []byte, direct bool, r int, st *readStats) int {
	if r < virtioNetHdrLen || r-virtioNetHdrLen > len(dst) {
		st.discarded++ // a short read, or a packet truncated to the buffer
		return n
	}
	var h virtioNetHdr
	h.decode(t.rvh[:])
	pkt := dst[:r-virtioNetHdrLen]
	if h.gsoType == virtioGSONone {
		t.segHint = 1
		if h.flags&virtioNeedsCsum != 0 && !completeChecksum(&h, pkt) {
			st.discarded++
			return n
		}
		if !direct {
			out := bufs[n][offset:]
			if len(pkt) > len(out) {
				st.discarded++
				return n
			}
			copy(out, pkt)
		}
		sizes[n] = len(pkt)
		return n + 1
	}
	if !t.seg.start(&h, pkt) {
		st.discarded++
		return n
	}
	st.superReads++
	t.segHint = t.seg.segments()
	t.segBorrowed = direct
	return t.drain(bufs, sizes, offset, n, st)
}

// drain writes pending segments to bufs from n on and returns the new
// count. Segments left over wait for the next Read, in rbuf.
func (t *tun) drain(bufs [][]byte, sizes []int, offset, n int, st *readStats) int {
	for n < len(bufs) && t.seg.pending() {
		size, ok := t.seg.next(bufs[n][offset:])
		if !ok {
			t.seg.reset() // a segment larger than the caller's buffer
			st.discarded++
			break
		}
		sizes[n] = size
		n++
		st.segments++
	}
	if t.segBorrowed && t.seg.pending() {
		// The rest lies in the caller's buffer, theirs again once Read
		// returns. No read happens while segments are pending, so rbuf is
		// free.
		t.seg.payload = t.rbuf[:copy(t.rbuf, t.seg.payload)]
	}
	t.segBorrowed = false
	return n
}

func (t *tun) addReadStats(st *readStats) {
	if st.superReads != 0 {
		t.st.superReads.Add(st.superReads)
	}
	if st.segments != 0 {
		t.st.segments.Add(st.segments)
	}
	if st.discarded != 0 {
		t.st.discarded.Add(st.discarded)
	}
}

// Write implements Device. It returns at the first packet the kernel
// refuses, with the number written before it, so the caller can count that
// packet and go on with the rest. With offloads on, runs of consecutive
// TCP segments of one flow go to the kernel as one super-packet.
func (t *tun) Write(bufs [][]byte, offset int) (int, error) {
	t.wmu.Lock()
	defer t.wmu.Unlock()
	if t.vnet {
		return t.writeVnet(bufs, offset)
	}
	for i, b := range bufs {
		for {
			if t.closed.Load() {
				return i, t.errClosed("write to")
			}
			_, err := unix.Write(t.fd, b[offset:])
			if err == nil {
				break
			}
			if err == unix.EINTR {
				continue
			}
			if err == unix.EAGAIN {
				if err := t.wait(unix.POLLOUT); err != nil {
					return i, err
				}
				continue
			}
			return i, t.ioErr("write to", err)
		}
	}
	return len(bufs), nil
}

func (t *tun) writeVnet(bufs [][]byte, offset int) (int, error) {
	coalesce := t.coalesce.Load()
	var superWrites, coalesced uint64
	defer func() {
		if superWrites != 0 {
			t.st.superWrites.Add(superWrites)
			t.st.coalesced.Add(coalesced)
		}
	}()
	var seg segment
	ok := false
	if coalesce && len(bufs) > 0 {
		seg, ok = parseSegment(bufs[0][offset:], t.verify, t.uso)
	}
	for i := 0; i < len(bufs); {
		n := 1
		var next segment
		nextOK := false
		if coalesce && ok {
			var total int
			n, total, next, nextOK = extendRun(bufs[i:], offset, seg, t.verify, t.uso)
			if n > 1 {
				err := t.writeRun(bufs[i:i+n], offset, seg, total)
				if err == nil {
					superWrites++
					coalesced += uint64(n)
					i += n
					seg, ok = next, nextOK
					continue
				}
				if errors.Is(err, net.ErrClosed) {
					return i, err
				}
				if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EIO) {
					t.stopCoalescing(err)
					coalesce = false
				}
				// Write the run's packets one by one, so a refusal is
				// pinned on one packet.
			}
		} else if coalesce && i+1 < len(bufs) {
			next, nextOK = parseSegment(bufs[i+1][offset:], t.verify, t.uso)
		}
		for j := i; j < i+n; j++ {
			if err := t.writeOne(bufs[j][offset:]); err != nil {
				return j, err
			}
		}
		i += n
		seg, ok = next, nextOK
	}
	return len(bufs), nil
}

// writeRun writes pkts, a run found by extendRun, as one super-packet: the
// virtio-net header, the super-packet's headers (built in t.hdr, so the
// caller's packets stay as they were), then the payloads of all the
// segments, gathered by one writev without copying them.
func (t *tun) writeRun(pkts [][]byte, offset int, fs segment, total int) error {
	first := pkts[0][offset:]
	h := superHeader(t.hdr[:], first, fs, pkts[len(pkts)-1][offset:], total)
	h.encode(t.wvh[:])
	iov := append(t.wiov[:0], iovec(t.wvh[:]), iovec(t.hdr[:fs.hdrLen]))
	for _, p := range pkts {
		iov = append(iov, iovec(p[offset+fs.hdrLen:]))
	}
	t.wiov = iov
	return t.writeIov(iov)
}

// writeOne writes pkt behind an all-zero virtio-net header: no GSO, and
// checksums for the kernel to verify, as without offloads.
func (t *tun) writeOne(pkt []byte) error {
	t.one[0] = iovec(t.zvh[:])
	if len(pkt) == 0 {
		return t.writeIov(t.one[:1]) // for the kernel to refuse
	}
	t.one[1] = iovec(pkt)
	return t.writeIov(t.one[:])
}

func (t *tun) writeIov(iov []unix.Iovec) error {
	for {
		if t.closed.Load() {
			return t.errClosed("write to")
		}
		err := t.writev(t.fd, iov)
		if err == nil {
			return nil
		}
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if errors.Is(err, unix.EAGAIN) {
			if err := t.wait(unix.POLLOUT); err != nil {
				return err
			}
			continue
		}
		return t.ioErr("write to", err)
	}
}

// stopCoalescing is the run-time fallback: the kernel refused a GSO write
// (some kernels broke them, e.g. tailscale/tailscale#13041), so from now on
// every packet is written on its own.
func (t *tun) stopCoalescing(err error) {
	if t.coalesce.Swap(false) {
		t.st.fallbacks.Add(1)
		t.log.Warn("tun refused a coalesced write: writing packets singly from now on", "tun", t.name, "err", err)
	}
}

// writev is the writev(2) system call on raw iovecs (unix.Writev would
// allocate them per call).
func writev(fd int, iov []unix.Iovec) error {
	_, _, errno := unix.Syscall(unix.SYS_WRITEV, uintptr(fd), uintptr(unsafe.Pointer(&iov[0])), uintptr(len(iov)))
	if errno != 0 {
		return errno
	}
	return nil
}

// iovec points an iovec at b, which must not be empty.
func iovec(b []byte) unix.Iovec {
	v := unix.Iovec{Base: &b[0]}
	v.SetLen(len(b))
	return v
}

// wait blocks until the TUN fd has events or Close is called.
func (t *tun) wait(events int16) error {
	_, err := t.waitFor(events, -1, -1)
	return err
}

// waitFor is wait that also returns when fd (if not negative) is readable
// or timeout (if not negative) has passed. It returns the polled fds: the
// TUN, the close eventfd, fd.
func (t *tun) waitFor(events int16, fd int32, timeout time.Duration) ([3]unix.PollFd, error) {
	fds := [3]unix.PollFd{
		{Fd: int32(t.fd), Events: events},
		{Fd: int32(t.evfd), Events: unix.POLLIN},
		{Fd: fd, Events: unix.POLLIN}, // poll ignores a negative fd
	}
	ms := -1
	if timeout >= 0 {
		ms = int((timeout + time.Millisecond - 1) / time.Millisecond)
	}
	for {
		_, err := unix.Poll(fds[:], ms)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fds, fmt.Errorf("poll tun %s: %w", t.name, err)
		}
		if fds[1].Revents != 0 {
			return fds, t.errClosed("wait on")
		}
		// POLLERR/POLLHUP on the TUN fd: the next read or write reports it.
		return fds, nil
	}
}

// BatchSize implements Device.
func (t *tun) BatchSize() int { return tunBatchSize }

// MTU implements Device.
func (t *tun) MTU() int { return t.mtu }

// Name implements Device: the kernel's name for the device.
func (t *tun) Name() string { return t.name }

// Close implements Device. It wakes a blocked Read or Write, waits for them
// to return and closes the fds. It is safe to call more than once and
// concurrently with Read and Write.
func (t *tun) Close() error {
	t.closeOnce.Do(func() {
		t.closed.Store(true)
		var one [8]byte
		binary.NativeEndian.PutUint64(one[:], 1)
		if _, err := unix.Write(t.evfd, one[:]); err != nil {
			t.closeErr = fmt.Errorf("close tun %s: wake: %w", t.name, err)
		}
		t.rmu.Lock()
		t.wmu.Lock()
		defer t.rmu.Unlock()
		defer t.wmu.Unlock()
		t.closeErr = errors.Join(t.closeErr, closeFD(t.fd, "close tun "+t.name))
		t.closeErr = errors.Join(t.closeErr, closeFD(t.evfd, "close tun "+t.name+" eventfd"))
	})
	return t.closeErr
}

// ioErr wraps a failed read or write on the TUN fd. EBADFD means the
// device is gone: deleted outside weft (ip link del), which leaves the fd
// attached to nothing. weft cannot go on without it, and a new one needs
// the route and address set up again, as at start.
func (t *tun) ioErr(op string, err error) error {
	if errors.Is(err, unix.EBADFD) {
		return fmt.Errorf("%s tun %s: the device was deleted outside weft (%w); "+
			"restart weft to create it again (systemd's Restart= does)", op, t.name, err)
	}
	return fmt.Errorf("%s tun %s: %w", op, t.name, err)
}

func (t *tun) errClosed(op string) error {
	return fmt.Errorf("%s tun %s: %w", op, t.name, net.ErrClosed)
}

func closeFD(fd int, op string) error {
	if err := unix.Close(fd); err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	return nil
}
