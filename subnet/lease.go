package subnet

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// Attrs is a lease value, flannel's LeaseAttrs. A udp flanneld writes
// exactly {"PublicIP":"198.18.0.2","PublicIPv6":null}; other backends and
// newer versions may add fields, which are kept in Extra and written back
// unchanged.
type Attrs struct {
	PublicIP netip.Addr // IPv4 address peers send to
	// PublicIPv6 is kept as written (JSON null when nil). weft does not use it.
	PublicIPv6    *string
	BackendType   string          // omitted when empty
	BackendData   json.RawMessage // omitted when empty; compact JSON
	BackendV6Data json.RawMessage // omitted when empty; compact JSON
	// Extra holds fields flannel's schema does not name, keyed as written,
	// values compact JSON.
	Extra map[string]json.RawMessage
}

// Names of the fields Attrs knows, in the order flanneld writes them.
const (
	fieldPublicIP      = "PublicIP"
	fieldPublicIPv6    = "PublicIPv6"
	fieldBackendType   = "BackendType"
	fieldBackendData   = "BackendData"
	fieldBackendV6Data = "BackendV6Data"
)

var knownFields = [...]string{fieldPublicIP, fieldPublicIPv6, fieldBackendType, fieldBackendData, fieldBackendV6Data}

// knownField returns the canonical name of a known field matching name the
// way encoding/json (and so flanneld) matches: case-insensitively.
func knownField(name string) (string, bool) {
	for _, k := range knownFields {
		if strings.EqualFold(k, name) {
			return k, true
		}
	}
	return "", false
}

