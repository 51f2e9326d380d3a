package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/etcd"
	"github.com/weft-net/weft/route"
	"github.com/weft-net/weft/subnet"
	"github.com/weft-net/weft/tunnel"
)

// parseOffloads returns the offloads to use: none without -offload, else
// those -offloads names.
func parseOffloads(on bool, list string) (map[string]bool, error) {
	use := map[string]bool{}
	for _, name := range strings.Split(list, ",") {
		switch name = strings.TrimSpace(name); name {
		case "tun", "gso", "gro":
			use[name] = on
		case "":
		default:
			return nil, fmt.Errorf("-offloads=%s: unknown offload %q; use a comma-separated list of tun, gso and gro", list, name)
		}
	}
	return use, nil
}

// routeResync is how often the device, address and route are re-checked,
// so an operator's `ip route del` heals by itself.
const routeResync = 10 * time.Second

func (o *options) etcdConfig(log *slog.Logger) etcd.Config {
	var eps []string
	for _, e := range strings.Split(o.etcdEndpoints, ",") {
		if e = strings.TrimSpace(e); e != "" {
			eps = append(eps, e)
		}
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return etcd.Config{
		Endpoints: eps,
		Prefix:    o.etcdPrefix,
		KeyFile:   o.etcdKeyFile,
		CertFile:  o.etcdCertFile,
		CAFile:    o.etcdCAFile,
		Username:  o.etcdUsername,
		Password:  o.etcdPassword,
		Logger:    log,
	}
}

// runDaemon is the main job: lease, device, route, data path, watch, renew,
// until ctx ends (clean exit) or something fatal happens (error, exit 1 so
// systemd restarts us).
func runDaemon(ctx context.Context, o *options, stderr io.Writer) error {
	log, err := newLogger(stderr, o.logFormat, o.verbosity)
	if err != nil {
		return err
	}
	margin, err := o.renewMargin()
	if err != nil {
		return err
	}
	check, ok := tunnel.ParseSourceCheck(o.sourceCheck)
	if !ok {
		return fmt.Errorf("-source-check=%s: must be strict, nat or off", o.sourceCheck)
	}
	if o.useOffload, err = parseOffloads(o.offload, o.offloads); err != nil {
		return err
	}
	if err := o.checkFirewallFlags(); err != nil {
		return err
	}
	log.Info("starting weft", "version", versionString(), "etcd", o.etcdEndpoints, "prefix", o.etcdPrefix)
	if len(o.ignoredLog) > 0 {
		log.Info("ignoring flanneld's glog flags: weft logs to stderr (-log-format, -v)", "flags", strings.Join(o.ignoredLog, " "))
	}
	if err := requireNetAdmin(); err != nil {
		return err
	}

	nl, err := netlink.NewHandle()
	if err != nil {
		return fmt.Errorf("open netlink: %w", err)
	}
	defer nl.Close()

	iface, publicIP, err := o.chooseInterface(nl)
	if err != nil {
		return err
	}
	log.Info("using interface", "iface", iface.Name, "addr", iface.Addr, "mtu", iface.MTU, "public-ip", publicIP)

	store, err := connectEtcd(ctx, o, log)
	if err != nil {
		return err
	}
	defer store.Close()

	d := &node{opts: o, log: log, nl: nl, store: store, iface: iface, publicIP: publicIP, margin: margin, sourceCheck: check,
		etcdBack: make(chan struct{}, 1), etcdWorks: make(chan struct{}, 1)}
	return d.run(ctx)
}

// requireNetAdmin fails early, before a lease is taken, when the process
// lacks CAP_NET_ADMIN: without it the TUN, its routes and the nftables
// rules are all refused, after a lease would already be held in etcd.
func requireNetAdmin() error {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData // version 3 writes two
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return nil // cannot tell: the first privileged call will say
	}
	if data[0].Effective&(1<<unix.CAP_NET_ADMIN) != 0 {
		return nil
	}
	return errors.New("missing CAP_NET_ADMIN, which the TUN device, its routes and the nftables rules need: " +
		"run weft as root, or with AmbientCapabilities=CAP_NET_ADMIN CAP_NET_RAW as systemd/weft.service does")
}

