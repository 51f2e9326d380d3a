// Package lab builds throwaway weft clusters out of network namespaces on
// one Linux host, for the demo, the end-to-end tests and the benchmarks.
//
// Topology of one lab (K is chosen per lab so concurrent labs never meet):
//
//	host netns: veth wl<id> 198.18.K.1/24, embedded etcd on 198.18.K.1:2379
//	  │
//	wl<id>-hub netns: bridge br0 joining "host" and n0..nN-1
//	  │
//	wl<id>-n<i> netns: veth eth0 198.18.K.(10+i)/24, default via 198.18.K.1
//
// The bridge lives in its own namespace so that the host's firewall and
// br_netfilter never see lab traffic. The life cycle is split: New sets up,
// StartWeft/Ping/Transfer run, Close cleans up (also after partial setup).
package lab

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	clientv3 "go.etcd.io/etcd/client/v3"
)

const (
	// DefaultNetworkConfig is the flannel network config a lab writes
	// unless Options.NetworkConfig says otherwise.
	DefaultNetworkConfig = `{"Network":"198.19.0.0/16","SubnetLen":24,"Backend":{"Type":"udp"}}`
	// DefaultPrefix is flannel's default etcd prefix.
	DefaultPrefix = "/coreos.com/network"
	// HealthzPort is where every lab daemon serves /healthz, /readyz and
	// /status, on its node's underlay address.
	HealthzPort = 8471
	// EtcdClientPort and EtcdPeerPort are bound on 198.18.K.1, which only
	// this lab owns, so fixed ports cannot collide between labs.
	EtcdClientPort = 2379
	EtcdPeerPort   = 2380
	// PodLink is the device holding a node's pod address: an empty
	// bridge, like cni0 before its first pod.
	PodLink = "pod0"

	maxNodes   = 200 // 198.18.K.10 .. 198.18.K.209
	hubBridge  = "br0"
	hubHostEnd = "host"
)

// Options configure New. The zero value is usable except for WeftBin,
// which StartWeft needs.
type Options struct {
	// Nodes is the number of node namespaces (default 3).
	Nodes int
	// MTU of every underlay veth (default 1500).
	MTU int
	// WeftBin is the weft binary the nodes run; made absolute by New.
	WeftBin string
	// WeftArgs are appended to the default arguments of every daemon
	// started with StartWeft (e.g. "-v=2").
	WeftArgs []string
	// NetworkConfig is written to <prefix>/config (default
	// DefaultNetworkConfig).
	NetworkConfig string
	// Prefix is the etcd prefix (default DefaultPrefix).
	Prefix string
	// Dir is the parent of the lab's temporary directory (default
	// os.TempDir()).
	Dir string
	// KeepDir keeps the lab directory (logs, etcd data) after Close.
	KeepDir bool
	// StopTimeout is how long StopWeft and Close wait after SIGTERM
	// before SIGKILL (default 10 s).
	StopTimeout time.Duration
	// Logger receives the harness's own progress (default: discarded).
	Logger *slog.Logger
}

// Node is the fixed description of one lab node.
type Node struct {
	Index      int
	Name       string     // "n0", "n1", ...
	NS         string     // network namespace name, "wl<id>-n<i>"
	Addr       netip.Addr // underlay address 198.18.K.(10+i)
	Dir        string     // per-node directory inside the lab dir
	SubnetFile string     // the daemon's -subnet-file
	LogFile    string     // the daemon's stdout and stderr, across restarts
}

type node struct {
	Node
	ns     netns.NsHandle
	handle *netlink.Handle

	mu   sync.Mutex
	proc *weftProc
	pod  netip.Prefix // pod0's address once WaitReady configured it
}

// Lab is one running lab. Its methods are safe for concurrent use.
type Lab struct {
	// ID names everything the lab creates: "<pid>-<counter><random>" in hex.
	ID string
	// Underlay is this lab's 198.18.K.0/24.
	Underlay netip.Prefix
	// Dir holds the logs, subnet files and etcd data.
	Dir string

	opts     Options
	log      *slog.Logger
	hostAddr netip.Addr
	hostLink string
	hubNS    string
	nodes    []*node

	lock     *os.File // flock on the underlay /24, held for the lab's life
	spawner  *spawner
	hostH    *netlink.Handle
	hubH     *netlink.Handle
	hubNSH   netns.NsHandle
	nsMade   []string // namespaces created, in creation order
	linkMade bool     // host veth created

	etcdMu sync.Mutex
	etcd   *etcdServer
	client *clientv3.Client

	procMu sync.Mutex
	procs  map[*Proc]struct{} // spawned and not yet reaped

	closeOnce sync.Once
	closeErr  error
	closed    atomic.Bool
}

