package node

import (
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"

	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/dataplane"
	"github.com/weft-net/weft/route"
	"github.com/weft-net/weft/tunnel"
)

// bind opens the UDP socket on the underlay address and the backend port
// (step 4), before leasing: a busy port must not cost a 24 h lease
// (flanneld leaks one that way).
func (n *node) bind() (tunnel.Conn, error) {
	laddr := netip.AddrPortFrom(n.iface.Addr, uint16(n.netCfg.BackendPort))
	var conn tunnel.Conn
	err := n.inNetns(func() (err error) {
		conn, err = tunnel.ListenUDPConfig(tunnel.UDPConfig{Addr: laddr, GSO: n.cfg.Offloads.GSO, GRO: n.cfg.Offloads.GRO, Logger: n.log})
		return err
	})
	if errors.Is(err, unix.EADDRINUSE) {
		return nil, fmt.Errorf("UDP %s is already in use: is flanneld or another weft running on this node? Stop it first: %w", laddr, err)
	}
	return conn, err
}

// checkMTU settles the device's MTU: -mtu, else the underlay's minus the
// encapsulation.
func (n *node) checkMTU() error {
	n.mtu = n.cfg.MTU
	if n.mtu == 0 {
		n.mtu = n.iface.MTU - tunnel.Overhead
	}
	if n.mtu < 576 || n.mtu > 65535-tunnel.Overhead {
		return fmt.Errorf("TUN MTU %d is out of range (576..%d): check -mtu or the MTU of %s", n.mtu, 65535-tunnel.Overhead, n.iface.Name)
	}
	return nil
}

// openUserspace is the userspace data plane: the TUN device and tunnel's
// forwarder over it and conn. Until the plane runs, release closes both.
func openUserspace(n *node, conn tunnel.Conn) (dataplane.Plane, func(), error) {
	dev, err := n.openTUN()
	if err != nil {
		return nil, nil, err
	}
	// The overlay is IPv4 only: without this the kernel sends IPv6
	// router solicitations into the device, which we would only drop.
	path := "/proc/sys/net/ipv6/conf/" + n.cfg.TunName + "/disable_ipv6"
	if err := os.WriteFile(path, []byte("1"), 0o644); err != nil && !errors.Is(err, fs.ErrNotExist) {
		n.log.Debug("disable IPv6 on device", "device", n.cfg.TunName, "err", err)
	}
	fwd := tunnel.NewForwarder(tunnel.Config{Device: dev, Conn: conn, Port: uint16(n.netCfg.BackendPort),
		SourceCheck: n.cfg.SourceCheck, Logger: n.log, SplitDirections: n.cfg.SplitDirections})
	release := func() {
		dev.Close()
		conn.Close()
	}
	return fwd, release, nil
}

// openTUN creates the TUN device, replacing a stale one in the way.
func (n *node) openTUN() (tunnel.Device, error) {
	name := n.cfg.TunName
	if n.cfg.OpenTUN != nil {
		n.log.Warn("this build opens the TUN with wireguard-go's code (-tags wgtun), for comparison only")
		return n.cfg.OpenTUN(name, n.mtu)
	}
	cfg := tunnel.TUNConfig{Name: name, MTU: n.mtu, Offload: n.cfg.Offloads.TUN, Logger: n.log}
	dev, err := tunnel.OpenTUNConfig(cfg)
	if err == nil {
		return dev, nil
	}
	// A leftover that is not a TUN (or a persistent one) is in the way;
	// a TUN still held by a live process is not ours to take.
	if errors.Is(err, unix.EBUSY) {
		return nil, fmt.Errorf("%w: another process holds %s (is flanneld or another weft running?)", err, name)
	}
	if _, lerr := n.nl.LinkByName(name); lerr == nil {
		n.log.Warn("removing stale device in the way", "device", name, "err", err)
		if rerr := route.RemoveLink(n.nl, name); rerr != nil {
			return nil, fmt.Errorf("%w (and removing the stale device failed: %w)", err, rerr)
		}
		return tunnel.OpenTUNConfig(cfg)
	}
	return nil, err
}

// setUpDevice gives the device its address (the lease's network address
// as /32), MTU and the route for the whole network.
func (n *node) setUpDevice(lease netip.Prefix) error {
	n.desired = route.Desired{
		Link:       n.cfg.TunName,
		Addr:       netip.PrefixFrom(lease.Addr(), 32),
		MTU:        n.mtu,
		TxQueueLen: 1000,
		Routes:     []netip.Prefix{n.netCfg.Network},
	}
	return route.Set(n.nl, n.desired)
}

// capSegments caps the TUN's super-packets at what one UDP GSO message
// carries, for the userspace path alone. Not with the kernel fast path:
// there TCP would cut every 64 KiB send into 44 segments and a 45th of its
// own, twice the packets through the whole path (4 TCP streams: 15 against
// 43 Gb/s on the lab's veth).
func (n *node) capSegments() {
	if n.cfg.Offloads.TUN && n.cfg.Offloads.GSO {
		// A tuning, not a requirement: a kernel that refuses it only
		// costs an extra datagram message per super-packet.
		capped := n.desired
		capped.GSOMaxSegs = tunnel.GSOSegments(n.mtu)
		if err := route.Set(n.nl, capped); err != nil {
			n.log.Warn("could not cap the TUN's gso_max_segs; forwarding without", "device", n.cfg.TunName, "err", err)
		} else {
			n.desired = capped
		}
	}
}

// removeDevice makes sure the device is gone on the way out (it goes with
// its last fd), so a restart starts clean.
func (n *node) removeDevice() {
	if err := route.RemoveLink(n.nl, n.cfg.TunName); err != nil {
		n.log.Warn("remove device", "device", n.cfg.TunName, "err", err)
	}
}
