package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/weft-net/weft/internal/netnstest"
)

// TestUnitFileVerifies runs systemd-analyze verify on systemd/weft.service
// (with ExecStart pointed at an executable that exists here) and requires
// it to pass without a single warning, and the hardening to be in place.
func TestUnitFileVerifies(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("systemd-analyze not found: apt-get install -y systemd")
		}
		t.Skip("systemd-analyze not found (apt-get install -y systemd)")
	}
	unit, err := os.ReadFile("systemd/weft.service")
	if err != nil {
		t.Fatal(err)
	}
	text := string(unit)
	for _, want := range []string{
		"Type=notify", "After=network-online.target etcd.service", "Before=docker.service", "Restart=always",
		"WatchdogSec=", "CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW", "NoNewPrivileges=yes",
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
	for _, tool := range []string{"unshare", "iptables-legacy"} {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("%s not found (Debian: apt-get install util-linux iptables)", tool)
			}
			t.Skipf("skipping: needs %s", tool)
		}
	}
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
