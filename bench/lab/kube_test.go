package lab

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/weft-net/weft/kube/kubetest"
	"github.com/weft-net/weft/status"
)

// kubeLab is a lab whose nodes lease through a real kube-apiserver on the
// lab's host address, each as its own Node, authenticated as
// kube-flannel.yml's ServiceAccount with its ClusterRole.
type kubeLab struct {
	*Lab
	api        *kubetest.Server
	kubeconfig string
	netConf    string
}

// kubeNetConf is net-conf.json for the udp backend.
const kubeNetConf = `{"Network": "198.19.0.0/16", "Backend": {"Type": "udp"}}`

// kubePodCIDR is node i's podCIDR, as the test (playing
// kube-controller-manager) assigns it.
func kubePodCIDR(i int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 19, byte(10 + i), 0}), 24)
}

func newKubeLab(t *testing.T, nodes int) *kubeLab {
	t.Helper()
	l := newE2ELab(t, Options{Nodes: nodes})
	api := kubetest.Start(t, kubetest.WithAddress(l.HostAddr()))
	k := &kubeLab{Lab: l, api: api}
	k.kubeconfig = api.Kubeconfig(t, api.Grant(t, "kube-flannel", "flannel", kubetest.FlannelRules))
	k.netConf = filepath.Join(t.TempDir(), "net-conf.json")
	if err := os.WriteFile(k.netConf, []byte(kubeNetConf), 0o644); err != nil {
		t.Fatal(err)
	}
	for i, n := range l.Nodes() {
		api.CreateNode(t, n.Name, func(no *corev1.Node) {
			no.Labels = map[string]string{"kubernetes.io/hostname": n.Name}
			// As kubelet registers a Node: stock flanneld panics on one
			// without annotations (it writes into the nil map).
			no.Annotations = map[string]string{"volumes.kubernetes.io/controller-managed-attach-detach": "true"}
			no.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: n.Addr.String()}}
		})
		api.SetPodCIDR(t, n.Name, kubePodCIDR(i).String())
	}
	return k
}

// weftArgs is kube-flannel.yml's command line for node i (its flags in
// flanneld's spelling), plus the lab's own: subnet file, healthz, socket.
func (k *kubeLab) weftArgs(i int, extra ...string) []string {
	n := k.Node(i)
	args := []string{"--ip-masq", "--kube-subnet-mgr", "--kubeconfig-file=" + k.kubeconfig, "--net-config-path=" + k.netConf,
		"--subnet-file=" + n.SubnetFile, "--healthz-ip=0.0.0.0", fmt.Sprintf("--healthz-port=%d", HealthzPort),
		"--status-socket=" + filepath.Join(n.Dir, "weft.sock"), "-v=1"}
	return append(args, extra...)
}

func (k *kubeLab) startWeft(t *testing.T, i int, extra ...string) {
	t.Helper()
	if err := k.StartWeftWith(i, k.weftArgs(i, extra...), []string{"NODE_NAME=" + k.Node(i).Name}); err != nil {
		t.Fatal(err)
	}
}

