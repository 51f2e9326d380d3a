package firewall

import (
	"net/netip"
	"os/exec"
	"strings"
	"testing"

	"github.com/weft-net/weft/internal/netnstest"
)

// dockerFilter is the filter table as dockerd (24+, iptables mode) writes
// it on a fresh host with docker0, in iptables-save's form.
const dockerFilter = `*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:DOCKER - [0:0]
:DOCKER-ISOLATION-STAGE-1 - [0:0]
:DOCKER-ISOLATION-STAGE-2 - [0:0]
:DOCKER-USER - [0:0]
-A FORWARD -j DOCKER-USER
-A FORWARD -j DOCKER-ISOLATION-STAGE-1
-A FORWARD -o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A FORWARD -o docker0 -j DOCKER
-A FORWARD -i docker0 ! -o docker0 -j ACCEPT
-A FORWARD -i docker0 -o docker0 -j ACCEPT
-A DOCKER-ISOLATION-STAGE-1 -i docker0 ! -o docker0 -j DOCKER-ISOLATION-STAGE-2
-A DOCKER-ISOLATION-STAGE-1 -j RETURN
-A DOCKER-ISOLATION-STAGE-2 -o docker0 -j DROP
-A DOCKER-ISOLATION-STAGE-2 -j RETURN
-A DOCKER-USER -j RETURN
COMMIT
`

// iptablesIn runs one back end's tool in ns; stdin, if not empty, is fed
// to it.
func iptablesIn(t *testing.T, ns *testNS, tool, stdin string, args ...string) string {
	t.Helper()
	out, err := ns.Run(stdin, tool, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func needIptables(t *testing.T) {
	t.Helper()
	netnstest.SkipUnlessRoot(t)
	for _, tool := range []string{"iptables-nft", "iptables-legacy", "iptables-nft-restore", "iptables-legacy-restore"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("skipping: needs %s (Debian: apt-get install iptables)", tool)
		}
	}
}

// Join on Docker's ruleset, in each back end: it sees the drop policy,
// appends one marked jump after Docker's to a chain of exactly flanneld's
// two accepts, lets pod traffic through the node again, repairs a flushed
// FORWARD (Docker's restart) and tampering, and never duplicates itself.
func TestIptablesJoinDockerRuleset(t *testing.T) {
	needIptables(t)
	network := netip.MustParsePrefix("198.19.0.0/16")
	for _, b := range []Backend{BackendNFT, BackendLegacy} {
		t.Run(b.Tool, func(t *testing.T) {
			pod, node, outside := topology(t)
			if _, err := Apply(node.nft, Rules{Network: network, Forward: true}); err != nil {
				t.Fatalf("Apply: %v", err)
			}
			iptablesIn(t, node, b.Tool+"-restore", dockerFilter)
			if reachable(t, pod, outside, remotePod) {
				t.Fatalf("pod → remote pod passes Docker's FORWARD drop policy in %s: nothing to join", b.Tool)
			}
			var drops, other bool
			err := node.Do(func() (err error) {
				nftDrop, err := NFTForwardDrop(node.nft)
				if err != nil {
					return err
				}
				legacyDrop, err := LegacyForwardDrop()
				drops, other = nftDrop, legacyDrop
				if b == BackendLegacy {
					drops, other = legacyDrop, nftDrop
				}
				return err
			})
			if err != nil || !drops || other {
				t.Fatalf("drop policy seen in %s: %v, in the other back end: %v (%v)", b.Tool, drops, other, err)
			}

			join := func(what string, wantChanged bool) {
				t.Helper()
				var changed bool
				err := node.Do(func() error {
					x, err := NewIptables(b)
					if err != nil {
						return err
					}
					changed, err = x.Join(network)
					return err
				})
				if err != nil || changed != wantChanged {
					t.Fatalf("%s: Join changed %v, %v; want changed %v", what, changed, err, wantChanged)
				}
				rules := iptablesIn(t, node, b.Tool, "", "-S")
				if n := strings.Count(rules, "-j "+IptablesChain); n != 1 {
					t.Fatalf("%s: %d jumps to %s, want one:\n%s", what, n, IptablesChain, rules)
				}
				for _, want := range []string{
					`-A WEFT-FWD -s 198.19.0.0/16 -m comment --comment "` + IptablesComment + `" -j ACCEPT`,
					`-A WEFT-FWD -d 198.19.0.0/16 -m comment --comment "` + IptablesComment + `" -j ACCEPT`,
				} {
					if !strings.Contains(rules, want) {
						t.Errorf("%s: %s -S lacks %q:\n%s", what, b.Tool, want, rules)
					}
				}
				if strings.Count(rules, "-A WEFT-FWD") != 2 {
					t.Errorf("%s: weft's chain holds other rules:\n%s", what, rules)
				}
				forward := iptablesIn(t, node, b.Tool, "", "-S", "FORWARD")
				if i, j := strings.Index(forward, "-j DOCKER-USER"), strings.Index(forward, "-j "+IptablesChain); i < 0 || j < i {
					t.Errorf("%s: the jump is not after DOCKER-USER's:\n%s", what, forward)
				}
				if !reachable(t, pod, outside, remotePod) {
					t.Fatalf("%s: pod → remote pod still dropped with weft's rules joined", what)
				}
			}
			join("first", true)
			join("again", false)

			iptablesIn(t, node, b.Tool, "", "-F", "FORWARD") // dockerd's restart
			iptablesIn(t, node, b.Tool+"-restore", dockerFilter)
			if reachable(t, pod, outside, remotePod) {
				t.Fatal("pod → remote pod passes after Docker rewrote FORWARD without weft's jump")
			}
			join("after Docker rewrote FORWARD", true)

			iptablesIn(t, node, b.Tool, "", append([]string{"-A", "FORWARD"}, jump...)...)
			iptablesIn(t, node, b.Tool, "", "-I", IptablesChain, "-s", "198.18.9.9", "-j", "DROP")
			join("after a second jump and a stray rule", true)
		})
	}
}
