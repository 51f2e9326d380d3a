package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
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
