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
