package status

import (
	"bytes"
	"cmp"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// WriteText writes s as `weft status` shows it: a line per part, then the
// peers.
func WriteText(w io.Writer, s *Status, now time.Time) {
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
	storeLine(tw, s)
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
	if s.Kernel != nil {
		kernelLines(tw, s.Kernel)
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

// storeLine is the lease store's state: etcd's, or the Kubernetes API's.
func storeLine(w io.Writer, s *Status) {
	state := "up"
	if !s.Etcd.Up {
		state = "UNREACHABLE (forwarding with the last peer table)"
	}
	k := s.Kubernetes
	if k == nil {
		fmt.Fprintf(w, "etcd\t%s  %s  renewals ok %d failed %d  watch restarts %s\n", state, s.Etcd.Endpoints,
			s.Etcd.Renewals["success"], s.Etcd.Renewals["failure"], formatCounts(s.Etcd.WatchRestarts))
		return
	}
	if !k.Synced {
		state += ", Nodes not listed yet"
	}
	if k.LastError != "" && !k.Up {
		state += ": " + k.LastError
	}
	skipped := map[string]uint64{}
	for r, n := range k.Skipped {
		skipped[r] = uint64(n)
	}
	fmt.Fprintf(w, "store\tkubernetes %s  %s  node %s  nodes %d  leases %d  skipped %s\n", state, k.Server, k.Node,
		k.Nodes, k.Leases, formatCounts(skipped))
}

// fastPathLine says whether the kernel fast path runs, and the flag that
// asked for it, so an auto that fell back is told from an off.
func fastPathLine(f *FastPath) string {
	flag := fmt.Sprintf("(-fast-path=%s)", f.Mode)
	switch {
	case f.Running && f.Attach != "" && strings.HasPrefix(f.SuperPackets, PathUserspace):
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

// kernelLines is the release, then a row per feature weft looked for:
// yes, no with what weft does instead, or unknown with why.
func kernelLines(w io.Writer, k *Kernel) {
	fmt.Fprintf(w, "kernel\t%s\n", cmp.Or(k.Release, "(release unknown)"))
	// The rows align among themselves, in the value column of w.
	var rows bytes.Buffer
	tw := tabwriter.NewWriter(&rows, 0, 4, 2, ' ', 0)
	for _, f := range k.Features {
		state, note := "yes", f.Detail
		switch {
		case f.Unknown():
			state, note = "unknown", strings.TrimLeft(strings.TrimPrefix(f.Detail, "unknown"), " :")
		case !f.Detected:
			state = "no"
		}
		if !f.Detected && f.Without != "" {
			note = strings.TrimPrefix(note+"; without it: "+f.Without, "; ")
		}
		fmt.Fprintf(tw, "%s\t%s\tLinux %s+\t%s\n", f.Name, state, f.Since, note)
	}
	tw.Flush()
	for line := range strings.Lines(rows.String()) {
		fmt.Fprintf(w, "\t%s\n", strings.TrimRight(line, " \n"))
	}
}

// trafficLine is the totals; once the kernel path has carried traffic,
// each direction's packets are split by path too.
func trafficLine(c Counters) string {
	k := c.Paths[PathKernel]
	split := k.TxPackets+k.RxPackets > 0
	dir := func(name string, packets, bytes uint64, of func(Traffic) uint64) string {
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
	return dir("tx", c.TxPackets, c.TxBytes, func(t Traffic) uint64 { return t.TxPackets }) + "  " +
		dir("rx", c.RxPackets, c.RxBytes, func(t Traffic) uint64 { return t.RxPackets })
}

// printPeers lists the peers with the path this node's packets to each take.
func printPeers(w io.Writer, peers []Peer) {
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
		kernel = kernel || p.Path == PathKernel
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
