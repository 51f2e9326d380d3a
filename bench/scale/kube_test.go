package scale

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/weft-net/weft/bench/lab"
	"github.com/weft-net/weft/kube/kubetest"
)

// kubeNode is a Node as kubelet registers it at scale: labels, a few
// annotations, addresses, capacity, five conditions, a few dozen images
// (several KiB in all, before the API server's managedFields), plus a
// /29 podCIDR and flannel's annotations as a udp flanneld writes them.
func kubeNode(i int) *corev1.Node {
	name := fmt.Sprintf("sim-%05d", i)
	ip := fmt.Sprintf("198.18.%d.%d", 100+i/250, 1+i%250)
	cidr := netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 19, byte(i * 8 / 256), byte(i * 8 % 256)}), 29).String()
	p := "flannel.alpha.coreos.com/"
	n := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{
			"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
			"beta.kubernetes.io/os": "linux", "beta.kubernetes.io/arch": "amd64", "node.kubernetes.io/instance-type": "m5.xlarge",
			"topology.kubernetes.io/region": "eu-west-1", "topology.kubernetes.io/zone": "eu-west-1" + string(rune('a'+i%3)),
		}, Annotations: map[string]string{
			"volumes.kubernetes.io/controller-managed-attach-detach": "true", "node.alpha.kubernetes.io/ttl": "0",
			p + "backend-type": "", p + "backend-data": "null", p + "public-ip": ip, p + "kube-subnet-manager": "true",
		}},
		Spec: corev1.NodeSpec{PodCIDR: cidr, PodCIDRs: []string{cidr}, ProviderID: "aws:///eu-west-1a/i-0" + strconv.Itoa(1000000+i)},
	}
	q := func(s string) resource.Quantity { return resource.MustParse(s) }
	res := corev1.ResourceList{"cpu": q("4"), "memory": q("16005304Ki"), "pods": q("110"), "ephemeral-storage": q("101430960Ki")}
	n.Status.Capacity, n.Status.Allocatable = res, res
	n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: ip}, {Type: corev1.NodeHostName, Address: name},
		{Type: corev1.NodeInternalDNS, Address: name + ".eu-west-1.compute.internal"}}
	now := metav1.Now()
	for _, c := range []struct{ t, s, r, m string }{
		{"MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"},
		{"DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"},
		{"PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"},
		{"Ready", "True", "KubeletReady", "kubelet is posting ready status"},
	} {
		n.Status.Conditions = append(n.Status.Conditions, corev1.NodeCondition{Type: corev1.NodeConditionType(c.t),
			Status: corev1.ConditionStatus(c.s), Reason: c.r, Message: c.m, LastHeartbeatTime: now, LastTransitionTime: now})
	}
	n.Status.NodeInfo = corev1.NodeSystemInfo{MachineID: fmt.Sprintf("%032x", i), SystemUUID: fmt.Sprintf("ec2%029x", i), BootID: fmt.Sprintf("%032x", i+7),
		KernelVersion: "6.1.0-57-amd64", OSImage: "Debian GNU/Linux 12 (bookworm)", ContainerRuntimeVersion: "containerd://1.7.24",
		KubeletVersion: "v1.37.2", OperatingSystem: "linux", Architecture: "amd64"}
	for j := range 30 {
		n.Status.Images = append(n.Status.Images, corev1.ContainerImage{Names: []string{
			fmt.Sprintf("registry.example/team-%d/service-%d@sha256:%064x", j%7, j, j*7919+i%13),
			fmt.Sprintf("registry.example/team-%d/service-%d:v1.%d.%d", j%7, j, j, i%5)}, SizeBytes: int64(10_000_000 + j*1_234_567)})
	}
	return n
}