func (k *kubeLab) node(t *testing.T, name string) *corev1.Node {
	t.Helper()
	n, err := k.api.Admin().CoreV1().Nodes().Get(t.Context(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// networkAvailable reports whether the Node's NetworkUnavailable
// condition is False, as flanneld sets it.
func networkAvailable(n *corev1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeNetworkUnavailable {
			return c.Status == corev1.ConditionFalse && c.Reason == "FlannelIsUp"
		}
	}
	return false
}

// Three weft daemons as kube-flannel.yml runs them (--ip-masq
// --kube-subnet-mgr, the ServiceAccount's token): each takes its Node's
// podCIDR, publishes flannel's annotations, marks its Node's network
// available; every pair pings and moves TCP byte-exact on the kernel fast
// path. With the API server away they keep forwarding, say so in status
// and metrics, and come back to it.
func TestE2EKubeSubnetMgr(t *testing.T) {
	k := newKubeLab(t, 3)
	for i := range 3 {
		k.startWeft(t, i)
	}
	for i := range 3 {
		if err := k.WaitReady(i, readyTimeout); err != nil {
			t.Fatal(err)
		}
	}
	for i, n := range k.Nodes() {
		s := mustStatus(t, k.Lab, i)
		if s.Lease.Subnet != kubePodCIDR(i) || s.Store != status.StoreKubernetes || s.Kubernetes == nil || s.Kubernetes.Node != n.Name {
			t.Fatalf("%s: lease %v, store %q %+v", n.Name, s.Lease, s.Store, s.Kubernetes)
		}
		requireFastPath(t, k.Lab, i)
		deadline := time.Now().Add(10 * time.Second)
		for no := k.node(t, n.Name); !networkAvailable(no) || no.Annotations[kubePrefix+"backend-data"] != `{"WeftDecap":"kernel"}`; no = k.node(t, n.Name) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: annotations %v, conditions %+v", n.Name, no.Annotations, no.Status.Conditions)
			}
			time.Sleep(100 * time.Millisecond)
		}
		if a := k.node(t, n.Name).Annotations; a[kubePrefix+"public-ip"] != n.Addr.String() || a[kubePrefix+"backend-type"] != "udp" ||
			a[kubePrefix+"kube-subnet-manager"] != "true" {
			t.Errorf("%s: annotations %v", n.Name, a)
		}
	}
	for i := range 3 {
		waitPeerPath(t, k.Lab, i, kubePodCIDR((i+1)%3), status.PathKernel, 10*time.Second)
	}
	pingAll(t, k.Lab)
	before := kernelTraffic(mustStatus(t, k.Lab, 1))
	r, err := k.Transfer(t.Context(), 0, 1, 16<<20)
	if err != nil || !r.Match() {
		t.Fatalf("transfer n0 -> n1: %v (match %v)", err, r.Match())
	}
	if after := kernelTraffic(mustStatus(t, k.Lab, 1)); after.RxBytes-before.RxBytes < 16<<20 {
		t.Errorf("n1 received %d bytes on the kernel path for a 16 MiB transfer", after.RxBytes-before.RxBytes)
	}
	t.Logf("n0 -> n1: %d bytes byte-exact, %.2f Gb/s", r.Bytes, r.Gbps())

	// The API server away: the table stands, traffic flows, status says so.
	k.api.Stop()
	deadline := time.Now().Add(30 * time.Second)
	for s := mustStatus(t, k.Lab, 0); s.Kubernetes.Up; s = mustStatus(t, k.Lab, 0) {
		if time.Now().After(deadline) {
			t.Fatal("n0 still says the API server is up 30 s after it stopped")
		}
		time.Sleep(200 * time.Millisecond)
	}
	pingAll(t, k.Lab)
	metrics := k.metrics(t, 0)
	if !strings.Contains(metrics, "weft_kube_up 0") || !strings.Contains(metrics, "weft_ready 1") {
		t.Errorf("metrics while the API server is away:\n%s", grepLines(metrics, "weft_kube_up", "weft_ready"))
	}
	k.api.Restart(t)
	deadline = time.Now().Add(60 * time.Second)
	for s := mustStatus(t, k.Lab, 0); !s.Kubernetes.Up; s = mustStatus(t, k.Lab, 0) {
		if time.Now().After(deadline) {
			t.Fatal("n0 did not see the API server back within 60 s")
		}
		time.Sleep(200 * time.Millisecond)
	}
	// Nothing flooded the log while it was away: a state change is one line.
	for i := range 3 {
		if n := strings.Count(k.Log(i), "connection lost"); n > 2 {
			t.Errorf("n%d logged the API server's loss %d times", i, n)
		}
	}
	pingAll(t, k.Lab)
}

const kubePrefix = "flannel.alpha.coreos.com/"

