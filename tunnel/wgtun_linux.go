//go:build wgtun

package tunnel

import (
	"fmt"

	wgtun "golang.zx2c4.com/wireguard/tun"
)

// OpenWireGuardTUN opens the TUN with golang.zx2c4.com/wireguard/tun
// instead of weft's own code, for the TUN-layer comparison in
// bench/README.md. Built only with -tags wgtun; the forwarder then runs
// one goroutine per direction (the wireguard device cannot be polled with
// the socket).
func OpenWireGuardTUN(name string, mtu int) (Device, error) {
	d, err := wgtun.CreateTUN(name, mtu)
	if err != nil {
		return nil, fmt.Errorf("open tun %s with wireguard-go: %w", name, err)
	}
	n, err := d.Name()
	if err != nil {
		d.Close()
		return nil, fmt.Errorf("open tun %s with wireguard-go: %w", name, err)
	}
	return &wgDevice{d: d, name: n, mtu: mtu}, nil
}

type wgDevice struct {
	d    wgtun.Device
	name string
	mtu  int
}

func (w *wgDevice) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	return w.d.Read(bufs, sizes, offset)
}

func (w *wgDevice) Write(bufs [][]byte, offset int) (int, error) { return w.d.Write(bufs, offset) }
func (w *wgDevice) BatchSize() int                               { return w.d.BatchSize() }
func (w *wgDevice) MTU() int                                     { return w.mtu }
func (w *wgDevice) Name() string                                 { return w.name }
func (w *wgDevice) Close() error                                 { return w.d.Close() }
