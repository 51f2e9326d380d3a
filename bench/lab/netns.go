package lab

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"sync"
	"syscall"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// lockDir holds one flock file per underlay /24; a lock dies with its
// process, so a crashed lab never blocks a K for good.
const lockDir = "/run/weftlab"

func tryLock(path string) (*os.File, bool, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, false, fmt.Errorf("lab: open lock %s: %w", path, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, false, nil
		}
		return nil, false, fmt.Errorf("lab: lock %s: %w", path, err)
	}
	return f, true, nil
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{
		IP:   net.IP(p.Addr().AsSlice()),
		Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen()),
	}
}

// inNetns runs fn on a fresh OS thread switched into ns. The thread is
// never unlocked: when the goroutine returns, Go terminates the tainted
// thread instead of reusing it, so no other goroutine ever runs in ns by
// accident. Sockets fn creates keep ns and may be used from any goroutine.
func inNetns(ns netns.NsHandle, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := netns.Set(ns); err != nil {
			errc <- fmt.Errorf("enter namespace: %w", err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// spawner starts child processes from one dedicated OS thread that never
// changes namespace and lives as long as the lab. Children get
// PR_SET_PDEATHSIG, which Linux ties to the forking *thread*: forking from
// an arbitrary goroutine would let the death of an unrelated thread (such
// as one inNetns discards) kill the daemon, while this thread dies only
// with the process, so a killed test binary takes its daemons with it.
type spawner struct {
	mu      sync.Mutex // serialises start against stop
	stopped bool
	reqs    chan spawnReq
	done    chan struct{}
}

type spawnReq struct {
	cmd  *exec.Cmd
	errc chan error
}

func newSpawner() *spawner {
	s := &spawner{reqs: make(chan spawnReq), done: make(chan struct{})}
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread() // the thread is clean: reuse it
		defer close(s.done)
		for r := range s.reqs {
			r.errc <- r.cmd.Start()
		}
	}()
	return s
}

func (s *spawner) start(cmd *exec.Cmd) error {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return errors.New("lab: closed")
	}
	errc := make(chan error, 1)
	s.reqs <- spawnReq{cmd: cmd, errc: errc}
	return <-errc
}

func (s *spawner) stop() {
	s.mu.Lock()
	if !s.stopped {
		s.stopped = true
		close(s.reqs)
	}
	s.mu.Unlock()
	<-s.done
}