func (k *kubeLab) metrics(t *testing.T, i int) string {
	t.Helper()
	out, err := k.Command(t.Context(), i, "curl", "-s", fmt.Sprintf("http://127.0.0.1:%d/metrics", HealthzPort)).Output()
	if err != nil {
		t.Fatalf("n%d /metrics: %v", i, err)
	}
	return string(out)
}

func grepLines(s string, subs ...string) string {
	var out []string
	for _, line := range strings.Split(s, "\n") {
		for _, sub := range subs {
			if strings.HasPrefix(line, sub) {
				out = append(out, line)
			}
		}
	}
	return strings.Join(out, "\n")
}

// A mixed cluster on one API server: weft nodes and a stock flanneld
// --kube-subnet-mgr udp node reach each other both ways; then that node
// switches live from flanneld to weft (same Node, same podCIDR) without
// touching the others. It needs flanneld (udp backend: cgo, amd64) as
// WEFT_FLANNELD=path.
func TestE2EKubeMixedWithStockFlanneld(t *testing.T) {
	flanneld := os.Getenv("WEFT_FLANNELD")
	if flanneld == "" {
		t.Skip("set WEFT_FLANNELD=/path/to/flanneld (udp backend) to test a mixed weft/flanneld Kubernetes cluster")
	}
	k := newKubeLab(t, 3)
	for i := range 2 {
		k.startWeft(t, i)
	}
	fl := 2
	n := k.Node(fl)
	args := []string{"--ip-masq", "--kube-subnet-mgr", "--kubeconfig-file=" + k.kubeconfig, "--net-config-path=" + k.netConf,
		"--subnet-file=" + n.SubnetFile, "--iface=eth0", "-v=1"}
	if err := k.StartDaemon(fl, flanneld, args, []string{"NODE_NAME=" + n.Name}); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		if err := k.WaitReady(i, readyTimeout); err != nil {
			t.Fatal(err)
		}
	}
	if err := k.WaitSubnetFile(fl, readyTimeout); err != nil {
		t.Fatal(err)
	}
	a := k.node(t, n.Name).Annotations
	t.Logf("stock flanneld's annotations on %s: %v", n.Name, a)
	for i := range 2 {
		waitPeerPath(t, k.Lab, i, kubePodCIDR(fl), status.PathUserspace, 15*time.Second)
		waitPeerPath(t, k.Lab, i, kubePodCIDR(1-i), status.PathKernel, 15*time.Second)
	}
	time.Sleep(time.Second) // flanneld learns weft's Nodes by its informer
	pingAll(t, k.Lab)
	transfers := func(what string) {
		for _, pair := range [][2]int{{0, fl}, {fl, 1}, {0, 1}} {
			r, err := k.Transfer(t.Context(), pair[0], pair[1], 8<<20)
			if err != nil || !r.Match() {
				t.Fatalf("%s: transfer n%d -> n%d: %v (match %v)", what, pair[0], pair[1], err, r.Match())
			}
			t.Logf("%s: n%d -> n%d: %d bytes byte-exact, %.2f Gb/s", what, pair[0], pair[1], r.Bytes, r.Gbps())
		}
	}
	transfers("mixed")

	// The live switch: flanneld stops, weft starts on the same Node.
	if _, err := k.StopWeft(fl); err != nil {
		t.Fatal(err)
	}
	k.startWeft(t, fl)
	if err := k.WaitReady(fl, readyTimeout); err != nil {
		t.Fatal(err)
	}
	if s := mustStatus(t, k.Lab, fl); s.Lease.Subnet != kubePodCIDR(fl) {
		t.Fatalf("after the switch n%d has %v, want its Node's podCIDR %v", fl, s.Lease.Subnet, kubePodCIDR(fl))
	}
	for i := range 2 {
		waitPeerPath(t, k.Lab, i, kubePodCIDR(fl), status.PathKernel, 15*time.Second)
	}
	pingAll(t, k.Lab)
	transfers("after the switch")
}
