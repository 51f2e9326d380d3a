package subnet_test

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/weft-net/weft/subnet"
)

func TestParseConfigDefaults(t *testing.T) {
	pfx := netip.MustParsePrefix
	addr := netip.MustParseAddr
	tests := []struct {
		name     string
		json     string
		network  netip.Prefix
		len      int
		min, max netip.Addr
		port     int
	}{
		{"plain /16", `{"Network":"198.19.0.0/16"}`,
			pfx("198.19.0.0/16"), 24, addr("198.19.1.0"), addr("198.19.255.0"), 8285},
		{"field names are case-insensitive", `{"network":"198.19.0.0/16","SUBNETLEN":26,"backend":{"type":"udp","PORT":9000}}`,
			pfx("198.19.0.0/16"), 26, addr("198.19.0.64"), addr("198.19.255.192"), 9000},
		{"/15 gets /24", `{"Network":"198.18.0.0/15"}`,
			pfx("198.18.0.0/15"), 24, addr("198.18.1.0"), addr("198.19.255.0"), 8285},
		{"/22 still gets /24", `{"Network":"198.19.4.0/22"}`,
			pfx("198.19.4.0/22"), 24, addr("198.19.5.0"), addr("198.19.7.0"), 8285},
		{"/23 gets prefix+2", `{"Network":"198.19.2.0/23"}`,
			pfx("198.19.2.0/23"), 25, addr("198.19.2.128"), addr("198.19.3.128"), 8285},
		{"/28 gets /30", `{"Network":"198.19.0.16/28"}`,
			pfx("198.19.0.16/28"), 30, addr("198.19.0.20"), addr("198.19.0.28"), 8285},
		{"unmasked Network is masked as flanneld does", `{"Network":"198.19.5.7/16"}`,
			pfx("198.19.0.0/16"), 24, addr("198.19.1.0"), addr("198.19.255.0"), 8285},
		{"explicit range", `{"Network":"198.19.0.0/16","SubnetLen":24,"SubnetMin":"198.19.10.0","SubnetMax":"198.19.20.0"}`,
			pfx("198.19.0.0/16"), 24, addr("198.19.10.0"), addr("198.19.20.0"), 8285},
		{"min equals max", `{"Network":"198.19.0.0/16","SubnetMin":"198.19.7.0","SubnetMax":"198.19.7.0"}`,
			pfx("198.19.0.0/16"), 24, addr("198.19.7.0"), addr("198.19.7.0"), 8285},
		{"first subnet may be chosen explicitly", `{"Network":"198.19.0.0/16","SubnetMin":"198.19.0.0"}`,
			pfx("198.19.0.0/16"), 24, addr("198.19.0.0"), addr("198.19.255.0"), 8285},
		{"0.0.0.0 and empty mean default", `{"Network":"198.19.0.0/16","SubnetMin":"0.0.0.0","SubnetMax":""}`,
			pfx("198.19.0.0/16"), 24, addr("198.19.1.0"), addr("198.19.255.0"), 8285},
		{"SubnetLen 0 means default", `{"Network":"198.19.0.0/16","SubnetLen":0}`,
			pfx("198.19.0.0/16"), 24, addr("198.19.1.0"), addr("198.19.255.0"), 8285},
		{"SubnetLen at both bounds (low)", `{"Network":"198.19.0.0/16","SubnetLen":18}`,
			pfx("198.19.0.0/16"), 18, addr("198.19.64.0"), addr("198.19.192.0"), 8285},
		{"SubnetLen at both bounds (high)", `{"Network":"198.19.0.0/16","SubnetLen":30}`,
			pfx("198.19.0.0/16"), 30, addr("198.19.0.4"), addr("198.19.255.252"), 8285},
		{"Backend type in upper case", `{"Network":"198.19.0.0/16","Backend":{"Type":"UDP"}}`,
			pfx("198.19.0.0/16"), 24, addr("198.19.1.0"), addr("198.19.255.0"), 8285},
		{"Backend port 0 means default", `{"Network":"198.19.0.0/16","Backend":{"Type":"udp","Port":0}}`,
			pfx("198.19.0.0/16"), 24, addr("198.19.1.0"), addr("198.19.255.0"), 8285},
		{"Backend null means udp", `{"Network":"198.19.0.0/16","Backend":null}`,
			pfx("198.19.0.0/16"), 24, addr("198.19.1.0"), addr("198.19.255.0"), 8285},
		{"flannel's documented example, with unknown fields", `{"Network":"198.19.0.0/16","SubnetLen":24,
			"SubnetMin":"198.19.1.0","SubnetMax":"198.19.255.0","EnableIPv4":true,"EnableIPv6":false,
			"IPv6Network":"","Backend":{"Type":"udp","Port":8285,"Extra":1},"Whatever":[1,2]}`,
			pfx("198.19.0.0/16"), 24, addr("198.19.1.0"), addr("198.19.255.0"), 8285},
		{"Backend port max", `{"Network":"198.19.0.0/16","Backend":{"Type":"udp","Port":65535}}`,
			pfx("198.19.0.0/16"), 24, addr("198.19.1.0"), addr("198.19.255.0"), 65535},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := subnet.ParseConfig([]byte(tt.json))
			if err != nil {
				t.Fatalf("ParseConfig: %v", err)
			}
			want := subnet.Config{
				Network: tt.network, SubnetLen: tt.len, SubnetMin: tt.min, SubnetMax: tt.max,
				EnableIPv4: true, BackendType: "udp", BackendPort: tt.port,
			}
			if *c != want {
				t.Errorf("got  %+v\nwant %+v", *c, want)
			}
		})
	}
}

