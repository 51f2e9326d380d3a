package node

import (
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"

	"github.com/google/nftables"

	"github.com/weft-net/weft/firewall"
)

// iptablesJoiner keeps flanneld's two FORWARD accepts in iptables' filter
// FORWARD of each back end whose FORWARD drops by default (Docker's policy),
// where the accepts in weft's nftables table cannot reach (see
// firewall.Iptables). It runs at every resync: Docker starts, restarts and
// rewrites its rules after weft, and the jump must be back within one.
// A clean stop leaves the rules, as flanneld's stay, so pods keep working
// across a restart.
type iptablesJoiner struct {
	conn    *nftables.Conn
	do      func(func() error) error // runs in the node's namespace (the tools inherit it)
	network netip.Prefix
	log     *slog.Logger
	tools   map[firewall.Backend]*firewall.Iptables
	lastErr map[firewall.Backend]string // logged once per change
	joined  []firewall.Backend          // where the accepts are in place now
}

func newIptablesJoiner(conn *nftables.Conn, do func(func() error) error, network netip.Prefix, log *slog.Logger) *iptablesJoiner {
	return &iptablesJoiner{conn: conn, do: do, network: network, log: log,
		tools: map[firewall.Backend]*firewall.Iptables{}, lastErr: map[firewall.Backend]string{}}
}

// legacyForwardDrop reads iptables-legacy's FORWARD policy; tests replace
// it, since it reads the namespace of the thread that calls it.
var legacyForwardDrop = firewall.LegacyForwardDrop

// sync joins every back end whose filter FORWARD drops by default.
func (j *iptablesJoiner) sync() {
	var joined []firewall.Backend
	for _, b := range []firewall.Backend{firewall.BackendNFT, firewall.BackendLegacy} {
		err := j.do(func() error {
			drops, err := j.drops(b)
			if err != nil || !drops {
				return err
			}
			changed, err := j.join(b)
			if err != nil {
				return err
			}
			joined = append(joined, b)
			j.logJoined(b, changed)
			return nil
		})
		if err == nil {
			delete(j.lastErr, b)
		} else if msg := err.Error(); msg != j.lastErr[b] {
			j.lastErr[b] = msg
			j.log.Warn("cannot accept the overlay network in iptables' FORWARD, which drops by default; retrying at every resync",
				"chain", b.Name(), "err", err)
		}
	}
	j.joined = joined
}

func (j *iptablesJoiner) drops(b firewall.Backend) (bool, error) {
	if b == firewall.BackendNFT {
		return firewall.NFTForwardDrop(j.conn)
	}
	return legacyForwardDrop()
}

func (j *iptablesJoiner) join(b firewall.Backend) (bool, error) {
	x := j.tools[b]
	if x == nil {
		var err error
		if x, err = firewall.NewIptables(b); err != nil {
			return false, err
		}
		j.tools[b] = x
	}
	return x.Join(j.network)
}

func (j *iptablesJoiner) logJoined(b firewall.Backend, changed bool) {
	was := slices.Contains(j.joined, b)
	switch {
	case !was && changed:
		j.log.Info("FORWARD drops by default: joined it with flanneld's accepts for the network, in a chain of weft's own",
			"chain", b.Name(), "jump", firewall.IptablesChain, "network", j.network)
	case !was:
		j.log.Info("FORWARD drops by default: weft's accepts for the network are in place there", "chain", b.Name(),
			"jump", firewall.IptablesChain, "network", j.network)
	case changed:
		j.log.Info("repaired weft's accepts in FORWARD, changed or removed outside weft (a Docker restart?)", "chain", b.Name(),
			"jump", firewall.IptablesChain)
	}
}

// joinedChains names the chains joined, as ForwardDrops names them, and as
// weft status shows them.
func (j *iptablesJoiner) joinedChains() (drops, names []string) {
	for _, b := range j.joined {
		drops = append(drops, b.Chain)
		names = append(names, b.Name())
	}
	return drops, names
}

// dropFix is what the operator should type to let the network through a
// chain weft does not write to.
func dropFix(chain string, network netip.Prefix) string {
	n := network.String()
	switch {
	case strings.Contains(chain, "firewalld"):
		return fmt.Sprintf("firewall-cmd --permanent --zone=trusted --add-source=%s && firewall-cmd --reload", n)
	case chain == firewall.BackendNFT.Chain, chain == firewall.BackendLegacy.Chain:
		return fmt.Sprintf("iptables -I FORWARD -s %s -j ACCEPT && iptables -I FORWARD -d %s -j ACCEPT", n, n)
	}
	// "table ip foo chain bar" → nft's own syntax
	spec := strings.TrimSuffix(strings.TrimPrefix(chain, "table "), " (its last rule drops all)")
	spec = strings.Replace(spec, " chain ", " ", 1)
	return fmt.Sprintf("nft insert rule %s ip saddr %s accept && nft insert rule %s ip daddr %s accept", spec, n, spec, n)
}
