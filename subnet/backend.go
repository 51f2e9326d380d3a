package subnet

import (
	"bytes"
	"encoding/json"
	"fmt"
)

// kernelDecapKey is the field of a lease's BackendData by which a weft node
// says that its kernel decapsulates flannel's udp datagrams (its fast path
// runs), so peers may encapsulate toward it in their kernels. Stock
// flanneld's udp backend neither writes nor reads BackendData.
const kernelDecapKey = "WeftDecap"

// KernelDecap reports whether the lease advertises in-kernel
// decapsulation. BackendData that is absent, not an object or says
// anything else means no: the peer then gets finished datagrams from the
// userspace path.
func (a Attrs) KernelDecap() bool {
	if len(a.BackendData) == 0 || a.BackendData[0] != '{' {
		return false
	}
	// The key exactly, not encoding/json's case-insensitive match: another
	// writer's "weftdecap" is a field of its own, kept as it is.
	var fields map[string]json.RawMessage
	if json.Unmarshal(a.BackendData, &fields) != nil {
		return false
	}
	var v string
	return json.Unmarshal(fields[kernelDecapKey], &v) == nil && v == "kernel"
}

// SetKernelDecap advertises in-kernel decapsulation (on) or withdraws it,
// keeping every other field of a BackendData object as written. BackendData
// that is not an object is replaced, as only weft writes it for udp leases.
func (a *Attrs) SetKernelDecap(on bool) error {
	fields := map[string]json.RawMessage{}
	if len(a.BackendData) > 0 && a.BackendData[0] == '{' {
		if err := json.Unmarshal(a.BackendData, &fields); err != nil {
			fields = map[string]json.RawMessage{}
		}
	}
	if on {
		fields[kernelDecapKey] = json.RawMessage(`"kernel"`)
	} else {
		delete(fields, kernelDecapKey)
	}
	if len(fields) == 0 {
		a.BackendData = nil
		return nil
	}
	data, err := json.Marshal(fields)
	if err != nil {
		return fmt.Errorf("lease BackendData: %w", err)
	}
	var out bytes.Buffer
	if err := json.Compact(&out, data); err != nil {
		return fmt.Errorf("lease BackendData: %w", err)
	}
	a.BackendData = out.Bytes()
	return nil
}
