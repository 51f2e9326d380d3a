package node

import (
	"fmt"
	"log/slog"
	"net/netip"
	"strings"

	"github.com/vishvananda/netlink"

	"github.com/weft-net/weft/route"
)

// underlayWatch notices the underlay address leaving the node. The UDP
// socket is bound to it and the lease publishes it (unless -public-ip), so
// without it the node is cut off while looking healthy. Gone at one check,
// it is logged; still gone at the next (routeResync later), weft exits so
// that systemd restarts it on the address the interface has now. One check
// of grace rides out an address that is briefly removed and re-added.
type underlayWatch struct{ missing bool }

func (w *underlayWatch) check(nl *netlink.Handle, iface route.Iface, log *slog.Logger) error {
	// All the node's addresses in one dump (kube-proxy's IPVS mode puts
	// thousands on kube-ipvs0): the address may have moved to another link.
	addrs, err := nl.AddrList(nil, netlink.FAMILY_V4)
	if err != nil {
		log.Debug("list addresses to check the underlay's", "err", err)
		return nil
	}
	index := -1
	if link, err := nl.LinkByName(iface.Name); err == nil {
		index = link.Attrs().Index
	}
	var now []string // what the chosen interface has instead
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP.To4())
		if !ok {
			continue
		}
		if ip == iface.Addr {
			if w.missing {
				log.Info("underlay address is back", "addr", iface.Addr)
			}
			w.missing = false
			return nil
		}
		if a.LinkIndex == index {
			now = append(now, ip.String())
		}
	}
	has := "none"
	if len(now) > 0 {
		has = strings.Join(now, ", ")
	}
	if !w.missing {
		w.missing = true
		log.Warn("underlay address is gone from the node: the UDP socket is bound to it and peers send to it; "+
			"exiting at the next check unless it returns", "addr", iface.Addr, "iface", iface.Name, "iface-now-has", has)
		return nil
	}
	return fmt.Errorf("underlay address %s is gone from the node (%s now has %s): weft's socket is bound to it and "+
		"its lease publishes it; exiting so that the restart uses the address the interface has now", iface.Addr, iface.Name, has)
}

// ipForwardPath is read in the node's namespace: /proc/sys/net is the
// namespace of the thread that opens it.
const ipForwardPath = "/proc/sys/net/ipv4/ip_forward"

// forwardingWatch warns once, naming the fix, while net.ipv4.ip_forward is
// 0: the node then forwards nothing, so no traffic crosses it between the
// overlay and its pods or containers. weft does not turn it on itself, as
// flanneld does not: Docker, the CNI plugin or the operator own it.
type forwardingWatch struct {
	off bool
	// kernel: the fast path runs, whose next-hop lookup (bpf_fib_lookup)
	// fails while forwarding is off, so it sends nothing itself then.
	kernel bool
}

func (w *forwardingWatch) check(read func() ([]byte, error), log *slog.Logger) {
	b, err := read()
	if err != nil {
		log.Debug("read "+ipForwardPath, "err", err)
		return
	}
	off := strings.TrimSpace(string(b)) == "0"
	switch {
	case off && !w.off:
		msg := "net.ipv4.ip_forward is 0: this node forwards nothing, so no overlay traffic reaches its pods or containers, nor leaves them"
		if w.kernel {
			msg += "; and the kernel fast path cannot look up next hops, so weft's process sends every packet"
		}
		log.Warn(msg, "fix", "sysctl -w net.ipv4.ip_forward=1, and net.ipv4.ip_forward = 1 in a file under /etc/sysctl.d to keep it")
	case !off && w.off:
		log.Info("net.ipv4.ip_forward is 1 again: the node forwards")
	}
	w.off = off
}