var labCounter atomic.Uint32

// New creates the namespaces, the bridge and the veths, starts etcd on
// 198.18.K.1 and writes the network config. On error everything already
// created is removed again.
func New(opts Options) (_ *Lab, err error) {
	if err := opts.fill(); err != nil {
		return nil, err
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("lab: network namespaces need root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return nil, fmt.Errorf("lab: the ip command (iproute2) is required: %w", err)
	}

	l := newLab(opts)
	defer func() {
		if err != nil {
			err = errors.Join(err, l.Close())
		}
	}()
	if err = l.setUp(); err != nil {
		return nil, err
	}
	l.log.Info("lab up", "underlay", l.Underlay, "nodes", opts.Nodes, "dir", l.Dir)
	return l, nil
}

// fill sets the defaults of zero fields, checks the ranges and makes
// WeftBin absolute.
func (o *Options) fill() error {
	if o.Nodes == 0 {
		o.Nodes = 3
	}
	if o.Nodes < 1 || o.Nodes > maxNodes {
		return fmt.Errorf("lab: %d nodes: want 1..%d", o.Nodes, maxNodes)
	}
	if o.MTU == 0 {
		o.MTU = 1500
	}
	if o.MTU < 576 || o.MTU > 65535 {
		return fmt.Errorf("lab: mtu %d: want 576..65535", o.MTU)
	}
	if o.NetworkConfig == "" {
		o.NetworkConfig = DefaultNetworkConfig
	}
	if o.Prefix == "" {
		o.Prefix = DefaultPrefix
	}
	if o.StopTimeout == 0 {
		o.StopTimeout = 10 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.WeftBin != "" {
		abs, err := filepath.Abs(o.WeftBin)
		if err != nil {
			return fmt.Errorf("lab: weft binary %s: %w", o.WeftBin, err)
		}
		o.WeftBin = abs
	}
	return nil
}

// newLab names a new lab and the host-side things it will create; it
// creates nothing yet.
func newLab(opts Options) *Lab {
	var rnd [1]byte
	_, _ = rand.Read(rnd[:])
	id := fmt.Sprintf("%x-%x%02x", os.Getpid(), labCounter.Add(1)%0x1000, rnd[0])
	l := &Lab{
		ID:       id,
		opts:     opts,
		hostLink: "wl" + id, // at most 14 bytes, within IFNAMSIZ
		hubNS:    "wl" + id + "-hub",
		hubNSH:   netns.None(),
	}
	l.log = opts.Logger.With("lab", id)
	return l
}

// setUp does New's work: it picks the underlay, creates the lab directory
// and the network, starts etcd and writes the network config. What it
// leaves behind on error is for Close.
func (l *Lab) setUp() error {
	l.spawner = newSpawner()
	if err := l.pickUnderlay(); err != nil {
		return err
	}
	parent := l.opts.Dir
	if parent == "" {
		parent = os.TempDir()
	}
	var err error
	if l.Dir, err = os.MkdirTemp(parent, "weftlab-"+l.ID+"-"); err != nil {
		return fmt.Errorf("lab: create directory: %w", err)
	}
	if err := l.buildNetwork(); err != nil {
		return err
	}
	if err := l.StartEtcd(); err != nil {
		return err
	}
	cli, err := newClient(l.EtcdEndpoint())
	if err != nil {
		return err
	}
	l.etcdMu.Lock()
	l.client = cli
	l.etcdMu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return l.PutConfig(ctx, l.opts.NetworkConfig)
}

// pickUnderlay chooses K: a /24 under 198.18.0.0/16 that no host address or
// host route of /24 or longer uses, locked with flock so that concurrent
// labs (in this or other processes) cannot choose the same K in the window
// before their addresses exist.
func (l *Lab) pickUnderlay() error {
	h, err := netlink.NewHandle()
	if err != nil {
		return fmt.Errorf("lab: netlink handle for host namespace: %w", err)
	}
	l.hostH = h
	if err := os.MkdirAll(lockDir, 0o755); err != nil {
		return fmt.Errorf("lab: create %s: %w", lockDir, err)
	}
	var b [2]byte
	_, _ = rand.Read(b[:])
	start := int(binary.BigEndian.Uint16(b[:]) % 254)
	for n := range 254 {
		k := 1 + (start+n)%254 // 1..254
		pfx := netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, byte(k), 0}), 24)
		f, ok, err := tryLock(filepath.Join(lockDir, "underlay-"+strconv.Itoa(k)+".lock"))
		if err != nil {
			return err
		}
		if !ok {
			continue
		}
		used, err := hostUses(h, pfx)
		if err != nil {
			f.Close()
			return err
		}
		if used {
			f.Close()
			continue
		}
		l.lock = f
		l.Underlay = pfx
		l.hostAddr = underlayAddr(pfx, 1)
		return nil
	}
	return errors.New("lab: no free /24 left in 198.18.0.0/16")
}

