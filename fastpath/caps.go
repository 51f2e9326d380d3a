package fastpath

import "golang.org/x/sys/unix"

// HasCap reports whether the process holds capability c in its effective
// set; when it cannot tell, it says yes and lets the privileged call decide.
func HasCap(c int) bool {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData // version 3 writes two
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return true
	}
	return data[c/32].Effective&(1<<(uint(c)%32)) != 0
}

// MissingCaps names the capabilities the fast path needs that has says
// the process lacks. Measured on Linux 6.18 with the runtime's default set
// plus NET_ADMIN: without CAP_BPF the kernel refuses to create the maps
// (EPERM, which cilium/ebpf words as "MEMLOCK may be too low": since Linux
// 5.11 eBPF memory is charged to the memory cgroup, no RLIMIT_MEMLOCK or
// CAP_SYS_RESOURCE is involved); without CAP_NET_ADMIN it refuses to load
// the tc programs (EPERM), and clsact's qdisc and filters need it too.
// CAP_SYS_ADMIN covers CAP_BPF (and CAP_PERFMON), not CAP_NET_ADMIN for
// clsact. CAP_PERFMON is not needed: the programs make no stack store
// Linux 6.1's verifier wants it for (stack_test.go).
func MissingCaps(has func(int) bool) []string {
	var missing []string
	if !has(unix.CAP_BPF) && !has(unix.CAP_SYS_ADMIN) {
		missing = append(missing, "CAP_BPF")
	}
	if !has(unix.CAP_NET_ADMIN) {
		missing = append(missing, "CAP_NET_ADMIN")
	}
	return missing
}
