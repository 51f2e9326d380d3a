package tunnel

import (
	"encoding/binary"
	"net/netip"
	"strconv"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// UDP segmentation (GSO) and receive (GRO) offloads. Both move several
// datagrams of one flow through the stack as one skb; the kernel cuts them
// apart at gso_size, so the wire carries exactly the datagrams of one send
// per inner packet, as flanneld peers expect.

const (
	// gsoMaxBytes bounds the payload of one GSO message, below the 65,507
	// bytes of a UDP datagram the kernel builds it as.
	gsoMaxBytes = 65000
	// udpSlotSize holds the largest message GRO delivers (64 KB skbs).
	udpSlotSize = 1 << 16
)

// udpKernelVersion is a Linux release as (major, minor, patch).
type udpKernelVersion [3]int

func (v udpKernelVersion) atLeast(o udpKernelVersion) bool {
	for i := range v {
		if v[i] != o[i] {
			return v[i] > o[i]
		}
	}
	return true
}

func (v udpKernelVersion) String() string {
	return strconv.Itoa(v[0]) + "." + strconv.Itoa(v[1]) + "." + strconv.Itoa(v[2])
}

// parseUDPKernelVersion reads the leading numbers of a release string
// such as "6.18.44-fc-v595"; missing parts are 0.
func parseUDPKernelVersion(release string) udpKernelVersion {
	var v udpKernelVersion
	for i := range v {
		j := 0
		for j < len(release) && release[j] >= '0' && release[j] <= '9' {
			j++
		}
		v[i], _ = strconv.Atoi(release[:j])
		if j == len(release) || release[j] != '.' {
			break
		}
		release = release[j+1:]
	}
	return v
}

var udpKernel = sync.OnceValue(func() udpKernelVersion {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return udpKernelVersion{}
	}
	return parseUDPKernelVersion(unix.ByteSliceToString(u.Release[:]))
})

// setupOffloads turns on the offloads asked for that the kernel has. A
// missing one is logged and counted, never fatal: the plain path works
// everywhere.
func (c *udpConn) setupOffloads(gso, gro bool) {
	kv := udpKernel()
	if gso {
		c.setupGSO(kv)
	}
	if gro {
		c.setupGRO(kv)
	}
}

func (c *udpConn) setupGSO(kv udpKernelVersion) {
	// Linux 7.0 up to 7.1.4 mangles UDP headers and checksums of some
	// GSO sends (b10b446, fixed by 78effd8 and 5f17ae0). Tailscale works
	// around it with a padding byte, which a flannel peer would write
	// into its TUN; GSO off is the only fix that keeps the wire.
	if kv.atLeast(udpKernelVersion{7, 0, 0}) && !kv.atLeast(udpKernelVersion{7, 1, 5}) {
		c.offloadOff("gso", "kernel "+kv.String()+" has the UDP GSO checksum bug", nil)
		return
	}
	if _, err := unix.GetsockoptInt(c.fd, unix.SOL_UDP, unix.UDP_SEGMENT); err != nil {
		c.offloadOff("gso", "kernel lacks UDP_SEGMENT", err)
		return
	}
	// UDP_MAX_SEGMENTS went from 64 to 128 in Linux 6.9.
	c.gsoSegs = 63
	if kv.atLeast(udpKernelVersion{6, 9, 0}) {
		c.gsoSegs = 127
	}
	for i := range c.wctl {
		h := (*unix.Cmsghdr)(unsafe.Pointer(&c.wctl[i][0]))
		h.Level = unix.SOL_UDP
		h.Type = unix.UDP_SEGMENT
		h.SetLen(unix.CmsgLen(2))
		c.wmsgs[i].Hdr.Control = (*byte)(unsafe.Pointer(&c.wctl[i][0]))
	}
	c.gsoOn.Store(true)
}

