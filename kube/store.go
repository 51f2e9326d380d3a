package kube

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"runtime/debug"
	"slices"
	"sort"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"

	"github.com/weft-net/weft/subnet"
)

// Store is the Kubernetes API as weft's lease store. The informer's
// handlers only update a table under a lock and wake the watchers: there
// is no event queue to fill or block, and a burst of changes to one Node
// is read as its last state.
type Store struct {
	cfg    Config
	log    *slog.Logger
	client *coreClient
	host   string
	node   string // this node's Node name
	ann    annotations

	mu      sync.Mutex
	network netip.Prefix
	ownIP   netip.Addr
	nodes   map[string]nodeState      // every Node seen, by name
	claims  map[netip.Prefix][]string // subnet → the valid Nodes claiming it, sorted
	table   map[netip.Prefix]entry    // what watchers were shown, with removals kept as tombstones
	rev     int64                     // bumped by each change of table
	changed chan struct{}             // closed and replaced at each change of table or of own
	own     *corev1.Node              // this node's Node as last seen (slimmed); nil until seen
	synced  bool
	up      bool          // the last list or watch request worked
	lastErr error         // of the last failed list or watch request
	fatal   error         // a refusal that needs an operator (RBAC)
	upCh    chan struct{} // closed and replaced when up changes

	stop    context.CancelFunc // ends the informer (Close)
	stopped sync.WaitGroup
}

// nodeState is one Node as last seen.
type nodeState struct {
	lease subnet.Lease
	skip  Skip // why it is not a lease; "" for a lease, or a Node that does not lease through the API
	ok    bool // a valid lease
}

// entry is one subnet in the table.
type entry struct {
	lease   subnet.Lease
	rev     int64
	removed bool
}

// New builds the API client and finds this node's Node (asking the API
// server for the pod's node when NODE_NAME is not set). It does not list
// Nodes yet: Start does.
func New(ctx context.Context, c Config) (*Store, error) {
	log := c.Logger
	if log == nil {
		log = slog.Default()
	}
	if c.AnnotationPrefix == "" {
		c.AnnotationPrefix = DefaultAnnotationPrefix
	}
	ann, err := newAnnotations(c.AnnotationPrefix)
	if err != nil {
		return nil, err
	}
	rc, err := c.restConfig()
	if err != nil {
		return nil, err
	}
	client, err := newCoreClient(rc)
	if err != nil {
		return nil, err
	}
	quietKlog(log)
	s := &Store{cfg: c, log: log, client: client, host: rc.Host, ann: ann,
		nodes: map[string]nodeState{}, claims: map[netip.Prefix][]string{}, table: map[netip.Prefix]entry{},
		changed: make(chan struct{}), upCh: make(chan struct{})}
	if s.node, err = resolveNode(ctx, client, c, log); err != nil {
		return nil, err
	}
	return s, nil
}

// Host is the API server's URL; NodeName this node's Node.
func (s *Store) Host() string     { return s.host }
func (s *Store) NodeName() string { return s.node }

// Start runs the informer on every Node until ctx ends: leases are the
// Nodes' podCIDRs inside network.
func (s *Store) Start(ctx context.Context, network netip.Prefix) {
	ctx, cancel := context.WithCancel(ctx)
	s.mu.Lock()
	s.network, s.stop = network, cancel
	s.mu.Unlock()
	nodes := s.client.Nodes()
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, opts metav1.ListOptions) (runtime.Object, error) {
			l, err := nodes.List(ctx, opts)
			s.observe(err, "list nodes")
			return l, err
		},
		WatchFuncWithContext: func(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
			w, err := nodes.Watch(ctx, opts)
			s.observe(err, "watch nodes")
			return w, err
		},
	}
	_, ctrl := cache.NewInformerWithOptions(cache.InformerOptions{
		ListerWatcher: lw,
		ObjectType:    &corev1.Node{},
		Transform:     s.slim,
		Handler: cache.ResourceEventHandlerFuncs{
			AddFunc:    func(obj any) { s.set(obj) },
			UpdateFunc: func(_, obj any) { s.set(obj) },
			DeleteFunc: s.deleted,
		},
	})
	s.stopped.Add(2)
	go func() {
		defer s.stopped.Done()
		ctrl.RunWithContext(ctx)
	}()
	go func() {
		defer s.stopped.Done()
		if cache.WaitForCacheSync(ctx.Done(), ctrl.HasSynced) {
			s.mu.Lock()
			s.synced = true
			s.wake()
			s.mu.Unlock()
			// The first list decodes every whole Node before the
			// transform slims it: tens of MiB at 5,000 Nodes, garbage at
			// once but held by the runtime for minutes. Give it back now
			// (measured at 5,000 Nodes, with client-go's clientset then: RSS
			// 74.1 MiB without this, 69.9 with).
			debug.FreeOSMemory()
		}
	}()
}

