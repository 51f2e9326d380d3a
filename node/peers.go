package node

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/weft-net/weft/dataplane"
	"github.com/weft-net/weft/subnet"
)

// peerSet is the node's view of the other nodes' leases, and the data
// planes it hands every snapshot and change to. The watch and SIGHUP both
// publish; the lock keeps their sets whole.
type peerSet struct {
	mu     sync.Mutex
	own    netip.Prefix
	planes []dataplane.Plane
	rev    int64                       // etcd revision the set reflects
	addrs  map[netip.Prefix]netip.Addr // what the planes were handed: the removal log names the peer
}

func newPeerSet(own netip.Prefix, planes []dataplane.Plane) peerSet {
	return peerSet{own: own, planes: planes, addrs: map[netip.Prefix]netip.Addr{}}
}

// count is the number of peers in the planes' tables (those the planes
// admit: IPv4, not this node's subnet).
func (p *peerSet) count() int { return p.planes[0].Report(false).Peers }

// publishPeers hands every plane a full set of leases read at revision rev
// (at start and on SIGHUP). A list older than the set (the watch applied a
// newer change meanwhile) is not published, so a change is never undone;
// it reports whether it published.
func (n *node) publishPeers(leases []subnet.Lease, rev int64) bool {
	p := &n.peers
	p.mu.Lock()
	defer p.mu.Unlock()
	if rev < p.rev {
		return false
	}
	p.rev = rev
	start := time.Now()
	peers := make([]dataplane.Peer, 0, len(leases))
	clear(p.addrs)
	for _, l := range leases {
		if l.Subnet == p.own {
			continue
		}
		peers = append(peers, dataplane.Peer{Subnet: l.Subnet, Addr: l.Attrs.PublicIP, KernelDecap: l.Attrs.KernelDecap()})
		p.addrs[l.Subnet] = l.Attrs.PublicIP
	}
	for _, pl := range p.planes {
		pl.UpdatePeers(p.own, peers)
	}
	n.health.TableUpdated(p.count(), rev, time.Since(start))
	return true
}

// applyPeerEvents patches every plane's peers with a watch batch: the cost
// follows the change, not the cluster's size.
func (n *node) applyPeerEvents(events []subnet.Event, rev int64) {
	p := &n.peers
	p.mu.Lock()
	defer p.mu.Unlock()
	p.rev = max(p.rev, rev)
	start := time.Now()
	changes := make([]dataplane.PeerChange, 0, len(events))
	for _, ev := range events {
		if ev.Lease.Subnet == p.own {
			continue
		}
		c := dataplane.PeerChange{
			Peer: dataplane.Peer{Subnet: ev.Lease.Subnet, Addr: ev.Lease.Attrs.PublicIP,
				KernelDecap: ev.Lease.Attrs.KernelDecap()},
			Remove: ev.Type == subnet.EventRemoved,
		}
		if c.Remove {
			delete(p.addrs, c.Subnet)
		} else {
			p.addrs[c.Subnet] = c.Addr
		}
		changes = append(changes, c)
	}
	for _, pl := range p.planes {
		pl.ApplyPeers(p.own, changes)
	}
	n.health.TableUpdated(p.count(), rev, time.Since(start))
}

// peerAddr is the address the planes have for subnet, if any.
func (n *node) peerAddr(subnet netip.Prefix) netip.Addr {
	n.peers.mu.Lock()
	defer n.peers.mu.Unlock()
	return n.peers.addrs[subnet]
}

// reloadPeers re-reads every lease and republishes them (SIGHUP). A list
// that the watch overtook is read again: a few tries are plenty, as lists
// are made at etcd's newest revision.
func (n *node) reloadPeers(ctx context.Context) {
	for range 3 {
		lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		leases, rev, err := n.store.ListLeases(lctx)
		cancel()
		if err != nil {
			n.log.Warn("SIGHUP: list leases failed; keeping the current peer table", "err", err)
			return
		}
		if n.publishPeers(leases, rev) {
			n.log.Info("SIGHUP: reloaded", "leases", len(leases), "rev", rev)
			return
		}
	}
	n.log.Warn("SIGHUP: leases change faster than they can be listed; keeping the watched peer table")
}

// peerLogLimit: a batch with more peer changes than this is logged as one
// summary line, so a bulk load of thousands of leases does not flood the
// journal.
const peerLogLimit = 16

// watch follows the other nodes' leases from rev on and hands each batch
// to the planes. Our own lease deleted is fatal (fail): exit non-zero so
// systemd restarts us and we lease afresh (flanneld exits 0, which
// Restart=on-failure ignores).
func (n *node) watch(ctx context.Context, own netip.Prefix, initial []subnet.Lease, rev int64, fail context.CancelCauseFunc) error {
	return subnet.Watch(ctx, subnet.WatchOptions{
		Store:     n.store,
		Clock:     subnet.RealClock{},
		Logger:    n.log,
		Initial:   initial,
		Rev:       rev,
		OnRestart: n.health.WatchRestarted,
		Retry:     n.etcdBack,
		OnChange: func(events []subnet.Event, rev int64) {
			n.etcdWorked()
			for _, ev := range events {
				if ev.Lease.Subnet == own && ev.Type == subnet.EventRemoved {
					fail(fmt.Errorf("our lease %s was removed from %s (%s): %w", own, n.store.kind(), n.store.where(), subnet.ErrLeaseNotFound))
					return
				}
			}
			n.logPeerEvents(own, events)
			n.applyPeerEvents(events, rev)
			if len(events) > peerLogLimit {
				var removed int
				for _, ev := range events {
					if ev.Type == subnet.EventRemoved {
						removed++
					}
				}
				n.log.Info("peers changed", "added_or_changed", len(events)-removed, "removed", removed,
					"peers", n.peers.count(), "rev", rev)
			}
		},
	})
}

// logPeerEvents logs a small batch a line per peer, before it is applied:
// a removal names only its subnet, so say who it was.
func (n *node) logPeerEvents(own netip.Prefix, events []subnet.Event) {
	if len(events) > peerLogLimit {
		return
	}
	for _, ev := range events {
		if ev.Lease.Subnet == own {
			continue
		}
		ip := ev.Lease.Attrs.PublicIP
		if ev.Type == subnet.EventRemoved {
			ip = n.peerAddr(ev.Lease.Subnet)
		}
		n.log.Info("peer "+ev.Type.String(), "subnet", ev.Lease.Subnet, "public-ip", ip)
	}
}
