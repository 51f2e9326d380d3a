package main

import (
	"bytes"
	"context"
	"testing"

	"github.com/spf13/cobra"
)

// TestFlagsOffloadKillSwitch: offloads are on unless -offload=false, in
// either dash form or from the environment.
func TestFlagsOffloadKillSwitch(t *testing.T) {
	for _, tt := range []struct {
		args []string
		env  string
		want bool
	}{
		{nil, "", true},
		{[]string{"-offload=false"}, "", false},
		{[]string{"--offload=false"}, "", false},
		{nil, "false", false},
		{[]string{"-offload=true"}, "false", true},
	} {
		if tt.env != "" {
			t.Setenv("FLANNELD_OFFLOAD", tt.env)
		}
		root := newRootCommand(&bytes.Buffer{}, &bytes.Buffer{})
		var got bool
		root.RunE = func(cmd *cobra.Command, _ []string) error {
			if err := applyEnv(cmd.Flags()); err != nil {
				return err
			}
			var err error
			got, err = cmd.Flags().GetBool("offload")
			return err
		}
		root.SetArgs(normalizeArgs(root, tt.args))
		if err := root.ExecuteContext(context.Background()); err != nil {
			t.Fatalf("%v: %v", tt.args, err)
		}
		if got != tt.want {
			t.Errorf("args %v env %q: offload %v, want %v", tt.args, tt.env, got, tt.want)
		}
	}
}