// Close stops the informer and waits for it.
func (s *Store) Close() error {
	s.mu.Lock()
	stop := s.stop
	s.mu.Unlock()
	if stop != nil {
		stop()
	}
	s.stopped.Wait()
	return nil
}

// slim keeps of a Node only what weft reads (name, podCIDRs, flannel's
// annotations): the informer's cache then costs a few hundred bytes a
// Node instead of kubelet's several KiB of images, conditions and
// managedFields.
func (s *Store) slim(obj any) (any, error) {
	n, ok := obj.(*corev1.Node)
	if !ok {
		return obj, nil
	}
	out := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: n.Name, UID: n.UID, ResourceVersion: n.ResourceVersion},
		Spec:       corev1.NodeSpec{PodCIDR: n.Spec.PodCIDR, PodCIDRs: n.Spec.PodCIDRs},
	}
	for k, v := range n.Annotations {
		if s.ann.ours(k) {
			if out.Annotations == nil {
				out.Annotations = map[string]string{}
			}
			out.Annotations[k] = v
		}
	}
	return out, nil
}

// observe records whether a list or watch request worked: the API
// server's state, as status and the node's monitor show it.
func (s *Store) observe(err error, request string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		if errors.Is(err, context.Canceled) {
			return
		}
		s.lastErr = apiError(err, request, "")
		// RBAC's refusal at start needs an operator; once running it may
		// be a restarted API server whose RBAC cache is not filled yet, so
		// it is only shown and retried.
		if errors.Is(s.lastErr, ErrForbidden) && s.fatal == nil && !s.synced {
			s.fatal = s.lastErr
			s.wake()
		}
	}
	if up := err == nil; up != s.up {
		s.up = up
		close(s.upCh)
		s.upCh = make(chan struct{})
	}
}

// Connected reports whether the last request to the API server worked.
func (s *Store) Connected() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.up
}

// WaitConnChange blocks until Connected differs from was or ctx ends, and
// returns the new state.
func (s *Store) WaitConnChange(ctx context.Context, was bool) bool {
	for {
		s.mu.Lock()
		up, ch := s.up, s.upCh
		s.mu.Unlock()
		if up != was {
			return up
		}
		select {
		case <-ctx.Done():
			return was
		case <-ch:
		}
	}
}

// wake tells the watchers the table or this node's Node changed; s.mu is
// held.
func (s *Store) wake() {
	close(s.changed)
	s.changed = make(chan struct{})
}

