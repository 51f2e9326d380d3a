package suite

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/weft-net/weft/bench/lab"
)

// The built-in path "weft -fast-path=off": a second weft on the same two
// nodes, started like an extra path (its own etcd prefix, network, Backend
// port, TUN, subnet file, status socket and healthz port), so that it runs
// beside the first. The fast path's programs take only datagrams to their
// own node's backend port, so the two do not meet.
const (
	UserspacePath        = "weft-userspace"
	UserspaceTitle       = "weft -fast-path=off"
	UserspaceTUN         = "udp-off"
	userspacePort        = 8290 // Backend.Port: extra paths have 8286..8289
	userspaceHealthzPort = 8481 // the first weft's is lab.HealthzPort
	userspaceBridge      = "px-off"
)

// UserspaceNetwork is weft -fast-path=off's flannel Network.
var UserspaceNetwork = netip.MustParsePrefix("198.19.224.0/20")

// udpConfig is a network config of flannel's udp backend.
func udpConfig(network netip.Prefix, port int) string {
	return fmt.Sprintf(`{"Network":"%s","SubnetLen":24,"Backend":{"Type":"udp","Port":%d}}`, network, port)
}

// daemonPath is a path carried by daemons started on both nodes from a
// command line template: an extra path, or weft -fast-path=off.
type daemonPath struct {
	Path
	words  []string // the command line, placeholders not yet substituted
	config string   // the network config, at the path's own etcd prefix
	port   int      // {port}: the default config's Backend.Port
	bridge string   // the empty bridge that holds the node's pod address
	// statusPort is where the daemons serve weft's /status (0: not weft).
	statusPort int
}

// extraDaemon is extra path k as a daemonPath.
func extraDaemon(k int, e ExtraPath) (daemonPath, error) {
	words, err := SplitCommand(e.Template)
	if err != nil {
		return daemonPath{}, fmt.Errorf("path %s: %w", e.Name, err)
	}
	return daemonPath{
		Path:  Path{Name: e.Name, Title: e.Name, Description: "user command: " + e.Template},
		words: words, config: e.NetworkConfig, port: extraPortBase + k, bridge: "px" + strconv.Itoa(k),
	}, nil
}

// userspaceDaemon is weft -fast-path=off: cfg's weft binary with the lab's
// weft flags (cfg.WeftArgs) and -fast-path=off last, so that it wins.
func userspaceDaemon(cfg Config) daemonPath {
	words := []string{cfg.WeftBin, "--etcd-endpoints={etcd}", "--etcd-prefix={prefix}", "--subnet-file={subnet_file}",
		"--iface={iface}", "--tun-name=" + UserspaceTUN, "--healthz-ip=0.0.0.0",
		"--healthz-port=" + strconv.Itoa(userspaceHealthzPort), "--status-socket={dir}/weft.sock"}
	words = append(append(words, cfg.WeftArgs...), "--fast-path=off")
	return daemonPath{
		Path: Path{Name: UserspacePath, Title: UserspaceTitle,
			Description: fmt.Sprintf("a second weft on both nodes with -fast-path=off, the userspace path alone: TUN %s, UDP %d, "+
				"network %s under its own etcd prefix", UserspaceTUN, userspacePort, UserspaceNetwork)},
		words: words, config: udpConfig(UserspaceNetwork, userspacePort), port: userspacePort,
		bridge: userspaceBridge, statusPort: userspaceHealthzPort,
	}
}

