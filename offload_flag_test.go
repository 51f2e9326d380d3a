package main

import (
	"bytes"
	"context"
	"maps"
	"strings"
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

func TestParseOffloads(t *testing.T) {
	for _, tt := range []struct {
		on   bool
		list string
		want map[string]bool
	}{
		{true, "tun,gso,gro", map[string]bool{"tun": true, "gso": true, "gro": true}},
		{true, "tun, gro", map[string]bool{"tun": true, "gro": true}},
		{true, "", map[string]bool{}},
		{false, "tun,gso,gro", map[string]bool{"tun": false, "gso": false, "gro": false}},
	} {
		got, err := parseOffloads(tt.on, tt.list)
		if err != nil || !maps.Equal(got, tt.want) {
			t.Errorf("parseOffloads(%v, %q) = %v, %v; want %v", tt.on, tt.list, got, err, tt.want)
		}
	}
	if _, err := parseOffloads(true, "tun,tso"); err == nil || !strings.Contains(err.Error(), `"tso"`) {
		t.Errorf("parseOffloads(tun,tso) error %v, want one naming tso", err)
	}
}
