// Package etcd implements subnet.Store on etcd v3 in flannel's exact
// layout: the network config at <prefix>/config and one key per lease at
// <prefix>/subnets/<a.b.c.d>-<len>, each attached to a 24 h etcd lease
// (or to none, for an operator-made reservation).
package etcd

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/connectivity"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/weft-net/weft/subnet"
)

// DefaultPrefix is flanneld's default --etcd-prefix.
const DefaultPrefix = "/coreos.com/network"

const (
	// defaultDialTimeout bounds the authentication round trip New makes when
	// a username and password are set (clientv3 would otherwise wait forever
	// for an unreachable etcd).
	defaultDialTimeout = 5 * time.Second
	// Keepalive pings detect a silently dead connection (peer host gone, no
	// RST), so a watch reconnects instead of waiting forever. etcd's default
	// enforcement allows pings every 5 s.
	keepaliveTime    = 5 * time.Second
	keepaliveTimeout = 2 * time.Second
	// reconnectMaxDelay caps gRPC's reconnect backoff (default: up to 120 s),
	// so changes made while etcd was away arrive within seconds of its
	// return.
	reconnectMaxDelay = time.Second
	// cleanupTimeout bounds a best-effort revoke made after the caller's
	// context may already have expired.
	cleanupTimeout = 5 * time.Second
	// ttlLookups bounds the concurrent TimeToLive calls of one list.
	ttlLookups = 8
	// probeTimeout bounds the TLS diagnosis made after a timeout.
	probeTimeout = 2 * time.Second
)

// Config says how to reach etcd. The fields mirror flanneld's -etcd-* flags.
type Config struct {
	Endpoints []string
	// Prefix is the key prefix; empty means DefaultPrefix.
	Prefix string
	// KeyFile and CertFile: a TLS client certificate, used only when both
	// are set (as flanneld). CAFile alone verifies the server with that CA.
	KeyFile, CertFile, CAFile string
	Username, Password        string
	// DialTimeout bounds the authentication New makes when Username and
	// Password are set; zero means 5 s.
	DialTimeout time.Duration
	// Logger receives warnings (skipped keys, failed cleanups); nil means
	// slog.Default().
	Logger *slog.Logger
	// NoExpirations leaves Lease.Expiration zero in ListLeases and
	// WatchLeases. Filling it costs one TimeToLive request per etcd lease
	// read, which in a cluster of thousands of nodes, each listing and
	// watching every lease, dominates etcd's load. The daemon needs only
	// its own lease's expiration, which CreateLease and RenewLease return;
	// `weft leases` wants all of them.
	NoExpirations bool
}

// Store is a subnet.Store backed by an etcd v3 client. It is safe for
// concurrent use.
type Store struct {
	cli       *clientv3.Client
	log       *slog.Logger
	tls       *tls.Config // nil for plain HTTP
	eps       []string
	endpoints string // for error messages: "[http://a:2379,http://b:2379]"
	configKey string // <prefix>/config
	leasesDir string // <prefix>/subnets/ (trailing slash)
	noExp     bool
	requests  *requestCounter
}

var _ subnet.Store = (*Store)(nil)

// New creates the etcd client. Like clientv3 it does not wait for etcd to
// be reachable, so it succeeds while etcd is down and each call then fails
// at its context's deadline; the exception is Username/Password, which are
// exchanged for a token here, bounded by DialTimeout.
func New(c Config) (*Store, error) {
	if len(c.Endpoints) == 0 {
		return nil, errors.New("etcd: no endpoints")
	}
	log := c.Logger
	if log == nil {
		log = slog.Default()
	}
	prefix := c.Prefix
	if prefix == "" {
		prefix = DefaultPrefix
	}
	if (c.Username == "") != (c.Password == "") {
		// clientv3 ignores a lone username or password, as flanneld does;
		// say so rather than fail a configuration flanneld accepts.
		log.Warn("etcd username and password must both be set; not authenticating")
	}
	tlsCfg, err := tlsConfig(c, log)
	if err != nil {
		return nil, err
	}
	dialTimeout := c.DialTimeout
	if dialTimeout <= 0 {
		dialTimeout = defaultDialTimeout
	}
	eps := "[" + strings.Join(c.Endpoints, ",") + "]"
	requests := &requestCounter{}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:            c.Endpoints,
		TLS:                  tlsCfg,
		Username:             c.Username,
		Password:             c.Password,
		DialTimeout:          dialTimeout,
		DialKeepAliveTime:    keepaliveTime,
		DialKeepAliveTimeout: keepaliveTimeout,
		DialOptions: []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 200 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: reconnectMaxDelay},
			MinConnectTimeout: 2 * time.Second,
		}),
			grpc.WithChainUnaryInterceptor(requests.unary),
			grpc.WithChainStreamInterceptor(requests.stream),
		},
		// The client logs every retry; our errors carry what matters.
		Logger: zap.NewNop(),
	})
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			err = fmt.Errorf("etcd at %s unreachable: %w", eps, err)
		}
		return nil, fmt.Errorf("connect to etcd at %s: %w", eps, err)
	}
	return &Store{
		cli:       cli,
		log:       log,
		tls:       tlsCfg,
		eps:       c.Endpoints,
		endpoints: eps,
		configKey: path.Join(prefix, "config"),
		leasesDir: path.Join(prefix, "subnets") + "/",
		noExp:     c.NoExpirations,
		requests:  requests,
	}, nil
}

