package firewall

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// describe renders a rule in nft's syntax, for the expressions this package
// uses; anything else shows as its Go type, so an unexpected expression
// fails the comparison instead of vanishing.
func describe(r *nftables.Rule) string {
	var out []string
	var field string // what the register holds
	var mask []byte
	for _, e := range r.Exprs {
		switch e := e.(type) {
		case *expr.Payload:
			mask = nil
			switch {
			case e.Base == expr.PayloadBaseNetworkHeader && e.Offset == srcOff && e.Len == 4:
				field = "ip saddr"
			case e.Base == expr.PayloadBaseNetworkHeader && e.Offset == dstOff && e.Len == 4:
				field = "ip daddr"
			default:
				field = fmt.Sprintf("payload(%d,%d,%d)", e.Base, e.Offset, e.Len)
			}
		case *expr.Meta:
			mask = nil
			field = fmt.Sprintf("meta(%d)", e.Key)
			if e.Key == expr.MetaKeyMARK {
				field = "meta mark"
			}
		case *expr.Bitwise:
			mask = e.Mask
			if field == "meta mark" {
				field = fmt.Sprintf("meta mark & 0x%08x", binary.NativeEndian.Uint32(e.Mask))
			}
		case *expr.Cmp:
			op := ""
			if e.Op == expr.CmpOpNeq {
				op = "!= "
			} else if e.Op != expr.CmpOpEq {
				op = fmt.Sprintf("op%d ", e.Op)
			} else if strings.Contains(field, " & ") {
				op = "== " // nft's spelling for a masked comparison
			}
			var val string
			switch {
			case strings.HasPrefix(field, "meta mark") && len(e.Data) == 4:
				val = fmt.Sprintf("0x%08x", binary.NativeEndian.Uint32(e.Data))
			case len(e.Data) == 4:
				a := netip.AddrFrom4([4]byte(e.Data))
				n := 32
				if mask != nil {
					n = bits.OnesCount32(binary.BigEndian.Uint32(mask))
				}
				val = netip.PrefixFrom(a, n).String()
			default:
				val = fmt.Sprintf("%x", e.Data)
			}
			out = append(out, field+" "+op+val)
		case *expr.Verdict:
			switch e.Kind {
			case expr.VerdictReturn:
				out = append(out, "return")
			case expr.VerdictAccept:
				out = append(out, "accept")
			default:
				out = append(out, fmt.Sprintf("verdict(%d)", e.Kind))
			}
		case *expr.Masq:
			s := "masquerade"
			if e.FullyRandom {
				s += " fully-random"
			}
			if e.Random || e.Persistent || e.ToPorts {
				s += fmt.Sprintf(" %+v", *e)
			}
			out = append(out, s)
		default:
			out = append(out, fmt.Sprintf("%T", e))
		}
	}
	if c, ok := userdata.GetString(r.UserData, userdata.TypeComment); ok {
		out = append(out, fmt.Sprintf("comment %q", c))
	}
	return strings.Join(out, " ")
}

func describeAll(rules []*nftables.Rule) []string {
	out := make([]string, len(rules))
	for i, r := range rules {
		out[i] = describe(r)
	}
	return out
}

// expectedMasq is flanneld's iptables-mode rule list for network 198.19.0.0/16
// and subnet 198.19.7.0/24, written out by hand from its source.
func expectedMasq(fullyRandom bool) []string {
	m := "masquerade"
	if fullyRandom {
		m += " fully-random"
	}
	c := ` comment "weft ip-masq"`
	return []string{
		"meta mark & 0x00004000 == 0x00004000 return" + c,
		"ip saddr 198.19.7.0/24 ip daddr 198.19.0.0/16 return" + c,
		"ip saddr 198.19.0.0/16 ip daddr 198.19.7.0/24 return" + c,
		"ip saddr != 198.19.0.0/16 ip daddr 198.19.7.0/24 return" + c,
		"ip saddr 198.19.0.0/16 ip daddr != 224.0.0.0/4 " + m + c,
		"ip saddr != 198.19.0.0/16 ip daddr 198.19.0.0/16 " + m + c,
	}
}

