package lab

// End-to-end tests of weft under kube-flannel.yml's securityContext: not
// privileged, the container runtime's default capabilities plus the
// manifest's, and a /dev of the runtime's (a tmpfs without net/tun). Each
// daemon runs in a mount namespace of its own (unshare -m inside the lab
// node's ip netns exec) with a fresh tmpfs on /dev holding only the usual
// character devices, bind-mounted from the host, under setpriv with exactly
// the capability set given: bounding, inheritable and ambient all equal to
// it, so that root's effective set after exec is that set and no more.
//
// What a runtime adds beyond that is left out: the device cgroup (its
// default rules allow c 10:200 and mknod, so it changes nothing here), the
// seccomp profile (kube-flannel.yml asks for none) and the other
// namespaces.

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/status"
)

// runtimeDefaultCaps is the default capability set of containerd
// (oci.defaultUnixCaps) and Docker: what a container gets unless its
// securityContext adds or drops some. CRI-O's (default_capabilities) has
// no MKNOD, NET_RAW, SYS_CHROOT, SETFCAP or AUDIT_WRITE: there weft meets
// TestE2EContainerNoMknod's case.
var runtimeDefaultCaps = []string{
	"chown", "dac_override", "fsetid", "fowner", "mknod", "net_raw", "setgid", "setuid",
	"setfcap", "setpcap", "net_bind_service", "sys_chroot", "kill", "audit_write",
}

// manifestCaps is what kube-flannel.yml's securityContext adds.
var manifestCaps = []string{"net_admin", "net_raw"}

// capSet is a list of capability names as setpriv spells them (lower
// case, no CAP_), without duplicates.
type capSet []string

// containerCaps is the runtime's default set plus add, less drop.
func containerCaps(add []string, drop ...string) capSet {
	var out capSet
	for _, c := range append(append([]string{}, runtimeDefaultCaps...), add...) {
		if !slices.Contains(out, c) && !slices.Contains(drop, c) {
			out = append(out, c)
		}
	}
	return out
}

// capNumbers maps the names used here to their numbers.
var capNumbers = map[string]int{
	"chown": unix.CAP_CHOWN, "dac_override": unix.CAP_DAC_OVERRIDE, "fsetid": unix.CAP_FSETID,
	"fowner": unix.CAP_FOWNER, "mknod": unix.CAP_MKNOD, "net_raw": unix.CAP_NET_RAW,
	"setgid": unix.CAP_SETGID, "setuid": unix.CAP_SETUID, "setfcap": unix.CAP_SETFCAP,
	"setpcap": unix.CAP_SETPCAP, "net_bind_service": unix.CAP_NET_BIND_SERVICE,
	"sys_chroot": unix.CAP_SYS_CHROOT, "kill": unix.CAP_KILL, "audit_write": unix.CAP_AUDIT_WRITE,
	"net_admin": unix.CAP_NET_ADMIN, "bpf": unix.CAP_BPF, "perfmon": unix.CAP_PERFMON,
	"sys_admin": unix.CAP_SYS_ADMIN,
}

// mask is the set as a capability bit mask, as /proc/PID/status shows it.
func (s capSet) mask(t *testing.T) uint64 {
	t.Helper()
	var m uint64
	for _, c := range s {
		n, ok := capNumbers[c]
		if !ok {
			t.Fatalf("unknown capability %q", c)
		}
		m |= 1 << n
	}
	return m
}

// setprivArgs gives root exactly s: setpriv's own capabilities before it
// execs are the lab's (all), and root's permitted set after exec is the
// inheritable set plus the bounding set, so both are cut to s; ambient
// too, as a runtime sets it for a non-root user.
func (s capSet) setprivArgs() []string {
	list := "-all"
	for _, c := range s {
		list += ",+" + c
	}
	return []string{"--reuid=0", "--regid=0", "--init-groups",
		"--inh-caps=" + list, "--ambient-caps=" + list, "--bounding-set=" + list}
}