// tlsConfig builds the client TLS configuration, or nil for plain HTTP.
func tlsConfig(c Config, log *slog.Logger) (*tls.Config, error) {
	if (c.KeyFile == "") != (c.CertFile == "") {
		log.Warn("etcd TLS client certificate needs both a key file and a cert file; not using either",
			"keyfile", c.KeyFile, "certfile", c.CertFile)
	}
	withCert := c.KeyFile != "" && c.CertFile != ""
	if !withCert && c.CAFile == "" {
		return nil, nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if withCert {
		certPEM, err := os.ReadFile(c.CertFile)
		if err != nil {
			return nil, fmt.Errorf("etcd cert file: %w", err)
		}
		keyPEM, err := os.ReadFile(c.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("etcd key file: %w", err)
		}
		cert, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			return nil, fmt.Errorf("etcd cert file %s and key file %s: %w", c.CertFile, c.KeyFile, err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	if c.CAFile != "" {
		caPEM, err := os.ReadFile(c.CAFile)
		if err != nil {
			return nil, fmt.Errorf("etcd CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(caPEM) {
			return nil, fmt.Errorf("etcd CA file %s: no PEM certificate found", c.CAFile)
		}
		cfg.RootCAs = pool
	}
	return cfg, nil
}

// Connected reports whether the client's connection to etcd is up, from
// gRPC's own connection state: no request is made, so the daemon can ask
// every few seconds at any cluster size.
func (s *Store) Connected() bool {
	conn := s.cli.ActiveConnection()
	if conn == nil {
		return false
	}
	return connUp(conn.GetState())
}

// WaitConnChange blocks until Connected would no longer report wasUp, or
// ctx ends, and returns what Connected then reports. Like Connected it
// makes no request: the daemon follows the connection as it changes rather
// than finding out at its next poll.
func (s *Store) WaitConnChange(ctx context.Context, wasUp bool) bool {
	conn := s.cli.ActiveConnection()
	if conn == nil {
		<-ctx.Done()
		return false
	}
	for {
		st := conn.GetState()
		if up := connUp(st); up != wasUp || ctx.Err() != nil {
			return up
		}
		// Moves within one verdict (Ready to Idle, Connecting to
		// TransientFailure) are waited through: only up or down matters.
		if !conn.WaitForStateChange(ctx, st) {
			return connUp(conn.GetState())
		}
	}
}

// connUp is the verdict of one gRPC connectivity state: Idle is up, as no
// failure is known and the channel connects on the next call.
func connUp(st connectivity.State) bool {
	return st == connectivity.Ready || st == connectivity.Idle
}

// Close releases the client. Calls in flight fail.
func (s *Store) Close() error {
	err := s.cli.Close()
	if errors.Is(err, context.Canceled) {
		// clientv3 reports its own cancellation on a clean close.
		return nil
	}
	return err
}

// ConfigKey is the key of the network config, for messages telling the
// operator how to create it.
func (s *Store) ConfigKey() string { return s.configKey }

// LeaseKey is the key of subnet sn's lease.
func (s *Store) LeaseKey(sn netip.Prefix) string { return s.leasesDir + subnet.LeaseKeyName(sn) }

// DeleteLease removes l's key for an operator (a decommissioned node), and
// revokes its etcd lease so nothing is left behind. Watchers see a delete.
func (s *Store) DeleteLease(ctx context.Context, l subnet.Lease) error {
	key := s.LeaseKey(l.Subnet)
	if l.ID != 0 {
		// Revoking deletes every key attached, ours included.
		if _, err := s.cli.Revoke(ctx, clientv3.LeaseID(l.ID)); err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
			return fmt.Errorf("release lease %s: revoke %016x: %w", key, l.ID, s.callErr(err))
		}
	}
	if _, err := s.cli.Delete(ctx, key); err != nil {
		return fmt.Errorf("release lease %s: %w", key, s.callErr(err))
	}
	return nil
}

// GetNetworkConfig returns the raw value of <prefix>/config.
func (s *Store) GetNetworkConfig(ctx context.Context) ([]byte, error) {
	resp, err := s.cli.Get(ctx, s.configKey)
	if err != nil {
		return nil, fmt.Errorf("get network config %s: %w", s.configKey, s.callErr(err))
	}
	if len(resp.Kvs) == 0 {
		return nil, fmt.Errorf("get network config %s: %w", s.configKey, subnet.ErrNoConfig)
	}
	return resp.Kvs[0].Value, nil
}

// PutNetworkConfig writes data to <prefix>/config unchecked: validating it
// is the caller's job.
func (s *Store) PutNetworkConfig(ctx context.Context, data []byte) error {
	if _, err := s.cli.Put(ctx, s.configKey, string(data)); err != nil {
		return fmt.Errorf("put network config %s: %w", s.configKey, s.callErr(err))
	}
	return nil
}

// ListLeases reads every lease under <prefix>/subnets/ at one revision.
// Keys or values that do not parse are skipped with a warning. Expiration
// comes from one TimeToLive call per etcd lease, unless NoExpirations.
func (s *Store) ListLeases(ctx context.Context) ([]subnet.Lease, int64, error) {
	resp, err := s.cli.Get(ctx, s.leasesDir, clientv3.WithPrefix())
	if err != nil {
		return nil, 0, fmt.Errorf("list leases %s: %w", s.leasesDir, s.callErr(err))
	}
	leases := make([]subnet.Lease, 0, len(resp.Kvs))
	var ids []int64
	seen := make(map[int64]bool)
	for _, kv := range resp.Kvs {
		key := string(kv.Key)
		sn, err := s.parseKey(key)
		if err != nil {
			s.log.Warn("skipping etcd key that is not a lease", "key", key, "err", err)
			continue
		}
		attrs, err := subnet.ParseAttrs(kv.Value)
		if err != nil {
			s.log.Warn("skipping lease with unparsable value", "key", key, "err", err)
			continue
		}
		leases = append(leases, subnet.Lease{Subnet: sn, Attrs: attrs, ID: kv.Lease})
		if kv.Lease != 0 && !seen[kv.Lease] {
			seen[kv.Lease] = true
			ids = append(ids, kv.Lease)
		}
	}
	if s.noExp {
		ids = nil
	}
	exp, err := s.expirations(ctx, ids)
	if err != nil {
		return nil, 0, fmt.Errorf("list leases %s: %w", s.leasesDir, s.callErr(err))
	}
	for i := range leases {
		if leases[i].ID != 0 {
			leases[i].Expiration = exp[leases[i].ID]
		}
	}
	return leases, resp.Header.Revision, nil
}

// CreateLease grants a fresh etcd lease of ttl and attaches the key to it
// only if the key does not exist. Whatever fails after the grant, the etcd
// lease is revoked so that none is left behind.
func (s *Store) CreateLease(ctx context.Context, sn netip.Prefix, attrs subnet.Attrs, ttl time.Duration) (subnet.Lease, error) {
	if !sn.IsValid() || !sn.Addr().Is4() || sn.Masked() != sn {
		return subnet.Lease{}, fmt.Errorf("create lease %v: not a masked IPv4 subnet", sn)
	}
	key := s.LeaseKey(sn)
	if ttl < time.Second {
		return subnet.Lease{}, fmt.Errorf("create lease %s: TTL %v is under 1s", key, ttl)
	}
	value, err := attrs.MarshalJSON()
	if err != nil {
		return subnet.Lease{}, fmt.Errorf("create lease %s: encode value: %w", key, err)
	}
	// Taken before the grant so the reported expiration is never late.
	start := time.Now()
	grant, err := s.cli.Grant(ctx, int64((ttl+time.Second-1)/time.Second))
	if err != nil {
		return subnet.Lease{}, fmt.Errorf("create lease %s: grant: %w", key, s.callErr(err))
	}
	txn, err := s.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.Version(key), "=", 0)).
		Then(clientv3.OpPut(key, string(value), clientv3.WithLease(grant.ID))).
		Commit()
	if err != nil {
		// The put may or may not have happened; revoking covers both (a
		// committed key goes with its lease, and the caller may retry).
		s.revoke(ctx, grant.ID, key)
		return subnet.Lease{}, fmt.Errorf("create lease %s: %w", key, s.callErr(err))
	}
	if !txn.Succeeded {
		s.revoke(ctx, grant.ID, key)
		return subnet.Lease{}, fmt.Errorf("create lease %s: %w", key, subnet.ErrLeaseTaken)
	}
	return subnet.Lease{
		Subnet:     sn,
		Attrs:      attrs,
		ID:         int64(grant.ID),
		Expiration: start.Add(time.Duration(grant.TTL) * time.Second),
	}, nil
}

// RenewLease refreshes l's etcd lease in place with one keepalive (unlike
// flanneld, which grants a new lease on every renewal and leaks the old
// one), then checks that the key still exists on that lease. If the key is
// gone or was re-attached elsewhere, the now useless etcd lease is revoked.
// A reservation (ID 0) has nothing to renew: it is only checked to exist.
func (s *Store) RenewLease(ctx context.Context, l subnet.Lease) (subnet.Lease, error) {
	key := s.LeaseKey(l.Subnet)
	if l.ID == 0 {
		if err := s.checkAttached(ctx, key, 0); err != nil {
			return l, fmt.Errorf("renew lease %s: %w", key, err)
		}
		return l, nil
	}
	start := time.Now()
	ka, err := s.cli.KeepAliveOnce(ctx, clientv3.LeaseID(l.ID))
	if err != nil {
		if errors.Is(err, rpctypes.ErrLeaseNotFound) {
			return l, fmt.Errorf("renew lease %s: etcd lease %016x expired or revoked: %w", key, l.ID, subnet.ErrLeaseNotFound)
		}
		return l, fmt.Errorf("renew lease %s: keepalive %016x: %w", key, l.ID, s.callErr(err))
	}
	if err := s.checkAttached(ctx, key, l.ID); err != nil {
		if errors.Is(err, subnet.ErrLeaseNotFound) {
			s.revokeIfUnused(ctx, clientv3.LeaseID(l.ID), key)
		}
		return l, fmt.Errorf("renew lease %s: %w", key, err)
	}
	l.Expiration = start.Add(time.Duration(ka.TTL) * time.Second)
	return l, nil
}

// checkAttached returns nil if key exists on etcd lease id (0: none), or an
// error wrapping subnet.ErrLeaseNotFound saying what it found instead.
func (s *Store) checkAttached(ctx context.Context, key string, id int64) error {
	resp, err := s.cli.Get(ctx, key)
	if err != nil {
		return fmt.Errorf("get: %w", s.callErr(err))
	}
	if len(resp.Kvs) == 0 {
		return fmt.Errorf("key deleted: %w", subnet.ErrLeaseNotFound)
	}
	if got := resp.Kvs[0].Lease; got != id {
		return fmt.Errorf("key now on etcd lease %016x, not %016x: %w", got, id, subnet.ErrLeaseNotFound)
	}
	return nil
}

// WatchLeases watches <prefix>/subnets/ from fromRev+1 and hands each
// response's lease events to handle. A PUT whose value does not parse is
// reported as a removal, so the watch agrees with what ListLeases would
// return; keys that do not parse are skipped with a warning.
//
// The revision given to handle is that of the batch's last event, not the
// response header's: while etcd catches up a lagging watcher it may send a
// partial batch stamped with the current revision, and resuming after that
// would skip events.
func (s *Store) WatchLeases(ctx context.Context, fromRev int64, handle func(events []subnet.Event, rev int64)) error {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// No WithPrevKV: etcd would read the previous value from its backend
	// for every event and every watcher, and with thousands of nodes each
	// change would cost thousands of reads; a removal names its subnet.
	wch := s.cli.Watch(clientv3.WithRequireLeader(wctx), s.leasesDir,
		clientv3.WithPrefix(), clientv3.WithRev(fromRev+1))
	for resp := range wch {
		if resp.CompactRevision != 0 || errors.Is(resp.Err(), rpctypes.ErrCompacted) {
			return fmt.Errorf("watch leases %s from revision %d: compacted up to %d: %w",
				s.leasesDir, fromRev+1, resp.CompactRevision, subnet.ErrCompacted)
		}
		if err := resp.Err(); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("watch leases %s: %w", s.leasesDir, s.callErr(err))
		}
		if len(resp.Events) == 0 {
			continue // progress notification or watch created
		}
		events := s.convert(wctx, resp.Events)
		handle(events, resp.Events[len(resp.Events)-1].Kv.ModRevision)
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return fmt.Errorf("watch leases %s: watch closed", s.leasesDir)
}

// convert maps etcd events to lease events.
func (s *Store) convert(ctx context.Context, evs []*clientv3.Event) []subnet.Event {
	// One TimeToLive per etcd lease PUT in this batch: PUTs are rare (a node
	// joins, a flanneld renews), and the expiration is then exact.
	var ids []int64
	for _, ev := range evs {
		if ev.Type == clientv3.EventTypePut && ev.Kv.Lease != 0 && !s.noExp {
			ids = append(ids, ev.Kv.Lease)
		}
	}
	// Bounded: an etcd outage right now must not hold back events in hand.
	tctx, cancel := context.WithTimeout(ctx, cleanupTimeout)
	exp, err := s.expirations(tctx, ids)
	cancel()
	if err != nil && ctx.Err() == nil {
		s.log.Warn("lease expirations unknown for watched leases", "err", s.callErr(err))
	}
	out := make([]subnet.Event, 0, len(evs))
	for _, ev := range evs {
		key := string(ev.Kv.Key)
		sn, err := s.parseKey(key)
		if err != nil {
			s.log.Warn("skipping etcd key that is not a lease", "key", key, "err", err)
			continue
		}
		l := subnet.Lease{Subnet: sn}
		if ev.Type == clientv3.EventTypeDelete {
			out = append(out, subnet.Event{Type: subnet.EventRemoved, Lease: l})
			continue
		}
		attrs, err := subnet.ParseAttrs(ev.Kv.Value)
		if err != nil {
			s.log.Warn("lease value no longer parses; treating the lease as removed", "key", key, "err", err)
			out = append(out, subnet.Event{Type: subnet.EventRemoved, Lease: l})
			continue
		}
		l.Attrs = attrs
		l.ID = ev.Kv.Lease
		if l.ID != 0 {
			l.Expiration = exp[l.ID]
		}
		out = append(out, subnet.Event{Type: subnet.EventAdded, Lease: l})
	}
	return out
}

// parseKey returns the subnet named by a key directly under <prefix>/subnets/.
func (s *Store) parseKey(key string) (netip.Prefix, error) {
	name, ok := strings.CutPrefix(key, s.leasesDir)
	if !ok || name == "" || strings.Contains(name, "/") {
		return netip.Prefix{}, fmt.Errorf("key %q is not <prefix>/subnets/<name>", key)
	}
	return subnet.ParseLeaseKeyName(name)
}

// expirations looks up the expiration of each etcd lease in ids, a few at a
// time. A lease already gone expires now: its key is about to disappear.
func (s *Store) expirations(ctx context.Context, ids []int64) (map[int64]time.Time, error) {
	out := make(map[int64]time.Time, len(ids))
	if len(ids) == 0 {
		return out, nil
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		mu       sync.Mutex
		firstErr error
		wg       sync.WaitGroup
	)
	work := make(chan int64)
	for range min(len(ids), ttlLookups) {
		wg.Go(func() {
			for id := range work {
				t, err := s.expiration(ctx, id)
				mu.Lock()
				if err == nil {
					out[id] = t
				} else if firstErr == nil {
					firstErr = err
					cancel()
				}
				mu.Unlock()
			}
		})
	}
feed:
	for _, id := range ids {
		select {
		case work <- id:
		case <-ctx.Done():
			break feed
		}
	}
	close(work)
	wg.Wait()
	if firstErr == nil && len(out) < len(ids) {
		firstErr = ctx.Err()
	}
	return out, firstErr
}

func (s *Store) expiration(ctx context.Context, id int64) (time.Time, error) {
	now := time.Now()
	resp, err := s.cli.TimeToLive(ctx, clientv3.LeaseID(id))
	if errors.Is(err, rpctypes.ErrLeaseNotFound) {
		return now, nil
	}
	if err != nil {
		return time.Time{}, fmt.Errorf("time to live of etcd lease %016x: %w", id, err)
	}
	if resp.TTL < 0 {
		return now, nil
	}
	return now.Add(time.Duration(resp.TTL) * time.Second), nil
}

// revoke drops an etcd lease we granted but could not use. It runs even if
// ctx has expired, bounded by cleanupTimeout.
func (s *Store) revoke(ctx context.Context, id clientv3.LeaseID, key string) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	if _, err := s.cli.Revoke(ctx, id); err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		s.log.Warn("could not revoke unused etcd lease; it expires by itself",
			"key", key, "lease", fmt.Sprintf("%016x", int64(id)), "err", s.callErr(err))
	}
}

