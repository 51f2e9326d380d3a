package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/weft-net/weft/subnet"
	"github.com/weft-net/weft/tunnel"
)

// health serves /healthz (alive), /readyz (503 until the lease, device,
// route and subnet.env exist) and /status (JSON for operators and tests).
type health struct {
	mu    sync.Mutex
	ready bool
	lease subnet.Lease
	// static facts, set once at start
	version     string
	peerMetrics bool
	endpoints   string
	sourceCheck string
	// control-plane state for /status and /metrics
	etcdUp        bool
	renewOK       uint64
	renewFail     uint64
	watchRestarts map[string]uint64
	// renewal trouble: since when renewals fail, and the last error.
	renewFailingSince time.Time
	renewErr          string
	fwd               *tunnel.Forwarder
	device            string
	mtu               int
	// offloads reads the device's and socket's offload state, if set.
	offloads func() StatusOffloads
	// etcdRequests reads the etcd client's request counts, if set.
	etcdRequests func() map[string]uint64
	table        StatusPeerTable
	firewall     *StatusFirewall // nil while no rules are wanted
}

func newHealth() *health {
	return &health{version: versionString(), watchRestarts: map[string]uint64{"broken": 0, "compacted": 0}}
}

func (h *health) setStatic(endpoints, sourceCheck string, peerMetrics bool) {
	h.mu.Lock()
	h.endpoints, h.sourceCheck, h.peerMetrics = endpoints, sourceCheck, peerMetrics
	h.mu.Unlock()
}

// setEtcdUp records the etcd connection state and reports whether it changed.
func (h *health) setEtcdUp(up bool) (changed bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	changed = h.etcdUp != up
	h.etcdUp = up
	return changed
}

func (h *health) watchRestarted(reason string) {
	h.mu.Lock()
	h.watchRestarts[reason]++
	h.mu.Unlock()
}

func (h *health) setLease(l subnet.Lease) { h.mu.Lock(); h.lease = l; h.mu.Unlock() }

// renewed records a successful renewal, clearing any trouble.
func (h *health) renewed(l subnet.Lease) {
	h.mu.Lock()
	h.lease, h.renewFailingSince, h.renewErr = l, time.Time{}, ""
	h.renewOK++
	h.mu.Unlock()
}

// renewFailed records a failed renewal attempt: /readyz turns 503 and
// /status says why, long before the lease could expire.
func (h *health) renewFailed(err error, now time.Time) {
	h.mu.Lock()
	if h.renewFailingSince.IsZero() {
		h.renewFailingSince = now
	}
	h.renewErr = err.Error()
	h.renewFail++
	h.mu.Unlock()
}

// setFirewall records the state of weft's nftables rules.
func (h *health) setFirewall(f StatusFirewall) {
	h.mu.Lock()
	h.firewall = &f
	h.mu.Unlock()
}

func (h *health) setReady() { h.mu.Lock(); h.ready = true; h.mu.Unlock() }

