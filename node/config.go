// Package node is one running weft daemon: it binds, leases a subnet in
// etcd, creates the TUN device and its routes, hands the peers to the data
// planes, watches and renews, keeps the firewall rules, writes subnet.env
// and says when it is ready, until it is stopped or something fatal
// happens. The command line builds a Config and calls Run; the data planes
// are driven only through dataplane.Plane.
package node

import (
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/weft-net/weft/etcd"
	"github.com/weft-net/weft/kube"
	"github.com/weft-net/weft/route"
	"github.com/weft-net/weft/status"
	"github.com/weft-net/weft/tunnel"
)

// Config is everything a node needs, parsed and validated by the command
// line (flanneld's flags and FLANNELD_* variables, and weft's own).
type Config struct {
	Build status.Build
	// Etcd is the etcd client's config; the node sets its Logger.
	Etcd etcd.Config
	// Kube, if set, makes the Kubernetes API the lease store instead of
	// etcd (-kube-subnet-mgr); the node sets its Logger.
	Kube *kube.Config
	// NetConfPath is -net-config-path: the network config with Kube.
	NetConfPath string
	// Iface chooses the underlay interface (-iface, -iface-regex,
	// -iface-can-reach).
	Iface route.Selector
	// PublicIP is published in the lease (-public-ip); zero: the
	// interface's address.
	PublicIP     netip.Addr
	SubnetFile   string        // flannel's subnet.env
	RenewMargin  time.Duration // renew this long before the lease expires
	HealthzIP    string
	HealthzPort  int    // 0: no healthz listener
	StatusSocket string // "": none
	TunName      string
	MTU          int // 0: the interface's MTU minus tunnel.Overhead
	SourceCheck  tunnel.SourceCheck
	Offloads     Offloads
	// SplitDirections forwards each direction in a thread of its own.
	SplitDirections bool
	PeerMetrics     bool
	Firewall        Firewall
	// FastPath is -fast-path: whether the kernel data plane runs beside
	// the userspace one.
	FastPath FastPathMode
	// FastPathClsact attaches the fast path by tc clsact filters even where
	// the kernel has TCX (-fast-path-attach=clsact), to order weft among
	// other tc programs as an operator's tools expect.
	FastPathClsact bool
	// OpenTUN, if set, opens the TUN in place of tunnel.OpenTUNConfig (the
	// wireguard-go comparison build).
	OpenTUN func(name string, mtu int) (tunnel.Device, error)
}

// FastPathMode is -fast-path.
type FastPathMode string

const (
	// FastPathAuto attaches the kernel fast path where the kernel allows,
	// else says once why and runs the userspace path alone.
	FastPathAuto FastPathMode = "auto"
	// FastPathOn fails the start, saying why, if the fast path cannot run.
	FastPathOn FastPathMode = "on"
	// FastPathOff runs the userspace path alone.
	FastPathOff FastPathMode = "off"
)

// ParseFastPath checks -fast-path's value.
func ParseFastPath(s string) (FastPathMode, error) {
	switch m := FastPathMode(strings.TrimSpace(s)); m {
	case FastPathAuto, FastPathOn, FastPathOff:
		return m, nil
	}
	return "", fmt.Errorf("-fast-path=%s: must be auto (the kernel fast path where the kernel allows), on (fail without it) or off (the userspace path only)", s)
}

// Offloads are the kernel offloads the userspace data plane may use.
type Offloads struct {
	TUN bool // TSO, checksum offload and coalesced writes on the TUN
	GSO bool // UDP segmentation on send
	GRO bool // UDP coalescing on receive
}

// Firewall is -ip-masq and -iptables-forward-rules.
type Firewall struct {
	Masquerade  bool
	FullyRandom bool // masquerade with fully random source ports
	Forward     bool // accept forwarded traffic from and to the network
	Resync      time.Duration
}

// ParseOffloads returns the offloads to use: none unless on, else those the
// comma-separated list names (tun, gso, gro).
func ParseOffloads(on bool, list string) (Offloads, error) {
	var o Offloads
	for _, name := range strings.Split(list, ",") {
		switch name = strings.TrimSpace(name); name {
		case "tun":
			o.TUN = on
		case "gso":
			o.GSO = on
		case "gro":
			o.GRO = on
		case "":
		default:
			return Offloads{}, fmt.Errorf("-offloads=%s: unknown offload %q; use a comma-separated list of tun, gso and gro", list, name)
		}
	}
	return o, nil
}

// ConfigPutHint is the command that creates the network config, for
// messages that tell the operator what to type.
func ConfigPutHint(c etcd.Config) string {
	return fmt.Sprintf("weft config put -f config.json -etcd-endpoints=%s -etcd-prefix=%s", endpoints(c), c.Prefix)
}

func endpoints(c etcd.Config) string { return strings.Join(c.Endpoints, ",") }