// TestKubeScale is the control plane at Kubernetes' 5,000 Nodes on a real
// kube-apiserver (sudo make kube-scale; not part of make test): one weft
// -kube-subnet-mgr in a lab node, and with WEFT_FLANNELD a stock flanneld
// --kube-subnet-mgr beside it on the same load. It measures the time from
// start to every peer in weft's table, one Node's change to weft's table,
// and both daemons' RSS, and writes bench/results/kube-scale.md.
func TestKubeScale(t *testing.T) {
	size, _ := strconv.Atoi(os.Getenv("WEFT_KUBE_SCALE"))
	if size == 0 {
		t.Skip("a benchmark: sudo make kube-scale (WEFT_KUBE_SCALE=5000)")
	}
	weftBin, err := filepath.Abs("../../bin/weft")
	if err != nil {
		t.Fatal(err)
	}
	l, err := lab.New(lab.Options{Nodes: 2, WeftBin: weftBin})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	api := kubetest.Start(t, kubetest.WithAddress(l.HostAddr()))
	kubeconfig, netConf := kubeScaleAccess(t, api)
	begin := time.Now()
	createNodes(t, api, size)
	write := time.Since(begin)
	t.Logf("%d Nodes written in %v", size, write.Round(time.Millisecond))
	for i, n := range l.Nodes() {
		api.CreateNode(t, n.Name, func(no *corev1.Node) {
			no.Annotations = map[string]string{"volumes.kubernetes.io/controller-managed-attach-detach": "true"}
			no.Spec.PodCIDR = fmt.Sprintf("198.19.%d.0/29", 250+i)
		})
	}
	args := func(n lab.Node) []string {
		return []string{"--kube-subnet-mgr", "--kubeconfig-file=" + kubeconfig, "--net-config-path=" + netConf,
			"--subnet-file=" + n.SubnetFile, "--healthz-ip=0.0.0.0", "--healthz-port=" + strconv.Itoa(lab.HealthzPort),
			"--status-socket=" + filepath.Join(n.Dir, "weft.sock")}
	}
	n0 := l.Node(0)
	start := time.Now()
	if err := l.StartWeftWith(0, args(n0), []string{"NODE_NAME=" + n0.Name}); err != nil {
		t.Fatal(err)
	}
	allPeers := waitKubePeers(t, l, size, start)
	if err := l.WaitReady(0, time.Minute); err != nil {
		t.Fatal(err)
	}
	ready := time.Since(start)
	changes := kubeChanges(t, l, api, 20)
	time.Sleep(5 * time.Second) // RSS after the start's garbage is collected
	weftRSS, err := l.RSS(0)
	if err != nil {
		t.Fatal(err)
	}
	report := fmt.Sprintf("# weft -kube-subnet-mgr at %d Nodes\n\n`sudo make kube-scale` on %s, kube-apiserver %s on an embedded etcd, %s, %s, stock flanneld %s. "+
		"Nodes as kubelet writes them (labels, addresses, capacity, conditions, 30 images, managedFields), %d written in %v.\n\n"+
		"| | weft | stock flanneld |\n|---|---|---|\n", size, hostInfo(), kubetest.Version, time.Now().UTC().Format("2006-01-02 15:04 UTC"), weftVersion(weftBin), flanneldVersion(), size, write.Round(time.Millisecond))
	fl := flanneldScale(t, l, kubeconfig, netConf)
	report += fmt.Sprintf("| start to every peer in the table | %v | %s |\n", allPeers.Round(time.Millisecond), fl.start)
	report += fmt.Sprintf("| start to ready (subnet.env) | %v | %s |\n", ready.Round(time.Millisecond), fl.ready)
	report += fmt.Sprintf("| one Node's change in the table, p50 / max of %d | %v / %v | (no table to read) |\n", len(changes),
		changes[len(changes)/2].Round(time.Millisecond), changes[len(changes)-1].Round(time.Millisecond))
	report += fmt.Sprintf("| RSS after start | %.1f MiB | %s |\n", float64(weftRSS)/(1<<20), fl.rss)
	t.Log("\n" + report)
	out := os.Getenv("WEFT_KUBE_SCALE_OUT")
	if out == "" {
		out = "../results/kube-scale.md"
	}
	if err := os.WriteFile(out, []byte(report), 0o644); err != nil {
		t.Fatal(err)
	}
	if allPeers > 10*time.Second || changes[len(changes)-1] > time.Second || weftRSS > 64<<20 {
		t.Errorf("targets: every peer ≤ 10 s (%v), one change ≤ 1 s (max %v), RSS ≤ 64 MiB (%.1f MiB)", allPeers,
			changes[len(changes)-1], float64(weftRSS)/(1<<20))
	}
}

