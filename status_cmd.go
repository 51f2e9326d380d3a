package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/weft-net/weft/etcd"
	"github.com/weft-net/weft/status"
	"github.com/weft-net/weft/subnet"
)

// newStatusCommand is `weft status`: what the running daemon knows, asked
// over its status socket (or its -healthz-port with --url).
func newStatusCommand(stdout io.Writer) *cobra.Command {
	var socket, url, output string
	cmd := &cobra.Command{
		Use:   "status",
		Short: "show the running daemon's lease, etcd state, peers, traffic and drops",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "text" && output != "json" {
				return fmt.Errorf("-o %s: must be text or json", output)
			}
			s, raw, err := status.Fetch(cmd.Context(), socket, url)
			if err != nil {
				return err
			}
			if output == "json" {
				_, err := stdout.Write(raw)
				return err
			}
			printStatus(stdout, s, time.Now())
			return nil
		},
	}
	cmd.Flags().StringVar(&socket, "socket", status.DefaultSocket, "the daemon's -status-socket")
	cmd.Flags().StringVar(&url, "url", "", "ask over HTTP instead, e.g. http://127.0.0.1:8471 (the daemon's -healthz-ip:-healthz-port)")
	cmd.Flags().StringVarP(&output, "output", "o", "text", "text or json")
	return cmd
}

func printStatus(w io.Writer, s *status.Status, now time.Time) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	state := "ready"
	if !s.Ready {
		state = "NOT READY"
	}
	fmt.Fprintf(tw, "%s\t%s\n", state, s.Version)
	if l := s.Lease; l != nil {
		exp := "reservation (no expiry)"
		if !l.Reserved {
			exp = fmt.Sprintf("expires %s (in %s)", l.Expiration.Format(time.RFC3339), l.Expiration.Sub(now).Round(time.Minute))
		}
		fmt.Fprintf(tw, "lease\t%s  public IP %s  %s\n", l.Subnet, l.PublicIP, exp)
	} else {
		fmt.Fprintf(tw, "lease\tnone yet\n")
	}
	if r := s.Renewal; r != nil {
		fmt.Fprintf(tw, "renewal\tFAILING since %s: %s\n", r.FailingSince.Format(time.RFC3339), r.LastError)
	}
	etcdState := "up"
	if !s.Etcd.Up {
		etcdState = "UNREACHABLE (forwarding with the last peer table)"
	}
	fmt.Fprintf(tw, "etcd\t%s  %s  renewals ok %d failed %d  watch restarts %s\n", etcdState, s.Etcd.Endpoints,
		s.Etcd.Renewals["success"], s.Etcd.Renewals["failure"], formatCounts(s.Etcd.WatchRestarts))
	offload := "off"
	if o := s.Offloads; s.Offload {
		var on []string
		for name, v := range map[string]bool{"tun-tso": o.TUNVnetHdr, "tun-uso": o.TUNUSO, "tun-gro": o.TUNCoalescing, "udp-gso": o.UDPGSO, "udp-gro": o.UDPGRO} {
			if v {
				on = append(on, name)
			}
		}
		slices.Sort(on)
		offload = strings.Join(on, ",")
		if o.Fallbacks > 0 {
			offload += fmt.Sprintf(" (%d fallbacks)", o.Fallbacks)
		}
	}
	fmt.Fprintf(tw, "device\t%s  mtu %d  source check %s  offload %s\n", s.Device, s.MTU, s.SourceCheck, offload)
	if s.FastPath != nil {
		fmt.Fprintf(tw, "fast path\t%s\n", fastPathLine(s.FastPath))
	}
	if f := s.Firewall; f != nil {
		state := "rules in place"
		if !f.InPlace {
			state = "NOT APPLIED: " + f.LastError
		}
		fmt.Fprintf(tw, "firewall\tmasquerade %s  forward rules %s  %s\n", onOff(f.Masquerade), onOff(f.ForwardRules), state)
		if len(f.Joined) > 0 {
			fmt.Fprintf(tw, "\tjoined %s (it drops by default): weft's accepts are there\n", strings.Join(f.Joined, ", "))
		}
		if len(f.ForwardDrops) > 0 {
			fmt.Fprintf(tw, "\tDROPPED by default in %s: allow the network there (weft's accepts cannot)\n",
				strings.Join(f.ForwardDrops, ", "))
		}
	}
	c := s.Counters
	fmt.Fprintf(tw, "traffic\t%s\n", trafficLine(c))
	fmt.Fprintf(tw, "drops\t%s\n", formatCounts(c.Drops))
	if len(c.Handoffs) > 0 {
		fmt.Fprintf(tw, "handoffs\t%s (kernel to userspace path)\n", formatCounts(c.Handoffs))
	}
	fmt.Fprintf(tw, "peers\t%d\n", len(s.Peers))
	tw.Flush()
	printPeers(w, s.Peers)
}

// fastPathLine says whether the kernel fast path runs, and the flag that
// asked for it, so an auto that fell back is told from an off.
func fastPathLine(f *status.FastPath) string {
	flag := fmt.Sprintf("(-fast-path=%s)", f.Mode)
	switch {
	case f.Running && f.Attach != "" && strings.HasPrefix(f.SuperPackets, status.PathUserspace):
		return fmt.Sprintf("kernel, attached by %s %s; TCP super-packets: %s", f.Attach, flag, f.SuperPackets)
	case f.Running && f.Attach != "":
		return fmt.Sprintf("kernel, attached by %s %s", f.Attach, flag)
	case f.Running:
		return "kernel " + flag
	case f.Mode == "off":
		return "off " + flag
	case f.Reason != "":
		return fmt.Sprintf("not running: %s %s", f.Reason, flag)
	}
	return "not running " + flag
}

