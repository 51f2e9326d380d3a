package status

import (
	"cmp"
	"fmt"
	"maps"
	"net/netip"
	"runtime"
	"slices"
	"sync"
	"time"

	"github.com/weft-net/weft/dataplane"
)

// Build names the running binary: /status's version and weft_build_info.
type Build struct {
	Version string
	Commit  string
}

// String is the version line weft prints and logs.
func (b Build) String() string {
	return fmt.Sprintf("weft %s (commit %s, %s %s/%s)", b.Version, b.Commit, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}

// Health is the node's state as /readyz, /status and /metrics show it. The
// node records into it as it runs; every method is safe for concurrent use.
type Health struct {
	mu    sync.Mutex
	build Build
	ready bool
	lease Lease
	// static facts, set once at start
	peerMetrics bool
	endpoints   string
	sourceCheck string
	dropReasons []string // every reason the data planes count, for /metrics
	// control-plane state
	etcdUp        bool
	renewOK       uint64
	renewFail     uint64
	watchRestarts map[string]uint64
	// renewal trouble: since when renewals fail, and the last error.
	renewFailingSince time.Time
	renewErr          string
	device            string
	mtu               int
	// planes reads the data planes, once they run; the first is the primary.
	planes   []PlaneReport
	fastPath *FastPath // nil until the node sets it
	kernel   *Kernel   // nil until the node sets it
	// etcdRequests reads the etcd client's request counts, if set.
	etcdRequests func() map[string]uint64
	store        string
	kube         func() Kubernetes // reads the Kubernetes store's state, if it is the store
	table        PeerTable
	firewall     *Firewall // nil while no rules are wanted
}

// NewHealth returns the state of a node that has done nothing yet: alive,
// not ready.
func NewHealth(b Build) *Health {
	return &Health{build: b, watchRestarts: map[string]uint64{"broken": 0, "compacted": 0}}
}

// SetStatic records the facts fixed at start. dropReasons names every
// reason the data planes count, so /metrics has each from the first scrape,
// before a plane runs.
func (h *Health) SetStatic(endpoints, sourceCheck string, peerMetrics bool, dropReasons []string) {
	h.mu.Lock()
	h.endpoints, h.sourceCheck, h.peerMetrics = endpoints, sourceCheck, peerMetrics
	h.dropReasons = slices.Clone(dropReasons)
	h.mu.Unlock()
}

// SetEtcdUp records the etcd connection state and reports whether it changed.
func (h *Health) SetEtcdUp(up bool) (changed bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	changed = h.etcdUp != up
	h.etcdUp = up
	return changed
}

// WatchRestarted counts a restart of the lease watch, by reason.
func (h *Health) WatchRestarted(reason string) {
	h.mu.Lock()
	h.watchRestarts[reason]++
	h.mu.Unlock()
}

// SetLease records the node's lease.
func (h *Health) SetLease(l Lease) { h.mu.Lock(); h.lease = l; h.mu.Unlock() }

// Renewed records a successful renewal, clearing any trouble.
func (h *Health) Renewed(l Lease) {
	h.mu.Lock()
	h.lease, h.renewFailingSince, h.renewErr = l, time.Time{}, ""
	h.renewOK++
	h.mu.Unlock()
}

// RenewFailed records a failed renewal attempt: /readyz turns 503 and
// /status says why, long before the lease could expire.
func (h *Health) RenewFailed(err error, now time.Time) {
	h.mu.Lock()
	if h.renewFailingSince.IsZero() {
		h.renewFailingSince = now
	}
	h.renewErr = err.Error()
	h.renewFail++
	h.mu.Unlock()
}

// SetFirewall records the state of weft's nftables rules.
func (h *Health) SetFirewall(f Firewall) {
	h.mu.Lock()
	h.firewall = &f
	h.mu.Unlock()
}

// SetReady marks the node ready: lease, device, route and subnet.env exist.
func (h *Health) SetReady() { h.mu.Lock(); h.ready = true; h.mu.Unlock() }

// TableUpdated records a change of the data path's peer table: its size,
// the etcd revision it reflects, and what building it took.
func (h *Health) TableUpdated(peers int, rev int64, took time.Duration) {
	h.mu.Lock()
	t := &h.table
	t.Peers = peers
	t.Revision = max(t.Revision, rev)
	t.Updates++
	t.UpdateSeconds += took.Seconds()
	t.LastUpdateSeconds = took.Seconds()
	t.MaxUpdateSeconds = max(t.MaxUpdateSeconds, took.Seconds())
	h.mu.Unlock()
}

// SetStore records which lease store the node uses; kube, for the
// Kubernetes API, reads its state.
func (h *Health) SetStore(store string, kube func() Kubernetes) {
	h.mu.Lock()
	h.store, h.kube = store, kube
	h.mu.Unlock()
}

// SetEtcdRequests makes /status and /metrics read the etcd client's
// request counts through f.
func (h *Health) SetEtcdRequests(f func() map[string]uint64) {
	h.mu.Lock()
	h.etcdRequests = f
	h.mu.Unlock()
}

// PlaneReport is one data plane as /status and /metrics read it.
type PlaneReport struct {
	Path   string // the path the plane carries: PathUserspace or PathKernel
	Report func(withPeers bool) dataplane.Report
}

// SetDataPlane makes /status and /metrics read the data planes, for a
// device of that name and MTU. The first plane is the primary (userspace):
// the peer table, the offloads and the per-peer list are its, since every
// peer is in its table; traffic and drops are summed over all planes.
func (h *Health) SetDataPlane(device string, mtu int, planes ...PlaneReport) {
	h.mu.Lock()
	h.device, h.mtu, h.planes = device, mtu, slices.Clone(planes)
	h.mu.Unlock()
}

// SetFastPath records how the kernel fast path was set up.
func (h *Health) SetFastPath(f FastPath) {
	h.mu.Lock()
	h.fastPath = &f
	h.mu.Unlock()
}

// SetKernel records the kernel's release and the features weft found.
func (h *Health) SetKernel(k Kernel) {
	k.Features = slices.Clone(k.Features)
	h.mu.Lock()
	h.kernel = &k
	h.mu.Unlock()
}

// Status is the /status document; withPeers adds the per-peer list, which
// costs in proportion to the cluster.
func (h *Health) Status(withPeers bool) Status {
	h.mu.Lock()
	defer h.mu.Unlock()
	s := Status{
		Version: h.build.String(), Ready: h.ready && h.renewFailingSince.IsZero(),
		Device: h.device, MTU: h.mtu, SourceCheck: h.sourceCheck, PeerTable: h.table,
		Etcd: Etcd{
			Up: h.etcdUp, Endpoints: h.endpoints,
			Renewals:      map[string]uint64{"success": h.renewOK, "failure": h.renewFail},
			WatchRestarts: maps.Clone(h.watchRestarts),
		},
	}
	if !h.renewFailingSince.IsZero() {
		s.Renewal = &Renew{FailingSince: h.renewFailingSince, LastError: h.renewErr}
	}
	if h.lease.Subnet.IsValid() {
		l := h.lease
		s.Lease = &l
	}
	if h.etcdRequests != nil {
		s.Etcd.Requests = h.etcdRequests()
	}
	s.Store = cmp.Or(h.store, StoreEtcd)
	if h.kube != nil {
		k := h.kube()
		k.Up = h.etcdUp
		s.Kubernetes = &k
	}
	if withPeers {
		s.Peers = []Peer{}
	}
	if h.firewall != nil {
		f := *h.firewall
		f.ForwardDrops, f.Joined = slices.Clone(f.ForwardDrops), slices.Clone(f.Joined)
		s.Firewall = &f
	}
	if h.fastPath != nil {
		f := *h.fastPath
		s.FastPath = &f
	}
	if h.kernel != nil {
		k := *h.kernel
		k.Features = slices.Clone(k.Features)
		s.Kernel = &k
	}
	s.Counters.Drops = map[string]uint64{}
	if len(h.planes) > 0 {
		readPlanes(&s, h.planes, withPeers)
	}
	return s
}

// readPlanes fills s from the planes' reports; planes is not empty.
func readPlanes(s *Status, planes []PlaneReport, withPeers bool) {
	reports := make([]dataplane.Report, len(planes))
	s.Counters.Paths = make(map[string]Traffic, len(planes))
	for i, p := range planes {
		reports[i] = p.Report(withPeers)
		c := reports[i].Counters
		s.Counters.Paths[p.Path] = s.Counters.Paths[p.Path].plus(c)
		s.Counters.Traffic = s.Counters.plus(c)
		for reason, n := range c.Drops {
			s.Counters.Drops[reason] += n
		}
		for reason, n := range c.Handoffs {
			if s.Counters.Handoffs == nil {
				s.Counters.Handoffs = map[string]uint64{}
			}
			s.Counters.Handoffs[reason] += n
		}
	}
	r := reports[0]
	s.PeerTable.Peers = r.Peers
	o := r.Offloads
	s.Offloads = Offloads{TUNVnetHdr: o.TUNVnetHdr, TUNUSO: o.TUNUSO, TUNCoalescing: o.TUNCoalescing,
		UDPGSO: o.UDPGSO, UDPGRO: o.UDPGRO, Fallbacks: o.Fallbacks}
	s.Offload = o.Any()
	if len(r.PeerTraffic) == 0 {
		return
	}
	// Every peer is in the primary's table; one another plane encapsulates
	// toward (the kernel's lists only those) takes that plane's path. The
	// other planes' per-peer counters are not added: the kernel keeps none.
	path := map[netip.Prefix]string{}
	for i, rep := range reports[1:] {
		for _, p := range rep.PeerTraffic {
			if _, ok := path[p.Subnet]; !ok && p.KernelDecap {
				path[p.Subnet] = planes[i+1].Path
			}
		}
	}
	for _, p := range r.PeerTraffic {
		pp, ok := path[p.Subnet]
		if !ok {
			pp = planes[0].Path
		}
		s.Peers = append(s.Peers, Peer{Subnet: p.Subnet, PublicIP: p.Addr, Path: pp,
			TxPackets: p.TxPackets, TxBytes: p.TxBytes, RxPackets: p.RxPackets, RxBytes: p.RxBytes})
	}
}
