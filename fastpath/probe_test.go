package fastpath

import (
	"testing"

	"github.com/weft-net/weft/internal/netnstest"
)

// On this kernel (Linux 6.6 or later, as root) every feature is there and
// the probes say so; each feature says what weft does without it.
func TestProbe(t *testing.T) {
	netnstest.SkipUnlessRoot(t) // the probes load programs: CAP_BPF
	v, ok := parseRelease(kernelRelease())
	if !ok || v[0] < 6 || v[0] == 6 && v[1] < 6 {
		t.Skipf("skipping: kernel %s is older than 6.6, which has TCX", kernelRelease())
	}
	fs := Probe()
	want := []string{FeatureTCX, FeatureClsact, FeatureFibLookup, FeatureChangeHead, FeatureRedirect, FeatureEncapRoom}
	if len(fs) != len(want) {
		t.Fatalf("Probe() = %+v, want %d features", fs, len(want))
	}
	for i, f := range fs {
		t.Logf("%+v", f)
		if f.Name != want[i] {
			t.Errorf("feature %d is %q, want %q", i, f.Name, want[i])
		}
		if f.Since == "" || f.Without == "" {
			t.Errorf("%s: no Since or Without: %+v", f.Name, f)
		}
		// clsact rests on the kernel's config, which a kernel may not carry.
		if !f.Detected && (f.Name != FeatureClsact || f.Detail == "") {
			t.Errorf("%s not detected on Linux %s: %s", f.Name, kernelRelease(), f.Detail)
		}
	}
	if fs2 := Probe(); &fs2[0] != &fs[0] {
		t.Error("Probe probed twice")
	}
}

func TestParseRelease(t *testing.T) {
	for r, want := range map[string][2]int{"6.18.44-fc-v1294": {6, 18}, "4.5": {4, 5}, "5.10.0-28-amd64": {5, 10}, "6.6-rc1": {6, 6}} {
		if got, ok := parseRelease(r); !ok || got != want {
			t.Errorf("parseRelease(%q) = %v, %v; want %v", r, got, ok, want)
		}
	}
	if _, ok := parseRelease("garbage"); ok {
		t.Error("parseRelease(garbage) ok")
	}
	if ok, detail := probeClsact("4.4.0"); ok || detail == "" {
		t.Errorf("probeClsact(4.4.0) = %v, %q", ok, detail)
	}
}
