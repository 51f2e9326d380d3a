package suite

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"strings"
)

// Underlay profiles: how a lab's veths are set up before the daemons and
// the kernel paths start in it (only its etcd, on the host end, is up by
// then). Each profile is measured in a lab of its own, so that whatever
// weft (or any daemon, or the kernel's VXLAN device) decides at start, it
// decides under that profile, as it would on a host with such a NIC.
const (
	// ProfileDefault leaves the veths as the kernel makes them.
	ProfileDefault = "default"
	// ProfileNIC makes them behave like a NIC.
	ProfileNIC = "nic"
)

// AllProfiles is every profile, in run order.
var AllProfiles = []string{ProfileDefault, ProfileNIC}

// ErrNoEthtool means ethtool is not installed, which a profile other than
// the default needs.
var ErrNoEthtool = errors.New("ethtool is not installed (the NIC-like underlay profile needs it): apt-get install -y ethtool")

// ethtoolFeature is one feature a profile sets: Arg is its name for
// ethtool -K, Shown its name in ethtool -k's output, Value on or off.
type ethtoolFeature struct {
	Arg, Shown, Value string
}

// profileSpec is what a profile is and does.
type profileSpec struct {
	title, description string
	// node is set on eth0 in every node namespace (each node sends and
	// receives); hub on the bridge's end of every node's veth.
	node, hub []ethtoolFeature
}

var (
	groOn = ethtoolFeature{"gro", "generic-receive-offload", "on"}
	// A sender without UDP tunnel segmentation segments a tunnel's TSO
	// super-packet in software before it leaves, as a NIC without
	// tunnel TSO makes the stack do.
	tnlSegOff     = ethtoolFeature{"tx-udp_tnl-segmentation", "tx-udp_tnl-segmentation", "off"}
	tnlCsumSegOff = ethtoolFeature{"tx-udp_tnl-csum-segmentation", "tx-udp_tnl-csum-segmentation", "off"}
)

var profileSpecs = map[string]profileSpec{
	ProfileDefault: {
		title: "veth (default)",
		description: "the lab's veths as the kernel makes them: GRO off, UDP tunnel segmentation on, so a tunnel's " +
			"64 KB super-packets cross veth and bridge unsegmented and each datagram arrives as sent",
	},
	ProfileNIC: {
		title: "NIC-like (GRO on, no UDP tunnel TSO)",
		description: "veth GRO on at both ends of each node's veth, so that datagrams arrive coalesced as from a NIC " +
			"(before TC ingress sees them), and UDP tunnel segmentation off on each node's eth0, so that an " +
			"encapsulated super-packet is segmented in software before it leaves",
		node: []ethtoolFeature{groOn, tnlSegOff, tnlCsumSegOff},
		hub:  []ethtoolFeature{groOn},
	},
}

// ProfileTitle is profile name's title ("veth (default)"), or name itself
// for a profile this version does not know.
func ProfileTitle(name string) string {
	if sp, ok := profileSpecs[name]; ok {
		return sp.title
	}
	return name
}

// needsEthtool reports whether any of the profiles sets features.
func needsEthtool(names []string) bool {
	for _, n := range names {
		if sp := profileSpecs[n]; len(sp.node)+len(sp.hub) > 0 {
			return true
		}
	}
	return false
}

// ethtoolArgs is "-K DEV arg value ..." for features.
func ethtoolArgs(dev string, features []ethtoolFeature) []string {
	args := []string{"-K", dev}
	for _, f := range features {
		args = append(args, f.Arg, f.Value)
	}
	return args
}

// applyProfile sets the profile's features on both ends of both nodes'
// veths, checks with ethtool -k that they took, and returns the commands.
func (r *runner) applyProfile(ctx context.Context) ([]string, error) {
	var done []string
	for i := range 2 {
		nd := r.lab.Node(i)
		ends := []struct {
			run        func(args ...string) *exec.Cmd
			dev, where string
			features   []ethtoolFeature
		}{
			{func(args ...string) *exec.Cmd { return r.lab.Command(ctx, i, "ethtool", args...) }, "eth0", nd.Name, r.spec.node},
			{func(args ...string) *exec.Cmd { return r.lab.HubCommand(ctx, "ethtool", args...) }, nd.Name, "hub", r.spec.hub},
		}
		for _, e := range ends {
			if len(e.features) == 0 {
				continue
			}
			cmd, err := r.ethtool(e.run, e.dev, e.where, e.features)
			if err != nil {
				return nil, err
			}
			done = append(done, e.where+": "+cmd)
		}
	}
	return done, nil
}

// ethtool sets features on dev in namespace where (run makes an ethtool
// command there), checks with ethtool -k that each took, and returns the
// command it ran.
func (r *runner) ethtool(run func(args ...string) *exec.Cmd, dev, where string, features []ethtoolFeature) (string, error) {
	args := ethtoolArgs(dev, features)
	cmd := "ethtool " + strings.Join(args, " ")
	if out, err := run(args...).CombinedOutput(); err != nil {
		return "", fmt.Errorf("%s on %s: %w: %s", cmd, where, err, strings.TrimSpace(string(out)))
	}
	out, err := run("-k", dev).Output()
	if err != nil {
		return "", fmt.Errorf("ethtool -k %s on %s: %w", dev, where, err)
	}
	have := parseEthtoolK(string(out))
	for _, f := range features {
		if got := have[f.Shown]; got != f.Value {
			return "", fmt.Errorf("%s of %s on %s is %q after %s, want %s (the kernel may not let it change)",
				f.Shown, dev, where, got, cmd, f.Value)
		}
	}
	return cmd, nil
}

// parseEthtoolK maps each feature of ethtool -k's output to its state
// ("on", "off"; "[fixed]" and the like dropped).
func parseEthtoolK(out string) map[string]string {
	m := map[string]string{}
	for _, line := range strings.Split(out, "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok {
			continue
		}
		if f := strings.Fields(v); len(f) > 0 {
			m[k] = f[0]
		}
	}
	return m
}

// DecodeResults reads a results.json. A schema 1 file (before underlay
// profiles) becomes one profile, the default, holding its underlay and
// every sample. The summary is computed again from the samples.
func DecodeResults(b []byte) (*Results, error) {
	var res Results
	if err := json.Unmarshal(b, &res); err != nil {
		return nil, fmt.Errorf("decode results: %w", err)
	}
	if res.Schema < 2 {
		var old struct {
			Machine struct {
				Underlay Link     `json:"underlay"`
				Offloads []string `json:"offloads"`
			} `json:"machine"`
		}
		if err := json.Unmarshal(b, &old); err != nil {
			return nil, fmt.Errorf("decode schema %d results: %w", res.Schema, err)
		}
		sp := profileSpecs[ProfileDefault]
		res.Profiles = []Profile{{Name: ProfileDefault, Title: sp.title, Description: sp.description,
			Underlay: old.Machine.Underlay, Offloads: old.Machine.Offloads, Paths: res.Paths}}
		for i := range res.Samples {
			res.Samples[i].Profile = ProfileDefault
		}
		res.Schema = Schema
	}
	res.Summary = SummarizeProfiles(&res)
	return &res, nil
}
