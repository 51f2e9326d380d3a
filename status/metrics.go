package status

import (
	"maps"
	"net/http"
	"runtime"
	"slices"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

const byPath = "by path: userspace (weft's process) or kernel (the eBPF fast path)."

var pathLabel = []string{"path"}

// Metrics are read at scrape time from the same snapshot as /status: the
// data path's counters are per-direction atomics summed there, so packets
// pay nothing for being counted.
var (
	descBuildInfo     = prometheus.NewDesc("weft_build_info", "weft's version, commit and Go version (always 1).", []string{"version", "commit", "goversion"}, nil)
	descReady         = prometheus.NewDesc("weft_ready", "1 when /readyz would answer 200.", nil, nil)
	descPeers         = prometheus.NewDesc("weft_peers", "Peers in the data path's table.", nil, nil)
	descTableRev      = prometheus.NewDesc("weft_peer_table_revision", "etcd revision of the newest lease change in the data path's table.", nil, nil)
	descTableUpdates  = prometheus.NewDesc("weft_peer_table_updates_total", "Updates of the data path's peer table.", nil, nil)
	descTableSeconds  = prometheus.NewDesc("weft_peer_table_update_seconds_total", "Time spent updating the data path's peer table.", nil, nil)
	descEtcdRequests  = prometheus.NewDesc("weft_etcd_requests_total", "Requests sent to etcd, by gRPC method (stream messages count one each).", []string{"method"}, nil)
	descLeaseExpiry   = prometheus.NewDesc("weft_lease_expiry_timestamp_seconds", "When this node's lease expires (0 for a reservation or no lease yet).", nil, nil)
	descRenewals      = prometheus.NewDesc("weft_lease_renewals_total", "Lease renewal attempts by result.", []string{"result"}, nil)
	descEtcdUp        = prometheus.NewDesc("weft_etcd_up", "1 while the connection to etcd is up.", nil, nil)
	descWatchRestarts = prometheus.NewDesc("weft_etcd_watch_restarts_total", "Lease watches restarted, by reason (broken, compacted).", []string{"reason"}, nil)
	descTxPackets     = prometheus.NewDesc("weft_tx_packets_total", "Inner packets sent to peers, "+byPath, pathLabel, nil)
	descTxBytes       = prometheus.NewDesc("weft_tx_bytes_total", "Inner bytes sent to peers, "+byPath, pathLabel, nil)
	descRxPackets     = prometheus.NewDesc("weft_rx_packets_total", "Inner packets received from peers and delivered locally, "+byPath, pathLabel, nil)
	descRxBytes       = prometheus.NewDesc("weft_rx_bytes_total", "Inner bytes received from peers and delivered locally, "+byPath, pathLabel, nil)
	descFastPath      = prometheus.NewDesc("weft_fast_path_running", "1 while the kernel (eBPF) fast path is attached.", nil, nil)
	descHandoffs      = prometheus.NewDesc("weft_fast_path_handoffs_total", "Packets the kernel fast path left to the userspace path, by reason: no_kernel_peer, next_hop_unresolved, ingress_policy.", []string{"reason"}, nil)
	descDrops         = prometheus.NewDesc("weft_drops_total", "Packets dropped, by reason.", []string{"reason"}, nil)
	descOffload       = prometheus.NewDesc("weft_offload_enabled", "1 while TUN and UDP offloads are in use.", nil, nil)
	descOffloadFalls  = prometheus.NewDesc("weft_offload_fallbacks_total", "Offloads the kernel refused, after which weft used the plain path.", nil, nil)
	descFwInPlace     = prometheus.NewDesc("weft_firewall_rules_in_place", "1 while weft's nftables rules are as the flags say (absent with -ip-masq and -iptables-forward-rules off).", nil, nil)
	descFwDrops       = prometheus.NewDesc("weft_firewall_forward_drop_chains", "Other tables' forward chains that drop by default, where overlay traffic dies unless they accept it.", nil, nil)
	descKubeUp        = prometheus.NewDesc("weft_kube_up", "1 while the Kubernetes API server answers (with -kube-subnet-mgr).", nil, nil)
	descKubeNodes     = prometheus.NewDesc("weft_kube_nodes", "Nodes the informer sees (with -kube-subnet-mgr).", nil, nil)
	descKubeSkipped   = prometheus.NewDesc("weft_kube_skipped_nodes", "Nodes that lease through the API but are not routed to, by reason (with -kube-subnet-mgr).", []string{"reason"}, nil)
	descFwJoined      = prometheus.NewDesc("weft_firewall_joined_chain", "1 for each of iptables' FORWARD chains that drops by default and holds weft's accepts for the network.", []string{"chain"}, nil)

	// Per peer, only with -peer-metrics: one series per node of the cluster.
	peerLabels        = []string{"subnet", "public_ip"}
	descPeerTxPackets = prometheus.NewDesc("weft_peer_tx_packets_total", "Inner packets sent to one peer.", peerLabels, nil)
	descPeerTxBytes   = prometheus.NewDesc("weft_peer_tx_bytes_total", "Inner bytes sent to one peer.", peerLabels, nil)
	descPeerRxPackets = prometheus.NewDesc("weft_peer_rx_packets_total", "Inner packets accepted from one peer.", peerLabels, nil)
	descPeerRxBytes   = prometheus.NewDesc("weft_peer_rx_bytes_total", "Inner bytes accepted from one peer.", peerLabels, nil)
)

type collector struct{ h *Health }

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descBuildInfo, descReady, descPeers, descTableRev, descTableUpdates, descTableSeconds, descEtcdRequests, descLeaseExpiry, descRenewals, descEtcdUp,
		descWatchRestarts, descTxPackets, descTxBytes, descRxPackets, descRxBytes, descDrops, descHandoffs, descOffload, descOffloadFalls, descFastPath,
		descFwInPlace, descFwDrops, descFwJoined, descKubeUp, descKubeNodes, descKubeSkipped, descPeerTxPackets, descPeerTxBytes, descPeerRxPackets, descPeerRxBytes} {
		ch <- d
	}
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	c.h.mu.Lock()
	peerMetrics, build, reasons := c.h.peerMetrics, c.h.build, c.h.dropReasons
	c.h.mu.Unlock()
	s := c.h.Status(peerMetrics)
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge(descBuildInfo, 1, build.Version, build.Commit, runtime.Version())
	gauge(descReady, boolFloat(s.Ready))
	gauge(descPeers, float64(s.PeerTable.Peers))
	gauge(descTableRev, float64(s.PeerTable.Revision))
	counter(descTableUpdates, s.PeerTable.Updates)
	ch <- prometheus.MustNewConstMetric(descTableSeconds, prometheus.CounterValue, s.PeerTable.UpdateSeconds)
	for method, n := range s.Etcd.Requests {
		counter(descEtcdRequests, n, method)
	}
	expiry := 0.0
	if s.Lease != nil && !s.Lease.Reserved {
		expiry = float64(s.Lease.Expiration.UnixMilli()) / 1000
	}
	gauge(descLeaseExpiry, expiry)
	for result, n := range s.Etcd.Renewals {
		counter(descRenewals, n, result)
	}
	if k := s.Kubernetes; k != nil {
		gauge(descKubeUp, boolFloat(k.Up))
		gauge(descKubeNodes, float64(k.Nodes))
		for reason, n := range k.Skipped {
			gauge(descKubeSkipped, float64(n), reason)
		}
	} else {
		gauge(descEtcdUp, boolFloat(s.Etcd.Up))
		for reason, n := range s.Etcd.WatchRestarts {
			counter(descWatchRestarts, n, reason)
		}
	}
	// Both paths always, zeros too, so rate() works from the first scrape
	// and across the fast path starting or falling back.
	paths := append([]string{PathUserspace, PathKernel}, slices.Collect(maps.Keys(s.Counters.Paths))...)
	slices.Sort(paths)
	for _, p := range slices.Compact(paths) {
		t := s.Counters.Paths[p]
		counter(descTxPackets, t.TxPackets, p)
		counter(descTxBytes, t.TxBytes, p)
		counter(descRxPackets, t.RxPackets, p)
		counter(descRxBytes, t.RxBytes, p)
	}
	// Every reason, zeros too, so rate() works from the first scrape.
	all := append(slices.Clone(reasons), slices.Collect(maps.Keys(s.Counters.Drops))...)
	slices.Sort(all)
	for _, r := range slices.Compact(all) {
		counter(descDrops, s.Counters.Drops[r], r)
	}
	gauge(descOffload, boolFloat(s.Offload))
	counter(descOffloadFalls, s.Offloads.Fallbacks)
	if s.FastPath != nil {
		gauge(descFastPath, boolFloat(s.FastPath.Running))
	}
	for reason, n := range s.Counters.Handoffs {
		counter(descHandoffs, n, reason)
	}
	if f := s.Firewall; f != nil {
		gauge(descFwInPlace, boolFloat(f.InPlace))
		gauge(descFwDrops, float64(len(f.ForwardDrops)))
		for _, c := range f.Joined {
			gauge(descFwJoined, 1, c)
		}
	}
	if peerMetrics {
		for _, p := range s.Peers {
			sn, ip := p.Subnet.String(), p.PublicIP.String()
			counter(descPeerTxPackets, p.TxPackets, sn, ip)
			counter(descPeerTxBytes, p.TxBytes, sn, ip)
			counter(descPeerRxPackets, p.RxPackets, sn, ip)
			counter(descPeerRxBytes, p.RxBytes, sn, ip)
		}
	}
}

func boolFloat(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func (h *Health) metricsHandler() http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collector{h},
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
}
