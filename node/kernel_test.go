package node

import (
	"reflect"
	"testing"

	"github.com/weft-net/weft/dataplane"
	"github.com/weft-net/weft/fastpath"
	"github.com/weft-net/weft/status"
)

// Attaching proves the mode it took; a running fast path proves its
// helpers; a stopped one leaves the probe's word.
func TestFastPathFeature(t *testing.T) {
	tcx := fastpath.Feature{Name: fastpath.FeatureTCX, Since: "6.6", Detected: true, Without: "clsact"}
	cls := fastpath.Feature{Name: fastpath.FeatureClsact, Since: "4.5", Detail: "unknown: no kernel config", Without: "TCX only"}
	fib := fastpath.Feature{Name: fastpath.FeatureFibLookup, Since: "4.18", Detail: "unknown (needs CAP_BPF)", Without: "no fast path"}
	for _, tc := range []struct {
		name string
		f    fastpath.Feature
		fp   status.FastPath
		want status.KernelFeature
	}{
		{"tcx in use", tcx, status.FastPath{Running: true, Attach: "tcx"},
			status.KernelFeature{Name: "tcx", Since: "6.6", Detected: true, Detail: "in use", Without: "clsact"}},
		{"clsact proved", cls, status.FastPath{Running: true, Attach: "clsact"},
			status.KernelFeature{Name: "clsact", Since: "4.5", Detected: true, Detail: "in use", Without: "TCX only"}},
		{"clsact not taken", cls, status.FastPath{Running: true, Attach: "tcx"},
			status.KernelFeature{Name: "clsact", Since: "4.5", Detail: "unknown: no kernel config", Without: "TCX only"}},
		{"helper of a running fast path", fib, status.FastPath{Running: true, Attach: "tcx"},
			status.KernelFeature{Name: "bpf_fib_lookup", Since: "4.18", Detected: true, Detail: "in use", Without: "no fast path"}},
		{"helper, not running", fib, status.FastPath{Reason: "missing CAP_BPF"},
			status.KernelFeature{Name: "bpf_fib_lookup", Since: "4.18", Detail: "unknown (needs CAP_BPF)", Without: "no fast path"}},
	} {
		if got := fastPathFeature(tc.f, tc.fp); got != tc.want {
			t.Errorf("%s: %+v, want %+v", tc.name, got, tc.want)
		}
	}
}

// The offloads are the plane's report: in use, refused, or not probed
// where the flags leave them off (USO too where the TUN has none).
func TestOffloadFeatures(t *testing.T) {
	fs := offloadFeatures(Offloads{TUN: true, GSO: true}, dataplane.Offloads{TUNVnetHdr: true, UDPGSO: true})
	want := map[string]struct {
		detected bool
		detail   string
	}{
		"tun_vnet_hdr": {true, "in use"},
		"tun_uso":      {false, "refused by the kernel, or unsafe on this release (the startup log says which)"},
		"udp_gso":      {true, "in use"},
		"udp_gro":      {false, "unknown (not probed: the -offload flags leave it off)"},
	}
	if len(fs) != len(want) {
		t.Fatalf("%d features, want %d: %+v", len(fs), len(want), fs)
	}
	for _, f := range fs {
		if w := want[f.Name]; f.Detected != w.detected || f.Detail != w.detail || f.Since == "" || f.Without == "" {
			t.Errorf("%+v, want %+v", f, w)
		}
	}
	fs = offloadFeatures(Offloads{TUN: true}, dataplane.Offloads{})
	if fs[0].Unknown() || !fs[1].Unknown() || fs[1].Detail != "unknown (not probed: the TUN runs without offloads)" {
		t.Errorf("TUN without offloads: %+v", fs[:2])
	}
}

// One line says the lot; an empty list has no key.
func TestKernelSummary(t *testing.T) {
	got := kernelSummary(status.Kernel{Release: "6.1.0", Features: []status.KernelFeature{
		{Name: "tcx", Since: "6.6"}, {Name: "clsact", Detected: true}, {Name: "udp_gso", Detected: true},
	}})
	want := []any{"release", "6.1.0", "detected", "clsact,udp_gso", "missing", "tcx"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("kernelSummary = %v, want %v", got, want)
	}
}
