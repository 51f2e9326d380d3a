package node

import (
	"net/netip"
	"os"
	"path/filepath"
	"testing"
)

func TestSubnetEnvExactBytesAndRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), "run", "flannel", "subnet.env")
	e := subnetEnv{
		Network: netip.MustParsePrefix("198.19.0.0/16"),
		Subnet:  netip.MustParsePrefix("198.19.7.0/24"),
		MTU:     1472,
	}
	if err := writeSubnetEnv(path, e); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	want := "FLANNEL_NETWORK=198.19.0.0/16\nFLANNEL_SUBNET=198.19.7.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=false\n"
	if string(got) != want {
		t.Errorf("subnet.env =\n%s\nwant\n%s", got, want)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o644 {
		t.Errorf("mode = %v, %v; want 0644", fi.Mode(), err)
	}
	prev, err := readSubnetEnv(path)
	if err != nil || prev != e.Subnet {
		t.Errorf("readSubnetEnv = %v, %v; want %v", prev, err, e.Subnet)
	}
	// No temp files are left beside it.
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Errorf("directory holds %d entries, want only subnet.env", len(entries))
	}
}

func TestReadSubnetEnvMissingAndBad(t *testing.T) {
	dir := t.TempDir()
	if p, err := readSubnetEnv(filepath.Join(dir, "absent")); err != nil || p.IsValid() {
		t.Errorf("missing file: %v, %v; want zero prefix and no error", p, err)
	}
	bad := filepath.Join(dir, "bad")
	if err := os.WriteFile(bad, []byte("FLANNEL_SUBNET=nonsense\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := readSubnetEnv(bad); err == nil {
		t.Error("bad FLANNEL_SUBNET accepted")
	}
}

func FuzzParseSubnetEnv(f *testing.F) {
	f.Add([]byte("FLANNEL_NETWORK=198.19.0.0/16\nFLANNEL_SUBNET=198.19.7.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=false\n"))
	f.Add([]byte("FLANNEL_SUBNET=\"198.19.7.1/24\""))
	f.Add([]byte("=\n==\nFLANNEL_SUBNET"))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := parseSubnetEnv(data)
		if err == nil && p.IsValid() && (!p.Addr().Is4() || p.Masked() != p) {
			t.Fatalf("accepted %v, which is not a masked IPv4 prefix", p)
		}
	})
}
