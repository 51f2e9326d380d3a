package node

import (
	"context"
	"errors"
	"io/fs"
	"log/slog"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/weft-net/weft/dataplane"
	"github.com/weft-net/weft/etcd"
	"github.com/weft-net/weft/etcd/etcdtest"
	"github.com/weft-net/weft/fastpath"
	"github.com/weft-net/weft/internal/netnstest"
	"github.com/weft-net/weft/route"
	"github.com/weft-net/weft/status"
	"github.com/weft-net/weft/subnet"
	"github.com/weft-net/weft/tunnel"
)

// fakePlane is a data plane that records what the node hands it, so the
// node's life cycle is tested without a TUN.
type fakePlane struct {
	conn tunnel.Conn
	mu   sync.Mutex
	own  netip.Prefix
	// peers is the set as the plane would forward with it.
	peers     map[netip.Prefix]netip.Addr
	kernel    map[netip.Prefix]bool // peers that advertise in-kernel decapsulation
	snapshots int                   // UpdatePeers calls
	changes   int                   // ApplyPeers calls
	stopped   chan struct{}
}

var _ dataplane.Plane = (*fakePlane)(nil)

func (p *fakePlane) UpdatePeers(own netip.Prefix, peers []dataplane.Peer) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.own, p.snapshots = own, p.snapshots+1
	p.peers, p.kernel = map[netip.Prefix]netip.Addr{}, map[netip.Prefix]bool{}
	for _, pe := range peers {
		p.peers[pe.Subnet], p.kernel[pe.Subnet] = pe.Addr, pe.KernelDecap
	}
}

func (p *fakePlane) ApplyPeers(own netip.Prefix, changes []dataplane.PeerChange) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.own, p.changes = own, p.changes+1
	for _, c := range changes {
		if c.Remove {
			delete(p.peers, c.Subnet)
			delete(p.kernel, c.Subnet)
		} else {
			p.peers[c.Subnet], p.kernel[c.Subnet] = c.Addr, c.KernelDecap
		}
	}
}

// Run holds the socket the node bound, as a real plane does, until the stop.
func (p *fakePlane) Run(ctx context.Context) error {
	<-ctx.Done()
	close(p.stopped)
	if p.conn == nil { // a kernel plane holds no socket
		return nil
	}
	return p.conn.Close()
}

func (p *fakePlane) Report(bool) dataplane.Report {
	p.mu.Lock()
	defer p.mu.Unlock()
	return dataplane.Report{Peers: len(p.peers)}
}

func (p *fakePlane) state() (snapshots, changes int, peers []netip.Prefix) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for s := range p.peers {
		peers = append(peers, s)
	}
	slices.SortFunc(peers, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
	return p.snapshots, p.changes, peers
}

// testNode is a node in a namespace of its own, on an in-process etcd,
// with a fakePlane instead of the TUN and forwarder.
type testNode struct {
	ns    *netnstest.NS
	store *etcd.Store
	cfg   Config
	plane *fakePlane
	done  chan error
	stop  context.CancelFunc
}

const testUnderlay = "198.18.40.10"

// testFastPath is how a test node's kernel fast path comes up: mode as
// -fast-path, and the plane or the error the attach gives.
type testFastPath struct {
	mode  FastPathMode
	plane *fakePlane
	err   error
	// stale, if valid, is this node's lease from an earlier run, left
	// advertising in-kernel decapsulation (as a kill -9 leaves it).
	stale netip.Prefix
	// noWait returns without waiting for ready.
	noWait bool
}

func startTestNode(t *testing.T, others ...netip.Prefix) *testNode {
	t.Helper()
	return startTestNodeWith(t, testFastPath{mode: FastPathOff}, others...)
}

