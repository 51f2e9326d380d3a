package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/weft-net/weft/dataplane"
	"github.com/weft-net/weft/fastpath"
	"github.com/weft-net/weft/route"
	"github.com/weft-net/weft/status"
	"github.com/weft-net/weft/subnet"
	"github.com/weft-net/weft/tunnel"
)

// Run is one daemon's life, until ctx ends (a clean stop: nil) or something
// fatal happens (an error: the caller exits 1 and systemd restarts weft).
//
// The start-up order, and what the stop undoes (in reverse order):
//
//  1. preflight: CAP_NET_ADMIN, a netlink handle, the underlay interface,
//     the etcd client (each closed on the way out)
//  2. SIGHUP taken (its default would kill a starting daemon); the healthz
//     listener and status socket (shut down, the socket removed); STOPPING=1
//     is sent on the way out, whatever the cause
//  3. the network config, waited for
//  4. the UDP socket, bound before leasing: a busy port must not cost a
//     24 h lease (closed)
//  5. the lease (kept in etcd, so a restart gets the same subnet)
//  6. the TUN device with its address, MTU and route (removed), and the
//     userspace data plane over it and the socket; the kernel fast path
//     beside it, as -fast-path says (detached), and the lease's
//     advertisement of it (withdrawn); both planes fed the peers listed
//     from etcd
//  7. the workers: data planes, etcd monitor, watchdog, lease watch,
//     renewal, route check (stopped and waited for; the userspace plane
//     closes device and socket, the kernel plane detaches)
//  8. the firewall rules and their resync (rules kept, as flanneld's)
//  9. subnet.env (kept), then ready: /readyz 200, READY=1
func Run(ctx context.Context, cfg Config, log *slog.Logger) error {
	n, err := preflight(ctx, cfg, log, defaultHooks())
	if err != nil {
		return err
	}
	defer n.close()
	return n.run(ctx)
}

// routeResync is how often the device, address and route are re-checked,
// so an operator's `ip route del` heals by itself.
const routeResync = 10 * time.Second

// node is one running daemon's state.
type node struct {
	cfg      Config
	log      *slog.Logger
	hooks    hooks
	nl       *netlink.Handle
	store    leaseStore
	iface    route.Iface
	publicIP netip.Addr

	health    *status.Health
	netCfg    *subnet.Config
	mtu       int
	desired   route.Desired // the device's kernel state, re-applied by the route check
	hup       chan os.Signal
	peers     peerSet
	etcdBack  chan struct{} // the store's connection came back up
	etcdWorks chan struct{} // a call to the store just succeeded (see etcdWorked)
	up        chan struct{} // closed once ready
}

// hooks are the node's reach into the kernel's TUN and its data planes:
// the userspace plane in production, a fake in tests (so the node is
// tested without a TUN), optionally in a network namespace of the test's.
type hooks struct {
	netns     netns.NsHandle // -1: this process's namespace
	openPlane func(n *node, conn tunnel.Conn) (dataplane.Plane, func(), error)
	// openFastPath loads and attaches the kernel plane, returning how it
	// is attached.
	openFastPath func(n *node, lease subnet.Lease) (dataplane.Plane, status.FastPath, error)
	// probeKernel finds the kernel features the fast path uses; nil
	// leaves them out of /status.
	probeKernel func() []fastpath.Feature
}

func defaultHooks() hooks {
	return hooks{netns: -1, openPlane: openUserspace, openFastPath: openKernel, probeKernel: fastpath.Probe}
}

func (n *node) close() {
	n.store.Close()
	n.nl.Close()
}