// containerDev is the shell that gives the daemon a container's /dev and
// execs setpriv "$@": a tmpfs as runc mounts it (nosuid, mode 755, not
// nodev), the character devices runc creates bind-mounted from the host,
// the usual links, and no net/tun. $1 is a scratch directory on the host.
const containerDev = `set -eu
stage=$1/dev; shift
mkdir -p "$stage"
mount -t tmpfs -o nosuid,mode=755,size=65536k weft-dev "$stage"
for d in null zero full random urandom tty; do
	: >"$stage/$d"
	mount --bind "/dev/$d" "$stage/$d"
done
mkdir "$stage/pts" "$stage/shm"
ln -s /proc/self/fd "$stage/fd"
ln -s /proc/self/fd/0 "$stage/stdin"
ln -s /proc/self/fd/1 "$stage/stdout"
ln -s /proc/self/fd/2 "$stage/stderr"
mount --move "$stage" /dev
if [ -e /dev/net/tun ]; then echo "weftlab: /dev/net/tun in the container's /dev" >&2; exit 99; fi
exec setpriv "$@"
`

// startInContainer starts weft on node i as a container would run it:
// its own mount namespace with a container's /dev, and exactly caps. The
// chain (unshare, sh, setpriv) execs in place, so the PID the lab tracks
// and stops is weft's.
func startInContainer(t *testing.T, l *Lab, i int, caps capSet, extraArgs ...string) {
	t.Helper()
	scratch := filepath.Join(l.Node(i).Dir, "container")
	if err := os.MkdirAll(scratch, 0o755); err != nil {
		t.Fatal(err)
	}
	// In a file, so the log's start line stays one line.
	script := filepath.Join(scratch, "dev.sh")
	if err := os.WriteFile(script, []byte(containerDev), 0o644); err != nil {
		t.Fatal(err)
	}
	args := []string{"--mount", "--propagation=private", "--", "sh", script, scratch}
	args = append(args, caps.setprivArgs()...)
	args = append(args, "--", weft(t))
	args = append(append(args, l.WeftArgs(i)...), extraArgs...)
	if err := l.StartDaemon(i, "unshare", args, nil); err != nil {
		t.Fatal(err)
	}
}

// procCaps reads pid's capability sets from /proc/PID/status.
func procCaps(t *testing.T, pid int) map[string]uint64 {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]uint64{}
	for line := range strings.Lines(string(b)) {
		k, v, ok := strings.Cut(line, ":")
		if !ok || !strings.HasPrefix(k, "Cap") {
			continue
		}
		n, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
		if err != nil {
			t.Fatal(err)
		}
		out[k] = n
	}
	return out
}

// requireCaps fails unless node i's weft holds exactly caps, effective,
// permitted and bounding.
func requireCaps(t *testing.T, l *Lab, i int, caps capSet) {
	t.Helper()
	want := caps.mask(t)
	got := procCaps(t, weftPID(t, l, i))
	for _, k := range []string{"CapEff", "CapPrm", "CapBnd"} {
		if got[k] != want {
			t.Fatalf("n%d weft %s %#x, want %#x (%s)", i, k, got[k], want, strings.Join(caps, ","))
		}
	}
}

// containerTUN stats /dev/net/tun in node i's weft's mount namespace.
func containerTUN(t *testing.T, l *Lab, i int) (unix.Stat_t, error) {
	t.Helper()
	var st unix.Stat_t
	err := unix.Stat(fmt.Sprintf("/proc/%d/root/dev/net/tun", weftPID(t, l, i)), &st)
	return st, err
}

// linesWith are the lines of s holding every one of subs.
func linesWith(s string, subs ...string) []string {
	var out []string
	for line := range strings.Lines(s) {
		ok := true
		for _, sub := range subs {
			ok = ok && strings.Contains(line, sub)
		}
		if ok {
			out = append(out, strings.TrimSpace(line))
		}
	}
	return out
}

// fastPathWarn is the start of the WARN a node without the fast path logs.
const fastPathWarn = `level=WARN msg="kernel fast path not running`

