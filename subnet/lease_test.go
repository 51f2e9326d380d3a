package subnet_test

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"strings"
	"testing"

	"github.com/weft-net/weft/subnet"
)

func TestAttrsMarshalExact(t *testing.T) {
	v6 := "fc00::2"
	tests := []struct {
		name  string
		attrs subnet.Attrs
		want  string
	}{
		{"udp flanneld lease",
			subnet.Attrs{PublicIP: netip.MustParseAddr("198.18.0.2")},
			`{"PublicIP":"198.18.0.2","PublicIPv6":null}`},
		{"every field, extras sorted",
			subnet.Attrs{
				PublicIP:      netip.MustParseAddr("198.18.0.3"),
				PublicIPv6:    &v6,
				BackendType:   "vxlan",
				BackendData:   json.RawMessage(`{ "VNI": 1,  "VtepMAC": "aa:bb:cc:dd:ee:ff" }`),
				BackendV6Data: json.RawMessage(`null`),
				Extra: map[string]json.RawMessage{
					"zeta":  json.RawMessage(`[1, 2]`),
					"Alpha": json.RawMessage(`"<x>"`),
				},
			},
			`{"PublicIP":"198.18.0.3","PublicIPv6":"fc00::2","BackendType":"vxlan",` +
				`"BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"},"BackendV6Data":null,` +
				`"Alpha":"<x>","zeta":[1,2]}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.attrs.MarshalJSON()
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tt.want {
				t.Errorf("MarshalJSON\n got %s\nwant %s", got, tt.want)
			}
			// encoding/json uses the same method, also through a pointer.
			var buf bytes.Buffer
			enc := json.NewEncoder(&buf)
			enc.SetEscapeHTML(false)
			if err := enc.Encode(&tt.attrs); err != nil || buf.String() != tt.want+"\n" {
				t.Errorf("json.Encoder = %s, %v", buf.String(), err)
			}
			back, err := subnet.ParseAttrs(got)
			if err != nil {
				t.Fatalf("ParseAttrs(%s): %v", got, err)
			}
			again, _ := back.MarshalJSON()
			if string(again) != tt.want {
				t.Errorf("round trip\n got %s\nwant %s", again, tt.want)
			}
		})
	}
}

func TestAttrsMarshalErrors(t *testing.T) {
	bad := "198.18.0.1"
	for _, a := range []subnet.Attrs{
		{},
		{PublicIP: netip.MustParseAddr("fc00::1")},
		{PublicIP: netip.MustParseAddr("::ffff:198.18.0.1")},
		{PublicIP: netip.MustParseAddr("198.18.0.1"), PublicIPv6: &bad},
		{PublicIP: netip.MustParseAddr("198.18.0.1"), BackendData: json.RawMessage(`{`)},
		{PublicIP: netip.MustParseAddr("198.18.0.1"), Extra: map[string]json.RawMessage{"publicip": json.RawMessage(`"198.18.0.9"`)}},
		{PublicIP: netip.MustParseAddr("198.18.0.1"), Extra: map[string]json.RawMessage{"x": nil}},
	} {
		if b, err := a.MarshalJSON(); err == nil {
			t.Errorf("MarshalJSON(%+v) = %s, want error", a, b)
		}
	}
}

func TestParseAttrs(t *testing.T) {
	a, err := subnet.ParseAttrs([]byte(` {"publicip" : "198.18.0.7", "PUBLICIPV6":null,
		"backendtype":"udp", "Unknown": {"a" : [1, 2]}, "PublicIP":"198.18.0.8"} `))
	if err != nil {
		t.Fatal(err)
	}
	if a.PublicIP != netip.MustParseAddr("198.18.0.8") {
		t.Errorf("PublicIP = %s, want the last one, 198.18.0.8", a.PublicIP)
	}
	if a.PublicIPv6 != nil || a.BackendType != "udp" {
		t.Errorf("got %+v", a)
	}
	if got := string(a.Extra["Unknown"]); got != `{"a":[1,2]}` {
		t.Errorf("Extra[Unknown] = %s", got)
	}
	b, _ := a.MarshalJSON()
	if want := `{"PublicIP":"198.18.0.8","PublicIPv6":null,"BackendType":"udp","Unknown":{"a":[1,2]}}`; string(b) != want {
		t.Errorf("re-marshal\n got %s\nwant %s", b, want)
	}

	// Through encoding/json.
	var wrapped struct{ A subnet.Attrs }
	if err := json.Unmarshal([]byte(`{"A":{"PublicIP":"198.18.0.9","PublicIPv6":"fc00::9"}}`), &wrapped); err != nil {
		t.Fatal(err)
	}
	if wrapped.A.PublicIP != netip.MustParseAddr("198.18.0.9") || wrapped.A.PublicIPv6 == nil || *wrapped.A.PublicIPv6 != "fc00::9" {
		t.Errorf("via json.Unmarshal: %+v", wrapped.A)
	}

	for _, bad := range []string{
		``, `null`, `[]`, `"198.18.0.1"`, `{`, `{}`,
		`{"PublicIPv6":null}`,
		`{"PublicIP":null}`,
		`{"PublicIP":""}`,
		`{"PublicIP":"fc00::1"}`,
		`{"PublicIP":"::ffff:198.18.0.1"}`,
		`{"PublicIP":"198.18.0.1/24"}`,
		`{"PublicIP":"198.018.0.1"}`,
		`{"PublicIP":3323854849}`,
		`{"PublicIP":"198.18.0.1","PublicIPv6":"198.18.0.1"}`,
		`{"PublicIP":"198.18.0.1","PublicIPv6":""}`,
		`{"PublicIP":"198.18.0.1","PublicIPv6":"fe80::1%eth0"}`,
		`{"PublicIP":"198.18.0.1","BackendType":1}`,
		`{"PublicIP":"198.18.0.1"} {}`,
		`{"PublicIP":"198.18.0.1"}x`,
		`{"PublicIP":"198.18.0.1",}`,
	} {
		if a, err := subnet.ParseAttrs([]byte(bad)); err == nil {
			t.Errorf("ParseAttrs(%s) = %+v, want error", bad, a)
		} else if !strings.HasPrefix(err.Error(), "parse lease attrs: ") {
			t.Errorf("ParseAttrs(%s): error %q lacks the operation", bad, err)
		}
	}
}

func TestAttrsEqual(t *testing.T) {
	v6a, v6b := "fc00::1", "fc00::2"
	base := subnet.Attrs{PublicIP: netip.MustParseAddr("198.18.0.1"), PublicIPv6: &v6a,
		Extra: map[string]json.RawMessage{"k": json.RawMessage(`1`)}}
	same := base
	same.PublicIPv6 = new(string)
	*same.PublicIPv6 = v6a
	same.Extra = map[string]json.RawMessage{"k": json.RawMessage(`1`)}
	if !base.Equal(same) {
		t.Error("equal attrs differ")
	}
	for i, mod := range []func(*subnet.Attrs){
		func(a *subnet.Attrs) { a.PublicIP = netip.MustParseAddr("198.18.0.2") },
		func(a *subnet.Attrs) { a.PublicIPv6 = nil },
		func(a *subnet.Attrs) { a.PublicIPv6 = &v6b },
		func(a *subnet.Attrs) { a.BackendType = "udp" },
		func(a *subnet.Attrs) { a.BackendData = json.RawMessage(`{}`) },
		func(a *subnet.Attrs) { a.BackendV6Data = json.RawMessage(`{}`) },
		func(a *subnet.Attrs) { a.Extra = map[string]json.RawMessage{"k": json.RawMessage(`2`)} },
		func(a *subnet.Attrs) { a.Extra = map[string]json.RawMessage{"j": json.RawMessage(`1`)} },
		func(a *subnet.Attrs) { a.Extra = nil },
	} {
		other := same
		mod(&other)
		if base.Equal(other) || other.Equal(base) {
			t.Errorf("modification %d not detected", i)
		}
	}
}

func TestLeaseKeyName(t *testing.T) {
	for _, tt := range []struct{ prefix, key string }{
		{"198.19.7.0/24", "198.19.7.0-24"},
		{"198.19.0.4/30", "198.19.0.4-30"},
		{"198.18.0.0/15", "198.18.0.0-15"},
		{"198.19.7.9/32", "198.19.7.9-32"},
	} {
		p := netip.MustParsePrefix(tt.prefix)
		if got := subnet.LeaseKeyName(p); got != tt.key {
			t.Errorf("LeaseKeyName(%s) = %q, want %q", p, got, tt.key)
		}
		got, err := subnet.ParseLeaseKeyName(tt.key)
		if err != nil || got != p {
			t.Errorf("ParseLeaseKeyName(%q) = %s, %v; want %s", tt.key, got, err, p)
		}
	}
}

func TestParseLeaseKeyName(t *testing.T) {
	ok := map[string]string{
		"198.19.7.0-24":               "198.19.7.0/24",
		"198.19.7.0-24&fc00::-64":     "198.19.7.0/24",
		"198.19.1.0-24&fc00:0:1::-48": "198.19.1.0/24",
		"198.19.7.128-25":             "198.19.7.128/25",
	}
	for key, want := range ok {
		got, err := subnet.ParseLeaseKeyName(key)
		if err != nil || got != netip.MustParsePrefix(want) {
			t.Errorf("ParseLeaseKeyName(%q) = %s, %v; want %s", key, got, err, want)
		}
	}
	for _, key := range []string{
		"", "-", "config", "198.19.7.0", "198.19.7.0-", "198.19.7.0/24", "198.19.7.0-24x",
		"198.19.7.1-24",        // not the network address
		"198.19.7.0-33",        // too long
		"198.19.7.0-0",         // zero length
		"198.19.7.0-024",       // leading zero
		"198.19.7.0-+24",       // sign
		"198.19.7.0--24",       // sign
		"198.19.7-24",          // short address
		"198.019.7.0-24",       // leading zero in the address
		"fc00::-64",            // IPv6 only
		"::ffff:198.19.7.0-24", // mapped
		"198.19.7.0-24&",       // empty IPv6 part
		"198.19.7.0-24&fc00::", // IPv6 part without length
		"198.19.7.0-24&fc00::1-64",
		"198.19.7.0-24&fc00::-129",
		"198.19.7.0-24&198.19.8.0-24",
		"198.19.7.0-24&fc00::-64&fc01::-64",
		"198.19.7.0-24 ",
	} {
		if p, err := subnet.ParseLeaseKeyName(key); err == nil {
			t.Errorf("ParseLeaseKeyName(%q) = %s, want error", key, p)
		}
	}
}

func FuzzParseAttrs(f *testing.F) {
	for _, s := range []string{
		`{"PublicIP":"198.18.0.2","PublicIPv6":null}`,
		`{"PublicIP":"198.18.0.3","PublicIPv6":"fc00::2","BackendType":"vxlan","BackendData":{"VNI":1},"BackendV6Data":null,"x":[1,{"y":"z"}]}`,
		`{"publicip":"198.18.0.2","PUBLICIP":"198.18.0.4","x":1,"x":2}`,
		`{"PublicIP":"198.18.0.2","BackendType":null,"<k>":"\u2028"}`,
		`{"PublicIP":"198.18.0.2"} `,
		`{}`, `[]`, `null`, ``, `{"PublicIP":1}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		a, err := subnet.ParseAttrs(data)
		if err != nil {
			return
		}
		if !a.PublicIP.Is4() {
			t.Fatalf("parsed PublicIP %s is not IPv4", a.PublicIP)
		}
		b, err := a.MarshalJSON()
		if err != nil {
			t.Fatalf("parsed attrs %+v do not marshal: %v", a, err)
		}
		if !json.Valid(b) {
			t.Fatalf("marshalled invalid JSON %q", b)
		}
		back, err := subnet.ParseAttrs(b)
		if err != nil {
			t.Fatalf("ParseAttrs(Marshal(x)) = %v for %s", err, b)
		}
		if !back.Equal(a) {
			t.Fatalf("round trip changed the value:\n  %+v\n  %+v", a, back)
		}
		b2, _ := back.MarshalJSON()
		if string(b2) != string(b) {
			t.Fatalf("marshal not stable:\n  %s\n  %s", b, b2)
		}
	})
}

func FuzzParseLeaseKeyName(f *testing.F) {
	for _, s := range []string{
		"198.19.7.0-24", "198.19.7.0-24&fc00::-64", "198.19.7.1-24", "0.0.0.0-1", "198.19.7.9-32",
		"198.19.7.0-024", "fc00::-64", "a-b&c-d", "",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		p, err := subnet.ParseLeaseKeyName(name)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "parse lease key ") {
				t.Fatalf("error %q lacks the operation", err)
			}
			return
		}
		if !p.Addr().Is4() || p.Masked() != p || p.Bits() < 1 {
			t.Fatalf("%q parsed to bad prefix %s", name, p)
		}
		key := subnet.LeaseKeyName(p)
		// The name is the canonical key, or the canonical key plus an IPv6 part.
		if name != key && !strings.HasPrefix(name, key+"&") {
			t.Fatalf("%q parsed to %s whose key is %q", name, p, key)
		}
		if back, err := subnet.ParseLeaseKeyName(key); err != nil || back != p {
			t.Fatalf("ParseLeaseKeyName(LeaseKeyName(%s)) = %s, %v", p, back, err)
		}
	})
}

func FuzzLeaseKeyNameRoundTrip(f *testing.F) {
	f.Add(uint32(0xc6130700), uint8(24))
	f.Add(uint32(0xffffffff), uint8(32))
	f.Add(uint32(0), uint8(1))
	f.Fuzz(func(t *testing.T, a uint32, bits uint8) {
		bits = bits%32 + 1
		p := netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(a >> 24), byte(a >> 16), byte(a >> 8), byte(a)}), int(bits)).Masked()
		got, err := subnet.ParseLeaseKeyName(subnet.LeaseKeyName(p))
		if err != nil || got != p {
			t.Fatalf("ParseLeaseKeyName(LeaseKeyName(%s)) = %s, %v", p, got, err)
		}
	})
}