// tableUpdated records a change of the data path's peer table: its size,
// the etcd revision it reflects, and what building it took.
func (h *health) tableUpdated(peers int, rev int64, took time.Duration) {
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

func (h *health) setEtcdRequests(f func() map[string]uint64) {
	h.mu.Lock()
	h.etcdRequests = f
	h.mu.Unlock()
}

func (h *health) setForwarder(f *tunnel.Forwarder, device string, mtu int) {
	h.mu.Lock()
	h.fwd, h.device, h.mtu = f, device, mtu
	h.mu.Unlock()
}

// Status is the /status document.
type Status struct {
	Version     string          `json:"version"`
	Ready       bool            `json:"ready"`
	Lease       *StatusLease    `json:"lease,omitempty"`
	Renewal     *StatusRenew    `json:"renewal,omitempty"`
	Etcd        StatusEtcd      `json:"etcd"`
	Device      string          `json:"device,omitempty"`
	MTU         int             `json:"mtu,omitempty"`
	SourceCheck string          `json:"sourceCheck,omitempty"`
	Offload     bool            `json:"offload"`
	Offloads    StatusOffloads  `json:"offloads"`
	PeerTable   StatusPeerTable `json:"peerTable"`
	Firewall    *StatusFirewall `json:"firewall,omitempty"`
	// Peers is left out by /status?peers=0: at thousands of nodes it is
	// most of the document.
	Peers    []StatusPeer  `json:"peers,omitzero"`
	Counters StatusCounter `json:"counters"`
}

// StatusPeerTable describes the data path's peer table and its updates.
type StatusPeerTable struct {
	Peers int `json:"peers"`
	// Revision is the etcd revision of the newest lease change in the
	// table: a lease written at revision R is in use once Revision ≥ R.
	Revision          int64   `json:"revision"`
	Updates           uint64  `json:"updates"`
	UpdateSeconds     float64 `json:"updateSeconds"` // total time spent updating
	LastUpdateSeconds float64 `json:"lastUpdateSeconds"`
	MaxUpdateSeconds  float64 `json:"maxUpdateSeconds"`
}

// StatusFirewall is the state of weft's nftables rules (-ip-masq,
// -iptables-forward-rules); absent with both flags off.
type StatusFirewall struct {
	Masquerade   bool   `json:"masquerade"`
	ForwardRules bool   `json:"forwardRules"`
	InPlace      bool   `json:"inPlace"` // the last apply or check succeeded
	LastError    string `json:"lastError,omitempty"`
	// ForwardDrops names other tables' forward chains whose policy drops
	// what weft's accepts let through (see firewall.ForwardDrops).
	ForwardDrops []string `json:"forwardDrops,omitzero"`
}

// StatusOffloads says which kernel offloads the data path uses, and how
// often the kernel refused one (weft then fell back to the plain path).
type StatusOffloads struct {
	TUNVnetHdr    bool   `json:"tunVnetHdr"`
	TUNUSO        bool   `json:"tunUSO"`
	TUNCoalescing bool   `json:"tunCoalescing"`
	UDPGSO        bool   `json:"udpGSO"`
	UDPGRO        bool   `json:"udpGRO"`
	Fallbacks     uint64 `json:"fallbacks"`
}

type StatusEtcd struct {
	Up            bool              `json:"up"`
	Endpoints     string            `json:"endpoints"`
	Renewals      map[string]uint64 `json:"renewals"`
	WatchRestarts map[string]uint64 `json:"watchRestarts"`
	// Requests counts what this daemon sent etcd, by gRPC method.
	Requests map[string]uint64 `json:"requests,omitempty"`
}

type StatusLease struct {
	Subnet     netip.Prefix `json:"subnet"`
	PublicIP   netip.Addr   `json:"publicIP"`
	Expiration time.Time    `json:"expiration"`
	Reserved   bool         `json:"reserved"`
}

// StatusRenew is present while lease renewals fail.
type StatusRenew struct {
	FailingSince time.Time `json:"failingSince"`
	LastError    string    `json:"lastError"`
}

type StatusPeer struct {
	Subnet    netip.Prefix `json:"subnet"`
	PublicIP  netip.Addr   `json:"publicIP"`
	TxPackets uint64       `json:"txPackets"`
	TxBytes   uint64       `json:"txBytes"`
	RxPackets uint64       `json:"rxPackets"`
	RxBytes   uint64       `json:"rxBytes"`
}

type StatusCounter struct {
	TxPackets uint64            `json:"txPackets"`
	TxBytes   uint64            `json:"txBytes"`
	RxPackets uint64            `json:"rxPackets"`
	RxBytes   uint64            `json:"rxBytes"`
	Drops     map[string]uint64 `json:"drops"`
}

func (h *health) status() Status { return h.statusOf(true) }

// statusOf is the /status document; withPeers adds the per-peer list, which
// costs in proportion to the cluster.
func (h *health) statusOf(withPeers bool) Status {
	h.mu.Lock()
	defer h.mu.Unlock()
	s := Status{
		Version: h.version, Ready: h.ready && h.renewFailingSince.IsZero(),
		Device: h.device, MTU: h.mtu, SourceCheck: h.sourceCheck, PeerTable: h.table,
		Etcd: StatusEtcd{
			Up: h.etcdUp, Endpoints: h.endpoints,
			Renewals:      map[string]uint64{"success": h.renewOK, "failure": h.renewFail},
			WatchRestarts: maps.Clone(h.watchRestarts),
		},
	}
	if !h.renewFailingSince.IsZero() {
		s.Renewal = &StatusRenew{FailingSince: h.renewFailingSince, LastError: h.renewErr}
	}
	if h.lease.Subnet.IsValid() {
		s.Lease = &StatusLease{Subnet: h.lease.Subnet, PublicIP: h.lease.Attrs.PublicIP,
			Expiration: h.lease.Expiration, Reserved: h.lease.Reserved()}
	}
	if h.etcdRequests != nil {
		s.Etcd.Requests = h.etcdRequests()
	}
	if withPeers {
		s.Peers = []StatusPeer{}
	}
	if h.fwd != nil {
		s.PeerTable.Peers = h.fwd.Table().Len()
		if withPeers {
			for _, p := range h.fwd.PeerTraffic() {
				s.Peers = append(s.Peers, StatusPeer{Subnet: p.Subnet, PublicIP: p.Addr,
					TxPackets: p.TxPackets, TxBytes: p.TxBytes, RxPackets: p.RxPackets, RxBytes: p.RxBytes})
			}
		}
	}
	if h.firewall != nil {
		f := *h.firewall
		f.ForwardDrops = slices.Clone(f.ForwardDrops)
		s.Firewall = &f
	}
	if h.offloads != nil {
		s.Offloads = h.offloads()
		o := s.Offloads
		s.Offload = o.TUNVnetHdr || o.UDPGSO || o.UDPGRO
	}
	s.Counters.Drops = map[string]uint64{}
	if h.fwd != nil {
		c := h.fwd.Counters()
		s.Counters.TxPackets, s.Counters.TxBytes = c.TxPackets, c.TxBytes
		s.Counters.RxPackets, s.Counters.RxBytes = c.RxPackets, c.RxBytes
		for r, n := range c.Drops {
			s.Counters.Drops[tunnel.DropReason(r).String()] = n
		}
	}
	return s
}

func (h *health) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		h.mu.Lock()
		ready, since, renewErr, exp := h.ready, h.renewFailingSince, h.renewErr, h.lease.Expiration
		h.mu.Unlock()
		if !ready {
			http.Error(w, "not ready: lease, device, route or subnet file not in place yet", http.StatusServiceUnavailable)
			return
		}
		if !since.IsZero() {
			http.Error(w, fmt.Sprintf("not ready: lease renewal failing since %s (lease expires %s): %s",
				since.Format(time.RFC3339), exp.Format(time.RFC3339), renewErr), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	mux.Handle("GET /metrics", h.metricsHandler())
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(h.statusOf(r.URL.Query().Get("peers") != "0"))
	})
	return mux
}

