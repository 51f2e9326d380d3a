// Package tuntest provides in-memory fakes of tunnel.Device and tunnel.Conn
// and builders for test packets, so forwarders can be tested and
// benchmarked in one process without root.
package tuntest

import (
	"fmt"
	"net"
	"sync"
	"sync/atomic"

	"github.com/weft-net/weft/tunnel"
)

// BatchSize is the batch size of the fakes.
const BatchSize = 64

var _ tunnel.Device = (*Device)(nil)

// Device is a fake TUN device. Packets given to Inject come out of Read, as
// if the kernel routed them to the TUN; packets passed to Write come out of
// Written (or go to the write hook), as if delivered to the kernel.
type Device struct {
	name    string
	mtu     int
	inbound chan []byte
	written chan []byte
	hook    atomic.Pointer[func(pkt []byte) error]

	closeOnce sync.Once
	closed    chan struct{}
}

// NewDevice returns a fake device. Up to 1024 injected and 1024 written
// packets are queued; beyond that Inject and Write block, like a lossless
// link.
func NewDevice(name string, mtu int) *Device {
	return &Device{
		name:    name,
		mtu:     mtu,
		inbound: make(chan []byte, 1024),
		written: make(chan []byte, 1024),
		closed:  make(chan struct{}),
	}
}

// Inject queues pkt for Read. The device keeps pkt without copying it: do
// not modify it afterwards. It returns false if the device is closed.
func (d *Device) Inject(pkt []byte) bool {
	select {
	case <-d.closed:
		return false
	default:
	}
	select {
	case d.inbound <- pkt:
		return true
	case <-d.closed:
		return false
	}
}

// Written delivers a copy of each packet passed to Write, in order, unless a
// write hook is set.
func (d *Device) Written() <-chan []byte { return d.written }

// SetWriteHook makes Write call fn for each packet instead of queueing a
// copy on Written; pkt is valid only during the call. A non-nil error makes
// Write stop and return it for that packet, as a kernel refusing it would.
// nil removes the hook. Benchmarks use it to consume packets without
// allocating.
func (d *Device) SetWriteHook(fn func(pkt []byte) error) {
	if fn == nil {
		d.hook.Store(nil)
		return
	}
	d.hook.Store(&fn)
}

// Read implements tunnel.Device: it blocks for the first packet, then takes
// whatever else is queued, up to len(bufs).
func (d *Device) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	select {
	case <-d.closed:
		return 0, d.errClosed("read")
	default:
	}
	if len(bufs) == 0 {
		return 0, nil
	}
	n := 0
	select {
	case pkt := <-d.inbound:
		sizes[0] = copy(bufs[0][offset:], pkt)
		n = 1
	case <-d.closed:
		return 0, d.errClosed("read")
	}
	for n < len(bufs) {
		select {
		case pkt := <-d.inbound:
			sizes[n] = copy(bufs[n][offset:], pkt)
			n++
		default:
			return n, nil
		}
	}
	return n, nil
}

// Write implements tunnel.Device.
func (d *Device) Write(bufs [][]byte, offset int) (int, error) {
	hook := d.hook.Load()
	for i, b := range bufs {
		select {
		case <-d.closed:
			return i, d.errClosed("write")
		default:
		}
		pkt := b[offset:]
		if hook != nil {
			if err := (*hook)(pkt); err != nil {
				return i, fmt.Errorf("write to tun %s: %w", d.name, err)
			}
			continue
		}
		select {
		case d.written <- append([]byte(nil), pkt...):
		case <-d.closed:
			return i, d.errClosed("write")
		}
	}
	return len(bufs), nil
}

func (d *Device) errClosed(op string) error {
	return fmt.Errorf("%s tun %s: %w", op, d.name, net.ErrClosed)
}

// BatchSize implements tunnel.Device.
func (d *Device) BatchSize() int { return BatchSize }

// MTU implements tunnel.Device.
func (d *Device) MTU() int { return d.mtu }

// Name implements tunnel.Device.
func (d *Device) Name() string { return d.name }

// Close implements tunnel.Device. It is safe to call more than once.
func (d *Device) Close() error {
	d.closeOnce.Do(func() { close(d.closed) })
	return nil
}
