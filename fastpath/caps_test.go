package fastpath

import (
	"slices"
	"testing"

	"golang.org/x/sys/unix"
)

// The fast path's capability check names exactly what is missing: CAP_BPF
// (which CAP_SYS_ADMIN covers) and CAP_NET_ADMIN; not CAP_PERFMON, which
// only some kernels' verifiers want (see TestVerifierWantsPerfmon).
func TestMissingCaps(t *testing.T) {
	for _, tc := range []struct {
		name string
		has  []int
		want []string
	}{
		{"kube-flannel.yml (NET_ADMIN, NET_RAW)", []int{unix.CAP_NET_ADMIN, unix.CAP_NET_RAW}, []string{"CAP_BPF"}},
		{"plus BPF", []int{unix.CAP_NET_ADMIN, unix.CAP_BPF}, nil},
		{"plus BPF and PERFMON", []int{unix.CAP_NET_ADMIN, unix.CAP_BPF, unix.CAP_PERFMON}, nil},
		{"plus SYS_ADMIN", []int{unix.CAP_NET_ADMIN, unix.CAP_SYS_ADMIN}, nil},
		{"PERFMON alone is not BPF", []int{unix.CAP_NET_ADMIN, unix.CAP_PERFMON}, []string{"CAP_BPF"}},
		{"nothing", nil, []string{"CAP_BPF", "CAP_NET_ADMIN"}},
		{"BPF without NET_ADMIN", []int{unix.CAP_BPF}, []string{"CAP_NET_ADMIN"}},
	} {
		if got := MissingCaps(func(c int) bool { return slices.Contains(tc.has, c) }); !slices.Equal(got, tc.want) {
			t.Errorf("%s: missing %v, want %v", tc.name, got, tc.want)
		}
	}
}