// serve starts the listener; the returned func shuts it down.
func (h *health) serve(ip string, port int, log *slog.Logger) (func(), error) {
	addr := net.JoinHostPort(ip, strconv.Itoa(port))
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("healthz listener on %s (-healthz-ip/-healthz-port): %w", addr, err)
	}
	srv := &http.Server{Handler: h.handler(), ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("healthz server stopped", "addr", addr, "err", err)
		}
	}()
	log.Info("serving /healthz, /readyz and /status", "addr", addr)
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	}, nil
}

// defaultStatusSocket is where `weft status` finds the daemon.
const defaultStatusSocket = "/run/weft/weft.sock"

// serveSocket serves the same endpoints on a unix socket (root only, 0600),
// so `weft status` works without a -healthz-port. A stale socket from a
// killed run is replaced; a live one belongs to another daemon.
func (h *health) serveSocket(path string, log *slog.Logger) (func(), error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("status socket %s: %w", path, err)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("status socket %s is in use by another running daemon (pass -status-socket)", path)
	}
	os.Remove(path)
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("status socket %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("status socket %s: %w", path, err)
	}
	srv := &http.Server{Handler: h.handler(), ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("status socket stopped", "socket", path, "err", err)
		}
	}()
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		os.Remove(path)
	}, nil
}

// setOffloads makes /status and /metrics report dev's and conn's offload
// state, where they can tell it.
func (h *health) setOffloads(dev tunnel.Device, conn tunnel.Conn) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.offloads = func() StatusOffloads {
		var o StatusOffloads
		if r, ok := dev.(tunnel.OffloadReporter); ok {
			t := r.Offload()
			o.TUNVnetHdr, o.TUNUSO, o.TUNCoalescing, o.Fallbacks = t.VnetHdr, t.USO, t.Coalescing, t.Fallbacks
		}
		if r, ok := conn.(tunnel.UDPOffloader); ok {
			u := r.UDPOffload()
			o.UDPGSO, o.UDPGRO = u.GSO, u.GRO
			o.Fallbacks += u.Fallbacks
		}
		return o
	}
}
