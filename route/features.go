package route

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ethSSFeatures is ETH_SS_FEATURES, the string set naming netdev features.
const ethSSFeatures = 4

// FeatureActive reports whether the offload feature name (as `ethtool -k`
// prints it, e.g. "tx-udp_tnl-segmentation") is on for the device ifname,
// in the calling thread's network namespace. Feature bits are numbered by
// the running kernel, so they are found by name.
func FeatureActive(ifname, name string) (bool, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return false, fmt.Errorf("features of %s: socket: %w", ifname, err)
	}
	defer unix.Close(fd)
	e := ethtool{fd: fd, ifname: ifname}
	// ETHTOOL_GSSET_INFO: how many features this kernel names.
	info := make([]byte, 20) // cmd, reserved, sset_mask (u64), data[1]
	binary.NativeEndian.PutUint32(info[0:], unix.ETHTOOL_GSSET_INFO)
	binary.NativeEndian.PutUint64(info[8:], 1<<ethSSFeatures)
	if err := e.call(info); err != nil {
		return false, err
	}
	n := int(binary.NativeEndian.Uint32(info[16:]))
	// ETHTOOL_GSTRINGS: their names, 32 bytes each.
	strs := make([]byte, 12+n*32)
	binary.NativeEndian.PutUint32(strs[0:], unix.ETHTOOL_GSTRINGS)
	binary.NativeEndian.PutUint32(strs[4:], ethSSFeatures)
	binary.NativeEndian.PutUint32(strs[8:], uint32(n))
	if err := e.call(strs); err != nil {
		return false, err
	}
	bit := -1
	for i := range n {
		s := strs[12+i*32 : 12+(i+1)*32]
		if string(s[:max(0, bytes.IndexByte(s, 0))]) == name {
			bit = i
			break
		}
	}
	if bit < 0 {
		return false, fmt.Errorf("features of %s: this kernel has no feature %q", ifname, name)
	}
	// ETHTOOL_GFEATURES: blocks of available, requested, active,
	// never_changed, 32 features each.
	blocks := (n + 31) / 32
	feats := make([]byte, 8+blocks*16)
	binary.NativeEndian.PutUint32(feats[0:], unix.ETHTOOL_GFEATURES)
	binary.NativeEndian.PutUint32(feats[4:], uint32(blocks))
	if err := e.call(feats); err != nil {
		return false, err
	}
	active := binary.NativeEndian.Uint32(feats[8+(bit/32)*16+8:])
	return active&(1<<(bit%32)) != 0, nil
}

type ethtool struct {
	fd     int
	ifname string
}

// call runs one SIOCETHTOOL request whose buffer is data.
func (e ethtool) call(data []byte) error {
	var ifr struct {
		name [unix.IFNAMSIZ]byte
		data uintptr
		_    [16]byte // the rest of struct ifreq's union
	}
	copy(ifr.name[:unix.IFNAMSIZ-1], e.ifname)
	ifr.data = uintptr(unsafe.Pointer(&data[0]))
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(e.fd), unix.SIOCETHTOOL, uintptr(unsafe.Pointer(&ifr)))
	runtime.KeepAlive(data) // referenced only by ifr.data's uintptr
	if errno != 0 {
		return fmt.Errorf("features of %s: ethtool command %#x: %w", e.ifname, binary.NativeEndian.Uint32(data), errno)
	}
	return nil
}
