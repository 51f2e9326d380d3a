package tunnel

import (
	"bytes"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/internal/netnstest"
)

// testLog is a logger writing into the buffer it returns.
func testLog() (*slog.Logger, *bytes.Buffer) {
	var b bytes.Buffer
	return slog.New(slog.NewTextHandler(&b, nil)), &b
}

// A missing /dev/net/tun (a container's /dev) is created as the host has
// the kernel makes it, c 10:200 mode 0600 whatever the umask, said once at INFO, and opened;
// later opens find it and say nothing.
func TestCloneDeviceCreated(t *testing.T) {
	netnstest.SkipUnlessRoot(t) // mknod of a character device needs CAP_MKNOD
	c := cloneDevice{path: filepath.Join(t.TempDir(), "net", "tun"), mknod: unix.Mknod}
	log, out := testLog()
	old := unix.Umask(0o277)
	fd, err := c.open(log)
	unix.Umask(old)
	if err != nil {
		t.Fatal(err)
	}
	unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Stat(c.path, &st); err != nil {
		t.Fatal(err)
	}
	if st.Mode != unix.S_IFCHR|0o600 || unix.Major(st.Rdev) != 10 || unix.Minor(st.Rdev) != 200 {
		t.Errorf("created %s: mode %#o, device %d:%d; want a character device 10:200 of mode 0600",
			c.path, st.Mode, unix.Major(st.Rdev), unix.Minor(st.Rdev))
	}
	if fi, err := os.Stat(filepath.Dir(c.path)); err != nil || fi.Mode().Perm() != 0o755 {
		t.Errorf("created %s: %v, %v; want a directory of mode 0755", filepath.Dir(c.path), fi, err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 1 || !strings.Contains(lines[0], "level=INFO") || !strings.Contains(lines[0], "created the missing TUN clone device") ||
		!strings.Contains(lines[0], "device=\"c 10:200\"") {
		t.Errorf("log of the creation:\n%s\nwant one INFO line naming the device", out)
	}
	t.Logf("log: %s", lines[0])
	out.Reset()
	fd, err = c.open(log)
	if err != nil {
		t.Fatal(err)
	}
	unix.Close(fd)
	if out.Len() != 0 {
		t.Errorf("opening the existing node logged:\n%s", out)
	}
}

// Another process creating the node between our open and our mknod is no
// failure.
func TestCloneDeviceCreatedMeanwhile(t *testing.T) {
	netnstest.SkipUnlessRoot(t)
	c := cloneDevice{path: filepath.Join(t.TempDir(), "net", "tun")}
	c.mknod = func(path string, mode uint32, dev int) error {
		if err := unix.Mknod(path, mode, dev); err != nil {
			return err
		}
		return unix.EEXIST
	}
	log, _ := testLog()
	fd, err := c.open(log)
	if err != nil {
		t.Fatal(err)
	}
	unix.Close(fd)
}

// Where the node cannot be made, one error says what failed and names the
// fix: CAP_MKNOD when mknod was refused for want of it, the host's device
// in every case.
func TestCloneDeviceNotCreated(t *testing.T) {
	for _, tc := range []struct {
		name    string
		errno   unix.Errno
		wantCap bool
	}{
		{"no CAP_MKNOD", unix.EPERM, true},
		{"read-only /dev", unix.EROFS, false},
		{"no access", unix.EACCES, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := cloneDevice{path: filepath.Join(t.TempDir(), "net", "tun"),
				mknod: func(string, uint32, int) error { return tc.errno }}
			log, out := testLog()
			fd, err := c.open(log)
			if err == nil {
				unix.Close(fd)
				t.Fatal("open succeeded")
			}
			msg := err.Error()
			t.Logf("%v", msg)
			for _, want := range []string{
				"open " + c.path + ": no such file or directory, and creating it failed (mknod " + c.path + ": " + tc.errno.Error() + ")",
				"mount the host's /dev/net/tun into the container (Kubernetes: a hostPath volume of type CharDevice)",
			} {
				if !strings.Contains(msg, want) {
					t.Errorf("error %q does not say %q", msg, want)
				}
			}
			if got := strings.Contains(msg, "give the container CAP_MKNOD"); got != tc.wantCap {
				t.Errorf("error %q names CAP_MKNOD: %v, want %v", msg, got, tc.wantCap)
			}
			if !errors.Is(err, unix.ENOENT) || !errors.Is(err, tc.errno) {
				t.Errorf("error %q wraps neither ENOENT nor %v", msg, tc.errno)
			}
			if out.Len() != 0 {
				t.Errorf("a failed creation logged:\n%s", out)
			}
		})
	}
}

// Production opens the real device.
func TestCloneDevicePath(t *testing.T) {
	if tunClone.path != "/dev/net/tun" {
		t.Errorf("the TUN clone device is %s", tunClone.path)
	}
}