func startTestNodeWith(t *testing.T, fp testFastPath, others ...netip.Prefix) *testNode {
	t.Helper()
	ns := netnstest.New(t)
	netnstest.Veth{A: netnstest.End{NS: ns, Name: "ul0", Addr: testUnderlay + "/24"},
		B: netnstest.End{NS: ns, Name: "ul1", Addr: "198.18.40.1/24"}}.Add(t)
	ep := etcdtest.Start(t)
	store, err := etcd.New(etcd.Config{Endpoints: []string{ep}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	ctx := context.Background()
	if err := store.PutNetworkConfig(ctx, []byte(`{"Network":"198.19.0.0/16","SubnetLen":24,"Backend":{"Type":"udp"}}`)); err != nil {
		t.Fatal(err)
	}
	for i, sn := range others {
		addr := netip.AddrFrom4([4]byte{198, 18, 40, byte(20 + i)})
		if _, err := store.CreateLease(ctx, sn, subnet.Attrs{PublicIP: addr}, subnet.LeaseTTL); err != nil {
			t.Fatal(err)
		}
	}
	if fp.stale.IsValid() {
		attrs := subnet.Attrs{PublicIP: netip.MustParseAddr(testUnderlay)}
		if err := attrs.SetKernelDecap(true); err != nil {
			t.Fatal(err)
		}
		if _, err := store.CreateLease(ctx, fp.stale, attrs, subnet.LeaseTTL); err != nil {
			t.Fatal(err)
		}
	}
	dir := t.TempDir()
	n := &testNode{ns: ns, store: store, done: make(chan error, 1), cfg: Config{
		Etcd: etcd.Config{Endpoints: []string{ep}, Prefix: etcd.DefaultPrefix}, Iface: route.Selector{Ifaces: []string{"ul0"}},
		SubnetFile: filepath.Join(dir, "subnet.env"), RenewMargin: time.Hour, StatusSocket: filepath.Join(dir, "weft.sock"),
		TunName: "udp0", SourceCheck: tunnel.SourceStrict, Firewall: Firewall{Forward: true, Resync: time.Second},
		FastPath: fp.mode,
	}}
	n.launch(t, fp)
	return n
}

// launch runs the node with a fakePlane in its namespace and, unless
// fp.noWait, waits until it is ready.
func (n *testNode) launch(t *testing.T, fp testFastPath) {
	t.Helper()
	h := hooks{netns: n.ns.Handle, openPlane: func(nd *node, conn tunnel.Conn) (dataplane.Plane, func(), error) {
		// A veth stands in for the TUN (this kernel may lack dummy): the
		// node gives it its address, MTU and route as it would the TUN.
		if err := nd.nl.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: nd.cfg.TunName}, PeerName: nd.cfg.TunName + "p"}); err != nil {
			return nil, nil, err
		}
		n.plane = &fakePlane{conn: conn, stopped: make(chan struct{})}
		return n.plane, func() { conn.Close() }, nil
	}, openFastPath: func(*node, subnet.Lease) (dataplane.Plane, status.FastPath, error) {
		if fp.err != nil {
			return nil, status.FastPath{}, fp.err
		}
		return fp.plane, status.FastPath{Attach: "fake", SuperPackets: "kernel"}, nil
	}, probeKernel: func() []fastpath.Feature {
		return []fastpath.Feature{{Name: fastpath.FeatureTCX, Since: "6.6", Detail: "unknown (needs CAP_BPF)", Without: "clsact"},
			{Name: fastpath.FeatureFibLookup, Since: "4.18", Without: "no fast path"}}
	}}
	log := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
	ctx, stop := context.WithCancel(context.Background())
	n.stop = stop
	t.Cleanup(n.stop)
	go func() {
		nd, err := preflight(ctx, n.cfg, log, h)
		if err != nil {
			n.done <- err
			return
		}
		defer nd.close()
		n.done <- nd.run(ctx)
	}()
	if !fp.noWait {
		n.waitReady(t)
	}
}

