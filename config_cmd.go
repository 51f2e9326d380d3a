package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/weft-net/weft/etcd"
	"github.com/weft-net/weft/node"
	"github.com/weft-net/weft/subnet"
)

// newConfigCommand is `weft config put|get`: the network config in etcd,
// checked by the same parser the daemon uses.
func newConfigCommand(o *options, stdout io.Writer) *cobra.Command {
	cfg := &cobra.Command{
		Use:   "config",
		Short: "write or read the network config (<etcd-prefix>/config)",
	}
	var file string
	put := &cobra.Command{
		Use:   "put -f FILE",
		Short: "validate FILE (or - for stdin) and write it as the network config",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := applyEnv(cmd.Flags()); err != nil {
				return err
			}
			if file == "" {
				return fmt.Errorf("config put: -f FILE is required (see config.example.json)")
			}
			var data []byte
			var err error
			if file == "-" {
				data, err = io.ReadAll(os.Stdin)
			} else {
				data, err = os.ReadFile(file)
			}
			if err != nil {
				return fmt.Errorf("config put: read %s: %w", file, err)
			}
			c, err := subnet.ParseConfig(data)
			if err != nil {
				return fmt.Errorf("config put: %s: %w", file, err)
			}
			return withStore(cmd.Context(), o, func(ctx context.Context, s *etcd.Store) error {
				if err := s.PutNetworkConfig(ctx, bytes.TrimSpace(data)); err != nil {
					return err
				}
				fmt.Fprintf(stdout, "wrote %s/config: Network %s, SubnetLen %d, subnets %s..%s, backend %s port %d\n",
					o.etcdPrefix, c.Network, c.SubnetLen, c.SubnetMin, c.SubnetMax, c.BackendType, c.BackendPort)
				return nil
			})
		},
	}
	put.Flags().StringVarP(&file, "file", "f", "", "network config JSON file, - for stdin")

	get := &cobra.Command{
		Use:   "get",
		Short: "print the network config; exit non-zero if it is missing or invalid",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := applyEnv(cmd.Flags()); err != nil {
				return err
			}
			return withStore(cmd.Context(), o, func(ctx context.Context, s *etcd.Store) error {
				data, err := s.GetNetworkConfig(ctx)
				if err != nil {
					return fmt.Errorf("%w (create it with: %s)", err, node.ConfigPutHint(o.etcdConfig(nil)))
				}
				fmt.Fprintln(stdout, string(data))
				if _, err := subnet.ParseConfig(data); err != nil {
					return fmt.Errorf("the stored config is invalid: %w", err)
				}
				return nil
			})
		},
	}
	cfg.AddCommand(put, get)
	return cfg
}

// withStore opens the etcd store for one short CLI operation.
func withStore(ctx context.Context, o *options, fn func(context.Context, *etcd.Store) error) error {
	s, err := etcd.New(o.etcdConfig(nil))
	if err != nil {
		return err
	}
	defer s.Close()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return fn(ctx, s)
}
