package node

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// holding is a hasCap over exactly caps.
func holding(caps ...int) func(int) bool {
	return func(c int) bool { return slices.Contains(caps, c) }
}

// Only the verifier's own refusal (EACCES with a log), without CAP_PERFMON
// or CAP_SYS_ADMIN, is taken for a want of CAP_PERFMON.
func TestVerifierWantsPerfmon(t *testing.T) {
	refusal := fmt.Errorf("fastpath: load eBPF programs: %w",
		&ebpf.VerifierError{Cause: unix.EACCES, Log: []string{"invalid read from stack off -8+0 size 8"}})
	other := fmt.Errorf("fastpath: load eBPF programs: %w", &ebpf.VerifierError{Cause: unix.EINVAL})
	base := []int{unix.CAP_NET_ADMIN, unix.CAP_BPF}
	for _, tc := range []struct {
		name string
		has  []int
		err  error
		want bool
	}{
		{"refused without PERFMON", base, refusal, true},
		{"refused with PERFMON", append(base, unix.CAP_PERFMON), refusal, false},
		{"refused with SYS_ADMIN", append(base, unix.CAP_SYS_ADMIN), refusal, false},
		{"EINVAL", base, other, false},
		{"EACCES without a verifier log", base, fmt.Errorf("load: %w", unix.EACCES), false},
	} {
		if got := verifierWantsPerfmon(holding(tc.has...), tc.err); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}

// The WARN's reason keeps naming CAP_BPF (what TestE2EFastPathFallback and
// -fast-path=on's exit look for), and its fix names the grant in both a
// systemd unit and a Kubernetes manifest.
func TestMissingCapsError(t *testing.T) {
	e := &missingCapsError{missing: []string{"CAP_BPF"}}
	if msg := e.Error(); msg != "missing CAP_BPF, which loading and attaching the fast path's eBPF programs needs" {
		t.Errorf("error %q", msg)
	}
	for _, tc := range []struct {
		missing []string
		want    []string
	}{
		{[]string{"CAP_BPF"}, []string{"AmbientCapabilities=", "add CAP_BPF to", "securityContext.capabilities.add: [BPF]", "CAP_SYS_ADMIN", "-fast-path=off"}},
		{[]string{"CAP_BPF", "CAP_NET_ADMIN"}, []string{"add CAP_BPF CAP_NET_ADMIN to AmbientCapabilities=", "securityContext.capabilities.add: [BPF, NET_ADMIN]"}},
	} {
		fix := (&missingCapsError{missing: tc.missing}).fix()
		for _, w := range tc.want {
			if !strings.Contains(fix, w) {
				t.Errorf("fix for %v: %q does not say %q", tc.missing, fix, w)
			}
		}
	}
	cause := fmt.Errorf("load: %w", &ebpf.VerifierError{Cause: unix.EACCES})
	e = &missingCapsError{missing: []string{"CAP_PERFMON"}, err: cause}
	if !errors.Is(e, unix.EACCES) || !strings.HasPrefix(e.Error(), "missing CAP_PERFMON, which") || !strings.HasSuffix(e.Error(), "on this kernel: "+cause.Error()) {
		t.Errorf("error %q (%v)", e, errors.Is(e, unix.EACCES))
	}
}
