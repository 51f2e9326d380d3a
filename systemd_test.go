package main

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/fastpath"
	"github.com/weft-net/weft/internal/netnstest"
	"github.com/weft-net/weft/tunnel"
)

// TestUnitFileVerifies runs systemd-analyze verify on systemd/weft.service
// (with ExecStart pointed at an executable that exists here) and requires
// it to pass without a single warning, and the hardening to be in place.
func TestUnitFileVerifies(t *testing.T) {
	analyze := netnstest.RequireTool(t, "systemd-analyze", "systemd")
	unit, err := os.ReadFile("systemd/weft.service")
	if err != nil {
		t.Fatal(err)
	}
	text := string(unit)
	for _, want := range []string{
		"Type=notify", "After=network-online.target etcd.service", "Before=docker.service", "Restart=always",
		"WatchdogSec=", "CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW CAP_BPF\n",
		"AmbientCapabilities=CAP_NET_ADMIN CAP_NET_RAW CAP_BPF\n", "LimitMEMLOCK=infinity", "NoNewPrivileges=yes",
		"ProtectSystem=strict", "ProtectHome=yes", "ExecReload=",
		// the iptables tools' lock, for FORWARD's accepts on Docker hosts
		"ExecStartPre=+/usr/bin/touch /run/xtables.lock", "ReadWritePaths=/run/flannel /run/weft -/run/xtables.lock",
		"RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX AF_NETLINK",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("unit lacks %q", want)
		}
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "weft.service")
	if err := os.WriteFile(path, []byte(strings.ReplaceAll(text, "/usr/local/bin/weft", self)), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(analyze, "verify", path).CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) != 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
}

// TestUnitXtablesLock: under ProtectSystem=strict /run is read-only, and
// iptables-legacy -w (what go-iptables runs, on Docker hosts) fails when its
// lock file is not there yet. The unit's ExecStartPre, run before the
// sandbox as systemd does with "+", makes it work. /run is emulated as the
// sandbox has it: an empty tmpfs, read-only, in a mount and network
// namespace of the test's own.
func TestUnitXtablesLock(t *testing.T) {
	netnstest.SkipUnlessRoot(t)
	netnstest.RequireTool(t, "unshare", "util-linux")
	netnstest.RequireTool(t, "iptables-legacy", "iptables")
	unit, err := os.ReadFile("systemd/weft.service")
	if err != nil {
		t.Fatal(err)
	}
	var pre string
	for line := range strings.Lines(string(unit)) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "ExecStartPre=+"); ok {
			pre = v
		}
	}
	if pre == "" {
		t.Fatal("the unit has no ExecStartPre=+ for the xtables lock")
	}
	ns := netnstest.New(t)
	sandbox := func(before string) (string, error) {
		script := "mount --make-rprivate / && mount -t tmpfs none /run && " + before +
			" mount -o remount,ro /run && iptables-legacy -w 5 -S FORWARD"
		return ns.Run("", "unshare", "--mount", "sh", "-c", script)
	}
	if out, err := sandbox(""); err == nil || !strings.Contains(out, "xtables.lock") {
		t.Errorf("without ExecStartPre: %v\n%s\nwant iptables-legacy to fail on its lock: the test shows nothing", err, out)
	}
	if out, err := sandbox(pre + " &&"); err != nil || !strings.Contains(out, "-P FORWARD") {
		t.Errorf("with the unit's ExecStartPre (%s): %v\n%s", pre, err, out)
	}
}

// fastPathChildEnv marks the child TestUnitCapabilitiesFastPath starts and
// carries it the TUN's and the underlay's ifindexes and the effective
// capabilities it must have: "tun,underlay,hexmask".
const fastPathChildEnv = "WEFT_TEST_UNIT_CAPS_CHILD"

// fastPathChildOK is the line the child prints once the fast path loaded,
// attached in both modes and detached.
const fastPathChildOK = "fast path loaded, attached and detached"

// fastPathCaps are the capabilities the eBPF fast path needs (CAP_NET_RAW
// is the userspace path's): each must be in the unit, and each must be
// necessary.
var fastPathCaps = []string{"CAP_NET_ADMIN", "CAP_BPF"}

// capNumbers are the capabilities the unit may name.
var capNumbers = map[string]int{
	"CAP_NET_ADMIN": unix.CAP_NET_ADMIN, "CAP_NET_RAW": unix.CAP_NET_RAW, "CAP_BPF": unix.CAP_BPF,
	"CAP_PERFMON": unix.CAP_PERFMON, "CAP_SYS_ADMIN": unix.CAP_SYS_ADMIN, "CAP_SYS_RESOURCE": unix.CAP_SYS_RESOURCE,
	"CAP_IPC_LOCK": unix.CAP_IPC_LOCK,
}