func (c *udpConn) setupGRO(kv udpKernelVersion) {
	// Before 5.12 a GRO socket could be handed packets it cannot take
	// apart (WireGuard/wireguard-go@c92064f).
	if !kv.atLeast(udpKernelVersion{5, 12, 0}) {
		c.offloadOff("gro", "kernel "+kv.String()+" is older than 5.12", nil)
		return
	}
	if err := unix.SetsockoptInt(c.fd, unix.SOL_UDP, unix.UDP_GRO, 1); err != nil {
		c.offloadOff("gro", "kernel refused UDP_GRO", err)
		return
	}
	slab := make([]byte, udpBatchSize*udpSlotSize)
	c.rslots = make([][]byte, udpBatchSize)
	for i := range c.rslots {
		c.rslots[i] = slab[i*udpSlotSize : (i+1)*udpSlotSize : (i+1)*udpSlotSize]
		c.riovs[i].Base = &c.rslots[i][0]
		c.riovs[i].SetLen(udpSlotSize)
		c.rmsgs[i].Hdr.Control = (*byte)(unsafe.Pointer(&c.rctl[i][0]))
	}
	c.groOn = true
}

func (c *udpConn) offloadOff(which, reason string, err error) {
	c.fallbacks.Add(1)
	args := []any{"udp", c.local.String(), "offload", which, "reason", reason}
	if err != nil {
		args = append(args, "err", err)
	}
	c.log.Warn("UDP offload off, using the plain path", args...)
}

// disableGSO turns GSO off for good after the kernel refused a GSO send at
// run time, typically EIO from an egress device without TX checksum
// offload. It logs and counts once.
func (c *udpConn) disableGSO(errno unix.Errno) {
	if c.gsoOn.CompareAndSwap(true, false) {
		c.offloadOff("gso", "kernel refused a GSO send", errno)
	}
}

// gsoRefusal says what to do when the kernel refuses a GSO message with
// errno. resend: it refused the message as a whole before any of it was
// sent, so its datagrams can go again one per message without duplicates:
// EIO (egress device without TX checksum offload, before Linux 6.11 or
// so), EINVAL (segment count, SO_NO_CHECK), EMSGSIZE (segments larger
// than the path MTU, where a shorter last datagram alone may pass).
// disable: the refusal is about GSO itself and will recur (EIO, EINVAL).
// Other errors (an unreachable peer, a firewall) concern every datagram of
// the message alike and are reported for all of them.
func gsoRefusal(errno unix.Errno) (resend, disable bool) {
	switch errno {
	case unix.EIO, unix.EINVAL:
		return true, true
	case unix.EMSGSIZE:
		return true, false
	}
	return false, false
}

// gsoGroup returns how many datagrams from the head of bufs (each
// bufs[i][offset:]) can go as one GSO message: all as long as the first,
// except that a shorter one may end the group, at most maxSegs of them and
// gsoMaxBytes in all. The kernel cuts such a message at the first one's
// length, giving back exactly these datagrams. An empty datagram stands
// alone: it would vanish inside a message.
func gsoGroup(bufs [][]byte, offset, maxSegs int) int {
	size := len(bufs[0]) - offset
	if size <= 0 {
		return 1
	}
	limit := min(len(bufs), maxSegs, gsoMaxBytes/size)
	n := 1
	for n < limit {
		l := len(bufs[n]) - offset
		if l > size || l <= 0 {
			break
		}
		n++
		if l < size {
			break
		}
	}
	return n
}

// GSOSegments is how many inner packets of a device with this MTU one UDP
// GSO message carries (44 at MTU 1472). Capping the TUN's super-packets at
// that (its gso_max_segs) makes each of them one message on the wire and
// one write on the receiving node; otherwise a 45-segment super-packet
// leaves as 44 + 1 and arrives as two writes.
func GSOSegments(mtu int) int {
	if mtu <= 0 {
		return 63
	}
	return max(1, min(63, gsoMaxBytes/mtu))
}

// setSegmentSize makes write message i a GSO message cut every size bytes.
func (c *udpConn) setSegmentSize(i, size int) {
	b := unsafe.Slice((*byte)(unsafe.Pointer(&c.wctl[i][0])), len(c.wctl[i])*8)
	binary.NativeEndian.PutUint16(b[unix.CmsgLen(0):], uint16(size))
	c.wmsgs[i].Hdr.SetControllen(unix.CmsgSpace(2))
}