// transferBoth moves size bytes each way between nodes a and b, byte-exact.
func transferBoth(t *testing.T, l *Lab, a, b int, size int64) {
	t.Helper()
	for _, pair := range [][2]int{{a, b}, {b, a}} {
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		r, err := l.Transfer(ctx, pair[0], pair[1], size)
		cancel()
		if err != nil || !r.Match() || r.Bytes != size {
			t.Fatalf("transfer n%d -> n%d: %+v, %v", pair[0], pair[1], r, err)
		}
		t.Logf("n%d -> n%d: %d bytes byte-exact", pair[0], pair[1], r.Bytes)
	}
}

// requireCreatedTUN fails unless node i's weft has a /dev/net/tun it made
// (c 10:200, 0600) and said so once at INFO.
func requireCreatedTUN(t *testing.T, l *Lab, i int, log string) {
	t.Helper()
	st, err := containerTUN(t, l, i)
	if err != nil || st.Mode != unix.S_IFCHR|0o600 || unix.Major(st.Rdev) != 10 || unix.Minor(st.Rdev) != 200 {
		t.Errorf("n%d container's /dev/net/tun: mode %#o, device %d:%d, %v; want c 10:200 of mode 0600",
			i, st.Mode, unix.Major(st.Rdev), unix.Minor(st.Rdev), err)
	}
	created := linesWith(log, "created the missing TUN clone device")
	if len(created) != 1 || !strings.Contains(created[0], "level=INFO") || !strings.Contains(created[0], "path=/dev/net/tun") {
		t.Errorf("n%d: lines saying the TUN node was created: %q, want one at INFO", i, created)
	}
	for _, line := range created {
		t.Logf("n%d: %s", i, line)
	}
}

// TestE2EContainerUserspace: under kube-flannel.yml's securityContext
// exactly (the runtime's default capabilities plus NET_ADMIN and NET_RAW,
// a /dev without net/tun), where flanneld fails with "open /dev/net/tun: no
// such file or directory" (flannel-io/flannel#1267), weft creates the TUN
// node, becomes ready on the userspace path and exchanges traffic
// byte-exact with a fast-path peer; it says once, at WARN, that the fast
// path wants CAP_BPF, and how to grant it in a unit and in a manifest.
func TestE2EContainerUserspace(t *testing.T) {
	t.Parallel()
	requireSetpriv(t)
	l := newE2ELab(t, Options{Nodes: 2})
	if err := l.StartWeft(0); err != nil {
		t.Fatal(err)
	}
	caps := containerCaps(manifestCaps)
	startInContainer(t, l, 1, caps)
	waitAllReady(t, l)
	waitMesh(t, l)
	requireCaps(t, l, 1, caps)
	log := l.Log(1)
	requireCreatedTUN(t, l, 1, log)
	requireFastPath(t, l, 0)
	if _, fp := fastPathOf(t, l, 1); fp.Running || !strings.Contains(fp.Reason, "missing CAP_BPF,") {
		t.Errorf("n1: fastPath %+v, want not running for want of CAP_BPF", fp)
	}
	warns := linesWith(log, "level=WARN", "fast path")
	if len(warns) != 1 || !strings.HasPrefix(warns[0][strings.Index(warns[0], "level="):], fastPathWarn) {
		t.Fatalf("n1: fast path WARN lines %q, want one", warns)
	}
	for _, want := range []string{" missing=CAP_BPF ", "AmbientCapabilities=", "securityContext.capabilities.add: [BPF]", "CAP_SYS_ADMIN"} {
		if !strings.Contains(warns[0], want) {
			t.Errorf("n1: the fast path WARN does not say %q: %s", want, warns[0])
		}
	}
	t.Logf("n1: %s", warns[0])
	transferBoth(t, l, 0, 1, 1<<20)
	if s := mustStatus(t, l, 1); kernelTraffic(s) != (status.Traffic{}) {
		t.Errorf("n1 without a fast path has kernel counters %+v", s.Counters.Paths)
	}
	if code, err := l.StopWeft(1); err != nil || code != 0 {
		t.Fatalf("stop n1: exit %d, %v", code, err)
	}
	if n := len(linesWith(l.Log(1), "level=WARN", "fast path")); n != 1 {
		t.Errorf("n1: %d fast path WARN lines over its whole run, want 1", n)
	}
}

