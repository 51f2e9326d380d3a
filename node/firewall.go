package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/google/nftables"

	"github.com/weft-net/weft/firewall"
	"github.com/weft-net/weft/status"
)

// startFirewall installs the -ip-masq and -iptables-forward-rules rules and
// spawns their resync. As flanneld, the rules go in before subnet.env is
// written, and they stay when weft stops (flanneld never removes its rules
// either): pods keep their egress across a restart. With both flags off, a
// table an earlier run left is removed.
func (n *node) startFirewall(lease netip.Prefix, spawn func(string, func(context.Context) error)) error {
	var opts []nftables.ConnOption // this process's namespace, a socket per call
	if n.hooks.netns >= 0 {
		opts = append(opts, nftables.WithNetNSFd(int(n.hooks.netns)))
	}
	conn, err := nftables.New(opts...)
	if err != nil {
		return fmt.Errorf("open nftables: %w", err)
	}
	return startFirewallOn(conn, n.inNetns, n.cfg.Firewall, n.log, n.netCfg.Network, lease, spawn, n.health.SetFirewall)
}

// startFirewallOn is startFirewall on conn, with do running what must run
// in the node's namespace (the iptables tools); report, if not nil,
// receives the rules' state after every apply (for weft status).
func startFirewallOn(conn *nftables.Conn, do func(func() error) error, fw Firewall, log *slog.Logger, network, lease netip.Prefix,
	spawn func(string, func(context.Context) error), report func(status.Firewall)) error {
	k := &firewallKeeper{conn: conn, do: do, log: log, report: report, interval: fw.Resync,
		rules: firewall.Rules{Network: network, Subnet: lease, Masquerade: fw.Masquerade,
			FullyRandom: fw.FullyRandom, Forward: fw.Forward},
		iptables: newIptablesJoiner(conn, do, network, log)}
	if !fw.Masquerade && !fw.Forward {
		if removed, err := firewall.Apply(conn, k.rules); err != nil {
			log.Debug("look for an earlier run's nftables table", "err", err)
		} else if removed {
			log.Info("removed the nftables table an earlier run left: -ip-masq and -iptables-forward-rules are off",
				"table", "ip "+firewall.TableName)
		}
		return nil
	}
	if err := k.apply(true); err != nil && fw.Masquerade {
		// Without masquerading pods lose the outside world: stop, as
		// flanneld does. Forward rules alone (the default) only warn and
		// keep retrying, as flanneld does.
		return err
	}
	spawn("firewall", k.run)
	return nil
}

// firewallKeeper keeps weft's nftables table as the flags say.
type firewallKeeper struct {
	conn     *nftables.Conn
	do       func(func() error) error // runs in the node's namespace
	rules    firewall.Rules
	iptables *iptablesJoiner // -iptables-forward-rules where iptables' FORWARD drops by default
	interval time.Duration
	log      *slog.Logger
	lastErr  string    // logged once per change
	drops    []string  // forward chains elsewhere that drop by default, as last seen
	checked  time.Time // when drops were last looked for
	report   func(status.Firewall)
}

// dropsCheckEvery spaces the look for other tables' drop policies: it lists
// every nftables chain of the node (40 ms for 15,000, as kube-proxy's
// nftables mode can have), too much for every 5 s resync. Start and SIGHUP
// always look. A variable so tests need not wait a minute.
var dropsCheckEvery = time.Minute

// run re-applies every -iptables-resync seconds and on SIGHUP, so an
// operator's `nft flush ruleset` heals by itself.
func (k *firewallKeeper) run(ctx context.Context) error {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	t := time.NewTicker(k.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		case <-hup:
			k.checked = time.Time{} // look for drop policies now
		}
		_ = k.apply(false) // logged inside; the next tick retries
	}
}

func (k *firewallKeeper) apply(first bool) error {
	r := k.rules
	changed, err := firewall.Apply(k.conn, r)
	if err != nil {
		if errors.Is(err, firewall.ErrUnavailable) {
			err = fmt.Errorf("%w; or run without -ip-masq and with -iptables-forward-rules=false", err)
		}
		err = fmt.Errorf("nftables rules for -ip-masq=%t -iptables-forward-rules=%t: %w", r.Masquerade, r.Forward, err)
		if msg := err.Error(); msg != k.lastErr {
			k.lastErr = msg
			k.log.Warn("cannot apply nftables rules; retrying", "every", k.interval, "err", err)
		}
		k.publish(false, err.Error(), nil, nil)
		return err
	}
	attrs := []any{"table", "ip " + firewall.TableName, "masquerade", r.Masquerade, "forward", r.Forward,
		"network", r.Network, "subnet", r.Subnet}
	switch {
	case first && changed:
		k.log.Info("installed nftables rules", attrs...)
	case first:
		k.log.Info("nftables rules already in place", attrs...)
	case k.lastErr != "":
		k.log.Info("nftables rules applied again", attrs...)
	case changed:
		k.log.Info("repaired nftables rules changed or removed outside weft", attrs...)
	}
	k.lastErr = ""
	var joined []string
	if r.Forward {
		k.iptables.sync()
		_, joined = k.iptables.joinedChains()
		if first || time.Since(k.checked) >= dropsCheckEvery {
			k.checkDrops()
			k.checked = time.Now()
		}
	}
	k.publish(true, "", k.drops, joined)
	return nil
}

func (k *firewallKeeper) publish(inPlace bool, lastErr string, drops, joined []string) {
	if k.report != nil {
		k.report(status.Firewall{Masquerade: k.rules.Masquerade, ForwardRules: k.rules.Forward,
			InPlace: inPlace, LastError: lastErr, ForwardDrops: drops, Joined: joined})
	}
}

// checkDrops warns when another table's forward chain drops by default and
// weft has not joined it (see iptablesJoiner): weft's accepts cannot
// override it (see package firewall), so pod traffic through this node
// would vanish there without a word. weft names the fix for chains it does
// not write to (firewalld's own table, say).
func (k *firewallKeeper) checkDrops() {
	drops, err := firewall.ForwardDrops(k.conn)
	if err != nil {
		k.log.Debug("look for other nftables forward chains with policy drop", "err", err)
		return // keep what was seen last
	}
	var legacy bool
	if err := k.do(func() (err error) { legacy, err = legacyForwardDrop(); return err }); err != nil {
		k.log.Debug("look for a FORWARD drop policy of iptables-legacy", "err", err)
	} else if legacy {
		drops = append(drops, firewall.LegacyForwardChain)
	}
	joined, _ := k.iptables.joinedChains()
	drops = slices.DeleteFunc(drops, func(c string) bool { return slices.Contains(joined, c) })
	if slices.Equal(drops, k.drops) {
		return
	}
	k.drops = drops
	if len(drops) == 0 {
		k.log.Info("no other forward chain drops the network by default any more")
		return
	}
	fixes := make([]string, len(drops))
	for i, c := range drops {
		fixes[i] = dropFix(c, k.rules.Network)
	}
	k.log.Warn("another forward chain drops by default: overlay traffic forwarded through this node "+
		"is dropped there unless a rule in it accepts the network (weft's accepts end only its own chain)",
		"chains", strings.Join(drops, ", "), "network", k.rules.Network.String(), "fix", strings.Join(fixes, "; "))
}
