package kube

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/weft-net/weft/subnet"
)

// patchTimeout bounds one write to the API server.
const patchTimeout = 10 * time.Second

// Acquire returns this node's lease: it waits (one log line, no polling)
// until the Node exists and has a podCIDR, checks that the podCIDR lies
// inside network, publishes attrs in flannel's annotations where they
// differ and returns the lease. The public IP is the Node's node-public-ip
// annotation where an operator set one (flanneld's rule), else attrs'.
func (s *Store) Acquire(ctx context.Context, attrs subnet.Attrs) (subnet.Lease, error) {
	if err := s.WaitSynced(ctx); err != nil {
		return subnet.Lease{}, err
	}
	var waiting string
	for {
		s.mu.Lock()
		own, network, ch := s.own, s.network, s.changed
		s.mu.Unlock()
		why := ""
		switch p, skip := podCIDR(own); {
		case own == nil:
			why = "waiting for this node's Node to be registered"
		case skip == SkipNoPodCIDR:
			why = "waiting for the Node's spec.podCIDR (kube-controller-manager --allocate-node-cidrs assigns it)"
		case skip == SkipBadPodCIDR:
			return subnet.Lease{}, fmt.Errorf("node %s: spec.podCIDR %q podCIDRs %q: not an IPv4 CIDR", s.node, own.Spec.PodCIDR, own.Spec.PodCIDRs)
		case p.Bits() < network.Bits() || !network.Contains(p.Addr()):
			return subnet.Lease{}, fmt.Errorf("node %s: podCIDR %s is outside the network config's Network %s: "+
				"make net-conf.json's Network contain kube-controller-manager's --cluster-cidr", s.node, p, network)
		default:
			return s.claim(ctx, own, p, attrs)
		}
		if why != waiting {
			waiting = why
			s.log.Warn(why, "node", s.node)
		}
		select {
		case <-ctx.Done():
			return subnet.Lease{}, ctx.Err()
		case <-ch:
		}
	}
}

// claim publishes attrs on own, whose subnet is p, and re-checks the
// other Nodes against the public IP it publishes.
func (s *Store) claim(ctx context.Context, own *corev1.Node, p netip.Prefix, attrs subnet.Attrs) (subnet.Lease, error) {
	if v, ok := own.Annotations[s.ann.nodePublicIP]; ok {
		ip, err := netip.ParseAddr(v)
		if err != nil || !ip.Is4() {
			return subnet.Lease{}, fmt.Errorf("node %s: annotation %s=%q: not an IPv4 address (remove it or set this node's address)", s.node, s.ann.nodePublicIP, v)
		}
		if ip != attrs.PublicIP {
			s.log.Info("public IP from the Node's annotation", "annotation", s.ann.nodePublicIP, "public-ip", ip)
		}
		attrs.PublicIP = ip
	}
	if v := own.Annotations[s.ann.publicIPOverwrite]; v != "" {
		ip, err := netip.ParseAddr(v)
		if err != nil || !ip.Is4() {
			return subnet.Lease{}, fmt.Errorf("node %s: annotation %s=%q: not an IPv4 address (remove it or give the address peers reach this node at)",
				s.node, s.ann.publicIPOverwrite, v)
		}
		s.log.Info("publishing the operator's public IP", "annotation", s.ann.publicIPOverwrite, "public-ip", ip)
		attrs.PublicIP = ip
	}
	l := subnet.Lease{Subnet: p, Attrs: attrs}
	if err := s.PutLeaseAttrs(ctx, l); err != nil {
		return subnet.Lease{}, err
	}
	s.setOwnIP(attrs.PublicIP)
	return l, nil
}

// setOwnIP records the public IP this node publishes and takes out of the
// table every other Node that publishes it too.
func (s *Store) setOwnIP(ip netip.Addr) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ownIP = ip
	for _, name := range slices.Sorted(maps.Keys(s.nodes)) {
		st := s.nodes[name]
		if name != s.node && st.ok && st.lease.Attrs.PublicIP == ip {
			st.ok, st.skip = false, SkipOwnPublicIP
			s.update(name, st, true)
		}
	}
}

