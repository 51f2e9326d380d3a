package deploy

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weft-net/weft/kube/kubetest"
	"github.com/weft-net/weft/subnet"
	appsv1 "k8s.io/api/apps/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
	"sigs.k8s.io/yaml"
)

const (
	manifestFile = "kube-weft.yml"
	namespace    = "kube-flannel"
	account      = "flannel"
)

// wantObjects are the manifest's documents, in order: kube-flannel.yml's
// objects with their names.
var wantObjects = []string{
	"Namespace kube-flannel",
	"ServiceAccount kube-flannel/flannel",
	"ClusterRole flannel",
	"ClusterRoleBinding flannel",
	"ConfigMap kube-flannel/kube-flannel-cfg",
	"DaemonSet kube-flannel/kube-flannel-ds",
}

// describe names an object as wantObjects does.
func describe(u *unstructured.Unstructured) string {
	if u.GetNamespace() == "" {
		return u.GetKind() + " " + u.GetName()
	}
	return u.GetKind() + " " + u.GetNamespace() + "/" + u.GetName()
}

// readManifest returns the manifest's documents in order, skipping those
// that hold only comments. Duplicate keys are errors, as for kubectl.
func readManifest(t *testing.T) []*unstructured.Unstructured {
	t.Helper()
	f, err := os.Open(manifestFile)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r := utilyaml.NewYAMLReader(bufio.NewReader(f))
	var objs []*unstructured.Unstructured
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("read %s: %v", manifestFile, err)
		}
		j, err := yaml.YAMLToJSONStrict(doc)
		if err != nil {
			t.Fatalf("%s: document %d: %v", manifestFile, len(objs)+1, err)
		}
		if string(bytes.TrimSpace(j)) == "null" {
			continue
		}
		u := &unstructured.Unstructured{}
		if err := u.UnmarshalJSON(j); err != nil {
			t.Fatalf("%s: document %d: %v", manifestFile, len(objs)+1, err)
		}
		objs = append(objs, u)
	}
	var got []string
	for _, u := range objs {
		got = append(got, describe(u))
	}
	if !slices.Equal(got, wantObjects) {
		t.Fatalf("%s holds %q, want %q", manifestFile, got, wantObjects)
	}
	return objs
}

// object returns the manifest's object of that kind.
func object(t *testing.T, objs []*unstructured.Unstructured, kind string) *unstructured.Unstructured {
	t.Helper()
	for _, u := range objs {
		if u.GetKind() == kind {
			return u
		}
	}
	t.Fatalf("%s has no %s", manifestFile, kind)
	return nil
}

// typed converts the manifest's object of that kind into into, failing on
// any field the Go type does not have.
func typed(t *testing.T, objs []*unstructured.Unstructured, kind string, into any) {
	t.Helper()
	u := object(t, objs, kind)
	if err := runtime.DefaultUnstructuredConverter.FromUnstructuredWithValidation(u.Object, into, true); err != nil {
		t.Fatalf("%s: %v", describe(u), err)
	}
}

// warnings collects the API server's warnings (deprecations, Pod Security
// warnings, fields it ignored).
type warnings struct {
	mu   sync.Mutex
	list []string
}

func (w *warnings) HandleWarningHeader(_ int, _ string, text string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.list = append(w.list, text)
}

func (w *warnings) take() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	l := w.list
	w.list = nil
	return l
}

// cluster creates the manifest's objects as kubectl would: each through
// the dynamic client at the resource discovery names for its kind.
type cluster struct {
	dyn      dynamic.Interface
	mapper   meta.RESTMapperWithContext
	warnings *warnings
}

