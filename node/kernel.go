package node

import (
	"strings"

	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/dataplane"
	"github.com/weft-net/weft/fastpath"
	"github.com/weft-net/weft/status"
)

// recordKernel puts the kernel's release and the features weft looked for
// into /status, so the operator reads the node's kernel floor there, and
// says them in one line. The fast path's come from its probe, corrected
// by what attaching showed; the offloads are those the userspace plane
// found when it opened the TUN and the socket (o, from its report), not
// probed again.
func (n *node) recordKernel(fp status.FastPath, o dataplane.Offloads) {
	k := status.Kernel{Release: kernelRelease()}
	if n.hooks.probeKernel != nil {
		for _, f := range n.hooks.probeKernel() {
			k.Features = append(k.Features, fastPathFeature(f, fp))
		}
	}
	k.Features = append(k.Features, offloadFeatures(n.cfg.Offloads, o)...)
	n.health.SetKernel(k)
	n.log.Info("kernel features (weft status says what weft does without each)", kernelSummary(k)...)
}

// kernelSummary is k as one log line's key-value pairs: the release, then
// the features detected, missing and unknown (a key only if it has any).
func kernelSummary(k status.Kernel) []any {
	var yes, no, unknown []string
	for _, f := range k.Features {
		switch {
		case f.Detected:
			yes = append(yes, f.Name)
		case f.Unknown():
			unknown = append(unknown, f.Name)
		default:
			no = append(no, f.Name)
		}
	}
	attrs := []any{"release", k.Release}
	for _, kv := range []struct {
		key   string
		names []string
	}{{"detected", yes}, {"missing", no}, {"unknown", unknown}} {
		if len(kv.names) > 0 {
			attrs = append(attrs, kv.key, strings.Join(kv.names, ","))
		}
	}
	return attrs
}

// fastPathFeature is f as /status has it. A running fast path uses every
// feature but the attach mode it did not take, and proves the one it took.
func fastPathFeature(f fastpath.Feature, fp status.FastPath) status.KernelFeature {
	k := status.KernelFeature{Name: f.Name, Since: f.Since, Detected: f.Detected, Detail: f.Detail, Without: f.Without}
	if !fp.Running {
		return k
	}
	switch f.Name {
	case fastpath.FeatureTCX, fastpath.FeatureClsact:
		if fp.Attach == f.Name { // the Mode's names are the features'
			k.Detected, k.Detail = true, "in use"
		}
	default:
		k.Detected, k.Detail = true, "in use"
	}
	return k
}

// The offload features, by Name.
const (
	featureTUNOffload = "tun_vnet_hdr"
	featureTUNUSO     = "tun_uso"
	featureUDPGSO     = "udp_gso"
	featureUDPGRO     = "udp_gro"
)

// offloadFeatures says which of the offloads asked for (the -offload
// flags) the userspace plane uses (used); one not asked for was not
// probed.
func offloadFeatures(asked Offloads, used dataplane.Offloads) []status.KernelFeature {
	const flagsOff = "the -offload flags leave it off"
	feature := func(name, since string, on bool, notProbed, without string) status.KernelFeature {
		f := status.KernelFeature{Name: name, Since: since, Detected: on, Without: without}
		switch {
		case on:
			f.Detail = "in use"
		case notProbed != "":
			f.Detail = "unknown (not probed: " + notProbed + ")"
		default:
			f.Detail = "refused by the kernel, or unsafe on this release (the startup log says which)"
		}
		return f
	}
	tun, uso := "", ""
	switch {
	case !asked.TUN:
		tun, uso = flagsOff, flagsOff
	case !used.TUNVnetHdr:
		uso = "the TUN runs without offloads"
	}
	gso, gro := "", ""
	if !asked.GSO {
		gso = flagsOff
	}
	if !asked.GRO {
		gro = flagsOff
	}
	return []status.KernelFeature{
		feature(featureTUNOffload, "2.6.27", used.TUNVnetHdr, tun,
			"the TUN passes single packets: no TCP super-packets through weft"),
		feature(featureTUNUSO, "6.2", used.TUNUSO, uso,
			"UDP super-packets are segmented by the kernel before weft reads them"),
		feature(featureUDPGSO, "4.18", used.UDPGSO, gso,
			"the userspace path sends each datagram on its own (sendmmsg batches)"),
		feature(featureUDPGRO, "5.0", used.UDPGRO, gro,
			"the userspace path receives each datagram on its own (recvmmsg batches)"),
	}
}

// kernelRelease is uname -r.
func kernelRelease() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return ""
	}
	return unix.ByteSliceToString(u.Release[:])
}