// hostUses reports whether an address or a route of /24 or longer in the
// host namespace overlaps pfx. Broader routes do not conflict: the lab's
// connected /24 is more specific.
func hostUses(h *netlink.Handle, pfx netip.Prefix) (bool, error) {
	addrs, err := retryDump(func() ([]netlink.Addr, error) { return h.AddrList(nil, netlink.FAMILY_V4) })
	if err != nil {
		return false, fmt.Errorf("lab: list host addresses: %w", err)
	}
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); ok && pfx.Contains(ip.Unmap()) {
			return true, nil
		}
	}
	routes, err := retryDump(func() ([]netlink.Route, error) {
		return h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: 0}, netlink.RT_FILTER_TABLE)
	})
	if err != nil {
		return false, fmt.Errorf("lab: list host routes: %w", err)
	}
	for _, r := range routes {
		if r.Dst == nil {
			continue
		}
		ip, ok := netip.AddrFromSlice(r.Dst.IP)
		if !ok {
			continue
		}
		ones, _ := r.Dst.Mask.Size()
		if ones >= 24 && pfx.Contains(ip.Unmap()) {
			return true, nil
		}
	}
	return false, nil
}

// retryDump repeats a netlink dump interrupted by a concurrent change.
func retryDump[T any](f func() ([]T, error)) ([]T, error) {
	var err error
	for range 5 {
		var v []T
		if v, err = f(); !errors.Is(err, netlink.ErrDumpInterrupted) {
			return v, err
		}
	}
	return nil, err
}

func underlayAddr(pfx netip.Prefix, host int) netip.Addr {
	a := pfx.Addr().As4()
	a[3] = byte(host)
	return netip.AddrFrom4(a)
}

// buildNetwork creates the hub, the host veth and every node.
func (l *Lab) buildNetwork() error {
	var err error
	if l.hubNSH, err = l.addNS(l.hubNS); err != nil {
		return err
	}
	if l.hubH, err = netlink.NewHandleAt(l.hubNSH); err != nil {
		return fmt.Errorf("lab: netlink handle for %s: %w", l.hubNS, err)
	}
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: hubBridge}}
	if err := l.hubH.LinkAdd(br); err != nil {
		return fmt.Errorf("lab: create bridge %s in %s: %w", hubBridge, l.hubNS, err)
	}
	if err := l.hubH.LinkSetUp(br); err != nil {
		return fmt.Errorf("lab: set bridge %s up: %w", hubBridge, err)
	}
	if err := l.hubH.LinkSetUp(&netlink.Device{LinkAttrs: netlink.LinkAttrs{Name: "lo"}}); err != nil {
		return fmt.Errorf("lab: set lo up in %s: %w", l.hubNS, err)
	}

	// The host end: created in the host, its peer directly in the hub.
	hv := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: l.hostLink, MTU: l.opts.MTU},
		PeerName:      hubHostEnd,
		PeerNamespace: netlink.NsFd(l.hubNSH),
	}
	if err := l.hostH.LinkAdd(hv); err != nil {
		return fmt.Errorf("lab: create host veth %s: %w", l.hostLink, err)
	}
	l.linkMade = true
	if err := l.hostH.AddrAdd(hv, &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(l.hostAddr, 24))}); err != nil {
		return fmt.Errorf("lab: add %s to %s: %w", l.hostAddr, l.hostLink, err)
	}
	if err := l.hostH.LinkSetUp(hv); err != nil {
		return fmt.Errorf("lab: set %s up: %w", l.hostLink, err)
	}
	if err := l.plug(hubHostEnd); err != nil {
		return err
	}

	for i := range l.opts.Nodes {
		if err := l.addNode(i); err != nil {
			return err
		}
	}
	return nil
}

