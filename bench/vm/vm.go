// Package vm boots another Linux kernel under qemu to run weft's tests on
// it: a distribution's kernel package unpacked (not installed), this
// machine's root shared read-only over 9p beneath a tmpfs overlay, a small
// initramfs that mounts them, and no network device. The kernel matrix
// (kernel_test.go) runs bench/lab's fast-path tests and real systemd in it.
package vm

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Kernel is an unpacked kernel package: Dir/boot/vmlinuz-Release and
// Dir/lib/modules/Release.
type Kernel struct {
	Dir     string
	Release string
}

// FindKernel reads the unpacked package at dir.
func FindKernel(dir string) (Kernel, error) {
	m, err := filepath.Glob(filepath.Join(dir, "boot", "vmlinuz-*"))
	if err != nil || len(m) != 1 {
		return Kernel{}, fmt.Errorf("vm: %s: want one boot/vmlinuz-*, found %v", dir, m)
	}
	k := Kernel{Dir: dir, Release: strings.TrimPrefix(filepath.Base(m[0]), "vmlinuz-")}
	if _, err := os.Stat(k.ModDir()); err != nil {
		return Kernel{}, fmt.Errorf("vm: kernel %s: %w", k.Release, err)
	}
	return k, nil
}

func (k Kernel) Image() string  { return filepath.Join(k.Dir, "boot", "vmlinuz-"+k.Release) }
func (k Kernel) ModDir() string { return filepath.Join(k.Dir, "lib", "modules", k.Release) }

// bootModules are what the initramfs loads to mount the 9p root and the
// overlay; everything else the tests need (veth, tun, sch_ingress,
// cls_bpf...) the kernel loads on demand from the package's modules, which
// the init binds at /lib/modules/Release.
var bootModules = []string{"virtio_pci", "9pnet_virtio", "9p", "overlay"}

// moduleOrder resolves names through modules.dep into load order,
// dependencies first, each once.
func moduleOrder(modDir string, names []string) ([]string, error) {
	b, err := os.ReadFile(filepath.Join(modDir, "modules.dep"))
	if err != nil {
		return nil, fmt.Errorf("vm: %w", err)
	}
	deps := map[string][]string{} // module name -> [path, deps' paths...]
	byName := map[string]string{}
	for line := range strings.Lines(string(b)) {
		path, rest, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok {
			continue
		}
		name := strings.TrimSuffix(filepath.Base(path), ".ko")
		byName[strings.ReplaceAll(name, "-", "_")] = path
		deps[path] = strings.Fields(rest)
	}
	var out []string
	seen := map[string]bool{}
	var visit func(path string)
	visit = func(path string) {
		if seen[path] {
			return
		}
		seen[path] = true
		for _, d := range deps[path] {
			visit(d)
		}
		out = append(out, path)
	}
	for _, n := range names {
		p, ok := byName[n]
		if !ok {
			return nil, fmt.Errorf("vm: module %s not in %s/modules.dep (built in?)", n, modDir)
		}
		visit(p)
	}
	return out, nil
}

// initScript is the initramfs's /init: mount the host's root read-only
// (cached: nothing changes it while the VM runs)
// under a tmpfs overlay, bind the kernel's modules and the output
// directory (9p, read-write) into it, hide /.dockerenv (systemd would
// take the VM for a container), and switch to weft.init=PATH. The
// modules are bound from the read-only lower, not through the overlay:
// systemd's boot empties /tmp (Debian's tmpfiles.d/tmp.conf, "D /tmp")
// through the overlay, and a checkout under /tmp (as CI's) lost its
// kernel's modules.dep so.
const initScript = `#!/bin/busybox sh
/bin/busybox mkdir -p /bin /proc /sys /dev
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /modules); do insmod "/mods/$m" || echo "vm init: insmod $m failed"; done
for a in $(cat /proc/cmdline); do
	case "$a" in
	weft.init=*) next="${a#*=}" ;;
	weft.out=*) out="${a#*=}" ;;
	weft.mods=*) mods="${a#*=}" ;;
	esac
done
mkdir -p /lower /rw /newroot
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=524288,cache=loose host /lower || exec sh
mount -t tmpfs -o mode=755 rw /rw
mkdir /rw/upper /rw/work
mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work overlay /newroot || exec sh
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 out "/newroot$out" || exec sh
mkdir -p "/newroot/lib/modules/$(uname -r)"
mount --bind "/lower$mods" "/newroot/lib/modules/$(uname -r)"
rm -f /newroot/.dockerenv
umount /proc /sys
mount --move /dev /newroot/dev
exec switch_root /newroot "$next"
`