func (s *Store) set(obj any) {
	n, ok := obj.(*corev1.Node)
	if !ok {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if n.Name == s.node {
		s.own = n
		s.wake()
	}
	st := nodeState{}
	if s.ann.isManaged(n) {
		st.lease, st.skip = s.ann.nodeLease(n, s.network)
		if st.skip == "" && n.Name != s.node && st.lease.Attrs.PublicIP == s.ownIP {
			st.skip = SkipOwnPublicIP
		}
		st.ok = st.skip == ""
	}
	s.update(n.Name, st, true)
}

func (s *Store) deleted(obj any) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	n, ok := obj.(*corev1.Node)
	if !ok {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if n.Name == s.node {
		s.own = nil
		s.wake()
	}
	s.update(n.Name, nodeState{}, false)
}

// update records Node name's new state (present false: deleted) and
// recomputes the subnets it held and holds; s.mu is held.
func (s *Store) update(name string, st nodeState, present bool) {
	old, had := s.nodes[name]
	if had && old.ok == st.ok && old.skip == st.skip && old.lease.Subnet == st.lease.Subnet &&
		old.lease.Attrs.Equal(st.lease.Attrs) {
		return
	}
	if present {
		s.nodes[name] = st
	} else {
		delete(s.nodes, name)
	}
	if st.skip != old.skip && st.skip != "" {
		s.log.Warn("skipping a Node that leases through the API: it is not routed to", "node", name,
			"reason", string(st.skip), "hint", skipHint(st.skip))
	}
	if had && old.ok {
		s.unclaim(old.lease.Subnet, name)
	}
	if st.ok {
		c := s.claims[st.lease.Subnet]
		i, _ := slices.BinarySearch(c, name)
		s.claims[st.lease.Subnet] = slices.Insert(c, i, name)
		if len(c) > 0 && !(had && old.ok && old.lease.Subnet == st.lease.Subnet) {
			s.log.Warn("two Nodes claim one podCIDR: the one whose name sorts first keeps it, the other is not routed to",
				"subnet", st.lease.Subnet, "nodes", s.claims[st.lease.Subnet])
		}
	}
	for _, p := range []netip.Prefix{old.lease.Subnet, st.lease.Subnet} {
		if p.IsValid() {
			s.refresh(p)
		}
	}
}

func (s *Store) unclaim(p netip.Prefix, name string) {
	c := s.claims[p]
	if i, found := slices.BinarySearch(c, name); found {
		c = slices.Delete(c, i, i+1)
	}
	if len(c) == 0 {
		delete(s.claims, p)
	} else {
		s.claims[p] = c
	}
}

// refresh puts subnet p's holder (the claimant whose name sorts first)
// into the table, or a tombstone when none is left; s.mu is held.
func (s *Store) refresh(p netip.Prefix) {
	cur, had := s.table[p]
	c := s.claims[p]
	if len(c) == 0 {
		if had && !cur.removed {
			s.rev++
			s.table[p] = entry{lease: subnet.Lease{Subnet: p}, rev: s.rev, removed: true}
			s.wake()
		}
		return
	}
	l := s.nodes[c[0]].lease
	if had && !cur.removed && cur.lease.Attrs.Equal(l.Attrs) {
		return
	}
	s.rev++
	s.table[p] = entry{lease: l, rev: s.rev}
	s.wake()
}

// skipHint says what to fix for a skipped Node.
func skipHint(s Skip) string {
	switch s {
	case SkipNoPodCIDR, SkipBadPodCIDR:
		return "the Node needs an IPv4 spec.podCIDR (kube-controller-manager --allocate-node-cidrs --cluster-cidr)"
	case SkipOutsideNetwork:
		return "its podCIDR must lie inside net-conf.json's Network, like kube-controller-manager's --cluster-cidr"
	case SkipBadPublicIP:
		return "its flanneld or weft writes public-ip; an operator's public-ip-overwrite must be an IPv4 address"
	case SkipBackendType:
		return "a udp node reaches only udp nodes: run the same backend on every node"
	case SkipBadBackendData:
		return "backend-data must be JSON"
	case SkipOwnPublicIP:
		return "two Nodes publish this node's public IP: check -public-ip, -iface and public-ip-overwrite"
	}
	return ""
}

// ListLeases returns the table's leases (every Node holding a subnet,
// this node's too) and the revision they are at. Before the informer's
// first list is in, it waits for it.
func (s *Store) ListLeases(ctx context.Context) ([]subnet.Lease, int64, error) {
	if err := s.WaitSynced(ctx); err != nil {
		return nil, 0, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	leases := make([]subnet.Lease, 0, len(s.table))
	for _, e := range s.table {
		if !e.removed {
			leases = append(leases, e.lease)
		}
	}
	sort.Slice(leases, func(i, j int) bool { return leases[i].Subnet.Addr().Less(leases[j].Subnet.Addr()) })
	return leases, s.rev, nil
}

// WaitSynced waits for the informer's first full list, or a refusal that
// needs an operator.
func (s *Store) WaitSynced(ctx context.Context) error {
	for {
		s.mu.Lock()
		synced, fatal, ch := s.synced, s.fatal, s.changed
		s.mu.Unlock()
		if fatal != nil {
			return fatal
		}
		if synced {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ch:
		}
	}
}

// WatchLeases hands handle every change of the table after revision
// fromRev, in batches, until ctx ends. A batch holds each subnet's latest
// state once: a Node that changed three times since is one event. It never
// breaks: while the API server is away the informer retries and the table
// stands; when it returns, the informer's relist brings what changed.
func (s *Store) WatchLeases(ctx context.Context, fromRev int64, handle func(events []subnet.Event, rev int64)) error {
	for {
		s.mu.Lock()
		var changed []entry
		for _, e := range s.table {
			if e.rev > fromRev {
				changed = append(changed, e)
			}
		}
		rev, ch := s.rev, s.changed
		s.mu.Unlock()
		if len(changed) > 0 {
			sort.Slice(changed, func(i, j int) bool { return changed[i].rev < changed[j].rev })
			events := make([]subnet.Event, len(changed))
			for i, e := range changed {
				events[i] = subnet.Event{Type: subnet.EventAdded, Lease: e.lease}
				if e.removed {
					events[i].Type = subnet.EventRemoved
				}
			}
			handle(events, rev)
			fromRev = rev
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ch:
		}
	}
}

// State is the store's state for status and metrics.
type State struct {
	Host    string
	Node    string
	Up      bool
	Synced  bool
	LastErr string
	Nodes   int          // Nodes seen
	Leases  int          // Nodes in the table (this node's included)
	Skipped map[Skip]int // Nodes that lease through the API but are not in the table, by reason
}

// State reports the store's state now.
func (s *Store) State() State {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := State{Host: s.host, Node: s.node, Up: s.up, Synced: s.synced, Nodes: len(s.nodes), Skipped: map[Skip]int{}}
	if s.lastErr != nil && !s.up {
		st.LastErr = s.lastErr.Error()
	}
	for _, e := range s.table {
		if !e.removed {
			st.Leases++
		}
	}
	for _, n := range s.nodes {
		if n.skip != "" {
			st.Skipped[n.skip]++
		}
	}
	for _, c := range s.claims {
		if len(c) > 1 {
			st.Skipped[SkipDuplicateSubnet] += len(c) - 1
		}
	}
	return st
}

// retryDelay is the backoff of the store's own writes.
func retryDelay(d time.Duration) time.Duration {
	if d == 0 {
		return 500 * time.Millisecond
	}
	return min(2*d, 5*time.Second)
}