func TestParseConfigErrors(t *testing.T) {
	tests := []struct {
		json, want string
	}{
		{``, `network config: empty document: want a JSON object such as {"Network":"198.19.0.0/16"}`},
		{`null`, `network config: document is null: want a JSON object such as {"Network":"198.19.0.0/16"}`},
		{`{"Network":`, `network config: invalid JSON: `},
		{`[]`, `network config: invalid JSON: `},
		{`{}`, `network config: Network missing: set it to an IPv4 CIDR such as "198.19.0.0/16"`},
		{`{"Network":""}`, `network config: Network missing: set it to an IPv4 CIDR such as "198.19.0.0/16"`},
		{`{"Network":16}`, `network config: Network 16: must be a string`},
		{`{"Network":"198.19.0.0"}`, `network config: Network "198.19.0.0": not a CIDR (want e.g. "198.19.0.0/16")`},
		{`{"Network":"fc00::/48"}`, `network config: Network "fc00::/48": must be an IPv4 CIDR (weft does not support IPv6)`},
		{`{"Network":"198.19.0.0/29"}`, `network config: Network 198.19.0.0/29: prefix length must be between /1 and /28`},
		{`{"Network":"198.19.0.0/0"}`, `network config: Network 0.0.0.0/0: prefix length must be between /1 and /28`},
		{`{"Network":"198.19.0.0/16","SubnetLen":31}`, `network config: SubnetLen 31: must be between 18 (Network prefix + 2) and 30`},
		{`{"Network":"198.19.0.0/16","SubnetLen":17}`, `network config: SubnetLen 17: must be between 18 (Network prefix + 2) and 30`},
		{`{"Network":"198.19.0.0/16","SubnetLen":-24}`, `network config: SubnetLen -24: must be between 18 (Network prefix + 2) and 30`},
		{`{"Network":"198.19.0.0/16","SubnetLen":"24"}`, `network config: SubnetLen "24": must be an integer`},
		{`{"Network":"198.19.0.0/16","SubnetLen":24.5}`, `network config: SubnetLen 24.5: must be an integer`},
		{`{"Network":"198.19.0.0/16","SubnetMin":"198.20.1.0"}`, `network config: SubnetMin 198.20.1.0: outside Network 198.19.0.0/16`},
		{`{"Network":"198.19.0.0/16","SubnetMin":"198.19.1.5"}`, `network config: SubnetMin 198.19.1.5: not aligned to SubnetLen 24 (e.g. 198.19.1.0)`},
		{`{"Network":"198.19.0.0/16","SubnetMin":"bogus"}`, `network config: SubnetMin "bogus": not an IPv4 address`},
		{`{"Network":"198.19.0.0/16","SubnetMin":"fc00::"}`, `network config: SubnetMin "fc00::": not an IPv4 address`},
		{`{"Network":"198.19.0.0/16","SubnetMax":"198.18.255.0"}`, `network config: SubnetMax 198.18.255.0: outside Network 198.19.0.0/16`},
		{`{"Network":"198.19.0.0/16","SubnetLen":26,"SubnetMax":"198.19.255.100"}`, `network config: SubnetMax 198.19.255.100: not aligned to SubnetLen 26 (e.g. 198.19.255.64)`},
		{`{"Network":"198.19.0.0/16","SubnetMax":[1]}`, `network config: SubnetMax [1]: must be a string`},
		{`{"Network":"198.19.0.0/16","SubnetMin":"198.19.9.0","SubnetMax":"198.19.3.0"}`, `network config: SubnetMin 198.19.9.0 is above SubnetMax 198.19.3.0`},
		{`{"Network":"198.19.0.0/16","EnableIPv6":true}`, `network config: EnableIPv6 true: weft does not support IPv6; set it to false or omit it`},
		{`{"Network":"198.19.0.0/16","EnableIPv4":false}`, `network config: EnableIPv4 false: weft supports only IPv4 networks; set it to true or omit it`},
		{`{"Network":"198.19.0.0/16","EnableIPv6":"no"}`, `network config: EnableIPv6 "no": must be true or false`},
		{`{"Network":"198.19.0.0/16","Backend":{"Type":"vxlan"}}`, `network config: Backend.Type "vxlan": weft implements only the udp backend`},
		{`{"Network":"198.19.0.0/16","Backend":{"Type":"host-gw"}}`, `network config: Backend.Type "host-gw": weft implements only the udp backend`},
		{`{"Network":"198.19.0.0/16","Backend":{}}`, `network config: Backend.Type missing: weft implements only the udp backend; set it to "udp"`},
		{`{"Network":"198.19.0.0/16","Backend":{"Port":8285}}`, `network config: Backend.Type missing: weft implements only the udp backend; set it to "udp"`},
		{`{"Network":"198.19.0.0/16","Backend":"udp"}`, `network config: Backend "udp": must be an object such as {"Type":"udp","Port":8285}`},
		{`{"Network":"198.19.0.0/16","Backend":{"Type":"udp","Port":70000}}`, `network config: Backend.Port 70000: must be between 1 and 65535 (0 or absent means 8285)`},
		{`{"Network":"198.19.0.0/16","Backend":{"Type":"udp","Port":-1}}`, `network config: Backend.Port -1: must be between 1 and 65535 (0 or absent means 8285)`},
		{`{"Network":"198.19.0.0/16","Backend":{"Type":"udp","Port":"8285"}}`, `network config: Backend.Port "8285": must be an integer`},
		{`{"Network":"198.19.0.0/16","Backend":{"Type":7}}`, `network config: Backend.Type 7: must be a string`},
	}
	for _, tt := range tests {
		t.Run(tt.json, func(t *testing.T) {
			c, err := subnet.ParseConfig([]byte(tt.json))
			if err == nil {
				t.Fatalf("ParseConfig succeeded with %+v, want error %q", c, tt.want)
			}
			got := err.Error()
			if strings.HasSuffix(tt.want, ": ") {
				if !strings.HasPrefix(got, tt.want) {
					t.Errorf("error %q, want prefix %q", got, tt.want)
				}
			} else if got != tt.want {
				t.Errorf("error\n got %q\nwant %q", got, tt.want)
			}
			if strings.Contains(got, "\n") {
				t.Errorf("error spans lines: %q", got)
			}
		})
	}
}