// Initramfs is a gzipped newc archive with busybox (static), /init and
// the boot modules.
func Initramfs(k Kernel, busybox string) ([]byte, error) {
	mods, err := moduleOrder(k.ModDir(), bootModules)
	if err != nil {
		return nil, err
	}
	bb, err := os.ReadFile(busybox)
	if err != nil {
		return nil, fmt.Errorf("vm: busybox: %w", err)
	}
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	w := &cpioWriter{w: zw}
	for _, d := range []string{"bin", "mods", "dev", "proc", "sys"} {
		w.dir(d)
	}
	w.file("bin/busybox", 0o755, bb)
	w.file("init", 0o755, []byte(initScript))
	var list []string
	for _, m := range mods {
		b, err := os.ReadFile(filepath.Join(k.ModDir(), m))
		if err != nil {
			return nil, fmt.Errorf("vm: module: %w", err)
		}
		w.file("mods/"+filepath.Base(m), 0o644, b)
		list = append(list, filepath.Base(m))
	}
	w.file("modules", 0o644, []byte(strings.Join(list, "\n")+"\n"))
	w.trailer()
	if w.err != nil {
		return nil, fmt.Errorf("vm: initramfs: %w", w.err)
	}
	if err := zw.Close(); err != nil {
		return nil, fmt.Errorf("vm: initramfs: %w", err)
	}
	return buf.Bytes(), nil
}

// cpioWriter writes the newc format the kernel unpacks.
type cpioWriter struct {
	w   io.Writer
	ino int
	err error
}

func (c *cpioWriter) entry(name string, mode uint32, data []byte) {
	if c.err != nil {
		return
	}
	c.ino++
	hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		c.ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name)+1, 0)
	b := append([]byte(hdr), name...)
	b = append(b, 0)
	b = pad4(b)
	b = append(b, data...)
	b = pad4(b)
	_, c.err = c.w.Write(b)
}

func pad4(b []byte) []byte {
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

func (c *cpioWriter) dir(name string)                         { c.entry(name, syscall.S_IFDIR|0o755, nil) }
func (c *cpioWriter) file(name string, perm uint32, b []byte) { c.entry(name, syscall.S_IFREG|perm, b) }
func (c *cpioWriter) trailer()                                { c.entry("TRAILER!!!", 0, nil) }

// Boot is one run of the VM.
type Boot struct {
	Kernel    Kernel
	Initramfs string // path of Initramfs's output
	// Init is the program the VM runs as PID 1 once its root is mounted
	// (a path on this machine's root), with Args on the kernel command line.
	Init string
	Args []string
	// Out is a directory on this machine the VM can write, at the same path.
	Out     string
	Mem     string // qemu -m, default 2G
	CPUs    int    // default 2
	Timeout time.Duration
	// Console gets the serial console as it comes.
	Console io.Writer
}

// ErrTimeout is returned when the VM did not power off in time.
var ErrTimeout = errors.New("vm: did not power off in time")

// Run boots the VM and waits for it to power off.
func (b Boot) Run(ctx context.Context) error {
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		return fmt.Errorf("vm: %w (apt-get install qemu-system-x86)", err)
	}
	if b.Mem == "" {
		b.Mem = "2G"
	}
	if b.CPUs == 0 {
		b.CPUs = 2
	}
	cmdline := []string{"console=ttyS0", "panic=-1", "rdinit=/init", "loglevel=4",
		"weft.init=" + b.Init, "weft.out=" + b.Out, "weft.mods=" + b.Kernel.ModDir()}
	args := []string{"-machine", "q35", "-accel", "tcg,thread=multi", "-cpu", "max",
		"-smp", fmt.Sprint(b.CPUs), "-m", b.Mem, "-nic", "none", "-no-reboot",
		"-display", "none", "-monitor", "none", "-serial", "stdio",
		"-kernel", b.Kernel.Image(), "-initrd", b.Initramfs,
		"-append", strings.Join(append(cmdline, b.Args...), " "),
		"-virtfs", "local,path=/,mount_tag=host,security_model=none,readonly=on,multidevs=remap",
		"-virtfs", "local,path=" + b.Out + ",mount_tag=out,security_model=none,multidevs=remap",
	}
	ctx, cancel := context.WithTimeout(ctx, b.Timeout)
	defer cancel()
	cmd := exec.Command(qemu, args...)
	cmd.Stdin = nil
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("vm: start qemu: %w", err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			if b.Console != nil {
				fmt.Fprintln(b.Console, strings.TrimRight(sc.Text(), "\r"))
			}
		}
		_, _ = io.Copy(io.Discard, pr) // a line too long for the scanner: keep qemu unblocked
	})
	done := make(chan error, 1)
	go func() { done <- cmd.Wait(); pw.Close() }()
	select {
	case err = <-done:
		if err != nil {
			err = fmt.Errorf("vm: qemu: %w", err)
		}
	case <-ctx.Done():
		if kerr := cmd.Process.Kill(); kerr != nil { // by its PID
			err = fmt.Errorf("%w, and kill qemu: %w", ErrTimeout, kerr)
			break
		}
		err = fmt.Errorf("%w: qemu killed: %w", ErrTimeout, <-done)
	}
	wg.Wait()
	return err
}