func (o *options) chooseInterface(nl *netlink.Handle) (route.Iface, netip.Addr, error) {
	sel := route.Selector{Ifaces: o.ifaces, Regexes: o.ifaceRegexes}
	if o.ifaceCanReach != "" {
		a, err := netip.ParseAddr(o.ifaceCanReach)
		if err != nil {
			return route.Iface{}, netip.Addr{}, fmt.Errorf("-iface-can-reach=%s: not an IP address", o.ifaceCanReach)
		}
		sel.CanReach = a
	}
	iface, err := route.FindInterface(nl, sel)
	if err != nil {
		return route.Iface{}, netip.Addr{}, err
	}
	pub := iface.Addr
	if o.publicIP != "" {
		a, err := netip.ParseAddr(o.publicIP)
		if err != nil || !a.Is4() {
			return route.Iface{}, netip.Addr{}, fmt.Errorf("-public-ip=%s: not an IPv4 address", o.publicIP)
		}
		pub = a
	}
	return iface, pub, nil
}

// node is one running daemon's state.
type node struct {
	opts     *options
	log      *slog.Logger
	nl       *netlink.Handle
	store    *etcd.Store
	iface    route.Iface
	publicIP netip.Addr
	margin   time.Duration

	sourceCheck tunnel.SourceCheck
	publishMu   sync.Mutex
	tableRev    int64         // etcd revision the peer table reflects; under publishMu
	etcdBack    chan struct{} // the etcd connection came back up
	etcdWorks   chan struct{} // a call to etcd just succeeded (see etcdWorked)

	cfg    *subnet.Config
	fwd    *tunnel.Forwarder
	health *health
}

