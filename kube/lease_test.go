package kube

import (
	"encoding/json"
	"log/slog"
	"net/netip"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/weft-net/weft/subnet"
)

func TestAnnotationPrefix(t *testing.T) {
	for _, tc := range []struct{ in, prefix string }{
		{"flannel.alpha.coreos.com", "flannel.alpha.coreos.com/"},
		{"flannel.alpha.coreos.com/", "flannel.alpha.coreos.com/"},
		{"example.com/weft", "example.com/weft-"},
		{"example.com/weft-", "example.com/weft-"},
		{"a/b/c", ""},
		{"Example.com", ""},
		{"localhost", ""},
		{"", ""},
	} {
		a, err := newAnnotations(tc.in)
		if tc.prefix == "" {
			if err == nil {
				t.Errorf("prefix %q: accepted as %q", tc.in, a.prefix)
			}
			continue
		}
		if err != nil || a.prefix != tc.prefix || a.publicIP != tc.prefix+"public-ip" || a.managed != tc.prefix+"kube-subnet-manager" {
			t.Errorf("prefix %q: %+v, %v", tc.in, a, err)
		}
	}
}

func testNode(name, cidr string, ann map[string]string) *corev1.Node {
	return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: ann}, Spec: corev1.NodeSpec{PodCIDR: cidr}}
}

// flanneld's udp annotations (empty type, null data) and weft's (udp, the
// kernel decap advertisement) are leases; everything a peer can get wrong
// is a reason, never a panic.
func TestNodeLease(t *testing.T) {
	a, _ := newAnnotations(DefaultAnnotationPrefix)
	p := a.prefix
	network := netip.MustParsePrefix("198.19.0.0/16")
	flanneld := map[string]string{p + "backend-type": "", p + "backend-data": "null", p + "public-ip": "198.18.0.11", p + "kube-subnet-manager": "true"}
	with := func(k, v string) map[string]string {
		m := map[string]string{}
		for kk, vv := range flanneld {
			m[kk] = vv
		}
		if v == "<delete>" {
			delete(m, p+k)
		} else {
			m[p+k] = v
		}
		return m
	}
	for _, tc := range []struct {
		name string
		n    *corev1.Node
		skip Skip
		want subnet.Lease
	}{
		{"flanneld", testNode("a", "198.19.3.0/24", flanneld), "", subnet.Lease{Subnet: netip.MustParsePrefix("198.19.3.0/24"),
			Attrs: subnet.Attrs{PublicIP: netip.MustParseAddr("198.18.0.11")}}},
		{"weft", testNode("a", "198.19.3.0/24", with("backend-data", `{"WeftDecap": "kernel"}`)), "", subnet.Lease{Subnet: netip.MustParsePrefix("198.19.3.0/24"),
			Attrs: subnet.Attrs{PublicIP: netip.MustParseAddr("198.18.0.11"), BackendData: json.RawMessage(`{"WeftDecap":"kernel"}`)}}},
		{"podCIDRs dual stack", &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "a", Annotations: flanneld},
			Spec: corev1.NodeSpec{PodCIDR: "2001:db8::/64", PodCIDRs: []string{"2001:db8::/64", "198.19.4.0/24"}}}, "",
			subnet.Lease{Subnet: netip.MustParsePrefix("198.19.4.0/24"), Attrs: subnet.Attrs{PublicIP: netip.MustParseAddr("198.18.0.11")}}},
		{"no podCIDR", testNode("a", "", flanneld), SkipNoPodCIDR, subnet.Lease{}},
		{"IPv6 only", testNode("a", "2001:db8::/64", flanneld), SkipNoPodCIDR, subnet.Lease{}},
		{"bad podCIDR", testNode("a", "198.19.3.0/33", flanneld), SkipBadPodCIDR, subnet.Lease{}},
		{"outside", testNode("a", "198.18.3.0/24", flanneld), SkipOutsideNetwork, subnet.Lease{}},
		{"wider than network", testNode("a", "198.0.0.0/8", flanneld), SkipOutsideNetwork, subnet.Lease{}},
		{"vxlan", testNode("a", "198.19.3.0/24", with("backend-type", "vxlan")), SkipBackendType, subnet.Lease{}},
		{"no public-ip", testNode("a", "198.19.3.0/24", with("public-ip", "<delete>")), SkipBadPublicIP, subnet.Lease{}},
		{"IPv6 public-ip", testNode("a", "198.19.3.0/24", with("public-ip", "2001:db8::1")), SkipBadPublicIP, subnet.Lease{}},
		{"bad backend-data", testNode("a", "198.19.3.0/24", with("backend-data", "{")), SkipBadBackendData, subnet.Lease{}},
	} {
		l, skip := a.nodeLease(tc.n, network)
		if skip != tc.skip || l.Subnet != tc.want.Subnet || !l.Attrs.Equal(tc.want.Attrs) {
			t.Errorf("%s: %+v %q, want %+v %q", tc.name, l, skip, tc.want, tc.skip)
		}
	}
	if a.isManaged(testNode("bare", "198.19.3.0/24", nil)) {
		t.Error("a Node without annotations leases through the API")
	}
}