// TestUnitCapabilitiesFastPath: with exactly the unit's capabilities weft
// loads its eBPF programs, attaches them by TCX and by clsact and detaches
// them; without any one of fastPathCaps it cannot. The test binary runs
// itself again as the child, in a namespace of the test's own, as the unit
// would run weft: root whose bounding set is CapabilityBoundingSet (root
// keeps across exec exactly what the bounding set leaves), with the
// unit's ambient capabilities and no_new_privs.
func TestUnitCapabilitiesFastPath(t *testing.T) {
	if env, ok := os.LookupEnv(fastPathChildEnv); ok {
		fastPathCapsChild(t, env)
		return
	}
	netnstest.SkipUnlessRoot(t)
	netnstest.RequireTool(t, "setpriv", "util-linux")
	netnstest.RequireTool(t, "ip", "iproute2")
	caps := unitCaps(t)
	ns := netnstest.New(t)
	netnstest.Veth{A: netnstest.End{NS: ns, Name: "ul", Addr: "198.18.61.1/24"}, B: netnstest.End{NS: ns, Name: "ulpeer"}}.Add(t)
	var dev tunnel.Device
	if err := ns.Do(func() (err error) { dev, err = tunnel.OpenTUN("udp0", 1472); return err }); err != nil {
		t.Fatalf("open TUN in %s: %v", ns.Name, err)
	}
	t.Cleanup(func() { dev.Close() })
	ns.LinkUp(t, "udp0")
	tun, ul := ns.Link(t, "udp0").Attrs().Index, ns.Link(t, "ul").Attrs().Index
	out, err := runWithCaps(t, ns, caps, tun, ul)
	if err != nil || !strings.Contains(out, fastPathChildOK) {
		t.Fatalf("with the unit's capabilities %v: %v\n%s", caps, err, out)
	}
	t.Logf("with %v: %s", caps, childResult(out))
	for _, c := range fastPathCaps {
		if !slices.Contains(caps, c) {
			t.Errorf("the unit lacks %s, which the fast path needs", c)
			continue
		}
		fewer := slices.DeleteFunc(slices.Clone(caps), func(s string) bool { return s == c })
		out, err := runWithCaps(t, ns, fewer, tun, ul)
		if err == nil || !strings.Contains(out, "operation not permitted") && !strings.Contains(out, "permission denied") {
			t.Errorf("without %s: %v\n%s\nwant the fast path refused for want of privilege: the test shows nothing", c, err, out)
			continue
		}
		t.Logf("without %s: %s", c, childResult(out))
	}
}

// unitCaps returns the unit's CapabilityBoundingSet, requiring
// AmbientCapabilities to be the same.
func unitCaps(t *testing.T) []string {
	t.Helper()
	unit, err := os.ReadFile("systemd/weft.service")
	if err != nil {
		t.Fatal(err)
	}
	var bounding, ambient []string
	for line := range strings.Lines(string(unit)) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "CapabilityBoundingSet="); ok {
			bounding = strings.Fields(v)
		}
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "AmbientCapabilities="); ok {
			ambient = strings.Fields(v)
		}
	}
	if len(bounding) == 0 || !slices.Equal(bounding, ambient) {
		t.Fatalf("the unit's CapabilityBoundingSet %v and AmbientCapabilities %v: want the same, non-empty", bounding, ambient)
	}
	return bounding
}

// runWithCaps runs the child in ns with caps (names as the unit has them)
// and returns what it printed.
func runWithCaps(t *testing.T, ns *netnstest.NS, caps []string, tun, ul int) (string, error) {
	t.Helper()
	var mask uint64
	list := "-all"
	for _, c := range caps {
		n, ok := capNumbers[c]
		if !ok {
			t.Fatalf("the unit names %s: add it to capNumbers", c)
		}
		mask |= 1 << n
		list += ",+" + strings.ToLower(strings.TrimPrefix(c, "CAP_"))
	}
	cmd := exec.Command("ip", "netns", "exec", ns.Name, "setpriv", "--no-new-privs", "--bounding-set="+list,
		"--inh-caps="+list, "--ambient-caps="+list, os.Args[0], "-test.run=^TestUnitCapabilitiesFastPath$", "-test.count=1")
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%d,%d,%x", fastPathChildEnv, tun, ul, mask))
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// childResult is the child's line saying how it ended.
func childResult(out string) string {
	for line := range strings.Lines(out) {
		if v, ok := strings.CutPrefix(line, "child: "); ok {
			return strings.TrimSpace(v)
		}
	}
	return "(no result line)\n" + out
}

// fastPathCapsChild is the child: it checks its capabilities, then loads,
// attaches by TCX (or clsact where the kernel lacks TCX) and by clsact, and
// detaches, printing one "child: " line.
func fastPathCapsChild(t *testing.T, env string) {
	var tun, ul int
	var want uint64
	if _, err := fmt.Sscanf(env, "%d,%d,%x", &tun, &ul, &want); err != nil {
		t.Fatalf("%s=%q: %v", fastPathChildEnv, env, err)
	}
	fail := func(what string, err error) {
		first, _, _ := strings.Cut(err.Error(), "\n")
		fmt.Printf("child: %s: %s\n", what, first)
		t.Fatalf("%s: %v", what, err)
	}
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		fail("read capabilities", err)
	}
	var eff uint64
	for line := range strings.Lines(string(status)) {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			eff, err = strconv.ParseUint(strings.TrimSpace(v), 16, 64)
		}
	}
	if err != nil || eff != want {
		fail("capabilities", fmt.Errorf("CapEff %#x, want %#x: %w", eff, want, err))
	}
	progs, err := fastpath.Load(fastpath.Config{Local: netip.MustParseAddr("198.18.61.1"),
		Subnet: netip.MustParsePrefix("198.19.61.0/24"), Port: 8285, Underlay: ul, TUN: tun})
	if err != nil {
		fail("load", err)
	}
	defer progs.Close()
	nl, err := netlink.NewHandle()
	if err != nil {
		fail("netlink", err)
	}
	defer nl.Close()
	var modes []string
	for _, clsact := range []bool{false, true} {
		at, err := progs.Attach(nl, tun, ul, clsact)
		if err != nil {
			fail(fmt.Sprintf("attach (forceClsact %v)", clsact), err)
		}
		modes = append(modes, string(at.Mode))
		if err := at.Detach(); err != nil {
			fail("detach "+string(at.Mode), err)
		}
	}
	if modes[1] != string(fastpath.ModeClsact) {
		fail("attach", fmt.Errorf("forced clsact attached by %s", modes[1]))
	}
	fmt.Printf("child: %s (%s)\n", fastPathChildOK, strings.Join(modes, ", "))
}
