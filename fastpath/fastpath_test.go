package fastpath

import (
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"

	"github.com/weft-net/weft/internal/netnstest"
	"github.com/weft-net/weft/tunnel"
)

// fpNode is one node: a namespace with an underlay address, weft's TUN held
// open (never read: whatever the programs do not take dies there) and a
// "pod" address in its subnet.
type fpNode struct {
	ns      *netnstest.NS
	under   netip.Addr
	subnet  netip.Prefix
	pod     netip.Addr
	progs   *Programs
	tun, ul int
}

func newFPNode(t *testing.T, ns *netnstest.NS, under, subnet string) *fpNode {
	t.Helper()
	n := &fpNode{ns: ns, under: netip.MustParseAddr(under), subnet: netip.MustParsePrefix(subnet)}
	n.pod = n.subnet.Addr().Next()
	// A node forwards; bpf_fib_lookup refuses to without it.
	if err := ns.Do(func() error { return os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644) }); err != nil {
		t.Fatal(err)
	}
	var dev tunnel.Device
	if err := ns.Do(func() (err error) { dev, err = tunnel.OpenTUN("udp0", 1472); return err }); err != nil {
		t.Fatalf("open TUN in %s: %v", ns.Name, err)
	}
	t.Cleanup(func() { dev.Close() })
	ns.LinkUp(t, "udp0")
	ns.AddAddr(t, "udp0", netip.PrefixFrom(n.subnet.Addr(), 32).String())
	ns.AddAddr(t, "lo", netip.PrefixFrom(n.pod, 32).String())
	if err := ns.Netlink.RouteAdd(&netlink.Route{LinkIndex: ns.Link(t, "udp0").Attrs().Index,
		Dst: prefixNet(netip.MustParsePrefix("198.19.0.0/16")), Src: n.pod.AsSlice()}); err != nil {
		t.Fatalf("overlay route in %s: %v", ns.Name, err)
	}
	n.tun, n.ul = ns.Link(t, "udp0").Attrs().Index, ns.Link(t, "ul").Attrs().Index
	var err error
	n.progs, err = Load(Config{Local: n.under, Subnet: n.subnet, Port: 8285, Underlay: n.ul, TUN: n.tun})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.progs.Close() })
	return n
}

func prefixNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), 32)}
}

func ping(ns *netnstest.NS, src, dst netip.Addr, count string) error {
	_, err := ns.Run("", "ping", "-n", "-q", "-c", count, "-i", "0.2", "-W", "1", "-I", src.String(), dst.String())
	return err
}

// Both ends in the kernel, in each attach mode: pods ping each other
// through the programs alone (the TUNs are never read), the counters say
// so, a second attach (a restart after kill -9) leaves one set, and a
// detach leaves none.
func TestFastPathBothEnds(t *testing.T) {
	netnstest.SkipUnlessRoot(t)
	if _, err := exec.LookPath("ping"); err != nil {
		t.Skip("skipping: needs ping")
	}
	for _, clsact := range []bool{false, true} {
		name := "tcx"
		if clsact {
			name = "clsact"
		}
		t.Run(name, func(t *testing.T) {
			nsA, nsB := netnstest.New(t), netnstest.New(t)
			netnstest.Veth{A: netnstest.End{NS: nsA, Name: "ul", Addr: "198.18.50.1/24"},
				B: netnstest.End{NS: nsB, Name: "ul", Addr: "198.18.50.2/24"}}.Add(t)
			a := newFPNode(t, nsA, "198.18.50.1", "198.19.1.0/24")
			b := newFPNode(t, nsB, "198.18.50.2", "198.19.2.0/24")
			for _, x := range []struct{ n, peer *fpNode }{{a, b}, {b, a}} {
				if err := x.n.progs.SetPeer(x.peer.subnet, x.peer.under, true); err != nil {
					t.Fatal(err)
				}
			}
			// Resolve the underlay neighbours: until then the programs
			// leave packets to the userspace path (here: nobody).
			if err := ping(nsA, a.under, b.under, "1"); err != nil {
				t.Fatalf("underlay ping: %v", err)
			}
			var atts []*Attachment
			for _, n := range []*fpNode{a, b} {
				for range 2 { // the second stands for a restart after kill -9
					var at *Attachment
					// TCX resolves ifindexes in the calling thread's namespace.
					err := n.ns.Do(func() (err error) { at, err = n.progs.Attach(n.ns.Netlink, n.tun, n.ul, clsact); return err })
					if err != nil {
						t.Fatal(err)
					}
					want := ModeTCX
					if clsact {
						want = ModeClsact
					}
					if at.Mode != want {
						t.Fatalf("attached by %s, want %s", at.Mode, want)
					}
					atts = append(atts, at)
					if !clsact {
						break // TCX links go with their fds: nothing is left to replace
					}
				}
			}
			if clsact {
				for _, n := range []*fpNode{a, b} {
					if got := filters(t, n.ns, "udp0", "egress"); strings.Count(got, "handle 0x1 weft_encap") != 1 {
						t.Errorf("%s udp0 egress after two attaches:\n%s", n.ns.Name, got)
					}
				}
			}
			if err := ping(nsA, a.pod, b.pod, "5"); err != nil {
				ca, _ := a.progs.Counters()
				cb, _ := b.progs.Counters()
				t.Fatalf("pod ping through the kernel path: %v\ncounters A %+v\nB %+v", err, ca, cb)
			}
			ca, err := a.progs.Counters()
			if err != nil {
				t.Fatal(err)
			}
			cb, _ := b.progs.Counters()
			if ca.TxPackets < 5 || ca.RxPackets < 5 || cb.TxPackets < 5 || cb.RxPackets < 5 || ca.Errors+cb.Errors != 0 {
				t.Errorf("counters A %+v, B %+v: want ≥ 5 packets each way in the kernel, no errors", ca, cb)
			}
			for _, at := range atts {
				if err := at.Detach(); err != nil {
					t.Errorf("detach: %v", err)
				}
			}
			if err := ping(nsA, a.pod, b.pod, "1"); err == nil {
				t.Error("pods still reach each other after detach: the ping above did not show the kernel path")
			}
			if clsact {
				if got := filters(t, nsA, "udp0", "egress") + filters(t, nsA, "ul", "ingress"); strings.Contains(got, "weft") {
					t.Errorf("filters left after detach:\n%s", got)
				}
			}
		})
	}
}

