package subnet

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"iter"
	"math"
	"net/netip"
	"strconv"
	"strings"
)

// DefaultBackendPort is the udp backend's port when Backend.Port is absent
// or 0.
const DefaultBackendPort = 8285

// BackendUDP is the only backend type weft implements.
const BackendUDP = "udp"

// Config is flannel's network config (<prefix>/config) after defaults and
// validation. Only the fields weft uses are kept; ParseConfig never rewrites
// the stored JSON, so fields it ignores are preserved in etcd.
type Config struct {
	Network    netip.Prefix // IPv4, masked
	SubnetLen  int          // length of each node's subnet
	SubnetMin  netip.Addr   // first subnet that may be leased, aligned to SubnetLen
	SubnetMax  netip.Addr   // last subnet that may be leased, aligned to SubnetLen
	EnableIPv4 bool         // always true once parsed
	EnableIPv6 bool         // always false once parsed

	BackendType string // always "udp" once parsed
	BackendPort int    // 1..65535
}

// rawConfig mirrors the JSON. Every field is raw so that errors can name the
// field and its bad value; encoding/json matches the names
// case-insensitively, as flanneld does.
type rawConfig struct {
	Network    json.RawMessage
	SubnetLen  json.RawMessage
	SubnetMin  json.RawMessage
	SubnetMax  json.RawMessage
	EnableIPv4 json.RawMessage
	EnableIPv6 json.RawMessage
	Backend    json.RawMessage
}

type rawBackend struct {
	Type json.RawMessage
	Port json.RawMessage
}

// ParseConfig parses and validates flannel's network config with flanneld's
// defaults (pkg/subnet/config.go CheckNetworkConfig plus the udp backend's
// port default). It is the single validation used both by the daemon and by
// `weft config put`. Errors are one line naming the field, the bad value
// and what is valid.
func ParseConfig(data []byte) (*Config, error) {
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, errors.New("network config: empty document: want a JSON object such as {\"Network\":\"198.19.0.0/16\"}")
	}
	var raw rawConfig
	if err := json.Unmarshal(data, &raw); err != nil {
		return nil, fmt.Errorf("network config: invalid JSON: %w", err)
	}
	if isNull(data) {
		return nil, errors.New("network config: document is null: want a JSON object such as {\"Network\":\"198.19.0.0/16\"}")
	}

	c := &Config{EnableIPv4: true, BackendType: BackendUDP, BackendPort: DefaultBackendPort}

	var err error
	if c.EnableIPv4, err = boolField("EnableIPv4", raw.EnableIPv4, true); err != nil {
		return nil, err
	}
	if !c.EnableIPv4 {
		return nil, errors.New("network config: EnableIPv4 false: weft supports only IPv4 networks; set it to true or omit it")
	}
	if c.EnableIPv6, err = boolField("EnableIPv6", raw.EnableIPv6, false); err != nil {
		return nil, err
	}
	if c.EnableIPv6 {
		return nil, errors.New("network config: EnableIPv6 true: weft does not support IPv6; set it to false or omit it")
	}

	if err := c.parseNetwork(raw); err != nil {
		return nil, err
	}
	if err := c.parseBackend(raw.Backend); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *Config) parseNetwork(raw rawConfig) error {
	s, ok, err := stringField("Network", raw.Network)
	if err != nil {
		return err
	}
	if !ok || s == "" {
		return errors.New(`network config: Network missing: set it to an IPv4 CIDR such as "198.19.0.0/16"`)
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return fmt.Errorf("network config: Network %q: not a CIDR (want e.g. \"198.19.0.0/16\")", s)
	}
	if !p.Addr().Is4() {
		return fmt.Errorf("network config: Network %q: must be an IPv4 CIDR (weft does not support IPv6)", s)
	}
	// flanneld masks the network address silently (net.ParseCIDR); do the same
	// so that configs it accepts are accepted here.
	p = p.Masked()
	if p.Bits() == 0 || p.Bits() > 28 {
		return fmt.Errorf("network config: Network %s: prefix length must be between /1 and /28", p)
	}
	c.Network = p

	n, ok, err := intField("SubnetLen", raw.SubnetLen)
	if err != nil {
		return err
	}
	minLen := p.Bits() + 2
	switch {
	case !ok || n == 0:
		// flanneld: a /24 per node when the network has room for four of
		// them, else a quarter of the network.
		if p.Bits() <= 22 {
			n = 24
		} else {
			n = int64(minLen)
		}
	case n > 30 || n < int64(minLen):
		return fmt.Errorf("network config: SubnetLen %d: must be between %d (Network prefix + 2) and 30", n, minLen)
	}
	c.SubnetLen = int(n)

	size := uint32(1) << (32 - c.SubnetLen)
	first := addrToU32(p.Addr())
	last := first + (uint32(1)<<(32-p.Bits()) - 1) // broadcast of Network

	if c.SubnetMin, err = c.boundField("SubnetMin", raw.SubnetMin, first+size); err != nil {
		return err
	}
	if c.SubnetMax, err = c.boundField("SubnetMax", raw.SubnetMax, last-size+1); err != nil {
		return err
	}
	if c.SubnetMin.Compare(c.SubnetMax) > 0 {
		return fmt.Errorf("network config: SubnetMin %s is above SubnetMax %s", c.SubnetMin, c.SubnetMax)
	}
	return nil
}

