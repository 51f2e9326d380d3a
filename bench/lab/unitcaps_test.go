package lab

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/status"
)

// unitCaps is the capability set the shipped unit gives weft, read from
// systemd/weft.service's AmbientCapabilities (which its
// CapabilityBoundingSet must equal), in setpriv's spelling.
func unitCaps(t *testing.T) capSet {
	t.Helper()
	f, err := os.Open("../../systemd/weft.service")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sets := map[string]capSet{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(strings.TrimSpace(sc.Text()), "=")
		if !ok || (k != "AmbientCapabilities" && k != "CapabilityBoundingSet") {
			continue
		}
		for _, c := range strings.Fields(v) {
			sets[k] = append(sets[k], strings.ToLower(strings.TrimPrefix(c, "CAP_")))
		}
	}
	amb, bnd := sets["AmbientCapabilities"], sets["CapabilityBoundingSet"]
	if len(amb) == 0 || strings.Join(amb, ",") != strings.Join(bnd, ",") {
		t.Fatalf("weft.service: AmbientCapabilities %v and CapabilityBoundingSet %v, want one non-empty set", amb, bnd)
	}
	return amb
}

// startWithUnitCaps starts weft on node i as the unit runs it: exactly the
// unit's capabilities, and no new privileges.
func startWithUnitCaps(t *testing.T, l *Lab, i int, caps capSet) {
	t.Helper()
	args := append(caps.setprivArgs(), "--no-new-privs", "--", weft(t))
	if err := l.StartDaemon(i, "setpriv", append(args, l.WeftArgs(i)...), nil); err != nil {
		t.Fatal(err)
	}
}

// wantAttach is how the fast path attaches on the running kernel: TCX
// from Linux 6.6, clsact before.
func wantAttach(t *testing.T) string {
	t.Helper()
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		t.Fatal(err)
	}
	rel := unix.ByteSliceToString(u.Release[:])
	major, rest, _ := strings.Cut(rel, ".")
	minor, _, _ := strings.Cut(rest, ".")
	ma, err1 := strconv.Atoi(major)
	mi, err2 := strconv.Atoi(strings.TrimRightFunc(minor, func(r rune) bool { return r < '0' || r > '9' }))
	if err1 != nil || err2 != nil {
		t.Fatalf("kernel release %q: cannot read its version", rel)
	}
	if ma > 6 || (ma == 6 && mi >= 6) {
		return "tcx"
	}
	return "clsact"
}

// TestE2EFastPathUnitCaps: two nodes with exactly the shipped unit's
// capabilities (CAP_NET_ADMIN, CAP_NET_RAW, CAP_BPF; no CAP_PERFMON, no
// CAP_SYS_ADMIN) and no-new-privileges run the fast path: both programs
// load under the verifier's rules for a loader without CAP_PERFMON
// (Linux 6.1's are stricter there than later kernels'), the kernel
// carries a transfer each way byte-exact, and nothing is said at WARN.
func TestE2EFastPathUnitCaps(t *testing.T) {
	t.Parallel()
	requireSetpriv(t)
	caps := unitCaps(t)
	l := newE2ELab(t, Options{Nodes: 2})
	for i := range 2 {
		startWithUnitCaps(t, l, i, caps)
	}
	waitAllReady(t, l)
	waitMesh(t, l)
	attach := wantAttach(t)
	for i := range 2 {
		requireCaps(t, l, i, caps)
		if _, fp := fastPathOf(t, l, i); !fp.Running || fp.Attach != attach {
			t.Fatalf("n%d with the unit's capabilities %v: fastPath %+v, want running by %s\n%s", i, caps, fp, attach, l.Log(i))
		}
		if w := linesWith(l.Log(i), "level=WARN", "fast path"); len(w) != 0 {
			t.Errorf("n%d: fast path WARN lines %q, want none", i, w)
		}
	}
	waitPeerPath(t, l, 0, subnetOf(t, l, 1), status.PathKernel, 10*time.Second)
	waitPeerPath(t, l, 1, subnetOf(t, l, 0), status.PathKernel, 10*time.Second)
	before := kernelTraffic(mustStatus(t, l, 0))
	transferBoth(t, l, 0, 1, 4<<20)
	after := kernelTraffic(mustStatus(t, l, 0))
	if after.TxBytes-before.TxBytes < 4<<20*9/10 || after.RxBytes-before.RxBytes < 4<<20*9/10 {
		t.Errorf("n0's kernel path did not carry the transfers: %+v -> %+v", before, after)
	}
	st := mustStatus(t, l, 0)
	t.Logf("unit's capabilities %v: fast path by %s, kernel path n0 %+v; offloads %+v", caps, attach, after, st.Offloads)
	// With CAP_BPF every probe is conclusive, and the attach in use is
	// among the features found.
	if st.Kernel == nil {
		t.Fatal("n0's status has no kernel section")
	}
	var found []string
	for _, f := range st.Kernel.Features {
		if f.Unknown() && !strings.HasPrefix(f.Name, "tun_") && !strings.HasPrefix(f.Name, "udp_") {
			t.Errorf("n0 with the unit's capabilities: kernel feature %s unknown: %s", f.Name, f.Detail)
		}
		if f.Name == attach && !f.Detected {
			t.Errorf("n0 attached by %s but its status says %s is missing: %+v", attach, attach, f)
		}
		found = append(found, fmt.Sprintf("%s=%v", f.Name, f.Detected))
	}
	t.Logf("kernel %s: %s", st.Kernel.Release, strings.Join(found, " "))
}
