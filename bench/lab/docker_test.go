package lab

// A node of the classic flannel + Docker setup: docker0 on FLANNEL_SUBNET
// (mk-docker-opts.sh's --bip), a container behind it, and dockerd's iptables
// rules with their FORWARD drop policy, written after weft is ready and
// again after a Docker restart flushed FORWARD. As with stock flanneld's
// defaults, a new connection from another node into the container must
// work within one -iptables-resync, in either iptables back end.

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/weft-net/weft/internal/netnstest"
)

// resync is weft's default -iptables-resync.
const resync = 5 * time.Second

func TestE2EDockerHost(t *testing.T) {
	t.Parallel()
	requireRoot(t)
	rules, err := os.ReadFile("testdata/docker.rules")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		tool string
		off  bool // -iptables-forward-rules=false
	}{{"iptables-nft", false}, {"iptables-legacy", false}, {"iptables-nft", true}} {
		name := tc.tool
		if tc.off {
			name += "/forward-rules-off"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel() // a lab each, mostly waiting for resyncs
			for _, tool := range []string{tc.tool, tc.tool + "-restore", tc.tool + "-save"} {
				requireTool(t, tool)
			}
			l := newE2ELab(t, Options{Nodes: 2})
			var extra []string
			if tc.off {
				extra = append(extra, "-iptables-forward-rules=false")
			}
			startAll(t, l, extra...)
			waitMesh(t, l)
			ctr := addContainer(t, l, 1)
			docker := strings.ReplaceAll(string(rules), "SUBNET", subnetOf(t, l, 1).String())
			ipt := func(args ...string) string {
				t.Helper()
				return runIn(t, l, 1, "", tc.tool, args...)
			}

			// dockerd starts after weft is ready.
			runIn(t, l, 1, docker, tc.tool+"-restore")
			applied := time.Now()
			if tc.off {
				time.Sleep(resync + time.Second)
				if dial(t, l, 0, ctr, time.Second) == nil {
					t.Fatal("a new connection passed Docker's FORWARD drop policy: the test shows nothing")
				}
				if s := ipt("-S"); strings.Contains(s, "WEFT") {
					t.Errorf("-iptables-forward-rules=false wrote into iptables:\n%s", s)
				}
				if f := mustStatus(t, l, 1).Firewall; f != nil {
					t.Errorf("status firewall %+v with both firewall flags off", f)
				}
				return
			}
			took := waitDial(t, l, ctr, applied)
			t.Logf("%s: container reachable %v after Docker wrote its rules", tc.tool, took.Round(time.Millisecond))
			if f := mustStatus(t, l, 1).Firewall; f == nil || len(f.Joined) != 1 || f.Joined[0] != tc.tool+" filter FORWARD" || len(f.ForwardDrops) != 0 {
				t.Errorf("status firewall %+v, want %s filter FORWARD joined and no drops", f, tc.tool)
			}
			t.Logf("%s -S FORWARD after weft joined:\n%s", tc.tool, ipt("-S", "FORWARD"))

			// dockerd restarts: FORWARD flushed, its rules written again.
			ipt("-F", "FORWARD")
			runIn(t, l, 1, docker, tc.tool+"-restore")
			applied = time.Now()
			if s := ipt("-S", "FORWARD"); strings.Contains(s, "WEFT") {
				t.Fatalf("Docker's rewrite kept weft's jump: the restart shows nothing\n%s", s)
			}
			took = waitDial(t, l, ctr, applied)
			t.Logf("%s: container reachable %v after Docker's restart rewrote FORWARD", tc.tool, took.Round(time.Millisecond))
			if s := ipt("-S", "FORWARD"); strings.Count(s, "-j WEFT-FWD") != 1 {
				t.Errorf("FORWARD after the repair has not one jump to WEFT-FWD:\n%s", s)
			}
		})
	}
}

func requireTool(t *testing.T, tool string) { netnstest.RequireTool(t, tool, "iptables") }

