package vm

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/etcd/etcdtest"
	"github.com/weft-net/weft/status"
)

// checkUnit runs TestInVMSystemd once systemd is up, then powers off.
const checkUnit = `[Unit]
Description=weft kernel matrix: the shipped unit under real systemd
After=basic.target
SuccessAction=poweroff-force
FailureAction=poweroff-force
[Service]
Type=oneshot
Environment=WEFT_VM_INSIDE=systemd
ExecStart=%s -test.v -test.count=1 -test.timeout=8m -test.run ^TestInVMSystemd$
StandardOutput=file:%s
StandardError=inherit
`

// matrixTarget is what systemd boots to: basic.target and the check, not
// this machine's default target.
const matrixTarget = `[Unit]
Description=weft kernel matrix
Requires=basic.target
Wants=weft-check.service
After=basic.target
`

// TestKernelSystemd boots the kernel WEFT_VM_KERNEL names with real
// systemd as PID 1 (this machine's, on its root read-only beneath the
// overlay) and the shipped unit and /etc/default/weft installed as a
// package would; TestInVMSystemd, run there as a oneshot unit, drives and
// checks it and powers the VM off.
func TestKernelSystemd(t *testing.T) {
	k := kernelOrSkip(t)
	if _, err := os.Stat("/lib/systemd/systemd"); err != nil {
		t.Skipf("no systemd on this machine's root (apt-get install -y systemd): %v", err)
	}
	out := t.TempDir()
	vmTest := filepath.Join(out, "vm.test")
	goBuild(t, []string{"build", "-o", filepath.Join(out, "weft"), "."}, []string{"test", "-c", "-o", vmTest, "./bench/vm"})
	repo, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(out, "systemd.log")
	for name, body := range map[string]string{"weft-check.service": fmt.Sprintf(checkUnit, vmTest, logPath), "weft-matrix.target": matrixTarget} {
		if err := os.WriteFile(filepath.Join(out, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// Installed as a package would: the unit and the environment file
	// exactly as shipped, the binary at the unit's ExecStart.
	script := fmt.Sprintf(`cp %[1]s/weft /usr/local/bin/weft
cp %[2]s/systemd/weft.service /etc/systemd/system/weft.service
cp %[2]s/systemd/weft.env /etc/default/weft
cp %[1]s/weft-check.service %[1]s/weft-matrix.target /etc/systemd/system/
exec /lib/systemd/systemd
`, out, repo)
	boot(t, k, out, "systemd.sh", script, 12*time.Minute, "systemd.unit=weft-matrix.target")
	log, _ := os.ReadFile(logPath)
	if !strings.Contains(string(log), "--- PASS: TestInVMSystemd") {
		t.Fatalf("real systemd on Linux %s:\n%s", k.Release, log)
	}
	for line := range strings.Lines(string(log)) {
		if strings.Contains(line, "systemd_test.go") {
			t.Log(strings.TrimSpace(line))
		}
	}
}

// TestInVMSystemd runs inside the VM as weft-check.service. It gives the
// node what the unit expects of a host (an underlay with the default
// route, etcd at the shipped environment file's endpoint holding the
// network config) and checks the unit through systemctl: readiness once
// subnet.env is written, STATUS=, the fast path running under the unit's
// hardening and capabilities, the watchdog kept, Restart= after kill -9,
// and a clean stop that leaves nothing behind.
func TestInVMSystemd(t *testing.T) {
	if os.Getenv("WEFT_VM_INSIDE") != "systemd" {
		t.Skip("runs inside TestKernelSystemd's VM")
	}
	hostReady(t)
	defer func() {
		if t.Failed() {
			t.Logf("journal of weft.service:\n%s", output(t, "journalctl", "-u", "weft", "--no-pager", "-o", "short-monotonic"))
		}
	}()

	start := time.Now()
	run(t, "systemctl", "start", "weft.service") // Type=notify: returns once READY=1
	t.Logf("systemctl start weft: active after %v", time.Since(start).Round(time.Millisecond))
	if b, err := os.ReadFile("/run/flannel/subnet.env"); err != nil || !strings.Contains(string(b), "FLANNEL_SUBNET=198.19.") {
		t.Fatalf("weft.service active but subnet.env %q, %v", b, err)
	}
	u := unitProps(t)
	t.Logf("weft.service: %s", u.summary())
	if u["ActiveState"] != "active" || u["SubState"] != "running" || !strings.Contains(u["StatusText"], " peers") || u["WatchdogUSec"] != "30s" {
		t.Fatalf("weft.service %s: want active/running, STATUS= with its peers, WatchdogUSec=30s", u.summary())
	}
	pid := u["MainPID"]
	checkProcess(t, pid)
	checkFastPath(t, "after start")
	// The operator's view of the node, the kernel's features among it.
	for line := range strings.Lines(output(t, "/usr/local/bin/weft", "status")) {
		t.Logf("weft status | %s", strings.TrimRight(line, "\n"))
	}

	// The watchdog: weft keeps pinging past WatchdogSec=30s.
	time.Sleep(time.Until(start.Add(40 * time.Second)))
	if u = unitProps(t); u["MainPID"] != pid || u["NRestarts"] != "0" || u["ActiveState"] != "active" {
		t.Fatalf("40s after start weft.service %s: want the same MainPID %s, no restart", u.summary(), pid)
	}
	t.Logf("40s after start, past WatchdogSec: same MainPID %s, NRestarts=0", pid)

	// Restart= after kill -9, the fast path attached again.
	run(t, "kill", "-9", pid)
	deadline := time.Now().Add(60 * time.Second)
	for u = unitProps(t); u["ActiveState"] != "active" || u["MainPID"] == pid || u["MainPID"] == "0"; u = unitProps(t) {
		if time.Now().After(deadline) {
			t.Fatalf("60s after kill -9 weft.service %s: want restarted", u.summary())
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("after kill -9 of %s: restarted, %s", pid, u.summary())
	if u["NRestarts"] != "1" {
		t.Errorf("NRestarts %s after one kill -9, want 1", u["NRestarts"])
	}
	checkProcess(t, u["MainPID"])
	checkFastPath(t, "after the restart")

	// A clean stop leaves no TUN and no filter behind.
	run(t, "systemctl", "stop", "weft.service")
	u = unitProps(t)
	t.Logf("after systemctl stop: %s", u.summary())
	if u["ActiveState"] != "inactive" || u["Result"] != "success" || u["ExecMainStatus"] != "0" {
		t.Errorf("after systemctl stop weft.service %s: want inactive, Result=success, exit 0", u.summary())
	}
	if out, err := exec.Command("ip", "link", "show", "udp0").CombinedOutput(); err == nil {
		t.Errorf("udp0 still there after the stop:\n%s", out)
	}
	if f := output(t, "tc", "filter", "show", "dev", "ul0", "ingress"); strings.Contains(f, "weft") {
		t.Errorf("weft's filter still on ul0 after the stop:\n%s", f)
	}
}

// hostReady gives the VM what the unit expects of a host: an underlay
// holding the default route (weft picks it as flanneld would), and etcd at
// the shipped environment file's endpoint with the network config.
func hostReady(t *testing.T) {
	t.Helper()
	// Loaded here, not on demand: while systemd-udevd is still loading
	// modules for the boot, the kernel's own request_module can give up
	// (a CI run saw "Unknown device type"); modprobe waits its turn.
	run(t, "modprobe", "dummy")
	for _, c := range [][]string{{"link", "add", "ul0", "type", "dummy"}, {"addr", "add", "198.18.250.10/24", "dev", "ul0"},
		{"link", "set", "ul0", "up"}, {"route", "add", "default", "via", "198.18.250.1", "dev", "ul0", "onlink"}} {
		run(t, "ip", c...)
	}
	srv, err := etcdtest.StartServer(t.TempDir(), "http://127.0.0.1:2379")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{srv.Endpoint()}, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, "/coreos.com/network/config", `{"Network":"198.19.0.0/16","Backend":{"Type":"udp"}}`); err != nil {
		t.Fatal(err)
	}
}

type props map[string]string

func (p props) summary() string {
	var b []string
	for _, k := range []string{"ActiveState", "SubState", "Result", "MainPID", "NRestarts", "ExecMainStatus", "WatchdogUSec", "StatusText"} {
		b = append(b, k+"="+p[k])
	}
	return strings.Join(b, " ")
}

func unitProps(t *testing.T) props {
	t.Helper()
	p := props{}
	for line := range strings.Lines(output(t, "systemctl", "show", "weft.service")) {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), "="); ok {
			p[k] = v
		}
	}
	return p
}

// checkProcess: weft runs with exactly the unit's capabilities and no new
// privileges.
func checkProcess(t *testing.T, pid string) {
	t.Helper()
	b, err := os.ReadFile("/proc/" + pid + "/status")
	if err != nil {
		t.Fatal(err)
	}
	want := uint64(1)<<12 | 1<<13 | 1<<39 // CAP_NET_ADMIN, CAP_NET_RAW, CAP_BPF
	for line := range strings.Lines(string(b)) {
		k, v, _ := strings.Cut(line, ":")
		v = strings.TrimSpace(v)
		switch k {
		case "CapEff", "CapBnd":
			if n, _ := strconv.ParseUint(v, 16, 64); n != want {
				t.Errorf("weft %s %s, want %#x (the unit's)", k, v, want)
			}
		case "NoNewPrivs":
			if v != "1" {
				t.Errorf("weft NoNewPrivs %s, want 1", v)
			}
		}
	}
}

// checkFastPath: weft status says the fast path runs.
func checkFastPath(t *testing.T, when string) {
	t.Helper()
	var s status.Status
	if err := json.Unmarshal([]byte(output(t, "/usr/local/bin/weft", "status", "-o", "json")), &s); err != nil {
		t.Fatal(err)
	}
	if s.FastPath == nil || !s.FastPath.Running {
		t.Fatalf("%s: weft status fastPath %+v, want running", when, s.FastPath)
	}
	t.Logf("%s: fast path running, attached by %s", when, s.FastPath.Attach)
}

func run(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

func output(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Logf("%s %s: %v", name, strings.Join(args, " "), err)
	}
	return string(out)
}