// boundField parses SubnetMin or SubnetMax. As in flanneld, absent or
// 0.0.0.0 means the default.
func (c *Config) boundField(name string, raw json.RawMessage, def uint32) (netip.Addr, error) {
	s, ok, err := stringField(name, raw)
	if err != nil {
		return netip.Addr{}, err
	}
	if !ok || s == "" {
		return u32ToAddr(def), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil || !a.Is4() {
		return netip.Addr{}, fmt.Errorf("network config: %s %q: not an IPv4 address", name, s)
	}
	if a == netip.IPv4Unspecified() {
		return u32ToAddr(def), nil
	}
	if !c.Network.Contains(a) {
		return netip.Addr{}, fmt.Errorf("network config: %s %s: outside Network %s", name, a, c.Network)
	}
	if m := netip.PrefixFrom(a, c.SubnetLen).Masked().Addr(); m != a {
		return netip.Addr{}, fmt.Errorf("network config: %s %s: not aligned to SubnetLen %d (e.g. %s)", name, a, c.SubnetLen, m)
	}
	return a, nil
}

func (c *Config) parseBackend(raw json.RawMessage) error {
	if len(raw) == 0 || isNull(raw) {
		// flanneld defaults to udp when Backend is absent.
		return nil
	}
	var b rawBackend
	if err := json.Unmarshal(raw, &b); err != nil {
		return fmt.Errorf("network config: Backend %s: must be an object such as {\"Type\":\"udp\",\"Port\":8285}", clip(raw))
	}
	t, ok, err := stringField("Backend.Type", b.Type)
	if err != nil {
		return err
	}
	if !ok || t == "" {
		return errors.New(`network config: Backend.Type missing: weft implements only the udp backend; set it to "udp"`)
	}
	// flanneld looks backends up by lower-cased name.
	if strings.ToLower(t) != BackendUDP {
		return fmt.Errorf("network config: Backend.Type %q: weft implements only the udp backend", t)
	}
	port, ok, err := intField("Backend.Port", b.Port)
	if err != nil {
		return err
	}
	if ok && port != 0 {
		if port < 1 || port > 65535 {
			return fmt.Errorf("network config: Backend.Port %d: must be between 1 and 65535 (0 or absent means %d)", port, DefaultBackendPort)
		}
		c.BackendPort = int(port)
	}
	return nil
}

// SubnetCount is the number of subnets between SubnetMin and SubnetMax.
func (c *Config) SubnetCount() int {
	return int((addrToU32(c.SubnetMax)-addrToU32(c.SubnetMin))>>(32-c.SubnetLen)) + 1
}

// Subnets yields every leasable subnet from SubnetMin to SubnetMax in order.
func (c *Config) Subnets() iter.Seq[netip.Prefix] {
	return func(yield func(netip.Prefix) bool) {
		step := uint32(1) << (32 - c.SubnetLen)
		lo, hi := addrToU32(c.SubnetMin), addrToU32(c.SubnetMax)
		for a := lo; ; a += step {
			if !yield(netip.PrefixFrom(u32ToAddr(a), c.SubnetLen)) || a >= hi {
				return
			}
		}
	}
}

// InRange reports whether p is a leasable subnet of this config: IPv4,
// masked, SubnetLen long and between SubnetMin and SubnetMax.
func (c *Config) InRange(p netip.Prefix) bool {
	return p.IsValid() && p.Addr().Is4() && p.Bits() == c.SubnetLen && p.Masked() == p &&
		p.Addr().Compare(c.SubnetMin) >= 0 && p.Addr().Compare(c.SubnetMax) <= 0
}

// RangeString describes the leasable range for messages, e.g.
// "198.19.1.0/24..198.19.255.0/24 of Network 198.19.0.0/16".
func (c *Config) RangeString() string {
	return fmt.Sprintf("%s/%d..%s/%d of Network %s", c.SubnetMin, c.SubnetLen, c.SubnetMax, c.SubnetLen, c.Network)
}

func stringField(name string, raw json.RawMessage) (s string, ok bool, err error) {
	if len(raw) == 0 || isNull(raw) {
		return "", false, nil
	}
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", false, fmt.Errorf("network config: %s %s: must be a string", name, clip(raw))
	}
	return s, true, nil
}

func intField(name string, raw json.RawMessage) (n int64, ok bool, err error) {
	if len(raw) == 0 || isNull(raw) {
		return 0, false, nil
	}
	f, err := strconv.ParseFloat(string(raw), 64)
	if err != nil || f != math.Trunc(f) || math.Abs(f) > 1<<31 {
		return 0, false, fmt.Errorf("network config: %s %s: must be an integer", name, clip(raw))
	}
	return int64(f), true, nil
}

func boolField(name string, raw json.RawMessage, def bool) (bool, error) {
	if len(raw) == 0 || isNull(raw) {
		return def, nil
	}
	var b bool
	if err := json.Unmarshal(raw, &b); err != nil {
		return false, fmt.Errorf("network config: %s %s: must be true or false", name, clip(raw))
	}
	return b, nil
}

func isNull(raw []byte) bool { return string(bytes.TrimSpace(raw)) == "null" }

// clip shortens a raw JSON value for an error message. Compact JSON is
// one line already (strings cannot hold raw newlines).
func clip(raw []byte) string {
	var b bytes.Buffer
	if json.Compact(&b, raw) != nil {
		b.Reset()
		b.Write(bytes.ReplaceAll(raw, []byte("\n"), []byte(" ")))
	}
	r := []rune(strings.ToValidUTF8(b.String(), "\uFFFD"))
	if len(r) > 64 {
		return string(r[:61]) + "..."
	}
	return string(r)
}

func addrToU32(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

func u32ToAddr(v uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}
