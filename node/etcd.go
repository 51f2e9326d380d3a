package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	"github.com/weft-net/weft/etcd"
	"github.com/weft-net/weft/subnet"
)

// connectEtcd creates the etcd client. Only with a user and password does
// that talk to etcd; while etcd is unreachable it retries, so a node may
// boot before etcd, but a refused login is fatal.
func connectEtcd(ctx context.Context, c etcd.Config, log *slog.Logger) (*etcd.Store, error) {
	c.Logger = log
	// Peers' expirations are not used here; reading them would cost etcd a
	// request per lease per list and per watched change.
	c.NoExpirations = true
	backoff := retry{}
	for {
		s, err := etcd.New(c)
		if err == nil || !errors.Is(err, context.DeadlineExceeded) {
			return s, err
		}
		if err := backoff.wait(ctx, log, "connect to etcd", err); err != nil {
			return nil, err
		}
	}
}

// waitConfig reads and validates the network config, retrying while it is
// missing or etcd is unreachable. An invalid config is fatal: it needs an
// operator, and systemd will start us again.
func (n *node) waitConfig(ctx context.Context, store *etcd.Store) (*subnet.Config, error) {
	var lastErr string
	hint := ConfigPutHint(n.cfg.Etcd)
	for {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		data, err := store.GetNetworkConfig(cctx)
		cancel()
		if err == nil {
			cfg, err := subnet.ParseConfig(data)
			if err != nil {
				return nil, fmt.Errorf("%s/config: %w (fix it with: %s)", n.cfg.Etcd.Prefix, err, hint)
			}
			if lastErr != "" {
				n.log.Info("network config found")
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
				n.log.Warn("network config missing; retrying every second", "key", n.cfg.Etcd.Prefix+"/config", "fix", hint)
				notify(n.log, "STATUS=waiting for the network config: create it with "+hint)
			} else {
				n.log.Warn("cannot read network config from etcd; retrying every second", "err", err)
				notify(n.log, "STATUS=waiting for etcd: "+err.Error())
			}
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// acquire takes a lease in etcd, retrying while etcd is unreachable.
func (n *node) acquire(ctx context.Context, store *etcd.Store, attrs subnet.Attrs) (subnet.Lease, error) {
	prev, err := readSubnetEnv(n.cfg.SubnetFile)
	if err != nil {
		n.log.Warn("ignoring previous subnet file", "file", n.cfg.SubnetFile, "err", err)
	}
	backoff := retry{}
	for {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		l, err := subnet.Acquire(cctx, store, subnet.AcquireOptions{
			Config:   n.netCfg,
			Attrs:    attrs,
			Previous: prev,
			Logger:   n.log,
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
		if err := backoff.wait(ctx, n.log, "acquire lease", err); err != nil {
			return subnet.Lease{}, err
		}
	}
}

func (n *node) listLeases(ctx context.Context) ([]subnet.Lease, int64, error) {
	backoff := retry{}
	for {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		leases, rev, err := n.store.ListLeases(cctx)
		cancel()
		if err == nil {
			return leases, rev, nil
		}
		if err := backoff.wait(ctx, n.log, "list leases", err); err != nil {
			return nil, 0, err
		}
	}
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

// etcdWorked tells monitorEtcd that etcd just answered (a watch batch, a
// renewal): proof the connection is up, whatever gRPC's state says yet.
func (n *node) etcdWorked() {
	select {
	case n.etcdWorks <- struct{}{}:
	default:
	}
}

// etcdRecheck bounds how long a call that worked holds the status up
// against gRPC saying down: gRPC may have been up for that call and down
// again before its state was read, and then it reports no further change.
const etcdRecheck = 2 * time.Second

// monitorEtcd follows the etcd connection and logs and reports each change
// once: while etcd is away the data path forwards with the last peer table.
// It makes no requests and does not poll: gRPC's connection state says when
// etcd goes and comes back, as it changes, and a call that worked
// (etcdWorked) says it is back, so the status never trails a working watch.
// Only while a call's word holds the status up against gRPC's does it look
// at gRPC's state again, etcdRecheck later.
func (n *node) monitorEtcd(ctx context.Context, own netip.Prefix) {
	verdicts := make(chan bool) // gRPC's verdict, on each change
	done := make(chan struct{})
	defer func() { <-done }()
	go func() {
		defer close(done)
		up := n.store.Connected()
		for {
			select {
			case verdicts <- up:
			case <-ctx.Done():
				return
			}
			up = n.store.WaitConnChange(ctx, up)
		}
	}()
	grpcUp := false              // gRPC's last verdict
	worked := false              // etcd answered since that verdict
	var recheck <-chan time.Time // armed while a call holds the status up against gRPC
	shown := false               // the state last reported
	set := func(up bool) { shown = up; n.setEtcdUp(own, up) }
	verdict := func(up bool) {
		// gRPC going down is news; still down is not if etcd answered
		// since: a call that worked is the better evidence.
		if up || grpcUp || !worked {
			set(up)
		}
		grpcUp, worked, recheck = up, false, nil
		if !up && shown {
			recheck = time.After(etcdRecheck)
		}
	}
	for {
		select {
		case <-ctx.Done():
			return
		case up := <-verdicts:
			verdict(up)
		case <-recheck:
			verdict(n.store.Connected())
		case <-n.etcdWorks:
			worked = true
			set(true)
			if !grpcUp && recheck == nil {
				recheck = time.After(etcdRecheck)
			}
		}
	}
}

// setEtcdUp records the etcd connection's state, and logs and reports a
// change.
func (n *node) setEtcdUp(own netip.Prefix, up bool) {
	if !n.health.SetEtcdUp(up) {
		return
	}
	kind, where := n.store.kind(), n.store.where()
	if up {
		n.log.Info(kind+" connection up", kind, where)
		select { // end a watch's backoff: etcd is back now
		case n.etcdBack <- struct{}{}:
		default:
		}
	} else {
		n.log.Warn(kind+" connection lost; forwarding with the last peer table until it returns", kind, where)
	}
	notify(n.log, n.statusLine(own))
}

// statusLine is systemd's one-line STATUS= for `systemctl status weft`.
func (n *node) statusLine(own netip.Prefix) string {
	s := n.health.Status(false)
	store := n.store.kind() + " up"
	if !s.Etcd.Up {
		store = n.store.kind() + " unreachable, forwarding with the last peer table"
	}
	return fmt.Sprintf("STATUS=%s on %s, %d peers, %s", own, n.cfg.TunName, s.PeerTable.Peers, store)
}