func newCluster(t *testing.T, s *kubetest.Server) *cluster {
	t.Helper()
	cfg := s.AdminConfig()
	w := &warnings{}
	cfg.WarningHandler = w
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatalf("dynamic client: %v", err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	groups, err := restmapper.GetAPIGroupResourcesWithContext(ctx, discovery.ToDiscoveryInterfaceWithContext(s.Admin().Discovery()))
	if err != nil {
		t.Fatalf("discovery: %v", err)
	}
	return &cluster{dyn: dyn, mapper: restmapper.NewDiscoveryRESTMapperWithContext(groups), warnings: w}
}

// create submits obj with strict field validation (unknown and duplicate
// fields are errors, as kubectl asks), as a dry run if dryRun.
func (c *cluster) create(ctx context.Context, obj *unstructured.Unstructured, dryRun bool) error {
	gvk := obj.GroupVersionKind()
	m, err := c.mapper.RESTMappingWithContext(ctx, gvk.GroupKind(), gvk.Version)
	if err != nil {
		return fmt.Errorf("%s: %w", describe(obj), err)
	}
	var ri dynamic.ResourceInterface = c.dyn.Resource(m.Resource)
	switch namespaced := m.Scope.Name() == meta.RESTScopeNameNamespace; {
	case namespaced && obj.GetNamespace() == "":
		return fmt.Errorf("%s: namespaced, but the manifest gives no namespace", describe(obj))
	case namespaced:
		ri = c.dyn.Resource(m.Resource).Namespace(obj.GetNamespace())
	case obj.GetNamespace() != "":
		return fmt.Errorf("%s: cluster-scoped, but the manifest gives a namespace", describe(obj))
	}
	opts := metav1.CreateOptions{FieldValidation: metav1.FieldValidationStrict}
	if dryRun {
		opts.DryRun = []string{metav1.DryRunAll}
	}
	if _, err := ri.Create(ctx, obj, opts); err != nil {
		return fmt.Errorf("%s: %w", describe(obj), err)
	}
	return nil
}

// TestManifestDryRun validates the whole manifest against a real API
// server: the Namespace is created (dry runs of namespaced objects need it
// to exist), every other object goes through a server-side dry run, which
// runs defaulting, validation and admission but stores nothing. No
// warnings either.
func TestManifestDryRun(t *testing.T) {
	t.Parallel()
	objs := readManifest(t)
	s := kubetest.Start(t)
	c := newCluster(t, s)
	ctx := t.Context()

	if err := c.create(ctx, object(t, objs, "Namespace"), false); err != nil {
		t.Fatalf("create: %v", err)
	}
	for _, u := range objs {
		if u.GetKind() == "Namespace" {
			continue
		}
		if err := c.create(ctx, u, true); err != nil {
			t.Errorf("dry run: %v", err)
		}
		for _, w := range c.warnings.take() {
			t.Errorf("dry run: %s: the API server warns: %s", describe(u), w)
		}
	}

	// A dry run stores nothing: the objects are still absent.
	admin := s.Admin()
	if _, err := admin.AppsV1().DaemonSets(namespace).Get(ctx, "kube-flannel-ds", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("DaemonSet after its dry run: %v, want NotFound", err)
	}
	if _, err := admin.RbacV1().ClusterRoles().Get(ctx, "flannel", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("ClusterRole after its dry run: %v, want NotFound", err)
	}
}

// access is one request the daemon makes, or must not be able to make.
type access struct {
	verb, resource, subresource, namespace string
}

func (a access) String() string {
	s := a.verb + " " + a.resource
	if a.subresource != "" {
		s += "/" + a.subresource
	}
	if a.namespace != "" {
		s += " in " + a.namespace
	}
	return s
}

// weftNeeds is every request weft's Kubernetes store makes: its pod, to
// find its Node; the Nodes, listed and watched; its Node's status, patched
// with the lease annotations and the NetworkUnavailable condition.
var weftNeeds = []access{
	{verb: "get", resource: "pods", namespace: namespace},
	{verb: "get", resource: "nodes"},
	{verb: "list", resource: "nodes"},
	{verb: "watch", resource: "nodes"},
	{verb: "patch", resource: "nodes", subresource: "status"},
}

// weftMustNot are requests the ServiceAccount must be refused.
var weftMustNot = []access{
	{verb: "patch", resource: "nodes"},
	{verb: "update", resource: "nodes"},
	{verb: "delete", resource: "nodes"},
	{verb: "create", resource: "nodes"},
	{verb: "update", resource: "nodes", subresource: "status"},
	{verb: "create", resource: "pods", namespace: namespace},
	{verb: "list", resource: "pods", namespace: namespace},
	{verb: "delete", resource: "pods", namespace: namespace},
	{verb: "get", resource: "secrets", namespace: namespace},
	{verb: "get", resource: "configmaps", namespace: namespace},
}

// allowed asks the API server, as client, whether client may do a.
func allowed(ctx context.Context, client kubernetes.Interface, a access) (bool, error) {
	r, err := client.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, &authorizationv1.SelfSubjectAccessReview{
		Spec: authorizationv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &authorizationv1.ResourceAttributes{
			Namespace: a.namespace, Verb: a.verb, Resource: a.resource, Subresource: a.subresource,
		}},
	}, metav1.CreateOptions{})
	if err != nil {
		return false, fmt.Errorf("access review %s: %w", a, err)
	}
	return r.Status.Allowed, nil
}