var expectedForward = []string{
	`ip saddr 198.19.0.0/16 accept comment "weft forward"`,
	`ip daddr 198.19.0.0/16 accept comment "weft forward"`,
}

func testRules() Rules {
	return Rules{
		Network:     netip.MustParsePrefix("198.19.0.0/16"),
		Subnet:      netip.MustParsePrefix("198.19.7.0/24"),
		Masquerade:  true,
		FullyRandom: true,
		Forward:     true,
	}
}

func TestDesiredRules(t *testing.T) {
	want, err := testRules().desired()
	if err != nil {
		t.Fatal(err)
	}
	if len(want) != 2 || want[0].chain.Name != PostroutingChain || want[1].chain.Name != ForwardChain {
		t.Fatalf("chains = %v, want postrouting and forward", want)
	}
	assertLines(t, "postrouting", describeAll(want[0].rules), expectedMasq(true))
	assertLines(t, "forward", describeAll(want[1].rules), expectedForward)

	r := testRules()
	r.FullyRandom = false
	want, err = r.desired()
	if err != nil {
		t.Fatal(err)
	}
	assertLines(t, "postrouting", describeAll(want[0].rules), expectedMasq(false))

	// A single-address prefix needs no mask, as nft encodes it.
	single := match(srcOff, netip.MustParsePrefix("198.19.7.1/32"), true)
	if len(single) != 2 {
		t.Errorf("match /32 = %d expressions, want 2 (payload, cmp)", len(single))
	}
}

func TestDesiredRulesValidation(t *testing.T) {
	p := netip.MustParsePrefix
	for _, tc := range []struct {
		name string
		r    Rules
		want string // substring of the error; "" = valid
	}{
		{"nothing wanted needs no network", Rules{}, ""},
		{"forward needs no subnet", Rules{Network: p("198.19.0.0/16"), Forward: true}, ""},
		{"forward without network", Rules{Forward: true}, "not an IPv4 network"},
		{"network not masked", Rules{Network: p("198.19.0.1/16"), Forward: true}, "not an IPv4 network"},
		{"IPv6 network", Rules{Network: p("2001:db8::/32"), Forward: true}, "not an IPv4 network"},
		{"masq without subnet", Rules{Network: p("198.19.0.0/16"), Masquerade: true}, "not an IPv4 subnet"},
		{"subnet outside network", Rules{Network: p("198.19.0.0/16"), Subnet: p("198.18.7.0/24"), Masquerade: true}, "not inside network"},
		{"subnet larger than network", Rules{Network: p("198.19.0.0/16"), Subnet: p("198.18.0.0/15"), Masquerade: true}, "not inside network"},
		{"subnet not masked", Rules{Network: p("198.19.0.0/16"), Subnet: p("198.19.7.1/24"), Masquerade: true}, "not an IPv4 subnet"},
	} {
		_, err := tc.r.desired()
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: unexpected error %v", tc.name, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: error %v, want one containing %q", tc.name, err, tc.want)
		}
	}
}

func assertLines(t *testing.T, what string, got, want []string) {
	t.Helper()
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("%s rules:\n got:\n  %s\n want:\n  %s", what, strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
}

func TestExplain(t *testing.T) {
	for _, tc := range []struct {
		errno       unix.Errno
		unavailable bool
		hint        string
	}{
		{unix.EOPNOTSUPP, true, "modprobe nf_tables"},
		{unix.EPROTONOSUPPORT, true, "modprobe nf_tables"},
		{unix.EAFNOSUPPORT, true, "modprobe nf_tables"},
		{unix.ENOENT, true, "nft_masq"},
		{unix.EPERM, false, "CAP_NET_ADMIN"},
		{unix.EBUSY, false, "write"},
	} {
		// As the library reports it: wrapped, inside a joined error.
		err := explain(fmt.Errorf("write nftables table ip weft: %w", fmt.Errorf("conn.Receive: %w", errors.Join(tc.errno))))
		if errors.Is(err, ErrUnavailable) != tc.unavailable || !strings.Contains(err.Error(), tc.hint) || !errors.Is(err, tc.errno) {
			t.Errorf("explain(%v) = %v: want ErrUnavailable=%v, hint %q, errno kept", tc.errno, err, tc.unavailable, tc.hint)
		}
	}
}
