package lab

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Paths other than weft, for the benchmarks: kernel VXLAN set up as
// flannel's vxlan backend sets it up, and host-gw (plain routes). Both
// live in 198.19.128.0/17, outside weft's default benchmark network
// 198.19.0.0/17, so every path can be up in the same namespaces at once.

// VXLANOptions configure SetupVXLAN. The zero value is flannel's vxlan
// backend: device flannel.1, VNI 1, UDP port 8472, MTU = underlay MTU − 50.
type VXLANOptions struct {
	Name string // default "flannel.1"
	VNI  int    // default 1
	Port int    // default 8472 (flannel's, not IANA's 4789)
	MTU  int    // default underlay MTU − 50
	// Subnet holds one address per node on the device: node i gets host
	// i+1 (default 198.19.200.0/24).
	Subnet netip.Prefix
}

// DefaultVXLANSubnet is where SetupVXLAN puts the nodes' VXLAN addresses.
var DefaultVXLANSubnet = netip.MustParsePrefix("198.19.200.0/24")

func (o *VXLANOptions) defaults(underlayMTU int) {
	if o.Name == "" {
		o.Name = "flannel.1"
	}
	if o.VNI == 0 {
		o.VNI = 1
	}
	if o.Port == 0 {
		o.Port = 8472
	}
	if o.MTU == 0 {
		o.MTU = underlayMTU - 50 // outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14
	}
	if !o.Subnet.IsValid() {
		o.Subnet = DefaultVXLANSubnet
	}
}

// vxlanMAC is node i's VTEP MAC: locally administered and fixed, so that
// every node knows its peers' without asking.
func vxlanMAC(i int) net.HardwareAddr {
	return net.HardwareAddr{0x02, 0x77, 0x66, 0x00, byte(i >> 8), byte(i)}
}

// SetupVXLAN creates a kernel VXLAN device on every node as flannel's
// vxlan backend does (`ip link add flannel.1 type vxlan id 1 local <ip> dev
// eth0 dstport 8472 nolearning`), with static, permanent neighbour and
// FDB entries for every peer in place of flannel's watch of etcd. It
// returns each node's VXLAN address.
func (l *Lab) SetupVXLAN(o VXLANOptions) ([]netip.Addr, error) {
	o.defaults(l.opts.MTU)
	if o.Subnet.Bits() > 30 || len(l.nodes) > 1<<(32-o.Subnet.Bits())-2 {
		return nil, fmt.Errorf("lab: vxlan subnet %s too small for %d nodes", o.Subnet, len(l.nodes))
	}
	addrs := make([]netip.Addr, len(l.nodes))
	for i := range l.nodes {
		addrs[i] = nthHost(o.Subnet, i+1)
	}
	for i, n := range l.nodes {
		if _, err := l.node(i); err != nil {
			return nil, err
		}
		h := n.handle
		eth, err := h.LinkByName("eth0")
		if err != nil {
			return nil, fmt.Errorf("lab: vxlan: find eth0 in %s: %w", n.NS, err)
		}
		vx := &netlink.Vxlan{
			LinkAttrs:    netlink.LinkAttrs{Name: o.Name, MTU: o.MTU, HardwareAddr: vxlanMAC(i)},
			VxlanId:      o.VNI,
			VtepDevIndex: eth.Attrs().Index,
			SrcAddr:      net.IP(n.Addr.AsSlice()),
			Port:         o.Port,
			Learning:     false,
		}
		if err := h.LinkAdd(vx); err != nil {
			return nil, fmt.Errorf("lab: create vxlan %s in %s: %w", o.Name, n.NS, err)
		}
		link, err := h.LinkByName(o.Name)
		if err != nil {
			return nil, fmt.Errorf("lab: find %s in %s: %w", o.Name, n.NS, err)
		}
		if err := h.AddrAdd(link, &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(addrs[i], o.Subnet.Bits()))}); err != nil {
			return nil, fmt.Errorf("lab: add %s to %s in %s: %w", addrs[i], o.Name, n.NS, err)
		}
		if err := h.LinkSetUp(link); err != nil {
			return nil, fmt.Errorf("lab: set %s up in %s: %w", o.Name, n.NS, err)
		}
		for j, peer := range l.nodes {
			if j == i {
				continue
			}
			// ARP for the peer's VTEP address, then where that MAC lives:
			// flannel's two entries per remote node.
			if err := h.NeighSet(&netlink.Neigh{
				LinkIndex: link.Attrs().Index, Family: netlink.FAMILY_V4, State: netlink.NUD_PERMANENT,
				Type: unix.RTN_UNICAST, IP: net.IP(addrs[j].AsSlice()), HardwareAddr: vxlanMAC(j),
			}); err != nil {
				return nil, fmt.Errorf("lab: neighbour %s on %s in %s: %w", addrs[j], o.Name, n.NS, err)
			}
			if err := h.NeighSet(&netlink.Neigh{
				LinkIndex: link.Attrs().Index, Family: unix.AF_BRIDGE, State: netlink.NUD_PERMANENT,
				Flags: netlink.NTF_SELF, IP: net.IP(peer.Addr.AsSlice()), HardwareAddr: vxlanMAC(j),
			}); err != nil {
				return nil, fmt.Errorf("lab: fdb %s dst %s on %s in %s: %w", vxlanMAC(j), peer.Addr, o.Name, n.NS, err)
			}
		}
	}
	l.log.Info("vxlan up", "device", o.Name, "vni", o.VNI, "port", o.Port, "mtu", o.MTU, "subnet", o.Subnet)
	return addrs, nil
}

