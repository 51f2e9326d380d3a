package node

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/weft-net/weft/etcd"
	"github.com/weft-net/weft/kube"
	"github.com/weft-net/weft/status"
	"github.com/weft-net/weft/subnet"
)

// leaseStore is where this node's lease and its peers' live: etcd
// (flanneld's default) or the Kubernetes API (-kube-subnet-mgr). Both give
// the node one lease type, subnet.Lease, and the same list and watch, so
// the peer table, the data planes, the fast path's advertisement, the
// firewall and subnet.env never learn which store filled the table. The
// steps that differ (where the network config comes from, how a subnet is
// had, what keeps it) are the store's own.
type leaseStore interface {
	subnet.LeaseWatcher
	// PutLeaseAttrs rewrites this node's lease with new attrs (the fast
	// path's advertisement).
	PutLeaseAttrs(ctx context.Context, l subnet.Lease) error
	// Connected and WaitConnChange follow the store's connection.
	Connected() bool
	WaitConnChange(ctx context.Context, was bool) bool
	Close() error

	// kind is what logs and status call the store: status.StoreEtcd or
	// status.StoreKubernetes.
	kind() string
	// where names the store for logs: endpoints, or the API server and Node.
	where() string
	// networkConfig reads the network config, waiting while the store says
	// it is not there yet; an invalid one is fatal.
	networkConfig(ctx context.Context) (*subnet.Config, error)
	// acquire has this node's lease, with attrs published.
	acquire(ctx context.Context, attrs subnet.Attrs) (subnet.Lease, error)
	// keep runs until ctx ends, keeping the lease (etcd renews it) and
	// telling the store the node is up once up is closed (Kubernetes:
	// the Node's NetworkUnavailable condition).
	keep(ctx context.Context, l subnet.Lease, up <-chan struct{}) error
}

// connectStore opens the store the config names.
func connectStore(ctx context.Context, n *node) (leaseStore, error) {
	if n.cfg.Kube != nil {
		c := *n.cfg.Kube
		c.Logger = n.log
		s, err := kube.New(ctx, c)
		if err != nil {
			return nil, err
		}
		return &kubeStore{Store: s, n: n}, nil
	}
	s, err := connectEtcd(ctx, n.cfg.Etcd, n.log)
	if err != nil {
		return nil, err
	}
	return &etcdStore{Store: s, n: n}, nil
}

// kubeStore is the Kubernetes API as the node's store.
type kubeStore struct {
	*kube.Store
	n *node
}

func (s *kubeStore) kind() string  { return status.StoreKubernetes }
func (s *kubeStore) where() string { return s.Host() + " node " + s.NodeName() }

// networkConfig reads -net-config-path (kube-flannel.yml's ConfigMap) and
// starts following the Nodes in its Network. A missing or invalid file is
// fatal, naming it: flanneld's config is not read from etcd in this mode.
func (s *kubeStore) networkConfig(ctx context.Context) (*subnet.Config, error) {
	path := s.n.cfg.NetConfPath
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("-net-config-path: %w (kube-flannel.yml mounts the ConfigMap kube-flannel-cfg's net-conf.json there)", err)
	}
	cfg, err := subnet.ParseConfig(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w (fix net-conf.json in the ConfigMap kube-flannel-cfg)", path, err)
	}
	s.Start(ctx, cfg.Network)
	return cfg, nil
}

func (s *kubeStore) acquire(ctx context.Context, attrs subnet.Attrs) (subnet.Lease, error) {
	notify(s.n.log, "STATUS=waiting for the Node "+s.NodeName()+" and its podCIDR")
	return s.Acquire(ctx, attrs)
}

// keep sets the Node's NetworkUnavailable condition once the node is up;
// a Node's lease needs no renewal.
func (s *kubeStore) keep(ctx context.Context, _ subnet.Lease, up <-chan struct{}) error {
	select {
	case <-ctx.Done():
		return nil
	case <-up:
	}
	if err := s.SetNetworkAvailable(ctx); err != nil && ctx.Err() == nil {
		return err
	}
	return nil
}

// etcdStore is etcd as the node's store.
type etcdStore struct {
	*etcd.Store
	n *node
}

func (s *etcdStore) kind() string  { return status.StoreEtcd }
func (s *etcdStore) where() string { return endpoints(s.n.cfg.Etcd) }

func (s *etcdStore) networkConfig(ctx context.Context) (*subnet.Config, error) {
	notify(s.n.log, "STATUS=reading the network config from "+s.n.cfg.Etcd.Prefix+"/config")
	return s.n.waitConfig(ctx, s.Store)
}

func (s *etcdStore) acquire(ctx context.Context, attrs subnet.Attrs) (subnet.Lease, error) {
	return s.n.acquire(ctx, s.Store, attrs)
}

// keep renews the lease in etcd before it expires.
func (s *etcdStore) keep(ctx context.Context, l subnet.Lease, _ <-chan struct{}) error {
	n := s.n
	return subnet.KeepAlive(ctx, s.Store, subnet.RealClock{}, n.log, l, n.cfg.RenewMargin,
		func(l subnet.Lease) { n.health.Renewed(statusLease(l)); n.etcdWorked() },
		func(err error) { n.health.RenewFailed(err, time.Now()) })
}

// reportStore points status at the store: etcd's request counts, or the
// Kubernetes store's state.
func (n *node) reportStore() {
	switch s := n.store.(type) {
	case *etcdStore:
		n.health.SetStore(status.StoreEtcd, nil)
		n.health.SetEtcdRequests(s.Requests)
	case *kubeStore:
		n.health.SetStore(status.StoreKubernetes, func() status.Kubernetes {
			st := s.State()
			k := status.Kubernetes{Server: st.Host, Node: st.Node, Synced: st.Synced, LastError: st.LastErr,
				Nodes: st.Nodes, Leases: st.Leases, Skipped: map[string]int{}}
			for _, r := range kube.Skips {
				k.Skipped[string(r)] = st.Skipped[r]
			}
			return k
		})
	}
}
