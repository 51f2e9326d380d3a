package vm

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// vmPath is the PATH of every script the VM runs.
const vmPath = "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"

// mounts is what a PID 1 script mounts before the lab can run (/tmp is
// the overlay's, where the host's test directories are): the lab
// makes network namespaces under /run, the fast path pins nothing but
// loads programs (bpffs for bpftool), and cgroup2 is systemd's.
const mounts = `mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t tmpfs -o mode=755 tmpfs /run
mount -t bpf bpf /sys/fs/bpf
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
ip link set lo up
# The static node systemd-tmpfiles makes at boot from modules.devname
# (opening it loads tun.ko), as on every Debian host.
mkdir -p /dev/net
[ -e /dev/net/tun ] || mknod -m 666 /dev/net/tun c 10 200
`

// goBuild runs each go command (build, test -c) in the module's root.
func goBuild(t *testing.T, cmds ...[]string) {
	t.Helper()
	for _, args := range cmds {
		cmd := exec.Command("go", args...)
		cmd.Dir = "../.."
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}

// boot runs script as the VM's PID 1 and returns the console.
func boot(t *testing.T, k Kernel, out, name, script string, timeout time.Duration, args ...string) string {
	t.Helper()
	ird, err := Initramfs(k, "/bin/busybox")
	if err != nil {
		t.Fatal(err)
	}
	irdPath := filepath.Join(out, "initrd.gz")
	if err := os.WriteFile(irdPath, ird, 0o644); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(out, name)
	if err := os.WriteFile(path, []byte("#!/bin/sh\n"+vmPath+script), 0o755); err != nil {
		t.Fatal(err)
	}
	var con bytes.Buffer
	start := time.Now()
	err = Boot{Kernel: k, Initramfs: irdPath, Init: path, Args: args, Out: out, Timeout: timeout, Console: &con}.Run(t.Context())
	t.Logf("%s: Linux %s under qemu (TCG) for %v", name, k.Release, time.Since(start).Round(time.Second))
	if err != nil {
		t.Fatalf("%s: %v\nconsole:\n%s", name, err, con.String())
	}
	return con.String()
}

// TestKernelFastPath runs bench/lab's fast-path tests on the kernel
// WEFT_VM_KERNEL names: two fast-path nodes and a -fast-path=off one
// (TestE2EFastPathMixed, as root), and two nodes with exactly the shipped
// unit's capabilities (TestE2EFastPathUnitCaps).
func TestKernelFastPath(t *testing.T) {
	k := kernelOrSkip(t)
	out := t.TempDir()
	weft, labTest := filepath.Join(out, "weft"), filepath.Join(out, "lab.test")
	goBuild(t, []string{"build", "-o", weft, "."}, []string{"test", "-c", "-o", labTest, "./bench/lab"})
	repo, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	tests := "^(TestE2EFastPathMixed|TestE2EFastPathUnitCaps)$"
	// The binaries run from the VM's memory, not over 9p.
	script := mounts + fmt.Sprintf(`cp %s %s /run/
cd %s/bench/lab
WEFT_BIN=/run/weft /run/lab.test -test.v -test.count=1 -test.timeout=10m -test.run '%s' >%s/lab.log 2>&1
echo $? >%s/lab.rc
/bin/busybox poweroff -f
`, weft, labTest, repo, tests, out, out)
	con := boot(t, k, out, "fastpath.sh", script, 15*time.Minute)
	log, _ := os.ReadFile(filepath.Join(out, "lab.log"))
	rc, _ := os.ReadFile(filepath.Join(out, "lab.rc"))
	if strings.TrimSpace(string(rc)) != "0" {
		t.Fatalf("bench/lab on Linux %s: exit %q\n%s\nconsole:\n%s", k.Release, rc, log, con)
	}
	for line := range strings.Lines(string(log)) {
		if strings.Contains(line, "--- ") || strings.Contains(line, "fast path by") || strings.Contains(line, "fastPath {") ||
			strings.Contains(line, " tcx=") {
			t.Log(strings.TrimRight(line, "\n"))
		}
	}
}
