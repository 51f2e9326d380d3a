package firewall

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Docker on a host whose iptables is the legacy (x_tables) one, still the
// default of some distributions, keeps its FORWARD drop policy where
// nftables cannot see it. It drops overlay traffic all the same, so
// LegacyForwardDrop reads that policy, through the getsockopt interface
// iptables-legacy itself uses.

// LegacyForwardChain names the legacy chain, for lists like ForwardDrops'.
const LegacyForwardChain = "iptables-legacy filter FORWARD"

// x_tables' getsockopt interface (linux/netfilter_ipv4/ip_tables.h).
const (
	iptSoGetInfo    = 64 // IPT_SO_GET_INFO
	iptSoGetEntries = 65 // IPT_SO_GET_ENTRIES
	hookForward     = 2  // NF_INET_FORWARD
	// struct ipt_getinfo: name[32], valid_hooks, hook_entry[5],
	// underflow[5], num_entries, size.
	getInfoLen = 32 + 4 + 5*4 + 5*4 + 4 + 4
	// struct ipt_get_entries: name[32], size, then the entries, which hold
	// 64-bit counters and so start 8-aligned.
	getEntriesHdr = 40
	// struct ipt_entry: struct ipt_ip (84 bytes), nfcache, target_offset
	// (at 88), next_offset, comefrom, counters; 112 bytes in all.
	entryTargetOff = 88
	entryLen       = 112
	// struct xt_entry_target's header; a standard target's verdict follows.
	targetHdrLen = 32
	verdictDrop  = -1 // -NF_DROP - 1
)

// LegacyForwardDrop reports whether the legacy filter table of the calling
// thread's network namespace has FORWARD policy DROP. A table nobody uses
// is not there: ip_tables_names lists the ones that are, and only those are
// asked for, because asking for one would create it (and load its module).
// The list is the thread's (/proc/net is the process leader's namespace).
func LegacyForwardDrop() (bool, error) {
	loaded, err := legacyTableLoaded("/proc/thread-self/net/ip_tables_names", "filter")
	if err != nil || !loaded {
		return false, err
	}
	// Any IPv4 socket reaches x_tables' getsockopt (iptables uses a raw
	// one); a UDP one needs no CAP_NET_RAW, only the CAP_NET_ADMIN the
	// kernel checks for the table.
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return false, fmt.Errorf("open a socket to read iptables-legacy's filter table: %w", err)
	}
	defer unix.Close(fd)

	info := make([]byte, getInfoLen)
	copy(info, "filter")
	if err := getsockopt(fd, iptSoGetInfo, info); err != nil {
		return false, fmt.Errorf("read iptables-legacy's filter table: %w", err)
	}
	size := binary.NativeEndian.Uint32(info[getInfoLen-4:])
	entries := make([]byte, getEntriesHdr+int(size))
	copy(entries, "filter")
	binary.NativeEndian.PutUint32(entries[32:], size)
	if err := getsockopt(fd, iptSoGetEntries, entries); err != nil {
		return false, fmt.Errorf("read iptables-legacy's filter rules: %w", err)
	}
	verdict, err := legacyPolicy(info, entries[getEntriesHdr:], hookForward)
	if err != nil {
		return false, fmt.Errorf("iptables-legacy's filter table: %w", err)
	}
	return verdict == verdictDrop, nil
}

// legacyPolicy returns the verdict of a built-in chain's policy: the
// standard target of the entry the table's underflow for hook points at.
// info is struct ipt_getinfo, table the entries. The kernel wrote both, but
// they are bytes all the same: every offset is checked.
func legacyPolicy(info, table []byte, hook int) (int32, error) {
	if len(info) < getInfoLen || hook < 0 || hook > 4 {
		return 0, errors.New("short table info")
	}
	if binary.NativeEndian.Uint32(info[32:])&(1<<hook) == 0 {
		return 0, fmt.Errorf("no chain on hook %d", hook)
	}
	at := int(binary.NativeEndian.Uint32(info[32+4+5*4+hook*4:]))
	if at < 0 || at > len(table)-entryLen {
		return 0, fmt.Errorf("policy entry at %d outside the %d-byte table", at, len(table))
	}
	target := at + int(binary.NativeEndian.Uint16(table[at+entryTargetOff:]))
	if target < at+entryLen || target > len(table)-targetHdrLen-4 {
		return 0, fmt.Errorf("policy target at %d outside the table", target)
	}
	if name := table[target+2 : target+31]; name[0] != 0 {
		return 0, fmt.Errorf("policy is not a standard target (%q)", strings.TrimRight(string(name), "\x00"))
	}
	return int32(binary.NativeEndian.Uint32(table[target+targetHdrLen:])), nil
}

// legacyTableLoaded reports whether names (the /proc list of this
// namespace's legacy tables) lists table; no such file means none are.
func legacyTableLoaded(names, table string) (bool, error) {
	f, err := os.Open(names)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("list iptables-legacy tables: %w", err)
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if s.Text() == table {
			return true, nil
		}
	}
	return false, s.Err()
}

func getsockopt(fd, opt int, buf []byte) error {
	n := uint32(len(buf))
	_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_IP, uintptr(opt),
		uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&n)), 0)
	if errno != 0 {
		return errno
	}
	return nil
}