// plug attaches a hub-side veth end to the bridge and sets it up.
func (l *Lab) plug(name string) error {
	link, err := l.hubH.LinkByName(name)
	if err != nil {
		return fmt.Errorf("lab: find %s in %s: %w", name, l.hubNS, err)
	}
	br, err := l.hubH.LinkByName(hubBridge)
	if err != nil {
		return fmt.Errorf("lab: find bridge %s: %w", hubBridge, err)
	}
	if err := l.hubH.LinkSetMaster(link, br); err != nil {
		return fmt.Errorf("lab: attach %s to %s: %w", name, hubBridge, err)
	}
	if err := l.hubH.LinkSetUp(link); err != nil {
		return fmt.Errorf("lab: set %s up in %s: %w", name, l.hubNS, err)
	}
	return nil
}

func (l *Lab) addNode(i int) error {
	n := &node{Node: Node{
		Index: i,
		Name:  "n" + strconv.Itoa(i),
		NS:    "wl" + l.ID + "-n" + strconv.Itoa(i),
		Addr:  underlayAddr(l.Underlay, 10+i),
	}, ns: netns.None()}
	n.Dir = filepath.Join(l.Dir, n.Name)
	n.SubnetFile = filepath.Join(n.Dir, "subnet.env")
	n.LogFile = filepath.Join(n.Dir, "weft.log")
	l.nodes = append(l.nodes, n) // before anything can fail, so Close sees it
	if err := os.MkdirAll(n.Dir, 0o755); err != nil {
		return fmt.Errorf("lab: create %s: %w", n.Dir, err)
	}
	var err error
	if n.ns, err = l.addNS(n.NS); err != nil {
		return err
	}
	if n.handle, err = netlink.NewHandleAt(n.ns); err != nil {
		return fmt.Errorf("lab: netlink handle for %s: %w", n.NS, err)
	}
	v := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: n.Name, MTU: l.opts.MTU},
		PeerName:      "eth0",
		PeerMTU:       uint32(l.opts.MTU),
		PeerNamespace: netlink.NsFd(n.ns),
	}
	if err := l.hubH.LinkAdd(v); err != nil {
		return fmt.Errorf("lab: create veth %s/eth0 for %s: %w", n.Name, n.NS, err)
	}
	if err := l.plug(n.Name); err != nil {
		return err
	}
	h := n.handle
	if err := h.LinkSetUp(&netlink.Device{LinkAttrs: netlink.LinkAttrs{Name: "lo"}}); err != nil {
		return fmt.Errorf("lab: set lo up in %s: %w", n.NS, err)
	}
	eth, err := h.LinkByName("eth0")
	if err != nil {
		return fmt.Errorf("lab: find eth0 in %s: %w", n.NS, err)
	}
	if err := h.AddrAdd(eth, &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(n.Addr, 24))}); err != nil {
		return fmt.Errorf("lab: add %s to eth0 in %s: %w", n.Addr, n.NS, err)
	}
	if err := h.LinkSetUp(eth); err != nil {
		return fmt.Errorf("lab: set eth0 up in %s: %w", n.NS, err)
	}
	gw := ipNet(netip.PrefixFrom(l.hostAddr, 32)).IP
	if err := h.RouteAdd(&netlink.Route{LinkIndex: eth.Attrs().Index, Gw: gw}); err != nil {
		return fmt.Errorf("lab: add default route via %s in %s: %w", l.hostAddr, n.NS, err)
	}
	// A node forwards, as one with Docker or a CNI plugin does (a new
	// namespace starts with forwarding off, and weft warns of it).
	cmd := exec.Command("ip", "netns", "exec", n.NS, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("lab: turn forwarding on in %s: %w: %s", n.NS, err, trimOut(out))
	}
	return nil
}

// addNS creates a named namespace with ip(8), which also sets up the
// shared /run/netns mount that other tools expect, and opens it.
func (l *Lab) addNS(name string) (netns.NsHandle, error) {
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		return netns.None(), fmt.Errorf("lab: create namespace %s: %w: %s", name, err, trimOut(out))
	}
	l.nsMade = append(l.nsMade, name)
	h, err := netns.GetFromName(name)
	if err != nil {
		return netns.None(), fmt.Errorf("lab: open namespace %s: %w", name, err)
	}
	return h, nil
}

// Nodes returns the description of every node.
func (l *Lab) Nodes() []Node {
	out := make([]Node, len(l.nodes))
	for i, n := range l.nodes {
		out[i] = n.Node
	}
	return out
}

