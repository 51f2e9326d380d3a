package status

import (
	"fmt"
	"maps"
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
	// report reads the data planes, once they run.
	report func(withPeers bool) dataplane.Report
	// etcdRequests reads the etcd client's request counts, if set.
	etcdRequests func() map[string]uint64
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

// SetEtcdRequests makes /status and /metrics read the etcd client's
// request counts through f.
func (h *Health) SetEtcdRequests(f func() map[string]uint64) {
	h.mu.Lock()
	h.etcdRequests = f
	h.mu.Unlock()
}

// SetDataPlane makes /status and /metrics read the data planes through
// report, for a device of that name and MTU.
func (h *Health) SetDataPlane(device string, mtu int, report func(withPeers bool) dataplane.Report) {
	h.mu.Lock()
	h.device, h.mtu, h.report = device, mtu, report
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
	if withPeers {
		s.Peers = []Peer{}
	}
	if h.firewall != nil {
		f := *h.firewall
		f.ForwardDrops, f.Joined = slices.Clone(f.ForwardDrops), slices.Clone(f.Joined)
		s.Firewall = &f
	}
	s.Counters.Drops = map[string]uint64{}
	if h.report == nil {
		return s
	}
	r := h.report(withPeers)
	s.PeerTable.Peers = r.Peers
	for _, p := range r.PeerTraffic {
		s.Peers = append(s.Peers, Peer{Subnet: p.Subnet, PublicIP: p.Addr,
			TxPackets: p.TxPackets, TxBytes: p.TxBytes, RxPackets: p.RxPackets, RxBytes: p.RxBytes})
	}
	o := r.Offloads
	s.Offloads = Offloads{TUNVnetHdr: o.TUNVnetHdr, TUNUSO: o.TUNUSO, TUNCoalescing: o.TUNCoalescing,
		UDPGSO: o.UDPGSO, UDPGRO: o.UDPGRO, Fallbacks: o.Fallbacks}
	s.Offload = o.Any()
	c := r.Counters
	s.Counters.TxPackets, s.Counters.TxBytes, s.Counters.RxPackets, s.Counters.RxBytes = c.TxPackets, c.TxBytes, c.RxPackets, c.RxBytes
	maps.Copy(s.Counters.Drops, c.Drops)
	return s
}
