package node

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/weft-net/weft/internal/netnstest"
	"github.com/weft-net/weft/kube"
	"github.com/weft-net/weft/kube/kubetest"
	"github.com/weft-net/weft/route"
	"github.com/weft-net/weft/status"
	"github.com/weft-net/weft/subnet"
	"github.com/weft-net/weft/tunnel"
)

const kubePrefix = kube.DefaultAnnotationPrefix + "/"

// startKubeNode runs a node that leases through the API server as the Node
// name, with net-conf.json netConf (none if empty), as the admin.
func startKubeNode(t *testing.T, s *kubetest.Server, name, netConf string, fp testFastPath) *testNode {
	t.Helper()
	ns := netnstest.New(t)
	netnstest.Veth{A: netnstest.End{NS: ns, Name: "ul0", Addr: testUnderlay + "/24"},
		B: netnstest.End{NS: ns, Name: "ul1", Addr: "198.18.40.1/24"}}.Add(t)
	dir := t.TempDir()
	confPath := filepath.Join(dir, "net-conf.json")
	if netConf != "" {
		if err := os.WriteFile(confPath, []byte(netConf), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	n := &testNode{ns: ns, done: make(chan error, 1), cfg: Config{
		Kube:        &kube.Config{REST: s.AdminConfig(), NodeName: name, SetNodeNetworkUnavailable: true},
		NetConfPath: confPath, Iface: route.Selector{Ifaces: []string{"ul0"}},
		SubnetFile: filepath.Join(dir, "subnet.env"), StatusSocket: filepath.Join(dir, "weft.sock"),
		TunName: "udp0", SourceCheck: tunnel.SourceStrict, FastPath: fp.mode,
	}}
	n.launch(t, fp)
	return n
}

func peerNode(ip string) func(*corev1.Node) {
	return func(n *corev1.Node) {
		n.Annotations = map[string]string{kubePrefix + "backend-type": "", kubePrefix + "backend-data": "null",
			kubePrefix + "public-ip": ip, kubePrefix + "kube-subnet-manager": "true"}
	}
}

const udpNetConf = `{"Network": "198.19.0.0/16", "Backend": {"Type": "udp"}}`

// With -kube-subnet-mgr the node's subnet is its Node's podCIDR, its peers
// the Nodes, its advertisement the Node's annotations; the data plane,
// subnet.env and the fast path's advertisement work as with etcd; the
// NetworkUnavailable condition goes False once ready; status names the
// store; the Node deleted is fatal, as our etcd lease deleted is.
func TestNodeOnKubernetes(t *testing.T) {
	s := kubetest.Start(t)
	s.CreateNode(t, "n0")
	s.SetPodCIDR(t, "n0", "198.19.10.0/24")
	s.CreateNode(t, "p1", peerNode("198.18.40.21"))
	s.SetPodCIDR(t, "p1", peerA.String())
	fp := testFastPath{mode: FastPathAuto, plane: &fakePlane{stopped: make(chan struct{})}}
	n := startKubeNode(t, s, "n0", udpNetConf, fp)
	n.waitPlane(t, "at start", peerA)
	st := n.waitReady(t)
	if st.Store != status.StoreKubernetes || st.Kubernetes == nil || st.Kubernetes.Node != "n0" || !st.Kubernetes.Up ||
		st.Lease.Subnet != netip.MustParsePrefix("198.19.10.0/24") || st.Lease.PublicIP.String() != testUnderlay {
		t.Fatalf("status: store %q %+v lease %+v", st.Store, st.Kubernetes, st.Lease)
	}
	env, err := os.ReadFile(n.cfg.SubnetFile)
	if err != nil || !strings.Contains(string(env), "FLANNEL_SUBNET=198.19.10.1/24") || !strings.Contains(string(env), "FLANNEL_NETWORK=198.19.0.0/16") {
		t.Errorf("subnet.env: %q, %v", env, err)
	}
	ctx := context.Background()
	deadline := time.Now().Add(15 * time.Second)
	for {
		self, err := s.Admin().CoreV1().Nodes().Get(ctx, "n0", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		up := false
		for _, c := range self.Status.Conditions {
			up = up || (c.Type == corev1.NodeNetworkUnavailable && c.Status == corev1.ConditionFalse && c.Reason == "FlannelIsUp")
		}
		a := self.Annotations
		if up && a[kubePrefix+"backend-data"] == `{"WeftDecap":"kernel"}` && a[kubePrefix+"public-ip"] == testUnderlay &&
			a[kubePrefix+"backend-type"] == "udp" && a[kubePrefix+"kube-subnet-manager"] == "true" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Node n0: annotations %v, conditions %+v", a, self.Status.Conditions)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// A second peer, then the first one gone.
	s.CreateNode(t, "p2", peerNode("198.18.40.22"))
	s.SetPodCIDR(t, "p2", peerB.String())
	n.waitPlane(t, "after a Node is added", peerA, peerB)
	if err := s.Admin().CoreV1().Nodes().Delete(ctx, "p1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	n.waitPlane(t, "after a Node is deleted", peerB)
	if err := s.Admin().CoreV1().Nodes().Delete(ctx, "n0", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	err = n.wait(t)
	if !errors.Is(err, subnet.ErrLeaseNotFound) || !strings.Contains(err.Error(), "our lease 198.19.10.0/24 was removed from kubernetes") {
		t.Fatalf("after our Node was deleted: %v", err)
	}
}

// net-conf.json missing or invalid is fatal, naming the file and the
// ConfigMap to fix.
func TestNodeKubeNetConf(t *testing.T) {
	s := kubetest.Start(t)
	s.CreateNode(t, "n0")
	s.SetPodCIDR(t, "n0", "198.19.10.0/24")
	for _, tc := range []struct{ conf, want string }{
		{"", "net-conf.json: no such file or directory (kube-flannel.yml mounts the ConfigMap kube-flannel-cfg's net-conf.json there)"},
		{`{"Network": "198.19.0.0/16", "Backend": {"Type": "vxlan"}}`, `net-conf.json: network config: Backend.Type "vxlan": weft implements only the udp backend (fix net-conf.json in the ConfigMap kube-flannel-cfg)`},
	} {
		n := startKubeNode(t, s, "n0", tc.conf, testFastPath{mode: FastPathOff, noWait: true})
		if err := n.wait(t); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("net-conf.json %q: %v\nwant an error with %s", tc.conf, err, tc.want)
		}
	}
}
