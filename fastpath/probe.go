package fastpath

import (
	"bufio"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"strconv"
	"strings"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// Feature is one kernel feature the fast path uses, as Probe found it.
type Feature struct {
	Name     string // FeatureTCX, FeatureClsact, or the helper's name
	Since    string // the first mainline release that has it
	Detected bool
	// Detail says why the probe could not tell ("unknown (needs
	// CAP_BPF)"), or what it saw.
	Detail  string
	Without string // what weft does without it
}

// The features Probe reports, by Name.
const (
	FeatureTCX        = "tcx"
	FeatureClsact     = "clsact"
	FeatureFibLookup  = "bpf_fib_lookup"
	FeatureEncapRoom  = "bpf_skb_adjust_room_udp_encap"
	FeatureChangeHead = "bpf_skb_change_head"
	FeatureRedirect   = "bpf_redirect"
)

// withoutHelper is what weft does on a kernel without a helper the
// programs call: the verifier refuses them, so they never load.
const withoutHelper = "no fast path: the userspace path carries all traffic"

// Probe finds the kernel features the fast path needs or prefers. It never
// fails: a probe that cannot tell says why in Detail. It runs once per
// process (a few tiny program loads; cilium/ebpf caches its own probes).
var Probe = sync.OnceValue(probe)

func probe() []Feature {
	tcx, tcxDetail := probeTCX()
	cls, clsDetail := probeClsact(kernelRelease())
	fs := []Feature{
		{Name: FeatureTCX, Since: "6.6", Detected: tcx, Detail: tcxDetail, Without: "the fast path attaches by clsact"},
		{Name: FeatureClsact, Since: "4.5", Detected: cls, Detail: clsDetail,
			Without: "the fast path attaches by TCX only; without both, the userspace path carries all traffic"},
	}
	for _, h := range []struct {
		name, since string
		fn          asm.BuiltinFunc
	}{
		{FeatureFibLookup, "4.18", asm.FnFibLookup},
		{FeatureChangeHead, "4.10", asm.FnSkbChangeHead},
		{FeatureRedirect, "4.4", asm.FnRedirect},
	} {
		ok, detail := verdict(features.HaveProgramHelper(ebpf.SchedCLS, h.fn))
		fs = append(fs, Feature{Name: h.name, Since: h.since, Detected: ok, Detail: detail, Without: withoutHelper})
	}
	// The UDP tunnel flags are checked when the helper runs, not at load:
	// the helper's presence (4.13) does not say the kernel has them.
	ok, detail := probeEncapRoom()
	return append(fs, Feature{Name: FeatureEncapRoom, Since: "5.2", Detected: ok, Detail: detail, Without: withoutHelper})
}

// verdict turns a probe's error into detected and a detail: only nil and
// ErrNotSupported are conclusive (see cilium/ebpf/features). A refusal
// for want of privilege is not a "no".
func verdict(err error) (bool, string) {
	switch {
	case err == nil:
		return true, ""
	case errors.Is(err, ebpf.ErrNotSupported):
		return false, ""
	}
	if missing := MissingCaps(HasCap); errors.Is(err, unix.EPERM) && len(missing) > 0 {
		return false, "unknown (needs " + strings.Join(missing, " and ") + ")"
	}
	return false, "unknown: " + err.Error()
}

// tinyProgram loads a tc program of body, then exit; without a body it
// returns 0.
func tinyProgram(body ...asm.Instruction) (*ebpf.Program, error) {
	if len(body) == 0 {
		body = asm.Instructions{asm.Mov.Imm(asm.R0, 0)}
	}
	spec := &ebpf.ProgramSpec{Type: ebpf.SchedCLS, License: "GPL", Instructions: append(body, asm.Return())}
	prog, err := ebpf.NewProgram(spec)
	if err != nil {
		return nil, fmt.Errorf("fastpath: load probe program: %w", err)
	}
	return prog, nil
}

// probeTCX attaches a program by TCX to an ifindex no device has: a kernel
// with TCX looks the device up (ENODEV), one without refuses the attach
// type (cilium/ebpf says ErrNotSupported). Its own check (haveTCX) would
// call a refused load "not supported" too, so the load is done here.
func probeTCX() (bool, string) {
	prog, err := tinyProgram()
	if err != nil {
		return verdict(err)
	}
	defer prog.Close()
	l, err := link.AttachTCX(link.TCXOptions{Interface: math.MaxInt32, Program: prog, Attach: ebpf.AttachTCXIngress})
	if err == nil { // a device of that index after all: still TCX
		l.Close()
		return true, ""
	}
	if errors.Is(err, unix.ENODEV) {
		return true, ""
	}
	return verdict(err)
}

// Flags of bpf_skb_adjust_room, as linux/bpf.h has them; weft_encap passes
// encapFlags.
const (
	adjRoomMAC = 1
	encapFlags = 1<<0 | 1<<1 | 1<<4 // FIXED_GSO | ENCAP_L3_IPV4 | ENCAP_L4_UDP
	overhead   = 28                 // outer IPv4 and UDP headers
)

// probeEncapRoom runs bpf_skb_adjust_room with weft_encap's flags on a
// made-up IPv4 packet (BPF_PROG_TEST_RUN: no device is touched); a kernel
// without the flags returns EINVAL, one without BPF_ADJ_ROOM_MAC ENOTSUPP.
func probeEncapRoom() (bool, string) {
	if err := features.HaveProgramHelper(ebpf.SchedCLS, asm.FnSkbAdjustRoom); err != nil {
		return verdict(err)
	}
	prog, err := tinyProgram(asm.Mov.Imm(asm.R2, overhead), asm.Mov.Imm(asm.R3, adjRoomMAC),
		asm.LoadImm(asm.R4, encapFlags, asm.DWord), asm.FnSkbAdjustRoom.Call())
	if err != nil {
		return verdict(err)
	}
	defer prog.Close()
	ret, err := prog.Run(&ebpf.RunOptions{Data: probePacket()})
	if err != nil {
		return verdict(fmt.Errorf("fastpath: test-run the bpf_skb_adjust_room probe: %w", err))
	}
	if ret != 0 {
		return false, "the kernel refused the flags: " + unix.Errno(uintptr(-int32(ret))).Error()
	}
	return true, ""
}

// probePacket is an Ethernet frame with a minimal IPv4/UDP packet.
func probePacket() []byte {
	p := make([]byte, 14+20+8+4)
	p[12], p[13] = 0x08, 0x00 // ETH_P_IP
	ip := p[14:]
	ip[0], ip[3], ip[8], ip[9] = 0x45, byte(len(ip)), 64, unix.IPPROTO_UDP
	copy(ip[12:], []byte{198, 18, 0, 1, 198, 18, 0, 2})
	return p
}

// probeClsact reads the kernel's config (as bpftool feature probe does):
// the tc parts can be modules, loaded when first used, so a look at what
// is loaded would not tell. clsact came with Linux 4.5.
func probeClsact(release string) (bool, string) {
	if v, ok := parseRelease(release); ok && (v[0] < 4 || v[0] == 4 && v[1] < 5) {
		return false, "kernel " + release + " is older than 4.5"
	}
	cfg, src, err := readKernelConfig(release)
	if err != nil {
		return false, "unknown: " + err.Error()
	}
	var missing []string
	for _, opt := range []string{"CONFIG_NET_SCH_INGRESS", "CONFIG_NET_CLS_BPF", "CONFIG_NET_CLS_ACT"} {
		if v := cfg[opt]; v != "y" && v != "m" {
			missing = append(missing, opt)
		}
	}
	if len(missing) > 0 {
		return false, src + " lacks " + strings.Join(missing, ", ")
	}
	return true, ""
}

// readKernelConfig reads the running kernel's config options, from
// /proc/config.gz or /boot/config-<release>, saying which.
func readKernelConfig(release string) (map[string]string, string, error) {
	var r io.Reader
	src := "/proc/config.gz"
	f, err := os.Open(src)
	if err == nil {
		defer f.Close()
		zr, err := gzip.NewReader(f)
		if err != nil {
			return nil, src, fmt.Errorf("read %s: %w", src, err)
		}
		r = zr
	} else {
		src = "/boot/config-" + release
		bf, err := os.Open(src)
		if err != nil {
			return nil, src, errors.New("no kernel config in /proc/config.gz or " + src)
		}
		defer bf.Close()
		r = bf
	}
	cfg := map[string]string{}
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), "="); ok && strings.HasPrefix(k, "CONFIG_NET_") {
			cfg[k] = v
		}
	}
	if err := sc.Err(); err != nil {
		return nil, src, fmt.Errorf("read %s: %w", src, err)
	}
	return cfg, src, nil
}

// kernelRelease is uname -r.
func kernelRelease() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return ""
	}
	return unix.ByteSliceToString(u.Release[:])
}

// parseRelease reads the major and minor of a release such as
// "6.18.44-fc-v1294".
func parseRelease(r string) ([2]int, bool) {
	major, rest, ok := strings.Cut(r, ".")
	if !ok {
		return [2]int{}, false
	}
	minor := rest
	if i := strings.IndexFunc(rest, func(c rune) bool { return c < '0' || c > '9' }); i >= 0 {
		minor = rest[:i]
	}
	a, err1 := strconv.Atoi(major)
	b, err2 := strconv.Atoi(minor)
	return [2]int{a, b}, err1 == nil && err2 == nil
}
