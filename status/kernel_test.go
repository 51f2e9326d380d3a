package status

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

// The kernel's features go through /status unchanged, with the JSON names
// readers key on; a daemon that has not probed leaves "kernel" out.
func TestStatusKernelRoundTrip(t *testing.T) {
	h := NewHealth(Build{Version: "test", Commit: "abc"})
	srv := h.Handler()
	if body := get(t, srv, "/status").Body.String(); strings.Contains(body, `"kernel"`) {
		t.Errorf("/status before SetKernel has a kernel: %s", body)
	}
	want := Kernel{Release: "6.18.44-fc-v1294", Features: []KernelFeature{
		{Name: "tcx", Since: "6.6", Detected: true, Detail: "in use", Without: "the fast path attaches by clsact"},
		{Name: "bpf_fib_lookup", Since: "4.18", Detail: "unknown (needs CAP_BPF)", Without: "no fast path"},
		{Name: "udp_gro", Since: "5.0", Without: "each datagram on its own"},
	}}
	given := want
	given.Features = append([]KernelFeature(nil), want.Features...)
	h.SetKernel(given)
	given.Features[0].Detected = false // the caller's slice is not Health's

	rec := get(t, srv, "/status")
	var s Status
	if err := json.Unmarshal(rec.Body.Bytes(), &s); err != nil {
		t.Fatalf("/status: %v\n%s", err, rec.Body)
	}
	if s.Kernel == nil || !reflect.DeepEqual(*s.Kernel, want) {
		t.Errorf("kernel after the round trip = %+v, want %+v", s.Kernel, want)
	}
	var compact bytes.Buffer
	if err := json.Compact(&compact, rec.Body.Bytes()); err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{`"kernel":{"release":"6.18.44-fc-v1294","features":[`, `"name":"tcx","since":"6.6","detected":true,"detail":"in use","without":`,
		`"name":"udp_gro","since":"5.0","detected":false,"without":`} {
		if !strings.Contains(compact.String(), key) {
			t.Errorf("/status lacks %s:\n%s", key, compact.String())
		}
	}
	if got := []bool{s.Kernel.Features[0].Unknown(), s.Kernel.Features[1].Unknown(), s.Kernel.Features[2].Unknown()}; !reflect.DeepEqual(got, []bool{false, true, false}) {
		t.Errorf("Unknown() = %v, want only the probe that lacked privilege", got)
	}
}
