package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/fastpath"
	"github.com/weft-net/weft/route"
	"github.com/weft-net/weft/status"
	"github.com/weft-net/weft/tunnel"
)

// preflight is step 1 of Run: the checks and handles everything after it
// needs. What it returns is released by node.close.
func preflight(ctx context.Context, cfg Config, log *slog.Logger, h hooks) (*node, error) {
	if err := requireNetAdmin(); err != nil {
		return nil, err
	}
	n := &node{cfg: cfg, log: log, hooks: h, etcdBack: make(chan struct{}, 1), etcdWorks: make(chan struct{}, 1),
		up: make(chan struct{})}
	var err error
	if h.netns >= 0 {
		n.nl, err = netlink.NewHandleAt(h.netns)
	} else {
		n.nl, err = netlink.NewHandle()
	}
	if err != nil {
		return nil, fmt.Errorf("open netlink: %w", err)
	}
	if err := n.chooseInterface(); err != nil {
		n.nl.Close()
		return nil, err
	}
	log.Info("using interface", "iface", n.iface.Name, "addr", n.iface.Addr, "mtu", n.iface.MTU, "public-ip", n.publicIP)
	if n.store, err = connectStore(ctx, n); err != nil {
		n.nl.Close()
		return nil, err
	}
	n.health = status.NewHealth(cfg.Build)
	n.health.SetStatic(n.store.where(), cfg.SourceCheck.String(), cfg.PeerMetrics,
		append(tunnel.DropReasonNames(), fastpath.DropKernelError))
	n.reportStore()
	return n, nil
}

// requireNetAdmin fails early, before a lease is taken, when the process
// lacks CAP_NET_ADMIN: without it the TUN, its routes and the nftables
// rules are all refused, after a lease would already be held in etcd.
func requireNetAdmin() error {
	if fastpath.HasCap(unix.CAP_NET_ADMIN) {
		return nil
	}
	return errors.New("missing CAP_NET_ADMIN, which the TUN device, its routes and the nftables rules need: " +
		"run weft as root, or with AmbientCapabilities=CAP_NET_ADMIN CAP_NET_RAW CAP_BPF as systemd/weft.service does")
}

// chooseInterface picks the underlay interface and the address to publish.
func (n *node) chooseInterface() error {
	iface, err := route.FindInterface(n.nl, n.cfg.Iface)
	if err != nil {
		return err
	}
	n.iface, n.publicIP = iface, iface.Addr
	if n.cfg.PublicIP.IsValid() {
		n.publicIP = n.cfg.PublicIP
	}
	return nil
}

// inNetns runs fn in the node's network namespace: this process's, or a
// test's (on a locked thread that returns to its own namespace after).
func (n *node) inNetns(fn func() error) error {
	if n.hooks.netns < 0 {
		return fn()
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		return fmt.Errorf("get network namespace: %w", err)
	}
	defer orig.Close()
	if err := netns.Set(n.hooks.netns); err != nil {
		return fmt.Errorf("enter network namespace: %w", err)
	}
	defer func() {
		if err := netns.Set(orig); err != nil {
			panic(fmt.Sprintf("node: cannot return to the original network namespace: %v", err))
		}
	}()
	return fn()
}
