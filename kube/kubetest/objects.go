package kubetest

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	clientcmdv1 "k8s.io/client-go/tools/clientcmd/api/v1"
	"sigs.k8s.io/yaml"
)

// Kubeconfig writes a kubeconfig file for the server, its CA and token (a
// ServiceAccountToken, or AdminToken) into a fresh temporary directory and
// returns its path: what a daemon gets as --kubeconfig-file.
func (s *Server) Kubeconfig(t testing.TB, token string) string {
	t.Helper()
	// clientcmd's types, written without clientcmd itself, which would
	// pull spf13/pflag into this package.
	cfg := clientcmdv1.Config{
		Kind:       "Config",
		APIVersion: "v1",
		Clusters: []clientcmdv1.NamedCluster{{Name: "kubetest", Cluster: clientcmdv1.Cluster{
			Server:                   s.URL,
			CertificateAuthorityData: s.CAData,
		}}},
		AuthInfos: []clientcmdv1.NamedAuthInfo{{Name: "kubetest", AuthInfo: clientcmdv1.AuthInfo{Token: token}}},
		Contexts: []clientcmdv1.NamedContext{{Name: "kubetest", Context: clientcmdv1.Context{
			Cluster:  "kubetest",
			AuthInfo: "kubetest",
		}}},
		CurrentContext: "kubetest",
	}
	b, err := yaml.Marshal(cfg)
	if err != nil {
		t.Fatalf("kubetest: encode kubeconfig: %v", err)
	}
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatalf("kubetest: write kubeconfig: %v", err)
	}
	return path
}

// ServiceAccountToken creates namespace and the ServiceAccount name in it
// if missing and returns a token for it from the TokenRequest API, as the
// kubelet gets for a pod. The account has no permissions until the test
// binds a role to it (system:serviceaccount:NAMESPACE:NAME).
func (s *Server) ServiceAccountToken(t testing.TB, namespace, name string) string {
	t.Helper()
	c, cancel := ctx(t)
	defer cancel()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace}}
	if _, err := s.admin.CoreV1().Namespaces().Create(c, ns, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("kubetest: create namespace %s: %v", namespace, err)
	}
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace}}
	if _, err := s.admin.CoreV1().ServiceAccounts(namespace).Create(c, sa, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("kubetest: create ServiceAccount %s/%s: %v", namespace, name, err)
	}
	tr, err := s.admin.CoreV1().ServiceAccounts(namespace).CreateToken(c, name, &authenticationv1.TokenRequest{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("kubetest: token for ServiceAccount %s/%s: %v", namespace, name, err)
	}
	return tr.Status.Token
}

// CreateNode creates the Node name, as a kubelet registers it, after
// applying mutate (labels, annotations, status addresses; the API server
// keeps the status given at creation). It has no podCIDR: see SetPodCIDR.
func (s *Server) CreateNode(t testing.TB, name string, mutate ...func(*corev1.Node)) *corev1.Node {
	t.Helper()
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}
	for _, m := range mutate {
		m(n)
	}
	c, cancel := ctx(t)
	defer cancel()
	n, err := s.admin.CoreV1().Nodes().Create(c, n, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("kubetest: create node %s: %v", name, err)
	}
	return n
}

// SetPodCIDR assigns cidr to the Node name, as kube-controller-manager's
// node IPAM does. The API server refuses to change a podCIDR once set. A
// merge patch, so it never conflicts with a daemon updating the Node.
func (s *Server) SetPodCIDR(t testing.TB, name, cidr string) {
	t.Helper()
	patch, err := json.Marshal(map[string]any{"spec": map[string]any{"podCIDR": cidr, "podCIDRs": []string{cidr}}})
	if err != nil {
		t.Fatalf("kubetest: encode podCIDR patch: %v", err)
	}
	c, cancel := ctx(t)
	defer cancel()
	if _, err := s.admin.CoreV1().Nodes().Patch(c, name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatalf("kubetest: set podCIDR %s on node %s: %v", cidr, name, err)
	}
}

// FlannelRules are kube-flannel.yml's ClusterRole flannel: all that
// flanneld, and weft, may do.
var FlannelRules = []rbacv1.PolicyRule{
	{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get"}},
	{APIGroups: []string{""}, Resources: []string{"nodes"}, Verbs: []string{"get", "list", "watch"}},
	{APIGroups: []string{""}, Resources: []string{"nodes/status"}, Verbs: []string{"patch"}},
}

// Grant binds rules to the ServiceAccount namespace/name, through a
// ClusterRole and a ClusterRoleBinding of its name, and returns a token for
// it (ServiceAccountToken), as the DaemonSet's pod would have.
func (s *Server) Grant(t testing.TB, namespace, name string, rules []rbacv1.PolicyRule) string {
	t.Helper()
	token := s.ServiceAccountToken(t, namespace, name)
	c, cancel := ctx(t)
	defer cancel()
	rbac := s.admin.RbacV1()
	if _, err := rbac.ClusterRoles().Create(c, &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: name}, Rules: rules}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("kubetest: create ClusterRole %s: %v", name, err)
	}
	if _, err := rbac.ClusterRoleBindings().Create(c, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: name},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: name, Namespace: namespace}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("kubetest: create ClusterRoleBinding %s: %v", name, err)
	}
	return token
}
