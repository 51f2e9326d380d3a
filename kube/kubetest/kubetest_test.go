package kubetest_test

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/kube/kubetest"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

// TestServer drives the harness as the lease store's tests will: a Node
// with a podCIDR, a ServiceAccount that RBAC first refuses and then allows,
// and an API server outage the clients survive.
func TestServer(t *testing.T) {
	t.Parallel()
	s := kubetest.Start(t)
	ctx := t.Context()
	admin := s.Admin()

	s.CreateNode(t, "node-a", func(n *corev1.Node) {
		n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "198.18.0.2"}}
	})
	s.SetPodCIDR(t, "node-a", "198.19.1.0/24")
	n, err := admin.CoreV1().Nodes().Get(ctx, "node-a", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get node: %v", err)
	}
	if n.Spec.PodCIDR != "198.19.1.0/24" || len(n.Spec.PodCIDRs) != 1 || n.Spec.PodCIDRs[0] != "198.19.1.0/24" {
		t.Fatalf("node podCIDR %q podCIDRs %q, want 198.19.1.0/24", n.Spec.PodCIDR, n.Spec.PodCIDRs)
	}
	if len(n.Status.Addresses) != 1 || n.Status.Addresses[0].Address != "198.18.0.2" {
		t.Errorf("node addresses %v, want the InternalIP given at creation", n.Status.Addresses)
	}
	// The real API server's validation: a podCIDR is set once.
	_, err = admin.CoreV1().Nodes().Patch(ctx, "node-a", types.MergePatchType,
		[]byte(`{"spec":{"podCIDR":"198.19.2.0/24","podCIDRs":["198.19.2.0/24"]}}`), metav1.PatchOptions{})
	if !apierrors.IsInvalid(err) {
		t.Errorf("changing a podCIDR: got %v, want Invalid", err)
	}

	// A daemon's credentials: a ServiceAccount token in a kubeconfig.
	token := s.ServiceAccountToken(t, "kube-flannel", "flannel")
	cfg, err := clientcmd.BuildConfigFromFlags("", s.Kubeconfig(t, token))
	if err != nil {
		t.Fatalf("load kubeconfig: %v", err)
	}
	daemon, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatalf("client from kubeconfig: %v", err)
	}
	if _, err := daemon.CoreV1().Nodes().List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Fatalf("list nodes without a role binding: got %v, want Forbidden", err)
	}
	role := &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: "flannel"},
		Rules:      []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"nodes"}, Verbs: []string{"get", "list", "watch"}}},
	}
	if _, err := admin.RbacV1().ClusterRoles().Create(ctx, role, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create ClusterRole: %v", err)
	}
	binding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "flannel"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "flannel"},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Namespace: "kube-flannel", Name: "flannel"}},
	}
	if _, err := admin.RbacV1().ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create ClusterRoleBinding: %v", err)
	}
	// RBAC sees the binding through its informer, a moment later.
	listNodes(t, daemon, 10*time.Second)

	// An outage: the clients fail while it is down and work once it is back,
	// with the same data, certificate and tokens.
	s.Stop()
	s.Stop()
	short, cancel := context.WithTimeout(ctx, 5*time.Second)
	_, err = admin.CoreV1().Nodes().Get(short, "node-a", metav1.GetOptions{})
	cancel()
	if err == nil {
		t.Fatal("get node while the API server is stopped: no error")
	}
	s.Restart(t)
	n, err = admin.CoreV1().Nodes().Get(ctx, "node-a", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get node after restart: %v", err)
	}
	if n.Spec.PodCIDR != "198.19.1.0/24" {
		t.Errorf("node podCIDR after restart %q, want 198.19.1.0/24", n.Spec.PodCIDR)
	}
	listNodes(t, daemon, 10*time.Second)
}

// TestWithAddress serves on another address, as for a lab's host address:
// the URL, the serving certificate and the admin kubeconfig follow it.
func TestWithAddress(t *testing.T) {
	t.Parallel()
	s := kubetest.Start(t, kubetest.WithAddress(netip.MustParseAddr("127.0.0.2")))
	if !strings.HasPrefix(s.URL, "https://127.0.0.2:") {
		t.Fatalf("URL %s, want https://127.0.0.2:port", s.URL)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", s.Kubeconfig(t, s.AdminToken))
	if err != nil {
		t.Fatalf("load kubeconfig: %v", err)
	}
	admin, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatalf("client from kubeconfig: %v", err)
	}
	v, err := admin.Discovery().ServerVersion()
	if err != nil {
		t.Fatalf("server version: %v", err)
	}
	if v.GitVersion != kubetest.Version {
		t.Errorf("server version %s, want %s", v.GitVersion, kubetest.Version)
	}
}

// listNodes waits until client may list the nodes and finds node-a.
func listNodes(t *testing.T, client kubernetes.Interface, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		l, err := client.CoreV1().Nodes().List(t.Context(), metav1.ListOptions{})
		if err == nil {
			if len(l.Items) != 1 || l.Items[0].Name != "node-a" {
				t.Fatalf("nodes %v, want node-a", l.Items)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("list nodes: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