// revokeIfUnused revokes etcd lease id if no key is attached to it any more.
func (s *Store) revokeIfUnused(ctx context.Context, id clientv3.LeaseID, key string) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	resp, err := s.cli.TimeToLive(ctx, id, clientv3.WithAttachedKeys())
	if err != nil || resp.TTL <= 0 || len(resp.Keys) > 0 {
		return
	}
	s.revoke(ctx, id, key)
}

// callErr makes a timeout against an unreachable etcd say so: with its
// default wait-for-ready, clientv3 reports only the context's deadline.
// With TLS, a handshake that fails (wrong CA, refused client certificate)
// looks the same, so it probes the endpoints to name the real cause.
func (s *Store) callErr(err error) error {
	if !errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	if terr := s.probeTLS(); terr != nil {
		return fmt.Errorf("%w (check -etcd-cafile, -etcd-certfile and -etcd-keyfile): %w", terr, err)
	}
	return fmt.Errorf("etcd at %s unreachable: %w", s.endpoints, err)
}

// probeTLS handshakes with each https endpoint as the client would and
// returns the first TLS failure, or nil when TLS is not the problem
// (including when the endpoint cannot be reached at all).
func (s *Store) probeTLS() error {
	for _, ep := range s.eps {
		u, err := url.Parse(ep)
		if err != nil || u.Scheme != "https" {
			continue
		}
		cfg := &tls.Config{MinVersion: tls.VersionTLS12}
		if s.tls != nil {
			cfg = s.tls.Clone()
		}
		if cfg.ServerName == "" {
			cfg.ServerName = u.Hostname()
		}
		raw, err := net.DialTimeout("tcp", u.Host, probeTimeout)
		if err != nil {
			continue // unreachable, not a TLS problem
		}
		conn := tls.Client(raw, cfg)
		_ = conn.SetDeadline(time.Now().Add(probeTimeout)) // on a fresh connection it cannot fail
		err = conn.Handshake()
		if err == nil {
			// With TLS 1.3 the server judges our certificate after the
			// handshake: its verdict arrives as an alert on the first read.
			_ = conn.SetReadDeadline(time.Now().Add(probeTimeout / 4))
			_, err = conn.Read(make([]byte, 1))
			var ne net.Error
			if err == nil || errors.As(err, &ne) && ne.Timeout() {
				err = nil
			}
		}
		conn.Close()
		if err != nil {
			return fmt.Errorf("etcd at %s: TLS failure: %w", ep, err)
		}
	}
	return nil
}

// PutLeaseAttrs rewrites the value of l's key with l.Attrs, only while the
// key is still attached to l's etcd lease (ID 0: a reservation, attached to
// none), which it keeps. A key that is gone or now on another etcd lease is
// an error wrapping subnet.ErrLeaseNotFound; nothing is written then.
// flanneld rewrites its lease's value at every start the same way.
func (s *Store) PutLeaseAttrs(ctx context.Context, l subnet.Lease) error {
	key := s.LeaseKey(l.Subnet)
	value, err := l.Attrs.MarshalJSON()
	if err != nil {
		return fmt.Errorf("put lease %s: encode value: %w", key, err)
	}
	txn, err := s.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.Version(key), ">", 0), clientv3.Compare(clientv3.LeaseValue(key), "=", l.ID)).
		Then(clientv3.OpPut(key, string(value), clientv3.WithIgnoreLease())).
		Commit()
	if err != nil {
		return fmt.Errorf("put lease %s: %w", key, s.callErr(err))
	}
	if !txn.Succeeded {
		return fmt.Errorf("put lease %s: key gone or not on etcd lease %016x: %w", key, l.ID, subnet.ErrLeaseNotFound)
	}
	return nil
}
