package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/weft-net/weft/etcd/etcdtest"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

type etcdServer = etcdtest.Server

// EtcdEndpoint is the client URL of the lab's etcd, reachable from the
// host and from every node: http://198.18.K.1:2379.
func (l *Lab) EtcdEndpoint() string {
	return "http://" + netip.AddrPortFrom(l.hostAddr, EtcdClientPort).String()
}

// StartEtcd starts the lab's etcd, or restarts it on the same data after
// StopEtcd. It is a no-op while etcd runs.
func (l *Lab) StartEtcd() error {
	l.etcdMu.Lock()
	defer l.etcdMu.Unlock()
	if l.closed.Load() {
		return errors.New("lab: closed")
	}
	if l.etcd != nil {
		return nil
	}
	s, err := etcdtest.StartServer(filepath.Join(l.Dir, "etcd"), l.EtcdEndpoint())
	if err != nil {
		return fmt.Errorf("lab: %w", err)
	}
	l.etcd = s
	l.log.Info("etcd started", "endpoint", l.EtcdEndpoint())
	return nil
}

// StopEtcd stops the lab's etcd, keeping its data for StartEtcd. It is a
// no-op when etcd is not running.
func (l *Lab) StopEtcd() error {
	l.etcdMu.Lock()
	defer l.etcdMu.Unlock()
	if l.etcd == nil {
		return nil
	}
	l.etcd.Close()
	l.etcd = nil
	l.log.Info("etcd stopped")
	return nil
}

// Client is the lab's own etcd client. It outlives etcd restarts (it
// reconnects) and is closed by Close.
func (l *Lab) Client() *clientv3.Client {
	l.etcdMu.Lock()
	defer l.etcdMu.Unlock()
	return l.client
}

func newClient(endpoint string) (*clientv3.Client, error) {
	c, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{endpoint},
		DialTimeout: 5 * time.Second,
		// The client logs every reconnect attempt at warn level; fault
		// tests stop etcd on purpose.
		Logger: zap.NewNop(),
	})
	if err != nil {
		return nil, fmt.Errorf("lab: etcd client for %s: %w", endpoint, err)
	}
	return c, nil
}

func (l *Lab) kv() (*clientv3.Client, error) {
	c := l.Client()
	if c == nil {
		return nil, errors.New("lab: no etcd client")
	}
	return c, nil
}

// PutConfig writes raw JSON to <prefix>/config.
func (l *Lab) PutConfig(ctx context.Context, config string) error {
	c, err := l.kv()
	if err != nil {
		return err
	}
	key := l.opts.Prefix + "/config"
	if _, err := c.Put(ctx, key, config); err != nil {
		return fmt.Errorf("lab: put %s: %w", key, err)
	}
	return nil
}

// Lease is one key under <prefix>/subnets as etcd holds it.
type Lease struct {
	Key      string
	Subnet   netip.Prefix
	PublicIP netip.Addr
	Value    string // the raw JSON value
	// Reserved: the key has no etcd lease attached (no TTL).
	Reserved bool
}

// Leases lists every lease key under <prefix>/subnets, sorted by subnet.
// Keys that do not parse (dual-stack, garbage) are returned with a zero
// Subnet rather than dropped, so a test sees what is really there.
func (l *Lab) Leases(ctx context.Context) ([]Lease, error) {
	c, err := l.kv()
	if err != nil {
		return nil, err
	}
	dir := l.opts.Prefix + "/subnets/"
	resp, err := c.Get(ctx, dir, clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("lab: list %s: %w", dir, err)
	}
	out := make([]Lease, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		le := Lease{Key: string(kv.Key), Value: string(kv.Value), Reserved: kv.Lease == 0}
		le.Subnet, _ = ParseSubnetKey(strings.TrimPrefix(le.Key, dir))
		var v struct{ PublicIP string }
		if json.Unmarshal(kv.Value, &v) == nil {
			le.PublicIP, _ = netip.ParseAddr(v.PublicIP)
		}
		out = append(out, le)
	}
	sort.Slice(out, func(i, j int) bool {
		if c := out[i].Subnet.Addr().Compare(out[j].Subnet.Addr()); c != 0 {
			return c < 0
		}
		return out[i].Key < out[j].Key
	})
	return out, nil
}

// DeleteLease deletes <prefix>/subnets/<subnet>, as an operator's
// `etcdctl del` would. Deleting a key that is absent is an error.
func (l *Lab) DeleteLease(ctx context.Context, subnet netip.Prefix) error {
	c, err := l.kv()
	if err != nil {
		return err
	}
	key := l.opts.Prefix + "/subnets/" + SubnetKey(subnet)
	resp, err := c.Delete(ctx, key)
	if err != nil {
		return fmt.Errorf("lab: delete %s: %w", key, err)
	}
	if resp.Deleted == 0 {
		return fmt.Errorf("lab: delete %s: no such key", key)
	}
	return nil
}

// SubnetKey is flannel's key name for an IPv4 subnet: "198.19.7.0-24".
func SubnetKey(p netip.Prefix) string {
	return p.Masked().Addr().String() + "-" + strconv.Itoa(p.Bits())
}

// ParseSubnetKey parses an IPv4 key name such as "198.19.7.0-24".
func ParseSubnetKey(s string) (netip.Prefix, error) {
	addr, bits, ok := strings.Cut(s, "-")
	if !ok {
		return netip.Prefix{}, fmt.Errorf("subnet key %q: no '-'", s)
	}
	a, err := netip.ParseAddr(addr)
	if err != nil || !a.Is4() {
		return netip.Prefix{}, fmt.Errorf("subnet key %q: not an IPv4 address", s)
	}
	n, err := strconv.Atoi(bits)
	if err != nil || n < 0 || n > 32 {
		return netip.Prefix{}, fmt.Errorf("subnet key %q: bad length", s)
	}
	p := netip.PrefixFrom(a, n)
	if p.Masked() != p {
		return netip.Prefix{}, fmt.Errorf("subnet key %q: host bits set", s)
	}
	return p, nil
}