// readGRO is Read with GRO on: recvmmsg fills our slots, then each
// message is handed out one datagram per caller buffer, cut at the
// gso_size the kernel reported. What does not fit waits for the next Read,
// which returns it without a system call.
//
// With views set it copies nothing: bufs[i] is set to datagram i where it
// lies in our slot, which stays as it is until a later call needs a new
// recvmmsg.
func (c *udpConn) readGRO(bufs [][]byte, sizes []int, addrs []netip.AddrPort, flags int, views bool) (n int, empty bool, err error) {
	if c.closed.Load() {
		return 0, false, c.errClosed("read from")
	}
	if c.rnext >= c.rgot {
		got, err := c.recvmmsg(len(c.rmsgs), flags)
		c.rgot, c.rnext, c.roff = got, 0, 0
		if err != nil {
			return 0, false, err
		}
		// recvmmsg takes what is queued: fewer than asked for is all of it.
		c.rdrained = got < len(c.rmsgs)
		for i := range got {
			h := &c.rmsgs[i].Hdr
			ctl := unsafe.Slice((*byte)(unsafe.Pointer(&c.rctl[i][0])), len(c.rctl[i])*8)
			c.rgso[i] = groSize(ctl[:min(int(h.Controllen), len(ctl))])
			if c.rgso[i] > 0 && int(c.rmsgs[i].Len) > c.rgso[i] {
				c.groRecvs.Add(1)
			}
		}
	}
	for n < len(bufs) && c.rnext < c.rgot {
		i := c.rnext
		msg := c.rslots[i][:c.rmsgs[i].Len]
		seg := c.rgso[i]
		if seg <= 0 {
			seg = len(msg) // one datagram, possibly empty
		}
		// A message is one flow's run, which the TUN side coalesces back
		// into one super-packet: start one only if all of it fits, so runs
		// are not cut at the batch's end (they were 28 segments on average
		// instead of 45).
		if c.roff == 0 && n > 0 && seg > 0 && len(bufs)-n < (len(msg)+seg-1)/seg {
			break
		}
		from := c.source(i)
		for n < len(bufs) {
			end := min(c.roff+seg, len(msg))
			if views {
				bufs[n] = msg[c.roff:end:end]
				sizes[n] = end - c.roff
			} else {
				sizes[n] = copy(bufs[n], msg[c.roff:end])
			}
			addrs[n] = from
			n++
			c.roff = end
			if end == len(msg) {
				break
			}
		}
		if c.roff == len(msg) {
			c.rnext++
			c.roff = 0
		}
	}
	return n, c.rdrained && c.rnext >= c.rgot, nil
}

// groSize returns the gso_size of a UDP_GRO control message in ctl (the
// control data of one received message), or 0 if there is none.
func groSize(ctl []byte) int {
	const (
		lenSize  = int(unsafe.Sizeof(unix.Cmsghdr{}.Len))
		levelOff = int(unsafe.Offsetof(unix.Cmsghdr{}.Level))
		typeOff  = int(unsafe.Offsetof(unix.Cmsghdr{}.Type))
	)
	for len(ctl) >= unix.SizeofCmsghdr {
		var l int
		if lenSize == 8 {
			v := binary.NativeEndian.Uint64(ctl)
			l = int(min(v, uint64(len(ctl)+1)))
		} else {
			l = int(binary.NativeEndian.Uint32(ctl))
		}
		if l < unix.SizeofCmsghdr || l > len(ctl) {
			return 0
		}
		level := int32(binary.NativeEndian.Uint32(ctl[levelOff:]))
		typ := int32(binary.NativeEndian.Uint32(ctl[typeOff:]))
		if level == unix.SOL_UDP && typ == unix.UDP_GRO && l >= unix.CmsgLen(4) {
			return max(int(int32(binary.NativeEndian.Uint32(ctl[unix.CmsgLen(0):]))), 0)
		}
		ctl = ctl[min(unix.CmsgSpace(l-unix.CmsgLen(0)), len(ctl)):]
	}
	return 0
}

// UDPOffload implements UDPOffloader.
func (c *udpConn) UDPOffload() UDPOffloadState {
	return UDPOffloadState{
		GSO:         c.gsoOn.Load(),
		GRO:         c.groOn,
		Fallbacks:   c.fallbacks.Load(),
		GSOSends:    c.gsoSends.Load(),
		GROReceives: c.groRecvs.Load(),
	}
}