// Node returns node i's description; it panics on a bad index, as a slice
// would.
func (l *Lab) Node(i int) Node { return l.nodes[i].Node }

// HostAddr is the host end of the underlay, 198.18.K.1, where etcd listens.
func (l *Lab) HostAddr() netip.Addr { return l.hostAddr }

// Prefix is the etcd prefix the lab uses.
func (l *Lab) Prefix() string { return l.opts.Prefix }

// Command returns a command that runs name in node i's namespace (for
// iperf3, tcpdump, ...). The caller starts, waits and stops it.
func (l *Lab) Command(ctx context.Context, i int, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", l.nodes[i].NS, name}, args...)...)
}

// HubCommand returns a command that runs name in the hub namespace, where
// the bridge and the other end of each node's veth (named as the node,
// "n0", "n1", ...) are: for ethtool on that end, say.
func (l *Lab) HubCommand(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", l.hubNS, name}, args...)...)
}

func (l *Lab) node(i int) (*node, error) {
	if l.closed.Load() {
		return nil, errors.New("lab: closed")
	}
	if i < 0 || i >= len(l.nodes) {
		return nil, fmt.Errorf("lab: no node %d (have %d)", i, len(l.nodes))
	}
	return l.nodes[i], nil
}

// Close stops every daemon, stops etcd, deletes every namespace and the
// host veth, and removes the lab directory unless Options.KeepDir. It is
// safe after a partial New, and repeated or concurrent calls wait for the
// first and return its result.
func (l *Lab) Close() error {
	l.closeOnce.Do(func() { l.closeErr = l.close() })
	return l.closeErr
}

func (l *Lab) close() error {
	var errs []error

	l.procMu.Lock() // orders against a Spawn that checked closed
	l.closed.Store(true)
	l.procMu.Unlock()
	l.stopProcs()
	var wg sync.WaitGroup
	for _, n := range l.nodes {
		wg.Go(func() {
			if _, err := l.stopNode(n, l.opts.StopTimeout, false); err != nil && !errors.Is(err, ErrNotRunning) {
				l.log.Warn("stop weft at close", "node", n.Name, "err", err)
			}
		})
	}
	wg.Wait()

	l.etcdMu.Lock()
	if l.client != nil {
		_ = l.client.Close() // reports only the canceled context of its own streams
		l.client = nil
	}
	l.etcdMu.Unlock()
	if err := l.StopEtcd(); err != nil {
		errs = append(errs, err)
	}

	for _, n := range l.nodes {
		if n.handle != nil {
			n.handle.Close()
		}
		if n.ns.IsOpen() {
			n.ns.Close()
		}
	}
	if l.hubH != nil {
		l.hubH.Close()
	}
	if l.hubNSH.IsOpen() {
		l.hubNSH.Close()
	}
	if l.linkMade {
		// Deleting one end deletes the peer in the hub; only the name
		// this lab created is touched.
		if link, err := l.hostH.LinkByName(l.hostLink); err == nil {
			if _, ok := link.(*netlink.Veth); ok {
				if err := l.hostH.LinkDel(link); err != nil {
					errs = append(errs, fmt.Errorf("lab: delete host veth %s: %w", l.hostLink, err))
				}
			}
		}
	}
	for i := len(l.nsMade) - 1; i >= 0; i-- {
		if err := deleteNS(l.nsMade[i]); err != nil {
			errs = append(errs, err)
		}
	}
	if l.hostH != nil {
		l.hostH.Close()
	}
	if l.spawner != nil {
		l.spawner.stop()
	}
	if l.lock != nil {
		l.lock.Close() // releases the flock
	}
	if l.Dir != "" && !l.opts.KeepDir {
		if err := os.RemoveAll(l.Dir); err != nil {
			errs = append(errs, fmt.Errorf("lab: remove %s: %w", l.Dir, err))
		}
	}
	l.log.Info("lab closed", "kept", l.opts.KeepDir)
	return errors.Join(errs...)
}

func deleteNS(name string) error {
	out, err := exec.Command("ip", "netns", "del", name).CombinedOutput()
	if err != nil {
		if _, serr := os.Stat(filepath.Join("/run/netns", name)); errors.Is(serr, os.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("lab: delete namespace %s: %w: %s", name, err, trimOut(out))
	}
	return nil
}

func trimOut(b []byte) string {
	const max = 2000
	if len(b) > max {
		b = b[len(b)-max:]
	}
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == ' ') {
		b = b[:len(b)-1]
	}
	return string(b)
}