// TestRBAC creates the manifest's ServiceAccount and RBAC objects and asks
// the API server, with the ServiceAccount's own token, what it may do:
// everything weft needs, nothing of what it must not. Then the calls
// themselves.
func TestRBAC(t *testing.T) {
	t.Parallel()
	objs := readManifest(t)
	s := kubetest.Start(t)
	c := newCluster(t, s)
	ctx := t.Context()

	for _, kind := range []string{"Namespace", "ServiceAccount"} {
		if err := c.create(ctx, object(t, objs, kind), false); err != nil {
			t.Fatalf("create: %v", err)
		}
	}
	token := s.ServiceAccountToken(t, namespace, account)
	daemon, err := kubernetes.NewForConfig(&rest.Config{
		Host:            s.URL,
		BearerToken:     token,
		TLSClientConfig: rest.TLSClientConfig{CAData: s.CAData},
		QPS:             -1,
	})
	if err != nil {
		t.Fatalf("client with the ServiceAccount's token: %v", err)
	}
	// Without the binding the account may do none of it: what allows it
	// below is the manifest's role.
	for _, a := range weftNeeds {
		if ok, err := allowed(ctx, daemon, a); err != nil || ok {
			t.Fatalf("before the ClusterRoleBinding: %s allowed %v (%v), want denied", a, ok, err)
		}
	}
	for _, kind := range []string{"ClusterRole", "ClusterRoleBinding"} {
		if err := c.create(ctx, object(t, objs, kind), false); err != nil {
			t.Fatalf("create: %v", err)
		}
	}

	// RBAC's authorizer sees the new binding through its informer, a
	// moment later.
	deadline := time.Now().Add(30 * time.Second)
	for _, a := range weftNeeds {
		for {
			ok, err := allowed(ctx, daemon, a)
			if err != nil {
				t.Fatal(err)
			}
			if ok {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: denied, want allowed: weft needs it", a)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	for _, a := range weftMustNot {
		if ok, err := allowed(ctx, daemon, a); err != nil {
			t.Error(err)
		} else if ok {
			t.Errorf("%s: allowed, want denied: weft does not need it", a)
		}
	}

	// The requests themselves, as weft makes them.
	s.CreateNode(t, "node-a")
	if _, err := daemon.CoreV1().Nodes().List(ctx, metav1.ListOptions{}); err != nil {
		t.Errorf("list nodes: %v", err)
	}
	// No pod runs (no scheduler, no kubelet): NotFound, not Forbidden.
	if _, err := daemon.CoreV1().Pods(namespace).Get(ctx, "kube-flannel-ds-x7k2p", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("get pod: %v, want NotFound", err)
	}
	patch := []byte(`{"metadata":{"annotations":{"flannel.alpha.coreos.com/kube-subnet-manager":"true"}}}`)
	n, err := daemon.CoreV1().Nodes().Patch(ctx, "node-a", types.StrategicMergePatchType, patch, metav1.PatchOptions{}, "status")
	if err != nil {
		t.Errorf("patch nodes/status: %v", err)
	} else if got := n.Annotations["flannel.alpha.coreos.com/kube-subnet-manager"]; got != "true" {
		t.Errorf("after patching nodes/status the annotation is %q, want true", got)
	}
	if _, err := daemon.CoreV1().Nodes().Patch(ctx, "node-a", types.StrategicMergePatchType, patch, metav1.PatchOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("patch nodes: %v, want Forbidden", err)
	}
}

// TestClusterRole: the role's rules are exactly kube-flannel.yml's.
func TestClusterRole(t *testing.T) {
	t.Parallel()
	objs := readManifest(t)
	var role rbacv1.ClusterRole
	typed(t, objs, "ClusterRole", &role)
	want := []rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get"}},
		{APIGroups: []string{""}, Resources: []string{"nodes"}, Verbs: []string{"get", "list", "watch"}},
		{APIGroups: []string{""}, Resources: []string{"nodes/status"}, Verbs: []string{"patch"}},
	}
	if !reflect.DeepEqual(role.Rules, want) {
		t.Errorf("ClusterRole rules %+v, want flannel's %+v", role.Rules, want)
	}
	var binding rbacv1.ClusterRoleBinding
	typed(t, objs, "ClusterRoleBinding", &binding)
	wantSubjects := []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: account, Namespace: namespace}}
	if binding.RoleRef.Kind != "ClusterRole" || binding.RoleRef.Name != role.Name || !reflect.DeepEqual(binding.Subjects, wantSubjects) {
		t.Errorf("ClusterRoleBinding binds %+v to %+v, want ClusterRole %s to %+v", binding.RoleRef, binding.Subjects, role.Name, wantSubjects)
	}
}

