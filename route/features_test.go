package route

import (
	"testing"

	"github.com/weft-net/weft/internal/netnstest"
)

// A veth segments UDP tunnel packets by default; the feature read back
// follows `ethtool -K`, and an unknown name is an error naming it.
func TestFeatureActive(t *testing.T) {
	netnstest.SkipUnlessRoot(t)
	n := newTestNS(t)
	n.addLink(t, "ft0", true, "198.18.61.1/24")
	read := func() (on bool, err error) {
		err = n.Do(func() (err error) { on, err = FeatureActive("ft0", "tx-udp_tnl-segmentation"); return err })
		return on, err
	}
	if on, err := read(); err != nil || !on {
		t.Fatalf("veth tx-udp_tnl-segmentation: %v, %v; want on", on, err)
	}
	err := n.Do(func() error { _, err := FeatureActive("ft0", "no-such-feature"); return err })
	if err == nil {
		t.Error("an unknown feature name is not an error")
	}
	netnstest.RequireTool(t, "ethtool", "ethtool")
	if out, err := n.Run("", "ethtool", "-K", "ft0", "tx-udp_tnl-segmentation", "off"); err != nil {
		t.Fatalf("ethtool -K: %v\n%s", err, out)
	}
	if on, err := read(); err != nil || on {
		t.Errorf("after ethtool -K ft0 tx-udp_tnl-segmentation off: %v, %v; want off", on, err)
	}
}
