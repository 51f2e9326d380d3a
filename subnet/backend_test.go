package subnet

import (
	"encoding/json"
	"testing"
)

func TestKernelDecap(t *testing.T) {
	for _, tt := range []struct {
		data string
		want bool
	}{
		{"", false}, {"null", false}, {`{}`, false}, {`"kernel"`, false}, {`{"WeftDecap":"user"}`, false},
		{`{"WeftDecap":"kernel"}`, true}, {`{"VNI":1,"WeftDecap":"kernel"}`, true}, {`{"WeftDecap":"kernel"`, false},
		{`{"weftdecap":"kernel"}`, false}, {`{"WeftDeCAp":0,"WeftDecap":"kernel"}`, true},
	} {
		if got := (Attrs{BackendData: json.RawMessage(tt.data)}).KernelDecap(); got != tt.want {
			t.Errorf("KernelDecap(%s) = %v, want %v", tt.data, got, tt.want)
		}
	}
	a := Attrs{BackendData: json.RawMessage(`{"Other":[1,2]}`)}
	if err := a.SetKernelDecap(true); err != nil || !a.KernelDecap() || string(a.BackendData) != `{"Other":[1,2],"WeftDecap":"kernel"}` {
		t.Errorf("advertised: %s, %v", a.BackendData, err)
	}
	if err := a.SetKernelDecap(false); err != nil || a.KernelDecap() || string(a.BackendData) != `{"Other":[1,2]}` {
		t.Errorf("withdrawn: %s, %v", a.BackendData, err)
	}
	b := Attrs{}
	if err := b.SetKernelDecap(true); err != nil || string(b.BackendData) != `{"WeftDecap":"kernel"}` {
		t.Errorf("on an empty lease: %s, %v", b.BackendData, err)
	}
	if err := b.SetKernelDecap(false); err != nil || b.BackendData != nil {
		t.Errorf("withdrawn from weft's own: %s, %v; want BackendData gone, as a udp flanneld writes it", b.BackendData, err)
	}
}

// Whatever a peer wrote, setting and withdrawing the advertisement does
// what it says, and keeps the peer's other fields.
func FuzzKernelDecap(f *testing.F) {
	for _, s := range []string{"", "null", `{}`, `{"WeftDecap":"kernel"}`, `{"a":1}`, `[1]`, `{"WeftDecap":1,"b":{"c":null}}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		a := Attrs{BackendData: data}
		_ = a.KernelDecap()
		var before map[string]json.RawMessage
		isObject := len(data) > 0 && data[0] == '{' && json.Unmarshal(data, &before) == nil
		for _, on := range []bool{true, false, true} {
			if err := a.SetKernelDecap(on); err != nil {
				t.Fatalf("SetKernelDecap(%v) on %q: %v", on, data, err)
			}
			if a.KernelDecap() != on {
				t.Fatalf("SetKernelDecap(%v) on %q gave %s", on, data, a.BackendData)
			}
		}
		if !isObject {
			return
		}
		var after map[string]json.RawMessage
		if err := json.Unmarshal(a.BackendData, &after); err != nil {
			t.Fatalf("BackendData %s is not an object: %v", a.BackendData, err)
		}
		for k := range before {
			if k != kernelDecapKey {
				if _, ok := after[k]; !ok {
					t.Fatalf("field %q of %q lost: %s", k, data, a.BackendData)
				}
			}
		}
	})
}
