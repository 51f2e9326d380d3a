package kube

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"

	"github.com/weft-net/weft/kube/kubetest"
	"github.com/weft-net/weft/subnet"
)

var flannelRules = kubetest.FlannelRules

// grant binds rules to the ServiceAccount kube-flannel/name and returns a
// client config with its token, as the DaemonSet's pod gets.
func grant(t *testing.T, s *kubetest.Server, name string, rules []rbacv1.PolicyRule) *rest.Config {
	t.Helper()
	token := s.Grant(t, "kube-flannel", name, rules)
	return &rest.Config{Host: s.URL, BearerToken: token, TLSClientConfig: rest.TLSClientConfig{CAData: s.CAData}}
}

// logBuffer collects a store's log lines for assertions.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) count(s string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Count(l.b.String(), s)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

var testNetwork = netip.MustParsePrefix("198.19.0.0/16")

func flanneldAnnotations(ip string) func(*corev1.Node) {
	return func(n *corev1.Node) {
		p := DefaultAnnotationPrefix + "/"
		n.Annotations = map[string]string{p + "backend-type": "", p + "backend-data": "null", p + "public-ip": ip, p + "kube-subnet-manager": "true"}
	}
}

func startStore(t *testing.T, rc *rest.Config, node string, log *logBuffer) *Store {
	t.Helper()
	st, err := New(t.Context(), Config{REST: rc, NodeName: node, SetNodeNetworkUnavailable: true,
		Logger: slog.New(slog.NewTextHandler(log, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	st.Start(t.Context(), testNetwork)
	return st
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 15 s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// The store against a real API server, with kube-flannel.yml's RBAC: it
// waits for the podCIDR without spinning, publishes flanneld's annotations
// through nodes/status, lists and watches the peers (skipping what cannot
// be one, counted), and sets the NetworkUnavailable condition.
func TestStoreOnAPIServer(t *testing.T) {
	s := kubetest.Start(t)
	rc := grant(t, s, "flannel", flannelRules)
	s.CreateNode(t, "self")
	s.CreateNode(t, "flanneld", flanneldAnnotations("198.18.0.11"))
	s.SetPodCIDR(t, "flanneld", "198.19.11.0/24")
	s.CreateNode(t, "vxlan", flanneldAnnotations("198.18.0.12"), func(n *corev1.Node) {
		n.Annotations[DefaultAnnotationPrefix+"/backend-type"] = "vxlan"
	})
	s.SetPodCIDR(t, "vxlan", "198.19.12.0/24")
	s.CreateNode(t, "garbled", flanneldAnnotations("not-an-address"))
	s.SetPodCIDR(t, "garbled", "198.19.13.0/24")
	s.CreateNode(t, "outside", flanneldAnnotations("198.18.0.14"))
	s.SetPodCIDR(t, "outside", "198.18.14.0/24")
	s.CreateNode(t, "bare") // a hand-made Node: no annotations, no labels (flanneld panics on it)

	var log logBuffer
	st := startStore(t, rc, "self", &log)
	acquired := make(chan error, 1)
	var lease subnet.Lease
	go func() {
		var err error
		lease, err = st.Acquire(t.Context(), subnet.Attrs{PublicIP: netip.MustParseAddr("198.18.0.10")})
		acquired <- err
	}()
	// No podCIDR yet: one line, then quiet waiting (a second would mean a
	// retry loop) until the controller (the test) assigns one.
	waitFor(t, "the podCIDR wait logged", func() bool { return log.count("waiting for the Node's spec.podCIDR") == 1 })
	time.Sleep(time.Second)
	select {
	case err := <-acquired:
		t.Fatalf("acquired without a podCIDR: %v", err)
	default:
	}
	if n := log.count("waiting for the Node's spec.podCIDR"); n != 1 {
		t.Fatalf("the podCIDR wait logged %d times", n)
	}
	s.SetPodCIDR(t, "self", "198.19.10.0/24")
	if err := <-acquired; err != nil {
		t.Fatal(err)
	}
	if lease.Subnet != netip.MustParsePrefix("198.19.10.0/24") || lease.Attrs.PublicIP != netip.MustParseAddr("198.18.0.10") {
		t.Fatalf("lease %+v", lease)
	}
	self, err := s.Admin().CoreV1().Nodes().Get(t.Context(), "self", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p := DefaultAnnotationPrefix + "/"
	for k, v := range map[string]string{p + "backend-type": "udp", p + "backend-data": "null", p + "public-ip": "198.18.0.10", p + "kube-subnet-manager": "true"} {
		if self.Annotations[k] != v {
			t.Errorf("annotation %s = %q, want %q (all: %v)", k, self.Annotations[k], v, self.Annotations)
		}
	}

	leases, rev, err := st.ListLeases(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	got := map[netip.Prefix]netip.Addr{}
	for _, l := range leases {
		got[l.Subnet] = l.Attrs.PublicIP
	}
	if len(got) != 2 || got[netip.MustParsePrefix("198.19.11.0/24")] != netip.MustParseAddr("198.18.0.11") || !got[lease.Subnet].IsValid() {
		t.Fatalf("leases %v; want ours and flanneld's", got)
	}
	state := st.State()
	if state.Skipped[SkipBackendType] != 1 || state.Skipped[SkipBadPublicIP] != 1 || state.Skipped[SkipOutsideNetwork] != 1 || state.Nodes != 6 || !state.Up {
		t.Fatalf("state %+v", state)
	}

	// The watch: a Node's kernel advertisement, a new peer, a deleted one.
	events := make(chan []subnet.Event, 16)
	go func() {
		_ = st.WatchLeases(t.Context(), rev, func(ev []subnet.Event, _ int64) { events <- ev })
	}()
	if err := st.PutLeaseAttrs(t.Context(), subnet.Lease{Subnet: lease.Subnet, Attrs: func() subnet.Attrs {
		a := lease.Attrs
		_ = a.SetKernelDecap(true)
		return a
	}()}); err != nil {
		t.Fatal(err)
	}
	s.CreateNode(t, "late", flanneldAnnotations("198.18.0.15"))
	s.SetPodCIDR(t, "late", "198.19.15.0/24")
	if err := s.Admin().CoreV1().Nodes().Delete(t.Context(), "flanneld", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	deadline := time.After(15 * time.Second)
	for !(seen["added 198.19.10.0/24 kernel"] && seen["added 198.19.15.0/24"] && seen["removed 198.19.11.0/24"]) {
		select {
		case batch := <-events:
			for _, ev := range batch {
				k := ev.Type.String() + " " + ev.Lease.Subnet.String()
				if ev.Lease.Attrs.KernelDecap() {
					k += " kernel"
				}
				seen[k] = true
			}
		case <-deadline:
			t.Fatalf("watched %v", seen)
		}
	}

	if err := st.SetNetworkAvailable(t.Context()); err != nil {
		t.Fatal(err)
	}
	self, err = s.Admin().CoreV1().Nodes().Get(t.Context(), "self", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var cond *corev1.NodeCondition
	for i := range self.Status.Conditions {
		if self.Status.Conditions[i].Type == corev1.NodeNetworkUnavailable {
			cond = &self.Status.Conditions[i]
		}
	}
	if cond == nil || cond.Status != corev1.ConditionFalse || cond.Reason != "FlannelIsUp" {
		t.Fatalf("NetworkUnavailable condition %+v", cond)
	}
	if self.Annotations[p+"backend-data"] != `{"WeftDecap":"kernel"}` {
		t.Errorf("backend-data %q after the advertisement", self.Annotations[p+"backend-data"])
	}
}

// Each verb kube-flannel.yml's ClusterRole grants, taken away, stops the
// store with an error naming the verb, the resource and the rule. (The
// informer lists by a watch where the API server streams lists, so list
// alone is not checked.)
func TestStoreNamesMissingRBAC(t *testing.T) {
	s := kubetest.Start(t)
	for _, tc := range []struct {
		name  string
		rules []rbacv1.PolicyRule
		want  string
	}{
		{"no-watch", []rbacv1.PolicyRule{flannelRules[0], {APIGroups: []string{""}, Resources: []string{"nodes"}, Verbs: []string{"get", "list"}}, flannelRules[2]},
			`watch nodes: forbidden by RBAC: the ServiceAccount may not watch nodes; kube-flannel.yml's ClusterRole flannel (and deploy/kube-weft.yml's) grants it with the rule {apiGroups: [""], resources: ["nodes"], verbs: ["get", "list", "watch"]}`},
		{"no-patch", flannelRules[:2], `patch nodes/status no-patch: forbidden by RBAC: the ServiceAccount may not patch nodes/status; kube-flannel.yml's ClusterRole flannel (and deploy/kube-weft.yml's) grants it with the rule {apiGroups: [""], resources: ["nodes/status"], verbs: ["patch"]}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s.CreateNode(t, tc.name)
			s.SetPodCIDR(t, tc.name, "198.19.10.0/24")
			rc := grant(t, s, tc.name, tc.rules)
			var log logBuffer
			st := startStore(t, rc, tc.name, &log)
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			_, err := st.Acquire(ctx, subnet.Attrs{PublicIP: netip.MustParseAddr("198.18.0.10")})
			if !errors.Is(err, ErrForbidden) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("acquire: %v\nwant an error with: %s", err, tc.want)
			}
		})
	}
	// The pod's Node, without get on pods.
	rc := grant(t, s, "no-pods", flannelRules[1:])
	_, err := New(t.Context(), Config{REST: rc, PodName: "kube-flannel-ds-abcde", PodNamespace: "kube-flannel"})
	if !errors.Is(err, ErrForbidden) || !strings.Contains(err.Error(), `get pods kube-flannel/kube-flannel-ds-abcde: forbidden by RBAC`) {
		t.Fatalf("New without get pods: %v", err)
	}
}

// A podCIDR outside the network is fatal, naming both; the API server
// away keeps the table and says so; back, the informer converges.
func TestStoreOutsideNetworkAndOutage(t *testing.T) {
	s := kubetest.Start(t)
	rc := grant(t, s, "flannel", flannelRules)
	s.CreateNode(t, "wrong")
	s.SetPodCIDR(t, "wrong", "198.18.77.0/24")
	var log logBuffer
	st := startStore(t, rc, "wrong", &log)
	_, err := st.Acquire(t.Context(), subnet.Attrs{PublicIP: netip.MustParseAddr("198.18.0.10")})
	if err == nil || !strings.Contains(err.Error(), "podCIDR 198.18.77.0/24 is outside the network config's Network 198.19.0.0/16") {
		t.Fatalf("acquire outside the network: %v", err)
	}

	s.CreateNode(t, "self")
	s.SetPodCIDR(t, "self", "198.19.10.0/24")
	s.CreateNode(t, "peer", flanneldAnnotations("198.18.0.11"))
	s.SetPodCIDR(t, "peer", "198.19.11.0/24")
	st = startStore(t, rc, "self", &log)
	if _, err := st.Acquire(t.Context(), subnet.Attrs{PublicIP: netip.MustParseAddr("198.18.0.10")}); err != nil {
		t.Fatal(err)
	}
	s.Stop()
	waitFor(t, "the store sees the API server gone", func() bool { return !st.Connected() })
	leases, _, err := st.ListLeases(t.Context())
	if err != nil || len(leases) != 2 {
		t.Fatalf("leases while the API server is away: %v, %v", leases, err)
	}
	if st.State().LastErr == "" {
		t.Error("no error in the state while the API server is away")
	}
	s.Restart(t)
	waitFor(t, "the store sees the API server back", st.Connected)
	s.CreateNode(t, "after", flanneldAnnotations("198.18.0.12"))
	s.SetPodCIDR(t, "after", "198.19.12.0/24")
	defer func() {
		if t.Failed() {
			t.Log(log.String())
		}
	}()
	waitFor(t, "the new Node in the table", func() bool {
		leases, _, _ := st.ListLeases(t.Context())
		return len(leases) == 3
	})
}
