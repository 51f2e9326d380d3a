package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
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
			status.WriteText(stdout, s, time.Now())
			return nil
		},
	}
	cmd.Flags().StringVar(&socket, "socket", status.DefaultSocket, "the daemon's -status-socket")
	cmd.Flags().StringVar(&url, "url", "", "ask over HTTP instead, e.g. http://127.0.0.1:8471 (the daemon's -healthz-ip:-healthz-port)")
	cmd.Flags().StringVarP(&output, "output", "o", "text", "text or json")
	return cmd
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