// setupPaths starts weft and weft -fast-path=off, builds the kernel paths
// and the extra daemons, and checks that every path carries a ping.
func (r *runner) setupPaths(ctx context.Context) error {
	l := r.lab
	for i := range 2 {
		if err := l.StartWeft(i); err != nil {
			return err
		}
	}
	for i := range 2 {
		if err := l.WaitReady(i, 30*time.Second); err != nil {
			return err
		}
	}
	userspace, err := r.startDaemons(ctx, userspaceDaemon(r.cfg))
	if err != nil {
		return err
	}
	kernel, err := r.kernelPaths()
	if err != nil {
		return err
	}
	r.paths = append([]*pathRun{{Path: Path{Name: "weft", Title: "weft",
		Description: "weft with its defaults on both nodes (-fast-path=auto: the kernel fast path where the kernel allows, " +
			"the userspace path for the rest), flannel's udp backend: TUN udp0, UDP 8285",
		Src: l.Pod(0).Addr(), Dst: l.Pod(1).Addr()},
		pids: func() []int { return []int{l.PID(0), l.PID(1)} }, statusPort: lab.HealthzPort}, userspace}, kernel...)
	for k, e := range r.cfg.Extra {
		d, err := extraDaemon(k, e)
		if err != nil {
			return err
		}
		p, err := r.startDaemons(ctx, d)
		if err != nil {
			return err
		}
		r.paths = append(r.paths, p)
	}
	for _, p := range r.paths {
		if err := r.finishPath(ctx, p); err != nil {
			return err
		}
	}
	return nil
}

// kernelPaths sets up kernel VXLAN and host-gw and returns them with bare
// veth, in report order.
func (r *runner) kernelPaths() ([]*pathRun, error) {
	l := r.lab
	vx, err := l.SetupVXLAN(lab.VXLANOptions{})
	if err != nil {
		return nil, err
	}
	hg, err := l.SetupHostGW(lab.HostGWOptions{})
	if err != nil {
		return nil, err
	}
	return []*pathRun{
		{Path: Path{Name: Baseline, Title: "kernel VXLAN",
			Description: "kernel VXLAN as flannel's vxlan backend sets it up: flannel.1, VNI 1, UDP 8472, nolearning, static FDB and neighbour entries",
			Src:         vx[0], Dst: vx[1]}},
		{Path: Path{Name: "host-gw", Title: "host-gw",
			Description: "plain routes to the peer's subnet via its underlay address, as flannel's host-gw backend: no encapsulation, the ceiling for any overlay",
			Src:         hg[0], Dst: hg[1]}},
		{Path: Path{Name: "veth", Title: "bare veth",
			Description: "the underlay addresses themselves: veth, bridge, veth",
			Src:         l.Node(0).Addr, Dst: l.Node(1).Addr}},
	}, nil
}

// finishPath records p's devices, MTU and queue length, waits until it
// carries a ping and, for weft, records what its fast path does.
func (r *runner) finishPath(ctx context.Context, p *pathRun) error {
	for i, dst := range []netip.Addr{p.Dst, p.Src} {
		dev, err := r.lab.RouteDev(i, dst)
		if err != nil {
			return fmt.Errorf("path %s: %w", p.Name, err)
		}
		p.devs[i] = dev
	}
	p.Device = p.devs[0]
	st, err := r.lab.Link(0, p.Device)
	if err != nil {
		return fmt.Errorf("path %s: %w", p.Name, err)
	}
	p.MTU, p.TxQLen = st.MTU, st.TxQLen
	if err := r.reachable(ctx, p, 15*time.Second); err != nil {
		return err
	}
	if p.statusPort != 0 {
		p.FastPath = r.fastPathState(ctx, p)
	}
	return nil
}

