package kube

import (
	"bytes"
	"encoding/json"
	"net/netip"

	corev1 "k8s.io/api/core/v1"

	"github.com/weft-net/weft/subnet"
)

// Skip says why a Node that leases through the API (kube-subnet-manager
// "true") is not in the peer table. Such a Node is never routed to and
// never fatal; it is counted by reason in status and metrics.
type Skip string

const (
	// SkipNoPodCIDR: spec.podCIDR(s) empty or without an IPv4 entry.
	SkipNoPodCIDR Skip = "no_pod_cidr"
	// SkipBadPodCIDR: spec.podCIDR(s) does not parse, or has more than two entries.
	SkipBadPodCIDR Skip = "bad_pod_cidr"
	// SkipOutsideNetwork: the podCIDR is not inside the network config's Network.
	SkipOutsideNetwork Skip = "outside_network"
	// SkipBadPublicIP: public-ip missing or not an IPv4 address.
	SkipBadPublicIP Skip = "bad_public_ip"
	// SkipBackendType: another backend (vxlan, host-gw, ...): not reachable over udp.
	SkipBackendType Skip = "backend_type"
	// SkipBadBackendData: backend-data is not JSON.
	SkipBadBackendData Skip = "bad_backend_data"
	// SkipOwnPublicIP: another Node's public-ip is this node's own: routing
	// to it would loop.
	SkipOwnPublicIP Skip = "own_public_ip"
	// SkipDuplicateSubnet: another Node holds the same podCIDR (the one
	// whose name sorts first keeps it, on every node alike).
	SkipDuplicateSubnet Skip = "duplicate_subnet"
)

// Skips lists every reason, for metrics that show zeros too.
var Skips = []Skip{SkipNoPodCIDR, SkipBadPodCIDR, SkipOutsideNetwork, SkipBadPublicIP, SkipBackendType,
	SkipBadBackendData, SkipOwnPublicIP, SkipDuplicateSubnet}

// backendUDP is what weft writes as backend-type. Stock flanneld's udp
// backend writes "" (it sets no type); both mean udp.
const backendUDP = "udp"

// managed reports whether n leases through the API: flanneld (and weft)
// with -kube-subnet-mgr set kube-subnet-manager to "true".
func (a annotations) isManaged(n *corev1.Node) bool { return n.Annotations[a.managed] == "true" }

// podCIDR is the Node's IPv4 pod subnet, as flanneld reads it: spec.podCIDR
// when spec.podCIDRs is empty, else the IPv4 entry of at most two.
func podCIDR(n *corev1.Node) (netip.Prefix, Skip) {
	cidrs := n.Spec.PodCIDRs
	if len(cidrs) == 0 && n.Spec.PodCIDR != "" {
		cidrs = []string{n.Spec.PodCIDR}
	}
	if len(cidrs) > 2 {
		return netip.Prefix{}, SkipBadPodCIDR
	}
	for _, c := range cidrs {
		p, err := netip.ParsePrefix(c)
		if err != nil {
			return netip.Prefix{}, SkipBadPodCIDR
		}
		if p.Addr().Is4() {
			return p.Masked(), ""
		}
	}
	return netip.Prefix{}, SkipNoPodCIDR
}

// nodeLease turns a Node's podCIDR and flannel annotations into a lease
// in network, or says why it is none. Nodes of other backends are skipped:
// a udp node cannot reach them.
func (a annotations) nodeLease(n *corev1.Node, network netip.Prefix) (subnet.Lease, Skip) {
	p, skip := podCIDR(n)
	if skip != "" {
		return subnet.Lease{}, skip
	}
	if p.Bits() < network.Bits() || !network.Contains(p.Addr()) {
		return subnet.Lease{}, SkipOutsideNetwork
	}
	if t := n.Annotations[a.backendType]; t != "" && t != backendUDP {
		return subnet.Lease{}, SkipBackendType
	}
	ip, err := netip.ParseAddr(n.Annotations[a.publicIP])
	if err != nil || !ip.Is4() {
		return subnet.Lease{}, SkipBadPublicIP
	}
	attrs := subnet.Attrs{PublicIP: ip, BackendType: n.Annotations[a.backendType]}
	if data := n.Annotations[a.backendData]; data != "" && data != "null" {
		var b bytes.Buffer
		if err := json.Compact(&b, []byte(data)); err != nil {
			return subnet.Lease{}, SkipBadBackendData
		}
		attrs.BackendData = b.Bytes()
	}
	return subnet.Lease{Subnet: p, Attrs: attrs}, ""
}

// publish is the annotations that say attrs, as flanneld's udp backend
// writes them (backend-data "null" when there is none), with the type
// named; the public IP is the operator's public-ip-overwrite where set.
func (a annotations) publish(n *corev1.Node, attrs subnet.Attrs) map[string]string {
	data := "null"
	if len(attrs.BackendData) > 0 {
		data = string(attrs.BackendData)
	}
	ip := attrs.PublicIP.String()
	if o := n.Annotations[a.publicIPOverwrite]; o != "" {
		ip = o
	}
	return map[string]string{
		a.backendType: backendUDP,
		a.backendData: data,
		a.publicIP:    ip,
		a.managed:     "true",
	}
}
