package tunnel

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// tunBatchSize is how many packets one Read returns at most.
const tunBatchSize = 64

// tun is a Linux TUN device driven through a raw non-blocking fd kept off
// the Go netpoller: Read polls the fd together with an eventfd that Close
// signals, then reads until EAGAIN or the batch is full.
type tun struct {
	fd   int
	evfd int // readable once Close has been called
	name string
	mtu  int

	closed    atomic.Bool
	closeOnce sync.Once
	closeErr  error
	// rmu and wmu are held by Read and Write around their use of the fds;
	// Close takes both before closing the fds, so a number is never
	// reused under a Read or Write in flight.
	rmu, wmu sync.Mutex
}

// OpenTUN creates (or attaches to) the TUN device name in IFF_TUN|IFF_NO_PI
// mode. It configures nothing: addresses, MTU and link state belong to the
// caller; mtu is only reported by MTU. The device disappears when the
// Device is closed, unless it was made persistent elsewhere.
func OpenTUN(name string, mtu int) (Device, error) {
	if mtu <= 0 || mtu > maxPacket {
		return nil, fmt.Errorf("open tun %s: invalid mtu %d", name, mtu)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return nil, fmt.Errorf("open tun %q: %w", name, err)
	}
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open tun %s: open /dev/net/tun: %w", name, err)
	}
	ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("open tun %s: TUNSETIFF: %w", name, err)
	}
	evfd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("open tun %s: eventfd: %w", name, err)
	}
	return &tun{fd: fd, evfd: evfd, name: ifr.Name(), mtu: mtu}, nil
}

// Read implements Device.
func (t *tun) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	t.rmu.Lock()
	defer t.rmu.Unlock()
	for {
		if t.closed.Load() {
			return 0, t.errClosed("read from")
		}
		// Read before polling: under load the queue is rarely empty and
		// the poll would be a wasted syscall.
		n := 0
		for n < len(bufs) {
			r, err := unix.Read(t.fd, bufs[n][offset:])
			if err == nil {
				sizes[n] = r
				n++
				continue
			}
			if err == unix.EINTR {
				continue
			}
			if err == unix.EAGAIN {
				break
			}
			if n > 0 {
				return n, nil // the error, if lasting, recurs on the next call
			}
			return 0, fmt.Errorf("read from tun %s: %w", t.name, err)
		}
		if n > 0 {
			return n, nil
		}
		if err := t.wait(unix.POLLIN); err != nil {
			return 0, err
		}
	}
}

// Write implements Device. It returns at the first packet the kernel
// refuses, with the number written before it, so the caller can count that
// packet and go on with the rest.
func (t *tun) Write(bufs [][]byte, offset int) (int, error) {
	t.wmu.Lock()
	defer t.wmu.Unlock()
	for i, b := range bufs {
		for {
			if t.closed.Load() {
				return i, t.errClosed("write to")
			}
			_, err := unix.Write(t.fd, b[offset:])
			if err == nil {
				break
			}
			if err == unix.EINTR {
				continue
			}
			if err == unix.EAGAIN {
				if err := t.wait(unix.POLLOUT); err != nil {
					return i, err
				}
				continue
			}
			return i, fmt.Errorf("write to tun %s: %w", t.name, err)
		}
	}
	return len(bufs), nil
}

// wait blocks until the TUN fd has events or Close is called.
func (t *tun) wait(events int16) error {
	fds := [2]unix.PollFd{
		{Fd: int32(t.fd), Events: events},
		{Fd: int32(t.evfd), Events: unix.POLLIN},
	}
	for {
		_, err := unix.Poll(fds[:], -1)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("poll tun %s: %w", t.name, err)
		}
		if fds[1].Revents != 0 {
			return t.errClosed("wait on")
		}
		// POLLERR/POLLHUP on the TUN fd: the next read or write reports it.
		return nil
	}
}

// BatchSize implements Device.
func (t *tun) BatchSize() int { return tunBatchSize }

// MTU implements Device.
func (t *tun) MTU() int { return t.mtu }

// Name implements Device: the kernel's name for the device.
func (t *tun) Name() string { return t.name }

// Close implements Device. It wakes a blocked Read or Write, waits for them
// to return and closes the fds. It is safe to call more than once and
// concurrently with Read and Write.
func (t *tun) Close() error {
	t.closeOnce.Do(func() {
		t.closed.Store(true)
		var one [8]byte
		binary.NativeEndian.PutUint64(one[:], 1)
		if _, err := unix.Write(t.evfd, one[:]); err != nil {
			t.closeErr = fmt.Errorf("close tun %s: wake: %w", t.name, err)
		}
		t.rmu.Lock()
		t.wmu.Lock()
		defer t.rmu.Unlock()
		defer t.wmu.Unlock()
		t.closeErr = errors.Join(t.closeErr, closeFD(t.fd, "close tun "+t.name))
		t.closeErr = errors.Join(t.closeErr, closeFD(t.evfd, "close tun "+t.name+" eventfd"))
	})
	return t.closeErr
}

func (t *tun) errClosed(op string) error {
	return fmt.Errorf("%s tun %s: %w", op, t.name, net.ErrClosed)
}

func closeFD(fd int, op string) error {
	if err := unix.Close(fd); err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	return nil
}