// PutLeaseAttrs publishes l's attrs on this node's Node (as flanneld's udp
// backend writes them, with the type named), patching through nodes/status
// only the annotations that differ. It retries while the API server does
// not answer; RBAC's refusal is returned at once.
func (s *Store) PutLeaseAttrs(ctx context.Context, l subnet.Lease) error {
	return s.retry(ctx, "publish the lease on the Node", func() error {
		s.mu.Lock()
		own := s.own
		s.mu.Unlock()
		if own == nil {
			return fmt.Errorf("node %s: %w (the Node was deleted)", s.node, subnet.ErrLeaseNotFound)
		}
		diff := map[string]string{}
		for k, v := range s.ann.publish(own, l.Attrs) {
			if own.Annotations[k] != v {
				diff[k] = v
			}
		}
		if len(diff) == 0 {
			return nil
		}
		err := s.patchStatus(ctx, map[string]any{"metadata": map[string]any{"annotations": diff}})
		if err == nil {
			s.log.Info("published the lease on the Node", "node", s.node, "subnet", l.Subnet, "annotations", diff)
		}
		return err
	})
}

// retry runs write until it succeeds, RBAC refuses it, the Node is gone
// or ctx ends, backing off and logging once per change of error.
func (s *Store) retry(ctx context.Context, what string, write func() error) error {
	delay := time.Duration(0)
	var last string
	for {
		err := write()
		switch {
		case err == nil:
			return nil
		case errors.Is(err, ErrForbidden) || errors.Is(err, subnet.ErrLeaseNotFound) || ctx.Err() != nil:
			return err
		case apierrors.IsNotFound(err):
			return fmt.Errorf("%w: %w", err, subnet.ErrLeaseNotFound)
		}
		if msg := err.Error(); msg != last {
			last = msg
			s.log.Warn(what+" failed; retrying", "node", s.node, "err", err)
		}
		delay = retryDelay(delay)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(delay):
		}
	}
}

// patchStatus applies a strategic merge patch to this node's Node through
// its status subresource (flannel's RBAC grants nothing else), and records
// the Node as the API server returned it, so the next diff is against it.
func (s *Store) patchStatus(ctx context.Context, patch map[string]any) error {
	data, err := json.Marshal(patch)
	if err != nil {
		return fmt.Errorf("node %s: encode patch: %w", s.node, err)
	}
	pctx, cancel := context.WithTimeout(ctx, patchTimeout)
	defer cancel()
	n, err := s.client.Nodes().Patch(pctx, s.node, types.StrategicMergePatchType, data, metav1.PatchOptions{}, "status")
	if err != nil {
		return apiError(err, "patch nodes/status", s.node)
	}
	if slim, _ := s.slim(n); slim != nil {
		s.set(slim)
	}
	return nil
}

// SetNetworkAvailable sets the Node's NetworkUnavailable condition to
// False (reason FlannelIsUp), as flanneld does once its path is up, so the
// scheduler places pods here. It retries until it is written or ctx ends;
// without -set-node-network-unavailable it does nothing.
func (s *Store) SetNetworkAvailable(ctx context.Context) error {
	if !s.cfg.SetNodeNetworkUnavailable {
		return nil
	}
	now := metav1.Now()
	cond := corev1.NodeCondition{
		Type: corev1.NodeNetworkUnavailable, Status: corev1.ConditionFalse, Reason: "FlannelIsUp",
		Message: "Flannel is running on this node", LastTransitionTime: now, LastHeartbeatTime: now,
	}
	patch := map[string]any{"status": map[string]any{"conditions": []corev1.NodeCondition{cond}}}
	err := s.retry(ctx, "set the Node's NetworkUnavailable condition", func() error { return s.patchStatus(ctx, patch) })
	if err == nil {
		s.log.Info("node condition NetworkUnavailable=False (FlannelIsUp)", "node", s.node)
	}
	return err
}