// MarshalJSON writes the lease value in flanneld's layout: PublicIP,
// PublicIPv6 (null when nil), then the non-empty omitempty fields, then
// Extra sorted by key.
func (a Attrs) MarshalJSON() ([]byte, error) {
	if !a.PublicIP.Is4() {
		return nil, fmt.Errorf("marshal lease attrs: PublicIP %q: not an IPv4 address", a.PublicIP)
	}
	var b bytes.Buffer
	b.WriteString(`{"PublicIP":"`)
	b.WriteString(a.PublicIP.String())
	b.WriteString(`","PublicIPv6":`)
	if a.PublicIPv6 == nil {
		b.WriteString("null")
	} else {
		if err := checkIPv6(*a.PublicIPv6); err != nil {
			return nil, fmt.Errorf("marshal lease attrs: %w", err)
		}
		writeString(&b, *a.PublicIPv6)
	}
	if a.BackendType != "" {
		b.WriteString(`,"BackendType":`)
		writeString(&b, a.BackendType)
	}
	for _, f := range []struct {
		name string
		v    json.RawMessage
	}{{fieldBackendData, a.BackendData}, {fieldBackendV6Data, a.BackendV6Data}} {
		if len(f.v) == 0 {
			continue
		}
		b.WriteString(`,"` + f.name + `":`)
		if err := json.Compact(&b, f.v); err != nil {
			return nil, fmt.Errorf("marshal lease attrs: %s: %w", f.name, err)
		}
	}
	for _, k := range slices.Sorted(maps.Keys(a.Extra)) {
		// A colliding key would override the known field when read back.
		if kf, ok := knownField(k); ok {
			return nil, fmt.Errorf("marshal lease attrs: Extra field %q collides with %s", k, kf)
		}
		b.WriteByte(',')
		writeString(&b, k)
		b.WriteByte(':')
		v := a.Extra[k]
		if len(v) == 0 {
			return nil, fmt.Errorf("marshal lease attrs: Extra field %q: empty value", k)
		}
		if err := json.Compact(&b, v); err != nil {
			return nil, fmt.Errorf("marshal lease attrs: Extra field %q: %w", k, err)
		}
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

// UnmarshalJSON is ParseAttrs, so Attrs can sit inside other JSON.
func (a *Attrs) UnmarshalJSON(data []byte) error {
	v, err := ParseAttrs(data)
	if err != nil {
		return err
	}
	*a = v
	return nil
}

// ParseAttrs parses a lease value. Field names match case-insensitively and
// a repeated field takes its last value, as with encoding/json in flanneld.
// PublicIP must be an IPv4 address; unknown fields go to Extra.
func ParseAttrs(data []byte) (Attrs, error) {
	var a Attrs
	dec := json.NewDecoder(bytes.NewReader(data))
	tok, err := dec.Token()
	if err != nil {
		return Attrs{}, fmt.Errorf("parse lease attrs: %w", err)
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return Attrs{}, errors.New("parse lease attrs: not a JSON object")
	}
	seenIP := false
	for dec.More() {
		key, raw, err := nextAttrsField(dec)
		if err != nil {
			return Attrs{}, err
		}
		name, known := knownField(key)
		if !known {
			if a.Extra == nil {
				a.Extra = make(map[string]json.RawMessage)
			}
			a.Extra[key] = raw
			continue
		}
		if err := a.setKnown(name, raw); err != nil {
			return Attrs{}, err
		}
		seenIP = seenIP || name == fieldPublicIP
	}
	if _, err := dec.Token(); err != nil { // the closing '}'
		return Attrs{}, fmt.Errorf("parse lease attrs: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return Attrs{}, errors.New("parse lease attrs: trailing data after the JSON object")
	}
	if !seenIP {
		return Attrs{}, errors.New("parse lease attrs: PublicIP missing")
	}
	return a, nil
}

// nextAttrsField reads the next member of the lease object: its key as
// written and its value as compact JSON.
func nextAttrsField(dec *json.Decoder) (string, json.RawMessage, error) {
	tok, err := dec.Token()
	if err != nil {
		return "", nil, fmt.Errorf("parse lease attrs: %w", err)
	}
	key, ok := tok.(string)
	if !ok {
		return "", nil, fmt.Errorf("parse lease attrs: unexpected %v", tok)
	}
	var raw json.RawMessage
	if err := dec.Decode(&raw); err != nil {
		return "", nil, fmt.Errorf("parse lease attrs: field %q: %w", key, err)
	}
	var compact bytes.Buffer
	if err := json.Compact(&compact, raw); err != nil {
		return "", nil, fmt.Errorf("parse lease attrs: field %q: %w", key, err)
	}
	return key, compact.Bytes(), nil
}

// setKnown sets the known field name (canonical, see knownField) from its
// compact JSON value raw. A null clears PublicIPv6 and BackendType; the
// backend data fields keep it as their raw value.
func (a *Attrs) setKnown(name string, raw json.RawMessage) error {
	null := string(raw) == "null"
	switch name {
	case fieldPublicIP:
		s, err := jsonString(name, raw)
		if err != nil {
			return err
		}
		ip, err := netip.ParseAddr(s)
		if err != nil || !ip.Is4() {
			return fmt.Errorf("parse lease attrs: PublicIP %q: not an IPv4 address", s)
		}
		a.PublicIP = ip
	case fieldPublicIPv6:
		if null {
			a.PublicIPv6 = nil
			return nil
		}
		s, err := jsonString(name, raw)
		if err != nil {
			return err
		}
		if err := checkIPv6(s); err != nil {
			return fmt.Errorf("parse lease attrs: %w", err)
		}
		a.PublicIPv6 = &s
	case fieldBackendType:
		if null {
			a.BackendType = ""
			return nil
		}
		s, err := jsonString(name, raw)
		if err != nil {
			return err
		}
		a.BackendType = s
	case fieldBackendData:
		a.BackendData = raw
	case fieldBackendV6Data:
		a.BackendV6Data = raw
	}
	return nil
}

// Equal reports whether a and b hold the same lease value, ignoring
// insignificant whitespace in raw JSON fields.
func (a Attrs) Equal(b Attrs) bool {
	if a.PublicIP != b.PublicIP || a.BackendType != b.BackendType ||
		(a.PublicIPv6 == nil) != (b.PublicIPv6 == nil) ||
		(a.PublicIPv6 != nil && *a.PublicIPv6 != *b.PublicIPv6) ||
		!rawEqual(a.BackendData, b.BackendData) || !rawEqual(a.BackendV6Data, b.BackendV6Data) ||
		len(a.Extra) != len(b.Extra) {
		return false
	}
	for k, v := range a.Extra {
		w, ok := b.Extra[k]
		if !ok || !rawEqual(v, w) {
			return false
		}
	}
	return true
}

// rawEqual compares JSON values ignoring insignificant whitespace.
func rawEqual(a, b json.RawMessage) bool {
	if bytes.Equal(a, b) {
		return true
	}
	var ca, cb bytes.Buffer
	return json.Compact(&ca, a) == nil && json.Compact(&cb, b) == nil && bytes.Equal(ca.Bytes(), cb.Bytes())
}

func jsonString(name string, raw json.RawMessage) (string, error) {
	var s string
	if string(raw) == "null" || json.Unmarshal(raw, &s) != nil {
		return "", fmt.Errorf("parse lease attrs: %s %s: must be a string", name, clip(raw))
	}
	return s, nil
}

func checkIPv6(s string) error {
	ip, err := netip.ParseAddr(s)
	if err != nil || !ip.Is6() || ip.Zone() != "" {
		return fmt.Errorf("PublicIPv6 %q: not an IPv6 address", s)
	}
	return nil
}

func writeString(b *bytes.Buffer, s string) {
	// json.Marshal of a string cannot fail.
	v, _ := json.Marshal(s)
	b.Write(v)
}

// LeaseKeyName is the last element of a lease key, flannel's
// "<a.b.c.d>-<len>", e.g. "198.19.7.0-24" for 198.19.7.0/24.
func LeaseKeyName(subnet netip.Prefix) string {
	return subnet.Masked().Addr().String() + "-" + strconv.Itoa(subnet.Bits())
}

// ParseLeaseKeyName parses the last element of a lease key: "198.19.7.0-24",
// or the dual-stack form "198.19.7.0-24&fc00::-64", of which it returns the
// IPv4 part. The address must be the subnet's network address and the
// length 1..32 (1..128 for the IPv6 part), without leading zeros.
func ParseLeaseKeyName(name string) (netip.Prefix, error) {
	v4, v6, dual := strings.Cut(name, "&")
	p, err := parseKeyPrefix(v4, false)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("parse lease key %q: %w", name, err)
	}
	if dual {
		if _, err := parseKeyPrefix(v6, true); err != nil {
			return netip.Prefix{}, fmt.Errorf("parse lease key %q: IPv6 part: %w", name, err)
		}
	}
	return p, nil
}

func parseKeyPrefix(s string, v6 bool) (netip.Prefix, error) {
	i := strings.LastIndexByte(s, '-')
	if i < 0 {
		return netip.Prefix{}, errors.New(`want "<address>-<length>"`)
	}
	addr, bits := s[:i], s[i+1:]
	ip, err := netip.ParseAddr(addr)
	if err != nil || ip.Zone() != "" || (v6 && !ip.Is6()) || (!v6 && !ip.Is4()) {
		family := "IPv4"
		if v6 {
			family = "IPv6"
		}
		return netip.Prefix{}, fmt.Errorf("%q is not an %s address", addr, family)
	}
	n, err := strconv.Atoi(bits)
	if err != nil || bits[0] < '1' || bits[0] > '9' || n > ip.BitLen() {
		return netip.Prefix{}, fmt.Errorf("bad prefix length %q", bits)
	}
	p := netip.PrefixFrom(ip, n)
	if p.Masked() != p {
		return netip.Prefix{}, fmt.Errorf("%s is not a network address (want %s)", ip, p.Masked().Addr())
	}
	return p, nil
}