func TestConfigSubnets(t *testing.T) {
	c, err := subnet.ParseConfig([]byte(`{"Network":"198.19.0.0/16","SubnetLen":26,"SubnetMin":"198.19.3.64","SubnetMax":"198.19.4.64"}`))
	if err != nil {
		t.Fatal(err)
	}
	got := slices.Collect(c.Subnets())
	var want []netip.Prefix
	for _, s := range []string{"198.19.3.64/26", "198.19.3.128/26", "198.19.3.192/26", "198.19.4.0/26", "198.19.4.64/26"} {
		want = append(want, netip.MustParsePrefix(s))
	}
	if !slices.Equal(got, want) {
		t.Errorf("Subnets() = %v, want %v", got, want)
	}
	if n := c.SubnetCount(); n != len(want) {
		t.Errorf("SubnetCount() = %d, want %d", n, len(want))
	}
	for _, p := range want {
		if !c.InRange(p) {
			t.Errorf("InRange(%s) = false", p)
		}
	}
	for _, s := range []string{"198.19.3.0/26", "198.19.4.128/26", "198.19.4.0/24", "198.19.4.0/27", "198.19.4.1/26", "::/26"} {
		if p, err := netip.ParsePrefix(s); err == nil && c.InRange(p) {
			t.Errorf("InRange(%s) = true", p)
		}
	}
	if c.InRange(netip.Prefix{}) {
		t.Error("InRange(zero prefix) = true")
	}

	// The top of the address space must not wrap around.
	c, err = subnet.ParseConfig([]byte(`{"Network":"255.255.255.240/28"}`))
	if err != nil {
		t.Fatal(err)
	}
	if got := slices.Collect(c.Subnets()); len(got) != 3 || got[2] != netip.MustParsePrefix("255.255.255.252/30") {
		t.Errorf("Subnets() of 255.255.255.240/28 = %v", got)
	}

	// Early stop.
	n := 0
	for range c.Subnets() {
		n++
		break
	}
	if n != 1 {
		t.Errorf("iteration did not stop: %d", n)
	}
}