func (d *node) run(ctx context.Context) error {
	o := d.opts
	// Take SIGHUP from the start: its default action would kill a daemon
	// that is still starting (systemctl reload). Before the data path runs
	// there is nothing to reload; the signal is then only noted.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	d.health = newHealth()
	d.health.setStatic(o.etcdEndpoints, d.sourceCheck.String(), o.peerMetrics)
	d.health.setEtcdRequests(d.store.Requests)
	if o.healthzPort != 0 {
		stop, err := d.health.serve(o.healthzIP, o.healthzPort, d.log)
		if err != nil {
			return err
		}
		defer stop()
	}
	if o.statusSocket != "" {
		stop, err := d.health.serveSocket(o.statusSocket, d.log)
		if err != nil {
			d.log.Warn("no status socket: `weft status` will not reach this daemon", "socket", o.statusSocket, "err", err)
		} else {
			defer stop()
		}
	}
	// Always STOPPING=1 on the way out, whatever the cause.
	defer notify(d.log, "STOPPING=1\nSTATUS=stopping")
	notify(d.log, "STATUS=reading the network config from "+o.etcdPrefix+"/config")

	cfg, err := d.waitConfig(ctx)
	if err != nil {
		return d.stoppedEarly(ctx, err, "while reading the network config")
	}
	d.cfg = cfg
	d.log.Info("network config", "network", cfg.Network, "subnet-len", cfg.SubnetLen,
		"subnet-min", cfg.SubnetMin, "subnet-max", cfg.SubnetMax, "port", cfg.BackendPort)

	// Bind before leasing: a busy port must not cost a 24 h lease
	// (flanneld leaks one that way).
	laddr := netip.AddrPortFrom(d.iface.Addr, uint16(cfg.BackendPort))
	conn, err := tunnel.ListenUDPConfig(tunnel.UDPConfig{Addr: laddr, GSO: o.useOffload["gso"], GRO: o.useOffload["gro"], Logger: d.log})
	if err != nil {
		if errors.Is(err, unix.EADDRINUSE) {
			return fmt.Errorf("UDP %s is already in use: is flanneld or another weft running on this node? Stop it first: %w", laddr, err)
		}
		return err
	}
	connOwned := true
	defer func() {
		if connOwned {
			conn.Close()
		}
	}()

	lease, err := d.acquire(ctx)
	if err != nil {
		return d.stoppedEarly(ctx, err, "while acquiring a lease")
	}
	d.health.setLease(lease)

	mtu := o.mtu
	if mtu == 0 {
		mtu = d.iface.MTU - tunnel.Overhead
	}
	if mtu < 576 || mtu > 65535-tunnel.Overhead {
		return fmt.Errorf("TUN MTU %d is out of range (576..%d): check -mtu or the MTU of %s", mtu, 65535-tunnel.Overhead, d.iface.Name)
	}
	dev, err := d.openDevice(mtu)
	if err != nil {
		return err
	}
	defer func() {
		// The device disappears with its last fd; make sure, so a restart
		// starts clean.
		if err := route.RemoveLink(d.nl, o.tunName); err != nil {
			d.log.Warn("remove device", "device", o.tunName, "err", err)
		}
	}()
	// The overlay is IPv4 only: without this the kernel sends IPv6
	// router solicitations into the device, which we would only drop.
	if err := os.WriteFile("/proc/sys/net/ipv6/conf/"+o.tunName+"/disable_ipv6", []byte("1"), 0o644); err != nil && !errors.Is(err, fs.ErrNotExist) {
		d.log.Debug("disable IPv6 on device", "device", o.tunName, "err", err)
	}
	desired := route.Desired{
		Link:       o.tunName,
		Addr:       netip.PrefixFrom(lease.Subnet.Addr(), 32),
		MTU:        mtu,
		TxQueueLen: 1000,
		Routes:     []netip.Prefix{cfg.Network},
	}
	if err := route.Set(d.nl, desired); err != nil {
		dev.Close()
		return err
	}
	if o.useOffload["tun"] && o.useOffload["gso"] {
		// A tuning, not a requirement: a kernel that refuses it only
		// costs an extra datagram message per super-packet.
		capped := desired
		capped.GSOMaxSegs = tunnel.GSOSegments(mtu)
		if err := route.Set(d.nl, capped); err != nil {
			d.log.Warn("could not cap the TUN's gso_max_segs; forwarding without", "device", o.tunName, "err", err)
		} else {
			desired = capped
		}
	}

	d.fwd = tunnel.NewForwarder(tunnel.Config{Device: dev, Conn: conn, Port: uint16(cfg.BackendPort),
		SourceCheck: d.sourceCheck, Logger: d.log, SplitDirections: o.splitDirs})
	connOwned = false
	d.health.setForwarder(d.fwd, o.tunName, mtu)
	d.health.setOffloads(dev, conn)

	leases, rev, err := d.listLeases(ctx)
	if err != nil {
		dev.Close()
		conn.Close()
		return err
	}
	d.publishPeers(lease.Subnet, leases, rev)

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
	var dataPathUp atomic.Bool
	dataPathUp.Store(true)
	spawn("data path", func(ctx context.Context) error {
		defer dataPathUp.Store(false)
		return d.fwd.Run(ctx)
	})
	spawn("etcd monitor", func(ctx context.Context) error {
		d.monitorEtcd(ctx, lease.Subnet)
		return nil
	})
	if interval, err := daemon.SdWatchdogEnabled(false); err == nil && interval > 0 {
		// WATCHDOG=1 only while the data path runs: a wedged forwarder
		// stops the pings and systemd restarts us.
		spawn("watchdog", func(ctx context.Context) error {
			for {
				select {
				case <-ctx.Done():
					return nil
				case <-time.After(interval / 2):
				}
				if dataPathUp.Load() {
					notify(d.log, daemon.SdNotifyWatchdog)
				}
			}
		})
	}
	spawn("watch", func(ctx context.Context) error { return d.watch(ctx, lease.Subnet, leases, rev, cancel) })
	spawn("lease renewal", func(ctx context.Context) error {
		return subnet.KeepAlive(ctx, d.store, subnet.RealClock{}, d.log, lease, d.margin,
			func(l subnet.Lease) { d.health.renewed(l); d.etcdWorked() },
			func(err error) { d.health.renewFailed(err, time.Now()) })
	})
	// SIGHUP re-applies everything at once, as the timer does slowly.
	spawn("route check", func(ctx context.Context) error {
		var underlay underlayWatch
		for {
			reload := false
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(routeResync):
			case <-hup:
				reload = true
				d.log.Info("SIGHUP: re-listing leases and re-applying device, address, route and peers")
			}
			changes, err := route.Apply(d.nl, desired)
			if err != nil {
				d.log.Warn("re-apply device and route", "err", err)
			}
			for _, c := range changes {
				d.log.Info("repaired kernel state", "change", c)
			}
			if err := underlay.check(d.nl, d.iface, d.log); err != nil {
				return err // the spawn wrapper stops the daemon with it
			}
			if reload {
				d.reloadPeers(ctx, lease.Subnet)
			}
		}
	})

	if err := d.startFirewall(cfg.Network, lease.Subnet, spawn); err != nil {
		cancel(err)
	} else if err := writeSubnetEnv(o.subnetFile, subnetEnv{
		Network: cfg.Network, Subnet: lease.Subnet, MTU: mtu, IPMasq: o.ipMasq,
	}); err != nil {
		cancel(err)
	} else {
		d.health.setReady()
		d.log.Info("ready", "subnet", lease.Subnet, "device", o.tunName, "mtu", mtu, "subnet-file", o.subnetFile, "peers", len(leases)-1)
		notify(d.log, daemon.SdNotifyReady+"\n"+d.statusLine(lease.Subnet))
	}

	<-ctx.Done()
	cause := context.Cause(ctx)
	wg.Wait()
	if errors.Is(cause, context.Canceled) {
		d.log.Info("stopped; the lease stays in etcd for the next start", "subnet", lease.Subnet)
		return nil
	}
	return cause
}