// flannelArgs are kube-flannel.yml's flanneld arguments, which weft takes.
var flannelArgs = []string{"--ip-masq", "--kube-subnet-mgr", "--healthz-port=8081"}

// wantCaps are the capabilities the container adds: flannel's NET_ADMIN
// and NET_RAW, and the fast path's BPF.
var wantCaps = []corev1.Capability{"NET_ADMIN", "NET_RAW", "BPF"}

// TestDaemonSet: weft runs where and as flanneld runs, unprivileged with
// exactly the capabilities it needs.
func TestDaemonSet(t *testing.T) {
	t.Parallel()
	objs := readManifest(t)
	var ds appsv1.DaemonSet
	typed(t, objs, "DaemonSet", &ds)
	pod := ds.Spec.Template.Spec
	if !pod.HostNetwork || pod.PriorityClassName != "system-node-critical" || pod.ServiceAccountName != account {
		t.Errorf("pod hostNetwork %v, priorityClassName %q, serviceAccountName %q: want true, system-node-critical, %s",
			pod.HostNetwork, pod.PriorityClassName, pod.ServiceAccountName, account)
	}
	if want := []corev1.Toleration{{Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoSchedule}}; !reflect.DeepEqual(pod.Tolerations, want) {
		t.Errorf("tolerations %+v, want %+v", pod.Tolerations, want)
	}
	if len(pod.Containers) != 1 {
		t.Fatalf("%d containers, want 1", len(pod.Containers))
	}
	ct := pod.Containers[0]
	if ct.Name != "kube-flannel" {
		t.Errorf("container %q, want kube-flannel", ct.Name)
	}
	if img, _, _ := strings.Cut(ct.Image, ":"); img != "ghcr.io/weft-net/weft" {
		t.Errorf("image %s, want ghcr.io/weft-net/weft:<tag>", ct.Image)
	}
	if !slices.Equal(ct.Command, []string{"/opt/bin/flanneld"}) || !slices.Equal(ct.Args, flannelArgs) {
		t.Errorf("command %q args %q, want flannel's [/opt/bin/flanneld] %q", ct.Command, ct.Args, flannelArgs)
	}

	sc := ct.SecurityContext
	if sc == nil || sc.Privileged == nil || *sc.Privileged {
		t.Fatalf("securityContext %+v: want privileged: false", sc)
	}
	if sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Add, wantCaps) || len(sc.Capabilities.Drop) != 0 {
		t.Errorf("capabilities %+v, want to add exactly %v", sc.Capabilities, wantCaps)
	}
	if sc.AllowPrivilegeEscalation != nil || sc.RunAsUser != nil {
		t.Errorf("securityContext %+v: want flannel's, which sets neither allowPrivilegeEscalation nor runAsUser", sc)
	}
	if cpu, mem := ct.Resources.Requests.Cpu().String(), ct.Resources.Requests.Memory().String(); cpu != "100m" || mem != "50Mi" {
		t.Errorf("requests cpu %s memory %s, want 100m 50Mi", cpu, mem)
	}

	env := map[string]corev1.EnvVar{}
	for _, e := range ct.Env {
		env[e.Name] = e
	}
	for name, path := range map[string]string{"POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace"} {
		e := env[name]
		if e.ValueFrom == nil || e.ValueFrom.FieldRef == nil || e.ValueFrom.FieldRef.FieldPath != path {
			t.Errorf("env %s %+v, want the downward API's %s", name, e, path)
		}
	}
	if env["EVENT_QUEUE_DEPTH"].Value != "5000" {
		t.Errorf("env EVENT_QUEUE_DEPTH %+v, want flannel's 5000", env["EVENT_QUEUE_DEPTH"])
	}

	// Where each mount comes from: volume name to its source.
	volumes := map[string]corev1.VolumeSource{}
	for _, v := range pod.Volumes {
		volumes[v.Name] = v.VolumeSource
	}
	mounts := map[string]string{} // mount path to what is mounted there
	for _, m := range ct.VolumeMounts {
		v, ok := volumes[m.Name]
		switch {
		case !ok:
			t.Errorf("mount %s: no volume %s", m.MountPath, m.Name)
		case v.HostPath != nil:
			mounts[m.MountPath] = "host " + v.HostPath.Path
		case v.ConfigMap != nil:
			mounts[m.MountPath] = "configmap " + v.ConfigMap.Name
		default:
			mounts[m.MountPath] = "other " + m.Name
		}
	}
	wantMounts := map[string]string{
		"/run/flannel":       "host /run/flannel", // subnet.env, for the CNI plugin on the host
		"/etc/kube-flannel/": "configmap kube-flannel-cfg",
		"/run/xtables.lock":  "host /run/xtables.lock",
	}
	if !reflect.DeepEqual(mounts, wantMounts) {
		t.Errorf("kube-flannel mounts %v, want %v", mounts, wantMounts)
	}

	// flannel's init containers install its CNI plugin and configuration.
	var inits []string
	for _, ic := range pod.InitContainers {
		inits = append(inits, ic.Name)
	}
	if !slices.Equal(inits, []string{"install-cni-plugin", "install-cni"}) {
		t.Fatalf("init containers %q, want flannel's install-cni-plugin, install-cni", inits)
	}
	if args := pod.InitContainers[1].Args; len(args) != 2 || args[0] != "/etc/kube-flannel/cni-conf.json" || args[1] != "/etc/cni/net.d/10-flannel.conflist" {
		t.Errorf("install-cni args %q, want cni-conf.json copied to /etc/cni/net.d/10-flannel.conflist", args)
	}

	var ns corev1.Namespace
	typed(t, objs, "Namespace", &ns)
	if ns.Labels["pod-security.kubernetes.io/enforce"] != "privileged" {
		t.Errorf("namespace labels %v: want pod-security.kubernetes.io/enforce: privileged (hostNetwork, hostPath, capabilities)", ns.Labels)
	}
}