// HostGWOptions configure SetupHostGW.
type HostGWOptions struct {
	// Link is the empty bridge holding each node's address (default
	// "hgw0"; the lab's kernel may lack the dummy driver).
	Link string
	// Base is node 0's subnet; node i gets the i-th subnet of the same
	// length after it (default 198.19.210.0/24: 198.19.210+i.0/24).
	Base netip.Prefix
}

// DefaultHostGWBase is node 0's host-gw subnet.
var DefaultHostGWBase = netip.MustParsePrefix("198.19.210.0/24")

func (o *HostGWOptions) defaults() {
	if o.Link == "" {
		o.Link = "hgw0"
	}
	if !o.Base.IsValid() {
		o.Base = DefaultHostGWBase
	}
}

// SetupHostGW gives every node a subnet on an empty bridge and routes
// every peer's subnet via the peer's underlay address, as flannel's
// host-gw backend does: no encapsulation, the ceiling for any overlay. It
// returns each node's address (the first host of its subnet).
func (l *Lab) SetupHostGW(o HostGWOptions) ([]netip.Addr, error) {
	o.defaults()
	subnets, err := hostGWSubnets(o.Base, len(l.nodes))
	if err != nil {
		return nil, err
	}
	addrs := make([]netip.Addr, len(l.nodes))
	for i, n := range l.nodes {
		if _, err := l.node(i); err != nil {
			return nil, err
		}
		addr, err := l.addrOnBridge(n, o.Link, netip.PrefixFrom(nthHost(subnets[i], 1), subnets[i].Bits()))
		if err != nil {
			return nil, err
		}
		addrs[i] = addr.Addr()
		eth, err := n.handle.LinkByName("eth0")
		if err != nil {
			return nil, fmt.Errorf("lab: host-gw: find eth0 in %s: %w", n.NS, err)
		}
		for j, peer := range l.nodes {
			if j == i {
				continue
			}
			r := &netlink.Route{LinkIndex: eth.Attrs().Index, Dst: ipNet(subnets[j]), Gw: net.IP(peer.Addr.AsSlice())}
			if err := n.handle.RouteReplace(r); err != nil {
				return nil, fmt.Errorf("lab: route %s via %s in %s: %w", subnets[j], peer.Addr, n.NS, err)
			}
		}
	}
	l.log.Info("host-gw up", "link", o.Link, "base", o.Base)
	return addrs, nil
}

// TeardownHostGW removes what SetupHostGW(o) added: the routes and the
// bridges. Missing pieces are not an error.
func (l *Lab) TeardownHostGW(o HostGWOptions) error {
	o.defaults()
	subnets, err := hostGWSubnets(o.Base, len(l.nodes))
	if err != nil {
		return err
	}
	var errs []error
	for i, n := range l.nodes {
		if _, err := l.node(i); err != nil {
			return err
		}
		for j, s := range subnets {
			if j == i {
				continue
			}
			err := n.handle.RouteDel(&netlink.Route{Dst: ipNet(s)})
			if err != nil && !errors.Is(err, unix.ESRCH) {
				errs = append(errs, fmt.Errorf("lab: delete route %s in %s: %w", s, n.NS, err))
			}
		}
	}
	return errors.Join(append(errs, l.DeleteLink(o.Link))...)
}

// DeleteLink deletes the link called name in every node namespace (the
// VXLAN device, a host-gw bridge); nodes without it are skipped.
func (l *Lab) DeleteLink(name string) error {
	var errs []error
	for i, n := range l.nodes {
		if _, err := l.node(i); err != nil {
			return err
		}
		link, err := n.handle.LinkByName(name)
		if err != nil {
			var nf netlink.LinkNotFoundError
			if !errors.As(err, &nf) {
				errs = append(errs, fmt.Errorf("lab: find %s in %s: %w", name, n.NS, err))
			}
			continue
		}
		if err := n.handle.LinkDel(link); err != nil {
			errs = append(errs, fmt.Errorf("lab: delete %s in %s: %w", name, n.NS, err))
		}
	}
	return errors.Join(errs...)
}