// underlayWatch notices the underlay address leaving the node. The UDP
// socket is bound to it and the lease publishes it (unless -public-ip), so
// without it the node is cut off while looking healthy. Gone at one check,
// it is logged; still gone at the next (routeResync later), weft exits so
// that systemd restarts it on the address the interface has now. One check
// of grace rides out an address that is briefly removed and re-added.
type underlayWatch struct{ missing bool }

func (w *underlayWatch) check(nl *netlink.Handle, iface route.Iface, log *slog.Logger) error {
	// All the node's addresses in one dump (kube-proxy's IPVS mode puts
	// thousands on kube-ipvs0): the address may have moved to another link.
	addrs, err := nl.AddrList(nil, netlink.FAMILY_V4)
	if err != nil {
		log.Debug("list addresses to check the underlay's", "err", err)
		return nil
	}
	index := -1
	if link, err := nl.LinkByName(iface.Name); err == nil {
		index = link.Attrs().Index
	}
	var now []string // what the chosen interface has instead
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP.To4())
		if !ok {
			continue
		}
		if ip == iface.Addr {
			if w.missing {
				log.Info("underlay address is back", "addr", iface.Addr)
			}
			w.missing = false
			return nil
		}
		if a.LinkIndex == index {
			now = append(now, ip.String())
		}
	}
	has := "none"
	if len(now) > 0 {
		has = strings.Join(now, ", ")
	}
	if !w.missing {
		w.missing = true
		log.Warn("underlay address is gone from the node: the UDP socket is bound to it and peers send to it; "+
			"exiting at the next check unless it returns", "addr", iface.Addr, "iface", iface.Name, "iface-now-has", has)
		return nil
	}
	return fmt.Errorf("underlay address %s is gone from the node (%s now has %s): weft's socket is bound to it and "+
		"its lease publishes it; exiting so that the restart uses the address the interface has now", iface.Addr, iface.Name, has)
}

// stoppedEarly turns the error of a start-up step that a stop signal
// interrupted into a clean stop: `systemctl stop` while etcd is down is
// not a failure. Any other error is returned as it is.
func (d *node) stoppedEarly(ctx context.Context, err error, during string) error {
	if ctx.Err() != nil && errors.Is(err, context.Canceled) {
		d.log.Info("stopped before ready", "during", during)
		return nil
	}
	return err
}