// runIn runs a tool in node i's namespace, with stdin.
func runIn(t *testing.T, l *Lab, i int, stdin, tool string, args ...string) string {
	t.Helper()
	cmd := l.Command(context.Background(), i, tool, args...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v in n%d: %v\n%s", tool, args, i, err, out)
	}
	return string(out)
}

// container is a TCP listener in a namespace behind node i's docker0.
type container struct {
	ns   *netnstest.NS
	addr netip.Addr
	ln   net.Listener
}

// addContainer moves node i's pod address (FLANNEL_SUBNET) from pod0 to a
// bridge docker0, as dockerd with mk-docker-opts' --bip has it, and puts a
// container behind it at the next address, listening on TCP.
func addContainer(t *testing.T, l *Lab, i int) *container {
	t.Helper()
	h := l.nodes[i].handle
	pod := l.Pod(i)
	pod0, err := h.LinkByName(PodLink)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.LinkDel(pod0); err != nil {
		t.Fatalf("remove %s in n%d: %v", PodLink, i, err)
	}
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "docker0"}}
	if err := h.LinkAdd(br); err != nil {
		t.Fatalf("add docker0 in n%d: %v", i, err)
	}
	if err := h.AddrAdd(br, &netlink.Addr{IPNet: ipNet(pod)}); err != nil {
		t.Fatalf("add %s to docker0: %v", pod, err)
	}
	c := &container{ns: netnstest.New(t), addr: pod.Addr().Next()}
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "vethc0", MasterIndex: br.Index}, PeerName: "eth0",
		PeerNamespace: netlink.NsFd(c.ns.Handle)}
	if err := h.LinkAdd(veth); err != nil {
		t.Fatalf("add the container's veth in n%d: %v", i, err)
	}
	for _, link := range []netlink.Link{br, veth} {
		if err := h.LinkSetUp(link); err != nil {
			t.Fatal(err)
		}
	}
	c.ns.AddAddr(t, "eth0", netip.PrefixFrom(c.addr, pod.Bits()).String())
	c.ns.LinkUp(t, "eth0")
	if err := c.ns.Netlink.RouteAdd(&netlink.Route{Gw: pod.Addr().AsSlice()}); err != nil {
		t.Fatalf("container default route via %s: %v", pod.Addr(), err)
	}
	if err := c.ns.Do(func() (err error) {
		c.ln, err = net.Listen("tcp4", netip.AddrPortFrom(c.addr, 8080).String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.ln.Close() })
	go func() {
		for {
			conn, err := c.ln.Accept()
			if err != nil {
				return
			}
			_, _ = conn.Write([]byte("container\n"))
			conn.Close()
		}
	}()
	return c
}

// dial opens a new TCP connection from node i's pod address to the
// container and reads its greeting.
func dial(t *testing.T, l *Lab, i int, c *container, timeout time.Duration) error {
	t.Helper()
	return inNetns(l.nodes[i].ns, func() error {
		d := net.Dialer{Timeout: timeout, LocalAddr: &net.TCPAddr{IP: l.Pod(i).Addr().AsSlice()}}
		conn, err := d.Dial("tcp4", c.ln.Addr().String())
		if err != nil {
			return err
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(timeout))
		buf := make([]byte, 16)
		n, err := conn.Read(buf)
		if err == nil && string(buf[:n]) != "container\n" {
			err = fmt.Errorf("greeting %q", buf[:n])
		}
		return err
	})
}

// waitDial retries new connections from node 0 until one works, failing the
// test unless it does within one resync (and a second of slack) of since.
func waitDial(t *testing.T, l *Lab, c *container, since time.Time) time.Duration {
	t.Helper()
	for {
		err := dial(t, l, 0, c, 500*time.Millisecond)
		if err == nil {
			return time.Since(since)
		}
		if time.Since(since) > resync+time.Second {
			t.Fatalf("no connection from n0 into the container within one resync (%v) of Docker's rules: %v\n%s",
				resync, err, l.Log(1))
		}
		time.Sleep(200 * time.Millisecond)
	}
}