// trafficLine is the totals; once the kernel path has carried traffic,
// each direction's packets are split by path too.
func trafficLine(c status.Counters) string {
	k := c.Paths[status.PathKernel]
	split := k.TxPackets+k.RxPackets > 0
	dir := func(name string, packets, bytes uint64, of func(status.Traffic) uint64) string {
		s := fmt.Sprintf("%s %d packets", name, packets)
		if split {
			var parts []string
			for _, p := range slices.Sorted(maps.Keys(c.Paths)) { // kernel, userspace
				parts = append(parts, fmt.Sprintf("%s %d", p, of(c.Paths[p])))
			}
			s += " (" + strings.Join(parts, ", ") + ")"
		}
		return s + " " + humanBytes(bytes)
	}
	return dir("tx", c.TxPackets, c.TxBytes, func(t status.Traffic) uint64 { return t.TxPackets }) + "  " +
		dir("rx", c.RxPackets, c.RxBytes, func(t status.Traffic) uint64 { return t.RxPackets })
}

// printPeers lists the peers with the path this node's packets to each take.
func printPeers(w io.Writer, peers []status.Peer) {
	if len(peers) == 0 {
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  SUBNET\tPUBLIC IP\tPATH\tTX\tRX")
	kernel := false
	for _, p := range peers {
		path := p.Path
		if path == "" { // a daemon from before the fast path
			path = "-"
		}
		kernel = kernel || p.Path == status.PathKernel
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%d pkts %s\t%d pkts %s\n", p.Subnet, p.PublicIP, path,
			p.TxPackets, humanBytes(p.TxBytes), p.RxPackets, humanBytes(p.RxBytes))
	}
	tw.Flush()
	if kernel {
		// Otherwise a busy kernel peer's near-zero counters look like a fault.
		fmt.Fprintln(w, "  (the kernel keeps no per-peer counters: a kernel peer's TX and RX count weft's process only)")
	}
}

func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}

// formatCounts prints non-zero counts as "a 1, b 2", or "none".
func formatCounts(m map[string]uint64) string {
	var parts []string
	for _, k := range slices.Sorted(func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}) {
		if m[k] > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", k, m[k]))
		}
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

func humanBytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// newLeasesCommand is `weft leases`: every lease in etcd, read directly.
func newLeasesCommand(o *options, stdout io.Writer) *cobra.Command {
	return &cobra.Command{
		Use:   "leases",
		Short: "list every lease in etcd with its public IP and time to live; reservations are marked",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := applyEnv(cmd.Flags()); err != nil {
				return err
			}
			return withStore(cmd.Context(), o, func(ctx context.Context, s *etcd.Store) error {
				leases, _, err := s.ListLeases(ctx)
				if err != nil {
					return err
				}
				printLeases(stdout, leases, time.Now())
				return nil
			})
		},
	}
}

func printLeases(w io.Writer, leases []subnet.Lease, now time.Time) {
	slices.SortFunc(leases, func(a, b subnet.Lease) int { return a.Subnet.Addr().Compare(b.Subnet.Addr()) })
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SUBNET\tPUBLIC IP\tTTL\tKIND")
	for _, l := range leases {
		ttl, kind := "-", "lease"
		if l.Reserved() {
			kind = "reservation"
		} else if !l.Expiration.IsZero() {
			ttl = l.Expiration.Sub(now).Round(time.Second).String()
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", l.Subnet, l.Attrs.PublicIP, ttl, kind)
	}
	tw.Flush()
	fmt.Fprintf(w, "%d leases\n", len(leases))
}

// newLeaseCommand is `weft lease release SUBNET`, for a decommissioned node.
func newLeaseCommand(o *options, stdout io.Writer) *cobra.Command {
	lease := &cobra.Command{Use: "lease", Short: "manage single leases"}
	var yes bool
	release := &cobra.Command{
		Use:   "release SUBNET",
		Short: "delete a decommissioned node's lease from etcd (asks first)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := applyEnv(cmd.Flags()); err != nil {
				return err
			}
			p, err := netip.ParsePrefix(args[0])
			if err != nil || !p.Addr().Is4() || p.Masked() != p {
				return fmt.Errorf("lease release %s: not a subnet such as 198.19.7.0/24 (see weft leases)", args[0])
			}
			return withStore(cmd.Context(), o, func(ctx context.Context, s *etcd.Store) error {
				leases, _, err := s.ListLeases(ctx)
				if err != nil {
					return err
				}
				i := slices.IndexFunc(leases, func(l subnet.Lease) bool { return l.Subnet == p })
				if i < 0 {
					return fmt.Errorf("lease release %s: no such lease under %s (see weft leases)", p, o.etcdPrefix)
				}
				l := leases[i]
				kind := "lease"
				if l.Reserved() {
					kind = "reservation"
				}
				if !yes {
					fmt.Fprintf(stdout, "Delete the %s %s of %s? If that node still runs weft it will exit and lease again. [y/N] ", kind, p, l.Attrs.PublicIP)
					answer, _ := bufio.NewReader(cmd.InOrStdin()).ReadString('\n')
					if a := strings.ToLower(strings.TrimSpace(answer)); a != "y" && a != "yes" {
						return fmt.Errorf("lease release %s: not confirmed, nothing deleted", p)
					}
				}
				if err := s.DeleteLease(ctx, l); err != nil {
					return err
				}
				fmt.Fprintf(stdout, "released %s (%s)\n", p, l.Attrs.PublicIP)
				return nil
			})
		},
	}
	release.Flags().BoolVarP(&yes, "yes", "y", false, "do not ask")
	lease.AddCommand(release)
	return lease
}