func FuzzParseConfig(f *testing.F) {
	for _, s := range []string{
		`{"Network":"198.19.0.0/16"}`,
		`{"Network":"198.19.0.0/16","SubnetLen":26,"SubnetMin":"198.19.3.64","SubnetMax":"198.19.4.64"}`,
		`{"Network":"198.19.0.16/28","Backend":{"Type":"udp","Port":9}}`,
		`{"network":"198.18.0.0/15","subnetlen":30,"backend":{"type":"UDP"}}`,
		`{"Network":"255.255.255.240/28","SubnetMax":"255.255.255.252"}`,
		`{"Network":"1.0.0.0/1","SubnetLen":30}`,
		`{"Network":"198.19.0.0/16","SubnetLen":1e1}`,
		`{"Network":"198.19.0.0/16","EnableIPv6":true}`,
		`{"Network":"198.19.0.0/16","Backend":{"Type":"vxlan"}}`,
		``, `null`, `[]`, `{"Network":"fc00::/48"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := subnet.ParseConfig(data)
		if err != nil {
			if c != nil {
				t.Fatalf("config %+v returned with error %v", c, err)
			}
			if strings.ContainsAny(err.Error(), "\n\r") {
				t.Fatalf("multi-line error %q", err)
			}
			return
		}
		n := c.Network
		if !n.Addr().Is4() || n.Masked() != n || n.Bits() < 1 || n.Bits() > 28 {
			t.Fatalf("bad Network %s", n)
		}
		if c.SubnetLen < n.Bits()+2 || c.SubnetLen > 30 {
			t.Fatalf("SubnetLen %d out of range for %s", c.SubnetLen, n)
		}
		for _, a := range []netip.Addr{c.SubnetMin, c.SubnetMax} {
			p := netip.PrefixFrom(a, c.SubnetLen)
			if !a.Is4() || !n.Contains(a) || p.Masked() != p || !c.InRange(p) {
				t.Fatalf("bound %s not an aligned subnet of %s /%d", a, n, c.SubnetLen)
			}
		}
		if c.SubnetMin.Compare(c.SubnetMax) > 0 {
			t.Fatalf("SubnetMin %s > SubnetMax %s", c.SubnetMin, c.SubnetMax)
		}
		if c.SubnetCount() < 1 {
			t.Fatalf("SubnetCount %d", c.SubnetCount())
		}
		if !c.EnableIPv4 || c.EnableIPv6 || c.BackendType != "udp" || c.BackendPort < 1 || c.BackendPort > 65535 {
			t.Fatalf("bad flags or backend: %+v", c)
		}
		// The first subnets iterate in order and in range.
		prev := netip.Prefix{}
		i := 0
		for p := range c.Subnets() {
			if !c.InRange(p) || (prev.IsValid() && p.Addr().Compare(prev.Addr()) <= 0) {
				t.Fatalf("subnet %d %s after %s out of order or range", i, p, prev)
			}
			prev = p
			if i++; i == 64 {
				break
			}
		}
	})
}
