package node

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestRequireNetAdmin: with CAP_NET_ADMIN (root) the check passes; the same
// test binary run without it in its bounding set fails it, before anything
// else, with the fix in the message.
func TestRequireNetAdmin(t *testing.T) {
	if os.Getenv("WEFT_TEST_NO_NET_ADMIN") == "1" {
		err := requireNetAdmin()
		if err == nil || !strings.Contains(err.Error(), "missing CAP_NET_ADMIN") || !strings.Contains(err.Error(), "AmbientCapabilities") {
			t.Fatalf("without CAP_NET_ADMIN: %v", err)
		}
		return
	}
	if os.Geteuid() != 0 {
		t.Skip("skipping: needs root, to run the check with and without CAP_NET_ADMIN")
	}
	if err := requireNetAdmin(); err != nil {
		t.Fatalf("as root: %v", err)
	}
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Skip("skipping the case without CAP_NET_ADMIN: no setpriv (util-linux)")
	}
	cmd := exec.Command("setpriv", "--bounding-set=-net_admin", "--inh-caps=-net_admin", "--",
		os.Args[0], "-test.run=^TestRequireNetAdmin$", "-test.count=1")
	cmd.Env = append(os.Environ(), "WEFT_TEST_NO_NET_ADMIN=1")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("run without CAP_NET_ADMIN: %v\n%s", err, out)
	}
}