// TestE2EContainerFastPath: the same container with the capabilities the
// fast path needs added runs it: BPF alone (what deploy/'s manifest adds;
// CAP_NET_ADMIN the manifest has), BPF and PERFMON, or SYS_ADMIN instead;
// the kernel path carries traffic and nothing is said at WARN. PERFMON
// without BPF does not do.
func TestE2EContainerFastPath(t *testing.T) {
	t.Parallel()
	requireSetpriv(t)
	l := newE2ELab(t, Options{Nodes: 2})
	if err := l.StartWeft(0); err != nil {
		t.Fatal(err)
	}
	if err := l.WaitReady(0, readyTimeout); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		add     []string
		running bool
	}{
		{[]string{"bpf"}, true},
		{[]string{"bpf", "perfmon"}, true},
		{[]string{"sys_admin"}, true},
		{[]string{"perfmon"}, false},
	} {
		name := "+" + strings.Join(tc.add, "+")
		caps := containerCaps(append(slices.Clone(manifestCaps), tc.add...))
		at := len(l.Log(1))
		startInContainer(t, l, 1, caps)
		if err := l.WaitReady(1, readyTimeout); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		waitMesh(t, l)
		requireCaps(t, l, 1, caps)
		log := l.Log(1)[at:]
		requireCreatedTUN(t, l, 1, log)
		_, fp := fastPathOf(t, l, 1)
		warns := linesWith(log, "level=WARN", "fast path")
		if fp.Running != tc.running {
			t.Errorf("%s: fastPath %+v, want running %v", name, fp, tc.running)
		}
		if tc.running {
			if len(warns) != 0 {
				t.Errorf("%s: fast path WARN lines %q, want none", name, warns)
			}
			sub0 := subnetOf(t, l, 0)
			waitPeerPath(t, l, 1, sub0, status.PathKernel, 5*time.Second)
			before := kernelTraffic(mustStatus(t, l, 1))
			transferBoth(t, l, 0, 1, 1<<20)
			if after := kernelTraffic(mustStatus(t, l, 1)); after.TxPackets == before.TxPackets {
				t.Errorf("%s: n1's kernel path encapsulated nothing toward n0", name)
			}
			t.Logf("%s: fast path running, attached by %s", name, fp.Attach)
		} else {
			if len(warns) != 1 || !strings.Contains(warns[0], " missing=CAP_BPF ") {
				t.Errorf("%s: fast path WARN lines %q, want one naming missing=CAP_BPF", name, warns)
			}
			t.Logf("%s: %s", name, fp.Reason)
		}
		if code, err := l.StopWeft(1); err != nil || code != 0 {
			t.Fatalf("%s: stop n1: exit %d, %v", name, code, err)
		}
	}
}

// TestE2EContainerNoMknod: the same container without CAP_MKNOD (CRI-O's
// defaults, or a securityContext that drops it or ALL) cannot create the TUN node:
// weft exits 1 with one error saying what failed and naming both fixes,
// CAP_MKNOD and the host's device as a hostPath volume.
func TestE2EContainerNoMknod(t *testing.T) {
	t.Parallel()
	requireSetpriv(t)
	l := newE2ELab(t, Options{Nodes: 1})
	caps := containerCaps(manifestCaps, "mknod")
	start := time.Now()
	startInContainer(t, l, 0, caps)
	code, err := l.WaitExit(0, readyTimeout)
	if err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("weft took %v to fail, want under 5 s", ms(took))
	}
	log := l.Log(0)
	const want = "open /dev/net/tun: no such file or directory, and creating it failed " +
		"(mknod /dev/net/tun: operation not permitted): give the container CAP_MKNOD (a default of containerd " +
		"and Docker, not of CRI-O) or mount the host's /dev/net/tun into the container (Kubernetes: a hostPath volume of type CharDevice)"
	errs := linesWith(log, "/dev/net/tun")
	if code != 1 || len(errs) != 1 || !strings.Contains(errs[0], want) {
		t.Fatalf("exit %d; lines naming /dev/net/tun: %q; want exit 1 and one line saying %q", code, errs, want)
	}
	t.Logf("exit %d after %v: %s", code, ms(time.Since(start)), errs[0])
}