func kubeScaleAccess(t *testing.T, api *kubetest.Server) (kubeconfig, netConf string) {
	kubeconfig = api.Kubeconfig(t, api.Grant(t, "kube-flannel", "flannel", kubetest.FlannelRules))
	netConf = filepath.Join(t.TempDir(), "net-conf.json")
	if err := os.WriteFile(netConf, []byte(`{"Network": "198.19.0.0/16", "EnableNFTables": true, "Backend": {"Type": "udp"}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	return kubeconfig, netConf
}

// createNodes writes size Nodes with 16 writers, as many kubelets would.
func createNodes(t *testing.T, api *kubetest.Server, size int) {
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for w := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < size; i += 16 {
				if _, err := api.Admin().CoreV1().Nodes().Create(context.Background(), kubeNode(i), metav1.CreateOptions{FieldManager: "kubelet"}); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// waitKubePeers waits until node 0's table holds want peers.
func waitKubePeers(t *testing.T, l *lab.Lab, want int, since time.Time) time.Duration {
	for {
		var s lab.Status
		if err := l.GetJSON(t.Context(), 0, "/status?peers=0", &s); err == nil && s.PeerTable.Peers >= want {
			return time.Since(since)
		}
		if time.Since(since) > 2*time.Minute {
			t.Fatalf("weft's table did not reach %d peers in 2 minutes; weft's log:\n%s", want, l.Log(0))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// kubeChanges moves n Nodes' public IPs and times each to weft's table.
func kubeChanges(t *testing.T, l *lab.Lab, api *kubetest.Server, n int) []time.Duration {
	var out []time.Duration
	for i := range n {
		var before lab.Status
		if err := l.GetJSON(t.Context(), 0, "/status?peers=0", &before); err != nil {
			t.Fatal(err)
		}
		patch := fmt.Sprintf(`{"metadata":{"annotations":{"flannel.alpha.coreos.com/public-ip":"198.18.99.%d"}}}`, 1+i)
		sent := time.Now()
		if _, err := api.Admin().CoreV1().Nodes().Patch(t.Context(), kubeNode(i*97).Name, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
		for {
			var s lab.Status
			if err := l.GetJSON(t.Context(), 0, "/status?peers=0", &s); err == nil && s.PeerTable.Updates > before.PeerTable.Updates {
				out = append(out, time.Since(sent))
				break
			}
			if time.Since(sent) > 10*time.Second {
				t.Fatalf("change %d not in weft's table after 10 s", i)
			}
			time.Sleep(2 * time.Millisecond)
		}
	}
	slices.Sort(out)
	return out
}

type flanneldFigures struct{ start, ready, rss string }

// flanneldScale runs stock flanneld --kube-subnet-mgr on node 1 when
// WEFT_FLANNELD names it: time to its informer's sync and to subnet.env,
// and its RSS.
func flanneldScale(t *testing.T, l *lab.Lab, kubeconfig, netConf string) flanneldFigures {
	bin := os.Getenv("WEFT_FLANNELD")
	if bin == "" {
		return flanneldFigures{"not run (WEFT_FLANNELD)", "not run", "not run"}
	}
	n := l.Node(1)
	start := time.Now()
	if err := l.StartDaemon(1, bin, []string{"--kube-subnet-mgr", "--kubeconfig-file=" + kubeconfig, "--net-config-path=" + netConf,
		"--subnet-file=" + n.SubnetFile, "--iface=eth0"}, []string{"NODE_NAME=" + n.Name}); err != nil {
		t.Fatal(err)
	}
	var synced time.Duration
	for synced == 0 {
		if strings.Contains(l.Log(1), "Node controller sync successful") {
			synced = time.Since(start)
		} else if time.Since(start) > 2*time.Minute {
			t.Fatalf("flanneld did not sync in 2 minutes:\n%s", l.Log(1))
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := l.WaitSubnetFile(1, 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	ready := time.Since(start)
	time.Sleep(5 * time.Second)
	rss, err := l.RSS(1)
	if err != nil {
		t.Fatal(err)
	}
	return flanneldFigures{fmt.Sprintf("%v (its informer's sync; its table is not readable)", synced.Round(time.Millisecond)),
		ready.Round(time.Millisecond).String(), fmt.Sprintf("%.1f MiB", float64(rss)/(1<<20))}
}

func hostInfo() string {
	k, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	return fmt.Sprintf("%d CPUs, Linux %s", runtime.NumCPU(), strings.TrimSpace(string(k)))
}

// flanneldVersion is what WEFT_FLANNELD's -version prints (flanneld
// writes it to stderr).
func flanneldVersion() string {
	bin := os.Getenv("WEFT_FLANNELD")
	if bin == "" {
		return "not run"
	}
	out, err := exec.Command(bin, "-version").CombinedOutput()
	if err != nil {
		return "?"
	}
	return strings.TrimSpace(string(out))
}

func weftVersion(bin string) string {
	out, err := exec.Command(bin, "-version").Output()
	if err != nil {
		return "?"
	}
	return strings.TrimSpace(string(out))
}