// TestConfigMap: net-conf.json is a udp network weft's own parser accepts,
// and cni-conf.json is flannel's CNI plugin chain.
func TestConfigMap(t *testing.T) {
	t.Parallel()
	var cm corev1.ConfigMap
	typed(t, readManifest(t), "ConfigMap", &cm)
	cfg, err := subnet.ParseConfig([]byte(cm.Data["net-conf.json"]))
	if err != nil {
		t.Fatalf("net-conf.json: %v", err)
	}
	if cfg.BackendType != subnet.BackendUDP || cfg.Network != netip.MustParsePrefix("10.244.0.0/16") {
		t.Errorf("net-conf.json: backend %q network %s, want udp 10.244.0.0/16", cfg.BackendType, cfg.Network)
	}

	var cni struct {
		Name, CNIVersion string
		Plugins          []struct {
			Type     string
			Delegate *struct {
				HairpinMode      bool
				IsDefaultGateway bool
			}
		}
	}
	if err := json.Unmarshal([]byte(cm.Data["cni-conf.json"]), &cni); err != nil {
		t.Fatalf("cni-conf.json: %v", err)
	}
	if len(cni.Plugins) != 2 || cni.Plugins[0].Type != "flannel" || cni.Plugins[1].Type != "portmap" {
		t.Fatalf("cni-conf.json plugins %+v, want flannel then portmap", cni.Plugins)
	}
	if d := cni.Plugins[0].Delegate; d == nil || !d.HairpinMode || !d.IsDefaultGateway {
		t.Errorf("cni-conf.json flannel delegate %+v, want hairpinMode and isDefaultGateway", d)
	}
}