// run is steps 2 to 9 of Run.
func (n *node) run(ctx context.Context) error {
	n.hup = make(chan os.Signal, 1)
	signal.Notify(n.hup, syscall.SIGHUP)
	defer signal.Stop(n.hup)
	stop, err := n.serveStatus()
	if err != nil {
		return err
	}
	defer stop()
	defer notify(n.log, "STOPPING=1\nSTATUS=stopping")

	if n.netCfg, err = n.store.networkConfig(ctx); err != nil {
		return n.stoppedEarly(ctx, err, "while reading the network config")
	}
	c := n.netCfg
	n.log.Info("network config", "network", c.Network, "subnet-len", c.SubnetLen,
		"subnet-min", c.SubnetMin, "subnet-max", c.SubnetMax, "port", c.BackendPort)
	conn, err := n.bind()
	if err != nil {
		return err
	}
	connOwned := true // until a data plane takes it
	defer func() {
		if connOwned {
			conn.Close()
		}
	}()
	// Exactly what a udp flanneld writes, so mixed clusters see identical
	// leases.
	lease, err := n.store.acquire(ctx, subnet.Attrs{PublicIP: n.publicIP})
	if err != nil {
		return n.stoppedEarly(ctx, err, "while acquiring a lease")
	}
	n.health.SetLease(statusLease(lease))
	if err := n.checkMTU(); err != nil {
		return err
	}
	plane, release, err := n.hooks.openPlane(n, conn)
	if err != nil {
		return err
	}
	connOwned = false
	defer n.removeDevice()
	if err := n.setUpDevice(lease.Subnet); err != nil {
		release()
		return err
	}
	planes, err := n.openPlanes(ctx, &lease, plane)
	if err != nil {
		release()
		return err
	}
	leases, rev, err := n.listLeases(ctx)
	if err != nil {
		n.closePlanes(planes[1:])
		release()
		return err
	}
	n.peers = newPeerSet(lease.Subnet, planes)
	n.publishPeers(leases, rev)
	return n.serve(ctx, lease, planes, leases, rev)
}

// openPlanes starts the kernel fast path beside the userspace plane (as
// -fast-path says), points /status at both and makes the lease say whether
// this node decapsulates in its kernel. The userspace plane comes first.
func (n *node) openPlanes(ctx context.Context, lease *subnet.Lease, user dataplane.Plane) ([]dataplane.Plane, error) {
	planes := []dataplane.Plane{user}
	reports := []status.PlaneReport{{Path: status.PathUserspace, Report: user.Report}}
	kernel, fp, err := n.startFastPath(*lease)
	if err != nil {
		return nil, err
	}
	n.recordKernel(fp, user.Report(false).Offloads)
	if kernel != nil {
		planes = append(planes, kernel)
		reports = append(reports, status.PlaneReport{Path: status.PathKernel, Report: kernel.Report})
	}
	if kernel == nil {
		n.capSegments()
	}
	n.health.SetDataPlane(n.cfg.TunName, n.mtu, reports...)
	if *lease, err = n.advertise(ctx, *lease, kernel != nil); err != nil {
		n.closePlanes(planes[1:])
		return nil, n.stoppedEarly(ctx, err, "while updating the lease")
	}
	return planes, nil
}

// closePlanes releases planes that never ran (Run with a done context
// releases what each holds).
func (n *node) closePlanes(planes []dataplane.Plane) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for _, p := range planes {
		if err := p.Run(ctx); err != nil {
			n.log.Warn("release a data plane", "err", err)
		}
	}
}

// serve runs the workers (step 7), puts the firewall rules and subnet.env
// in place (8, 9), and waits for the end.
func (n *node) serve(ctx context.Context, lease subnet.Lease, planes []dataplane.Plane, leases []subnet.Lease, rev int64) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var wg sync.WaitGroup
	spawn := func(name string, fn func(context.Context) error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := fn(ctx); err != nil && ctx.Err() == nil {
				cancel(fmt.Errorf("%s: %w", name, err))
			}
		}()
	}
	n.spawnWorkers(spawn, lease, planes, leases, rev, cancel)

	if err := n.startFirewall(lease.Subnet, spawn); err != nil {
		cancel(err)
	} else if err := writeSubnetEnv(n.cfg.SubnetFile, subnetEnv{
		Network: n.netCfg.Network, Subnet: lease.Subnet, MTU: n.mtu, IPMasq: n.cfg.Firewall.Masquerade,
	}); err != nil {
		cancel(err)
	} else {
		n.health.SetReady()
		close(n.up)
		n.log.Info("ready", "subnet", lease.Subnet, "device", n.cfg.TunName, "mtu", n.mtu,
			"subnet-file", n.cfg.SubnetFile, "peers", len(leases)-1)
		notify(n.log, "READY=1\n"+n.statusLine(lease.Subnet))
	}

	<-ctx.Done()
	cause := context.Cause(ctx)
	n.withdraw(lease)
	wg.Wait()
	if errors.Is(cause, context.Canceled) {
		n.log.Info("stopped; the lease stays in "+n.store.kind()+" for the next start", "subnet", lease.Subnet)
		return nil
	}
	return cause
}

