package node

import (
	"strings"
	"testing"
)

func TestParseOffloads(t *testing.T) {
	for _, tt := range []struct {
		on   bool
		list string
		want Offloads
	}{
		{true, "tun,gso,gro", Offloads{TUN: true, GSO: true, GRO: true}},
		{true, "tun, gro", Offloads{TUN: true, GRO: true}},
		{true, "", Offloads{}},
		{false, "tun,gso,gro", Offloads{}},
	} {
		got, err := ParseOffloads(tt.on, tt.list)
		if err != nil || got != tt.want {
			t.Errorf("ParseOffloads(%v, %q) = %+v, %v; want %+v", tt.on, tt.list, got, err, tt.want)
		}
	}
	if _, err := ParseOffloads(true, "tun,tso"); err == nil || !strings.Contains(err.Error(), `"tso"`) {
		t.Errorf("ParseOffloads(tun,tso) error %v, want one naming tso", err)
	}
}
