package node

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
)

// subnetEnv is flannel's subnet.env: exactly four keys, read by the flannel
// CNI plugin (which needs all four and takes only "true" as true),
// mk-docker-opts.sh and dockerd.
type subnetEnv struct {
	Network netip.Prefix
	Subnet  netip.Prefix // the lease, masked
	MTU     int
	IPMasq  bool
}

func (e subnetEnv) bytes() []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "FLANNEL_NETWORK=%s\n", e.Network)
	// flannel writes the first usable address with the lease length.
	fmt.Fprintf(&b, "FLANNEL_SUBNET=%s\n", netip.PrefixFrom(e.Subnet.Addr().Next(), e.Subnet.Bits()))
	fmt.Fprintf(&b, "FLANNEL_MTU=%d\n", e.MTU)
	fmt.Fprintf(&b, "FLANNEL_IPMASQ=%t\n", e.IPMasq)
	return b.Bytes()
}

// writeSubnetEnv writes path atomically (temp file, fsync, rename), so a
// reader never sees half a file.
func writeSubnetEnv(path string, e subnetEnv) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("write subnet file %s: %w", path, err)
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("write subnet file %s: %w", path, err)
	}
	tmp := f.Name()
	ok := false
	defer func() {
		if !ok {
			os.Remove(tmp)
		}
	}()
	if _, err := f.Write(e.bytes()); err != nil {
		f.Close()
		return fmt.Errorf("write subnet file %s: %w", tmp, err)
	}
	if err := f.Chmod(0o644); err != nil {
		f.Close()
		return fmt.Errorf("write subnet file %s: %w", tmp, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("write subnet file %s: %w", tmp, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write subnet file %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write subnet file %s: %w", path, err)
	}
	ok = true
	return nil
}

// readSubnetEnv returns the masked FLANNEL_SUBNET of an earlier run, or the
// zero prefix when there is no file.
func readSubnetEnv(path string) (netip.Prefix, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return netip.Prefix{}, nil
	}
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("read subnet file %s: %w", path, err)
	}
	return parseSubnetEnv(data)
}

func parseSubnetEnv(data []byte) (netip.Prefix, error) {
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		k, v, ok := strings.Cut(strings.TrimSpace(sc.Text()), "=")
		if !ok || k != "FLANNEL_SUBNET" {
			continue
		}
		p, err := netip.ParsePrefix(strings.Trim(v, `"`))
		if err != nil || !p.Addr().Is4() {
			return netip.Prefix{}, fmt.Errorf("FLANNEL_SUBNET=%q is not an IPv4 prefix", v)
		}
		return p.Masked(), nil
	}
	return netip.Prefix{}, nil
}