// FuzzNodeLease: whatever a peer's Node says, a lease that comes out is an
// IPv4 subnet inside the network with an IPv4 public IP and JSON backend
// data, and what weft publishes for it reads back as the same lease.
func FuzzNodeLease(f *testing.F) {
	f.Add("198.19.3.0/24", "", "null", "198.18.0.11", "")
	f.Add("198.19.3.7/24", "udp", `{"WeftDecap":"kernel"}`, "198.18.0.11", "")
	f.Add("2001:db8::/64", "vxlan", `{"VNI":1}`, "::1", "198.18.0.12")
	f.Add("198.19.0.0/16", "", "", "198.18.0.11", "198.18.0.99")
	a, _ := newAnnotations(DefaultAnnotationPrefix)
	network := netip.MustParsePrefix("198.19.0.0/16")
	f.Fuzz(func(t *testing.T, cidr, typ, data, ip, overwrite string) {
		n := testNode("peer", cidr, map[string]string{a.managed: "true", a.backendType: typ, a.backendData: data, a.publicIP: ip})
		l, skip := a.nodeLease(n, network)
		if skip != "" {
			return
		}
		if !l.Subnet.Addr().Is4() || l.Subnet != l.Subnet.Masked() || l.Subnet.Bits() < network.Bits() || !network.Contains(l.Subnet.Addr()) {
			t.Fatalf("subnet %s from %q", l.Subnet, cidr)
		}
		if !l.Attrs.PublicIP.Is4() || (len(l.Attrs.BackendData) > 0 && !json.Valid(l.Attrs.BackendData)) {
			t.Fatalf("attrs %+v from %q %q", l.Attrs, ip, data)
		}
		l.Attrs.BackendType = backendUDP
		if overwrite != "" {
			n.Annotations[a.publicIPOverwrite] = overwrite
		}
		again := testNode("peer", l.Subnet.String(), a.publish(n, l.Attrs))
		l2, skip := a.nodeLease(again, network)
		want := l.Attrs
		if overwrite != "" {
			want.PublicIP, _ = netip.ParseAddr(overwrite)
			if !want.PublicIP.Is4() {
				if skip != SkipBadPublicIP {
					t.Fatalf("published overwrite %q: %q", overwrite, skip)
				}
				return
			}
		}
		if skip != "" || l2.Subnet != l.Subnet || !l2.Attrs.Equal(want) {
			t.Fatalf("published %v: read back %+v %q, want %+v", again.Annotations, l2, skip, want)
		}
	})
}

// newTestStore is a Store whose table is fed by hand: the informer's
// handlers' logic without an API server (the API server tests drive the
// same code through a real informer).
func newTestStore(own string) *Store {
	a, _ := newAnnotations(DefaultAnnotationPrefix)
	return &Store{log: slog.New(slog.DiscardHandler), node: own, ann: a, network: netip.MustParsePrefix("198.19.0.0/16"),
		nodes: map[string]nodeState{}, claims: map[netip.Prefix][]string{}, table: map[netip.Prefix]entry{},
		changed: make(chan struct{}), upCh: make(chan struct{})}
}

func (s *Store) leasesNow() map[netip.Prefix]netip.Addr {
	m := map[netip.Prefix]netip.Addr{}
	for p, e := range s.table {
		if !e.removed {
			m[p] = e.lease.Attrs.PublicIP
		}
	}
	return m
}

// Two Nodes claiming one podCIDR: the one whose name sorts first holds it
// whatever the order of events, the other is counted; when the holder goes,
// the other takes over. A Node publishing our public IP is never a peer.
func TestTableDuplicatesAndOwnIP(t *testing.T) {
	s := newTestStore("self")
	p := s.ann.prefix
	ann := func(ip string) map[string]string {
		return map[string]string{p + "kube-subnet-manager": "true", p + "public-ip": ip, p + "backend-data": "null"}
	}
	sub := netip.MustParsePrefix("198.19.5.0/24")
	s.set(testNode("zeta", "198.19.5.0/24", ann("198.18.0.26")))
	s.set(testNode("alpha", "198.19.5.0/24", ann("198.18.0.1")))
	if got := s.leasesNow()[sub]; got != netip.MustParseAddr("198.18.0.1") {
		t.Fatalf("holder of %s: %s, want alpha's 198.18.0.1", sub, got)
	}
	if st := s.State(); st.Skipped[SkipDuplicateSubnet] != 1 || st.Leases != 1 {
		t.Fatalf("state %+v", st)
	}
	s.deleted(testNode("alpha", "", nil))
	if got := s.leasesNow()[sub]; got != netip.MustParseAddr("198.18.0.26") {
		t.Fatalf("after alpha's deletion: %s, want zeta's", got)
	}
	s.set(testNode("self", "198.19.9.0/24", ann("198.18.0.9")))
	s.set(testNode("twin", "198.19.10.0/24", ann("198.18.0.9")))
	s.setOwnIP(netip.MustParseAddr("198.18.0.9"))
	leases := s.leasesNow()
	if _, ok := leases[netip.MustParsePrefix("198.19.10.0/24")]; ok || len(leases) != 2 {
		t.Fatalf("a Node publishing our IP is in the table: %v", leases)
	}
	if st := s.State(); st.Skipped[SkipOwnPublicIP] != 1 || st.Skipped[SkipDuplicateSubnet] != 0 {
		t.Fatalf("state %+v", st)
	}
	// The annotation removed: not a lease any more, its subnet withdrawn.
	rev := s.rev
	s.set(testNode("zeta", "198.19.5.0/24", nil))
	if _, ok := s.leasesNow()[sub]; ok || s.rev == rev {
		t.Fatalf("zeta without annotations still holds %s", sub)
	}
	// The same state again changes nothing.
	rev = s.rev
	s.set(testNode("self", "198.19.9.0/24", ann("198.18.0.9")))
	if s.rev != rev {
		t.Fatal("an unchanged Node bumped the revision")
	}
}