func (n *testNode) waitReady(t *testing.T) *status.Status {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		s, _, err := status.Fetch(context.Background(), n.cfg.StatusSocket, "")
		if err == nil && s.Ready {
			return s
		}
		select {
		case err := <-n.done:
			t.Fatalf("node stopped before ready: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("node not ready within 20 s: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitPlane waits until the plane's peers are want.
func (n *testNode) waitPlane(t *testing.T, what string, want ...netip.Prefix) (snapshots, changes int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		s, c, peers := n.plane.state()
		if slices.Equal(peers, want) {
			return s, c
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: the plane has peers %v, want %v", what, peers, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (n *testNode) wait(t *testing.T) error {
	t.Helper()
	select {
	case err := <-n.done:
		return err
	case <-time.After(20 * time.Second):
		t.Fatal("node did not stop within 20 s")
		return nil
	}
}

var (
	peerA = netip.MustParsePrefix("198.19.101.0/24")
	peerB = netip.MustParsePrefix("198.19.102.0/24")
	peerC = netip.MustParsePrefix("198.19.103.0/24")
)

// The node hands its data plane the peers in etcd as a snapshot at start,
// each watched change as a change, and a fresh snapshot on SIGHUP; the
// device gets its address and route; a clean stop keeps the lease and
// removes the device and the status socket.
func TestNodeFeedsDataPlane(t *testing.T) {
	n := startTestNode(t, peerA, peerB)
	snaps, changes := n.waitPlane(t, "at start", peerA, peerB)
	if snaps != 1 || changes != 0 {
		t.Errorf("at start: %d snapshots, %d changes; want the one snapshot", snaps, changes)
	}
	s := n.waitReady(t)
	own := s.Lease.Subnet
	if s.Lease.PublicIP.String() != testUnderlay || s.PeerTable.Peers != 2 || s.Device != "udp0" || s.MTU != 1500-tunnel.Overhead {
		t.Errorf("status: lease %+v, peers %d, device %s mtu %d", s.Lease, s.PeerTable.Peers, s.Device, s.MTU)
	}
	env, err := os.ReadFile(n.cfg.SubnetFile)
	if err != nil || !strings.Contains(string(env), "FLANNEL_SUBNET="+netip.PrefixFrom(own.Addr().Next(), 24).String()) {
		t.Errorf("subnet.env: %q, %v", env, err)
	}
	link, err := n.ns.Netlink.LinkByName("udp0")
	if err != nil {
		t.Fatal(err)
	}
	routes, err := n.ns.Netlink.RouteList(link, netlink.FAMILY_V4)
	if err != nil || !slices.ContainsFunc(routes, func(r netlink.Route) bool { return r.Dst != nil && r.Dst.String() == "198.19.0.0/16" }) {
		t.Errorf("routes on the device: %v, %v; want 198.19.0.0/16", routes, err)
	}

	ctx := context.Background()
	// A peer whose lease advertises in-kernel decapsulation is handed to
	// the planes as such.
	attrs := subnet.Attrs{PublicIP: netip.MustParseAddr("198.18.40.30")}
	if err := attrs.SetKernelDecap(true); err != nil {
		t.Fatal(err)
	}
	lc, err := n.store.CreateLease(ctx, peerC, attrs, subnet.LeaseTTL)
	if err != nil {
		t.Fatal(err)
	}
	n.waitPlane(t, "after a lease is added", peerA, peerB, peerC)
	n.plane.mu.Lock()
	kernel := maps.Clone(n.plane.kernel)
	n.plane.mu.Unlock()
	if !kernel[peerC] || kernel[peerA] || kernel[peerB] {
		t.Errorf("in-kernel decapsulation handed to the plane: %v, want only %s's", kernel, peerC)
	}
	if err := n.store.DeleteLease(ctx, lc); err != nil {
		t.Fatal(err)
	}
	snaps, changes = n.waitPlane(t, "after a lease is deleted", peerA, peerB)
	if snaps != 1 || changes < 2 {
		t.Errorf("after two watched changes: %d snapshots, %d changes; want them applied as changes", snaps, changes)
	}
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for snaps, _, _ = n.plane.state(); snaps < 2; snaps, _, _ = n.plane.state() {
		if time.Now().After(deadline) {
			t.Fatal("SIGHUP did not hand the plane a fresh snapshot within 10 s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	n.waitPlane(t, "after SIGHUP", peerA, peerB)

	n.stop()
	if err := n.wait(t); err != nil {
		t.Fatalf("clean stop: %v", err)
	}
	<-n.plane.stopped
	if _, err := n.ns.Netlink.LinkByName("udp0"); err == nil {
		t.Error("the device is still there after the stop")
	}
	if _, err := os.Stat(n.cfg.StatusSocket); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("status socket after the stop: %v", err)
	}
	leases, _, err := n.store.ListLeases(ctx)
	if err != nil || !slices.ContainsFunc(leases, func(l subnet.Lease) bool { return l.Subnet == own }) {
		t.Errorf("leases after the stop: %+v, %v; want ours kept for the next start", leases, err)
	}
}

// Our own lease deleted is fatal, with an error saying so, and the device
// goes: the restart leases afresh.
func TestNodeOwnLeaseDeleted(t *testing.T) {
	n := startTestNode(t, peerA)
	s := n.waitReady(t)
	leases, _, err := n.store.ListLeases(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(leases, func(l subnet.Lease) bool { return l.Subnet == s.Lease.Subnet })
	if i < 0 {
		t.Fatalf("our lease %s is not in etcd: %+v", s.Lease.Subnet, leases)
	}
	if err := n.store.DeleteLease(context.Background(), leases[i]); err != nil {
		t.Fatal(err)
	}
	err = n.wait(t)
	if !errors.Is(err, subnet.ErrLeaseNotFound) || !strings.Contains(err.Error(), "our lease "+s.Lease.Subnet.String()+" was removed") {
		t.Fatalf("after our lease was deleted: %v", err)
	}
	if _, err := n.ns.Netlink.LinkByName("udp0"); err == nil {
		t.Error("the device is still there after the exit")
	}
}