// spawnWorkers starts what runs until the stop: the data planes, the etcd
// monitor, the watchdog, the lease watch, the renewal and the route check.
func (n *node) spawnWorkers(spawn func(string, func(context.Context) error), lease subnet.Lease,
	planes []dataplane.Plane, leases []subnet.Lease, rev int64, fail context.CancelCauseFunc) {
	var planeUp atomic.Bool // the watchdog goes quiet once the userspace plane stops
	planeUp.Store(true)
	spawn("data path", func(ctx context.Context) error {
		defer planeUp.Store(false)
		return planes[0].Run(ctx)
	})
	for _, p := range planes[1:] {
		spawn("kernel fast path", p.Run)
	}
	spawn(n.store.kind()+" monitor", func(ctx context.Context) error {
		n.monitorEtcd(ctx, lease.Subnet)
		return nil
	})
	if interval := watchdogInterval(); interval > 0 {
		spawn("watchdog", func(ctx context.Context) error { return n.watchdog(ctx, interval, &planeUp) })
	}
	spawn("watch", func(ctx context.Context) error { return n.watch(ctx, lease.Subnet, leases, rev, fail) })
	spawn("lease", func(ctx context.Context) error { return n.store.keep(ctx, lease, n.up) })
	spawn("route check", func(ctx context.Context) error { return n.routeCheck(ctx, lease.Subnet) })
}

// routeCheck re-applies the device's address, MTU and route every
// routeResync, and at once on SIGHUP, which also re-lists the leases. It
// fails when the underlay address has left the node (see underlayWatch),
// and warns while the node does not forward (see forwardingWatch).
func (n *node) routeCheck(ctx context.Context, own netip.Prefix) error {
	var underlay underlayWatch
	forwarding := forwardingWatch{kernel: len(n.peers.planes) > 1}
	readForward := func() (b []byte, err error) {
		err = n.inNetns(func() error { b, err = os.ReadFile(ipForwardPath); return err })
		return b, err
	}
	forwarding.check(readForward, n.log)
	for {
		reload := false
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(routeResync):
		case <-n.hup:
			reload = true
			n.log.Info("SIGHUP: re-listing leases and re-applying device, address, route and peers")
		}
		changes, err := route.Apply(n.nl, n.desired)
		if err != nil {
			n.log.Warn("re-apply device and route", "err", err)
		}
		for _, p := range n.peers.planes {
			if r, ok := p.(dataplane.Repairer); ok {
				done, err := r.Repair()
				if err != nil {
					n.log.Warn("repair data plane", "err", err)
				}
				changes = append(changes, done...)
			}
		}
		for _, c := range changes {
			n.log.Info("repaired kernel state", "change", c)
		}
		if err := underlay.check(n.nl, n.iface, n.log); err != nil {
			return err
		}
		forwarding.check(readForward, n.log)
		if reload {
			n.reloadPeers(ctx)
		}
	}
}

// stoppedEarly turns the error of a start-up step that a stop signal
// interrupted into a clean stop: `systemctl stop` while etcd is down is
// not a failure. Any other error is returned as it is.
func (n *node) stoppedEarly(ctx context.Context, err error, during string) error {
	if ctx.Err() != nil && errors.Is(err, context.Canceled) {
		n.log.Info("stopped before ready", "during", during)
		return nil
	}
	return err
}

// serveStatus starts the healthz listener and the status socket (step 2);
// the returned func stops both.
func (n *node) serveStatus() (func(), error) {
	var stops []func()
	stopAll := func() {
		for i := len(stops) - 1; i >= 0; i-- {
			stops[i]()
		}
	}
	if n.cfg.HealthzPort != 0 {
		stop, err := n.health.Serve(n.cfg.HealthzIP, n.cfg.HealthzPort, n.log)
		if err != nil {
			return nil, err
		}
		stops = append(stops, stop)
	}
	if n.cfg.StatusSocket != "" {
		stop, err := n.health.ServeSocket(n.cfg.StatusSocket, n.log)
		if err != nil {
			n.log.Warn("no status socket: `weft status` will not reach this daemon", "socket", n.cfg.StatusSocket, "err", err)
		} else {
			stops = append(stops, stop)
		}
	}
	return stopAll, nil
}

func statusLease(l subnet.Lease) status.Lease {
	return status.Lease{Subnet: l.Subnet, PublicIP: l.Attrs.PublicIP, Expiration: l.Expiration, Reserved: l.Reserved()}
}