// startDaemons starts d's daemon on both nodes and waits for its
// subnet.env, whose FLANNEL_SUBNET gives the node its address on d.bridge.
func (r *runner) startDaemons(ctx context.Context, d daemonPath) (*pathRun, error) {
	l := r.lab
	prefix := "/weftlab/" + d.Name + "/network"
	if err := l.PutConfigAt(ctx, prefix, d.config); err != nil {
		return nil, fmt.Errorf("path %s: %w", d.Name, err)
	}
	var procs [2]*lab.Proc
	var files [2]string
	for i := range 2 {
		nd := l.Node(i)
		dir := filepath.Join(nd.Dir, d.Name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("path %s: %w", d.Name, err)
		}
		files[i] = filepath.Join(dir, "subnet.env")
		argv := ExpandTemplate(d.words, map[string]string{
			"etcd": l.EtcdEndpoint(), "prefix": prefix, "subnet_file": files[i],
			"ip": nd.Addr.String(), "iface": "eth0", "node": strconv.Itoa(i), "dir": dir,
			"port": strconv.Itoa(d.port),
		})
		if i == 0 {
			d.Daemon = argv
		}
		var err error
		if procs[i], err = l.Spawn(i, "path-"+d.Name, argv, nil); err != nil {
			return nil, fmt.Errorf("path %s: %w", d.Name, err)
		}
	}
	for i := range 2 {
		if err := waitSubnetFile(ctx, d.Name, i, procs[i], files[i]); err != nil {
			return nil, err
		}
		pfx, err := l.AddrFromSubnetFile(i, files[i], d.bridge)
		if err != nil {
			return nil, fmt.Errorf("path %s: %w", d.Name, err)
		}
		if i == 0 {
			d.Src = pfx.Addr()
		} else {
			d.Dst = pfx.Addr()
		}
	}
	return &pathRun{Path: d.Path, statusPort: d.statusPort,
		pids: func() []int { return []int{procs[0].PID(), procs[1].PID()} }}, nil
}

// waitSubnetFile waits up to 60 s for path name's daemon p on node i to
// write file.
func waitSubnetFile(ctx context.Context, name string, i int, p *lab.Proc, file string) error {
	deadline := time.Now().Add(60 * time.Second)
	for {
		if _, err := os.Stat(file); err == nil {
			return nil
		}
		if p.Exited() {
			return fmt.Errorf("path %s: daemon on n%d exited (%s) before writing %s:\n%s",
				name, i, p.ExitState(), file, tail(p.Output(), 20))
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("path %s: no %s after 60 s:\n%s", name, file, tail(p.Output(), 20))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// reachable pings p.Dst from p.Src until one echo comes back (a new path
// may need its peers' leases first).
func (r *runner) reachable(ctx context.Context, p *pathRun, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		out, _ := r.lab.Command(ctx, 0, "ping", "-n", "-c", "1", "-W", "1", "-I", p.Src.String(), p.Dst.String()).CombinedOutput()
		if len(ParsePingRTTs(string(out))) > 0 {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("path %s: %s does not answer pings from %s: %s", p.Name, p.Dst, p.Src, strings.TrimSpace(string(out)))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// fastPathState says what p's weft daemons report of their kernel fast
// path: "running (tcx) on both nodes", "off (-fast-path=off) on both
// nodes", "not running (-fast-path=auto): WHY", ... Only the JSON of /status's fastPath
// is read, so a weft from before the fast path says so instead of failing.
func (r *runner) fastPathState(ctx context.Context, p *pathRun) string {
	var states [2]string
	for i := range 2 {
		var st struct {
			FastPath *struct {
				Mode    string `json:"mode"`
				Running bool   `json:"running"`
				Attach  string `json:"attach"`
				Reason  string `json:"reason"`
			} `json:"fastPath"`
		}
		f := &st.FastPath
		switch err := r.lab.GetJSONAt(ctx, i, p.statusPort, "/status", &st); {
		case err != nil:
			states[i] = "unknown (" + err.Error() + ")"
		case *f == nil:
			states[i] = "not reported (this weft's /status has no fastPath)"
		case (*f).Running:
			states[i] = "running (" + (*f).Attach + ")"
		case (*f).Mode == "off":
			states[i] = "off (-fast-path=off)"
		default:
			states[i] = "not running (-fast-path=" + (*f).Mode + "): " + (*f).Reason
		}
	}
	if states[0] == states[1] {
		return states[0] + " on both nodes"
	}
	return "n0: " + states[0] + "; n1: " + states[1]
}