// waitConfig reads and validates the network config, retrying while it is
// missing or etcd is unreachable. An invalid config is fatal: it needs an
// operator, and systemd will start us again.
func (d *node) waitConfig(ctx context.Context) (*subnet.Config, error) {
	var lastErr string
	for {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		data, err := d.store.GetNetworkConfig(cctx)
		cancel()
		if err == nil {
			cfg, err := subnet.ParseConfig(data)
			if err != nil {
				return nil, fmt.Errorf("%s/config: %w (fix it with: %s)", d.opts.etcdPrefix, err, configPutHint(d.opts))
			}
			if lastErr != "" {
				d.log.Info("network config found")
			}
			return cfg, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		// One line per change of state, not one per retry.
		if msg := err.Error(); msg != lastErr {
			lastErr = msg
			if errors.Is(err, subnet.ErrNoConfig) {
				d.log.Warn("network config missing; retrying every second", "key", d.opts.etcdPrefix+"/config",
					"fix", configPutHint(d.opts))
				notify(d.log, "STATUS=waiting for the network config: create it with "+configPutHint(d.opts))
			} else {
				d.log.Warn("cannot read network config from etcd; retrying every second", "err", err)
				notify(d.log, "STATUS=waiting for etcd: "+err.Error())
			}
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// acquire takes a lease, retrying while etcd is unreachable.
func (d *node) acquire(ctx context.Context) (subnet.Lease, error) {
	prev, err := readSubnetEnv(d.opts.subnetFile)
	if err != nil {
		d.log.Warn("ignoring previous subnet file", "file", d.opts.subnetFile, "err", err)
	}
	backoff := retry{}
	for {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		l, err := subnet.Acquire(cctx, d.store, subnet.AcquireOptions{
			Config: d.cfg,
			// Exactly what a udp flanneld writes, so mixed clusters see
			// identical leases.
			Attrs:    subnet.Attrs{PublicIP: d.publicIP},
			Previous: prev,
			Logger:   d.log,
		})
		cancel()
		if err == nil {
			return l, nil
		}
		if ctx.Err() != nil {
			return subnet.Lease{}, ctx.Err()
		}
		if errors.Is(err, subnet.ErrOutOfSubnets) {
			return subnet.Lease{}, err
		}
		if err := backoff.wait(ctx, d.log, "acquire lease", err); err != nil {
			return subnet.Lease{}, err
		}
	}
}

func (d *node) listLeases(ctx context.Context) ([]subnet.Lease, int64, error) {
	backoff := retry{}
	for {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		leases, rev, err := d.store.ListLeases(cctx)
		cancel()
		if err == nil {
			return leases, rev, nil
		}
		if err := backoff.wait(ctx, d.log, "list leases", err); err != nil {
			return nil, 0, err
		}
	}
}

// openTUNOverride, when set (a build with -tags wgtun), opens the TUN in
// place of tunnel.OpenTUNConfig.
var openTUNOverride func(name string, mtu int) (tunnel.Device, error)

func (d *node) openDevice(mtu int) (tunnel.Device, error) {
	if openTUNOverride != nil {
		d.log.Warn("this build opens the TUN with wireguard-go's code (-tags wgtun), for comparison only")
		return openTUNOverride(d.opts.tunName, mtu)
	}
	cfg := tunnel.TUNConfig{Name: d.opts.tunName, MTU: mtu, Offload: d.opts.useOffload["tun"], Logger: d.log}
	dev, err := tunnel.OpenTUNConfig(cfg)
	if err == nil {
		return dev, nil
	}
	// A leftover that is not a TUN (or a persistent one) is in the way;
	// a TUN still held by a live process is not ours to take.
	if errors.Is(err, unix.EBUSY) {
		return nil, fmt.Errorf("%w: another process holds %s (is flanneld or another weft running?)", err, d.opts.tunName)
	}
	if _, lerr := d.nl.LinkByName(d.opts.tunName); lerr == nil {
		d.log.Warn("removing stale device in the way", "device", d.opts.tunName, "err", err)
		if rerr := route.RemoveLink(d.nl, d.opts.tunName); rerr != nil {
			return nil, fmt.Errorf("%w (and removing the stale device failed: %w)", err, rerr)
		}
		return tunnel.OpenTUNConfig(cfg)
	}
	return nil, err
}

// publishPeers builds a fresh immutable table for the data path from a
// full set of leases read at revision rev (at start and on SIGHUP). The
// watch and SIGHUP both publish; the lock keeps their tables whole. A list
// older than the table (the watch applied a newer change meanwhile) is not
// published, so a change is never undone; it reports whether it published.
func (d *node) publishPeers(own netip.Prefix, leases []subnet.Lease, rev int64) bool {
	d.publishMu.Lock()
	defer d.publishMu.Unlock()
	if rev < d.tableRev {
		return false
	}
	d.tableRev = rev
	start := time.Now()
	peers := make([]tunnel.Peer, 0, len(leases))
	for _, l := range leases {
		if l.Subnet == own {
			continue
		}
		peers = append(peers, tunnel.Peer{Subnet: l.Subnet, Addr: l.Attrs.PublicIP})
	}
	d.fwd.UpdatePeers(own, peers)
	d.health.tableUpdated(d.fwd.Table().Len(), rev, time.Since(start))
	return true
}

// reloadPeers re-reads every lease and republishes the table (SIGHUP). A
// list that the watch overtook is read again: a few tries are plenty, as
// lists are made at etcd's newest revision.
func (d *node) reloadPeers(ctx context.Context, own netip.Prefix) {
	for range 3 {
		lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		leases, rev, err := d.store.ListLeases(lctx)
		cancel()
		if err != nil {
			d.log.Warn("SIGHUP: list leases failed; keeping the current peer table", "err", err)
			return
		}
		if d.publishPeers(own, leases, rev) {
			d.log.Info("SIGHUP: reloaded", "leases", len(leases), "rev", rev)
			return
		}
	}
	d.log.Warn("SIGHUP: leases change faster than they can be listed; keeping the watched peer table")
}

// applyPeerEvents patches the data path's table with a watch batch: the
// cost follows the change, not the cluster's size.
func (d *node) applyPeerEvents(own netip.Prefix, events []subnet.Event, rev int64) {
	d.publishMu.Lock()
	defer d.publishMu.Unlock()
	d.tableRev = max(d.tableRev, rev)
	start := time.Now()
	changes := make([]tunnel.PeerChange, 0, len(events))
	for _, ev := range events {
		if ev.Lease.Subnet == own {
			continue
		}
		changes = append(changes, tunnel.PeerChange{
			Peer:   tunnel.Peer{Subnet: ev.Lease.Subnet, Addr: ev.Lease.Attrs.PublicIP},
			Remove: ev.Type == subnet.EventRemoved,
		})
	}
	d.fwd.ApplyPeers(own, changes)
	d.health.tableUpdated(d.fwd.Table().Len(), rev, time.Since(start))
}

// peerLogLimit: a batch with more peer changes than this is logged as one
// summary line, so a bulk load of thousands of leases does not flood the
// journal.
const peerLogLimit = 16

func (d *node) watch(ctx context.Context, own netip.Prefix, initial []subnet.Lease, rev int64, fail context.CancelCauseFunc) error {
	return subnet.Watch(ctx, subnet.WatchOptions{
		Store:     d.store,
		Clock:     subnet.RealClock{},
		Logger:    d.log,
		Initial:   initial,
		Rev:       rev,
		OnRestart: d.health.watchRestarted,
		Retry:     d.etcdBack,
		OnChange: func(events []subnet.Event, rev int64) {
			d.etcdWorked()
			var added, removed int
			for _, ev := range events {
				if ev.Lease.Subnet == own && ev.Type == subnet.EventRemoved {
					// Someone deleted our lease. Exit non-zero so systemd
					// restarts us and we lease afresh (flanneld exits 0,
					// which Restart=on-failure ignores).
					fail(fmt.Errorf("our lease %s was removed from etcd: %w", own, subnet.ErrLeaseNotFound))
					return
				}
				if ev.Type == subnet.EventRemoved {
					removed++
				} else {
					added++
				}
			}
			if len(events) <= peerLogLimit {
				table := d.fwd.Table()
				for _, ev := range events {
					if ev.Lease.Subnet == own {
						continue
					}
					ip := ev.Lease.Attrs.PublicIP
					if ev.Type == subnet.EventRemoved {
						// A removal names only its subnet; say who it was.
						ip, _ = table.Lookup(ev.Lease.Subnet.Addr().As4())
					}
					d.log.Info("peer "+ev.Type.String(), "subnet", ev.Lease.Subnet, "public-ip", ip)
				}
			}
			d.applyPeerEvents(own, events, rev)
			if len(events) > peerLogLimit {
				d.log.Info("peers changed", "added_or_changed", added, "removed", removed, "peers", d.fwd.Table().Len(), "rev", rev)
			}
		},
	})
}

// retry is a capped exponential backoff that logs once per change of error.
type retry struct {
	delay time.Duration
	last  string
}

func (r *retry) wait(ctx context.Context, log *slog.Logger, what string, err error) error {
	if r.delay == 0 {
		r.delay = 500 * time.Millisecond
	} else if r.delay *= 2; r.delay > 5*time.Second {
		r.delay = 5 * time.Second
	}
	if msg := err.Error(); msg != r.last {
		r.last = msg
		log.Warn(what+" failed; retrying", "err", err)
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(r.delay):
		return nil
	}
}

// etcdRecheck is how often monitorEtcd re-reads gRPC's connection state
// besides following its changes: a safety net, and the bound on how long a
// call that worked holds the status up against gRPC saying down.
const etcdRecheck = 2 * time.Second

// etcdWorked tells monitorEtcd that etcd just answered (a watch batch, a
// renewal): proof the connection is up, whatever gRPC's state says yet.
func (d *node) etcdWorked() {
	select {
	case d.etcdWorks <- struct{}{}:
	default:
	}
}

// monitorEtcd follows the etcd connection and logs and reports each change
// once: while etcd is away the data path forwards with the last peer table.
// It makes no requests: gRPC's connection state says when etcd goes and
// comes back, as it changes; a call that worked (etcdWorked) also says it
// is back, so the status never trails a working watch.
func (d *node) monitorEtcd(ctx context.Context, own netip.Prefix) {
	verdicts := make(chan bool) // gRPC's state: on each change, else every etcdRecheck
	done := make(chan struct{})
	defer func() { <-done }()
	go func() {
		defer close(done)
		up := d.store.Connected()
		for {
			select {
			case verdicts <- up:
			case <-ctx.Done():
				return
			}
			wctx, cancel := context.WithTimeout(ctx, etcdRecheck)
			up = d.store.WaitConnChange(wctx, up)
			cancel()
		}
	}()
	grpcUp := false // gRPC's previous verdict
	worked := false // etcd answered since that verdict
	for {
		select {
		case <-ctx.Done():
			return
		case up := <-verdicts:
			// gRPC going down is news; still down is not if etcd answered
			// since: a call that worked is the better evidence.
			if up || grpcUp || !worked {
				d.setEtcdUp(own, up)
			}
			grpcUp, worked = up, false
		case <-d.etcdWorks:
			worked = true
			d.setEtcdUp(own, true)
		}
	}
}

// setEtcdUp records the etcd connection's state, and logs and reports a
// change.
func (d *node) setEtcdUp(own netip.Prefix, up bool) {
	if !d.health.setEtcdUp(up) {
		return
	}
	if up {
		d.log.Info("etcd connection up", "endpoints", d.opts.etcdEndpoints)
		select { // end a watch's backoff: etcd is back now
		case d.etcdBack <- struct{}{}:
		default:
		}
	} else {
		d.log.Warn("etcd connection lost; forwarding with the last peer table until it returns", "endpoints", d.opts.etcdEndpoints)
	}
	notify(d.log, d.statusLine(own))
}

// statusLine is systemd's one-line STATUS= for `systemctl status weft`.
func (d *node) statusLine(own netip.Prefix) string {
	s := d.health.statusOf(false)
	etcd := "etcd up"
	if !s.Etcd.Up {
		etcd = "etcd unreachable, forwarding with the last peer table"
	}
	return fmt.Sprintf("STATUS=%s on %s, %d peers, %s", own, d.opts.tunName, s.PeerTable.Peers, etcd)
}

// notify sends state to systemd when run as a Type=notify unit; outside
// systemd ($NOTIFY_SOCKET unset) it does nothing.
func notify(log *slog.Logger, state string) {
	if _, err := daemon.SdNotify(false, state); err != nil {
		log.Debug("sd_notify", "state", state, "err", err)
	}
}

// connectEtcd creates the etcd client. Only with a user and password does
// that talk to etcd; while etcd is unreachable it retries, so a node may
// boot before etcd, but a refused login is fatal.
func connectEtcd(ctx context.Context, o *options, log *slog.Logger) (*etcd.Store, error) {
	backoff := retry{}
	for {
		cfg := o.etcdConfig(log)
		// Peers' expirations are not used here; reading them would cost
		// etcd a request per lease per list and per watched change.
		cfg.NoExpirations = true
		s, err := etcd.New(cfg)
		if err == nil || !errors.Is(err, context.DeadlineExceeded) {
			return s, err
		}
		if err := backoff.wait(ctx, log, "connect to etcd", err); err != nil {
			return nil, err
		}
	}
}