func filters(t *testing.T, ns *netnstest.NS, dev, dir string) string {
	t.Helper()
	out, err := ns.Run("", "tc", "filter", "show", "dev", dev, dir)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// A program taken off its hook by someone else (a tc qdisc deleted, a TCX
// link detached through its ID) is noticed and put back by Repair, once.
func TestPlaneRepair(t *testing.T) {
	netnstest.SkipUnlessRoot(t)
	for _, clsact := range []bool{false, true} {
		name := map[bool]string{false: "tcx", true: "clsact"}[clsact]
		t.Run(name, func(t *testing.T) {
			ns, peer := netnstest.New(t), netnstest.New(t)
			netnstest.Veth{A: netnstest.End{NS: ns, Name: "ul", Addr: "198.18.51.1/24"},
				B: netnstest.End{NS: peer, Name: "ul", Addr: "198.18.51.2/24"}}.Add(t)
			n := newFPNode(t, ns, "198.18.51.1", "198.19.1.0/24")
			attach := func(p *Programs) (a *Attachment, err error) {
				err = ns.Do(func() (err error) { a, err = p.Attach(ns.Netlink, n.tun, n.ul, clsact); return err })
				return a, err
			}
			a, err := attach(n.progs)
			if err != nil {
				t.Fatal(err)
			}
			pl := NewPlane(n.progs, a, nil)
			pl.Reattach = attach
			t.Cleanup(func() {
				pl.amu.Lock()
				defer pl.amu.Unlock()
				if err := pl.attach.Detach(); err != nil {
					t.Error(err)
				}
			})
			if did, err := pl.Repair(); err != nil || len(did) != 0 {
				t.Fatalf("repair of an intact attachment: %v, %v; want nothing done", did, err)
			}
			if clsact {
				if _, err := ns.Run("", "tc", "qdisc", "del", "dev", "ul", "clsact"); err != nil {
					t.Fatal(err)
				}
			} else {
				info, err := a.links[1].Info()
				if err != nil {
					t.Fatal(err)
				}
				other, err := link.NewFromID(info.ID) // as another tool would
				if err != nil {
					t.Fatal(err)
				}
				if err := other.Detach(); err != nil {
					t.Fatal(err)
				}
				other.Close()
			}
			if ok, err := a.Intact(); err != nil || ok {
				t.Fatalf("after the decap program was taken off: intact %v, %v", ok, err)
			}
			did, err := pl.Repair()
			if err != nil || len(did) != 1 {
				t.Fatalf("repair: %v, %v; want one re-attach", did, err)
			}
			if ok, err := pl.attach.Intact(); err != nil || !ok {
				t.Errorf("after repair: intact %v, %v", ok, err)
			}
			if clsact {
				for _, f := range []struct{ dev, dir, name string }{{"udp0", "egress", "weft_encap"}, {"ul", "ingress", "weft_decap"}} {
					if got := filters(t, ns, f.dev, f.dir); strings.Count(got, "handle 0x1 "+f.name) != 1 {
						t.Errorf("%s %s after repair:\n%s", f.dev, f.dir, got)
					}
				}
			}
		})
	}
}