func hostGWSubnets(base netip.Prefix, n int) ([]netip.Prefix, error) {
	if !base.Addr().Is4() || base.Bits() < 8 || base.Bits() > 30 {
		return nil, fmt.Errorf("lab: host-gw base %s: want an IPv4 prefix of /8../30", base)
	}
	base = base.Masked()
	size := uint64(1) << (32 - base.Bits())
	first := uint64(ipv4Uint(base.Addr()))
	if first+uint64(n)*size > 1<<32 {
		return nil, fmt.Errorf("lab: host-gw base %s: no room for %d subnets", base, n)
	}
	out := make([]netip.Prefix, n)
	for i := range out {
		out[i] = netip.PrefixFrom(uint32Addr(uint32(first+uint64(i)*size)), base.Bits())
	}
	return out, nil
}

// AddrFromSubnetFile puts the first host of FLANNEL_SUBNET from a
// subnet.env on link, an empty bridge in node i created if missing, and
// returns it: the pod address of another daemon (a stock flanneld) running
// beside weft. Other addresses on link are removed.
func (l *Lab) AddrFromSubnetFile(i int, subnetFile, link string) (netip.Prefix, error) {
	n, err := l.node(i)
	if err != nil {
		return netip.Prefix{}, err
	}
	env, err := ReadSubnetEnv(subnetFile)
	if err != nil {
		return netip.Prefix{}, err
	}
	pod, err := netip.ParsePrefix(env["FLANNEL_SUBNET"])
	if err != nil || !pod.Addr().Is4() {
		return netip.Prefix{}, fmt.Errorf("lab: %s: FLANNEL_SUBNET=%q is not an IPv4 prefix", subnetFile, env["FLANNEL_SUBNET"])
	}
	return l.addrOnBridge(n, link, pod)
}

// addrOnBridge makes pod the only IPv4 address of link, an empty bridge in
// n's namespace (created if missing, like cni0 before its first pod), and
// sets it up.
func (l *Lab) addrOnBridge(n *node, name string, pod netip.Prefix) (netip.Prefix, error) {
	h := n.handle
	link, err := h.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if !errors.As(err, &nf) {
			return netip.Prefix{}, fmt.Errorf("lab: find %s in %s: %w", name, n.NS, err)
		}
		link = &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}
		if err := h.LinkAdd(link); err != nil {
			return netip.Prefix{}, fmt.Errorf("lab: create %s in %s: %w", name, n.NS, err)
		}
	}
	addrs, err := h.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("lab: list addresses of %s in %s: %w", name, n.NS, err)
	}
	have := false
	for _, a := range addrs {
		ones, _ := a.Mask.Size()
		ip, _ := netip.AddrFromSlice(a.IP)
		if netip.PrefixFrom(ip.Unmap(), ones) == pod {
			have = true
			continue
		}
		if err := h.AddrDel(link, &a); err != nil { // a stale subnet from an earlier lease
			return netip.Prefix{}, fmt.Errorf("lab: remove %s from %s in %s: %w", a.IPNet, name, n.NS, err)
		}
	}
	if !have {
		if err := h.AddrAdd(link, &netlink.Addr{IPNet: ipNet(pod)}); err != nil {
			return netip.Prefix{}, fmt.Errorf("lab: add %s to %s in %s: %w", pod, name, n.NS, err)
		}
	}
	if err := h.LinkSetUp(link); err != nil {
		return netip.Prefix{}, fmt.Errorf("lab: set %s up in %s: %w", name, n.NS, err)
	}
	return pod, nil
}

// PutConfigAt writes raw JSON to <prefix>/config, for a second daemon
// with its own prefix and network.
func (l *Lab) PutConfigAt(ctx context.Context, prefix, config string) error {
	c, err := l.kv()
	if err != nil {
		return err
	}
	key := prefix + "/config"
	if _, err := c.Put(ctx, key, config); err != nil {
		return fmt.Errorf("lab: put %s: %w", key, err)
	}
	return nil
}

// nthHost is the address n after p's network address.
func nthHost(p netip.Prefix, n int) netip.Addr {
	return uint32Addr(ipv4Uint(p.Masked().Addr()) + uint32(n))
}

func ipv4Uint(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

func uint32Addr(v uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}
