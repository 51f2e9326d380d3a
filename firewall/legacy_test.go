package firewall

import (
	"encoding/binary"
	"os/exec"
	"strings"
	"testing"
)

// TestLegacyForwardDrop reads the policy iptables-legacy sets, in a fresh
// namespace: no table (and none created by looking), ACCEPT, DROP behind
// rules of the chain's own and of others, and ACCEPT again.
func TestLegacyForwardDrop(t *testing.T) {
	if _, err := exec.LookPath("iptables-legacy"); err != nil {
		t.Skip("skipping: needs iptables-legacy (Debian: apt-get install iptables)")
	}
	n := newTestNS(t)
	check := func(want bool) {
		t.Helper()
		var got bool
		if err := n.Do(func() (err error) { got, err = LegacyForwardDrop(); return err }); err != nil {
			t.Fatalf("LegacyForwardDrop: %v", err)
		}
		if got != want {
			t.Errorf("LegacyForwardDrop = %v, want %v", got, want)
		}
	}
	iptables := func(args ...string) {
		t.Helper()
		out, err := exec.Command("ip", append([]string{"netns", "exec", n.Name, "iptables-legacy"}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("iptables-legacy %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	tables := func() string {
		t.Helper()
		out, err := exec.Command("ip", "netns", "exec", n.Name, "cat", "/proc/net/ip_tables_names").Output()
		if err != nil {
			t.Fatalf("read ip_tables_names: %v", err)
		}
		return string(out)
	}

	check(false)
	if got := tables(); strings.Contains(got, "filter") {
		t.Errorf("looking created the legacy filter table: ip_tables_names = %q", got)
	}
	iptables("-A", "INPUT", "-s", "198.18.0.1", "-j", "ACCEPT") // the table, policy ACCEPT
	check(false)
	iptables("-P", "FORWARD", "DROP")
	check(true)
	iptables("-N", "DOCKER-USER")
	iptables("-A", "FORWARD", "-j", "DOCKER-USER")
	iptables("-A", "FORWARD", "-s", "198.19.0.0/16", "-j", "ACCEPT")
	iptables("-A", "OUTPUT", "-d", "198.18.0.2", "-j", "DROP")
	check(true)
	iptables("-P", "FORWARD", "ACCEPT")
	check(false)
}

// testEntry is the size of legacyTable's entries: header, target header,
// the verdict padded to 8; FORWARD's is the second.
const testEntry = entryLen + targetHdrLen + 8

// legacyTable builds what the kernel returns for a table with one chain
// per hook: each a policy entry whose standard target holds verdict.
func legacyTable(verdict int32) (info, table []byte) {
	const entry = testEntry
	info = make([]byte, getInfoLen)
	copy(info, "filter")
	hooks := []int{1, 2, 3} // LOCAL_IN, FORWARD, LOCAL_OUT
	table = make([]byte, entry*len(hooks))
	for i, h := range hooks {
		binary.NativeEndian.PutUint32(info[32:], binary.NativeEndian.Uint32(info[32:])|1<<h)
		binary.NativeEndian.PutUint32(info[36+h*4:], uint32(i*entry))
		binary.NativeEndian.PutUint32(info[56+h*4:], uint32(i*entry))
		e := table[i*entry:]
		binary.NativeEndian.PutUint16(e[entryTargetOff:], entryLen)
		binary.NativeEndian.PutUint16(e[entryTargetOff+2:], entry)
		binary.NativeEndian.PutUint16(e[entryLen:], targetHdrLen+8)
		binary.NativeEndian.PutUint32(e[entryLen+targetHdrLen:], uint32(verdict))
	}
	binary.NativeEndian.PutUint32(info[getInfoLen-4:], uint32(len(table)))
	return info, table
}

// TestLegacyPolicy: the verdict is found, and every offset that points
// outside the bytes is an error, not a panic or a wrong answer.
func TestLegacyPolicy(t *testing.T) {
	info, table := legacyTable(verdictDrop)
	if v, err := legacyPolicy(info, table, hookForward); err != nil || v != verdictDrop {
		t.Fatalf("legacyPolicy = %d, %v; want %d", v, err, verdictDrop)
	}
	for name, mangle := range map[string]func(info, table []byte) ([]byte, []byte){
		"short info":      func(i, t []byte) ([]byte, []byte) { return i[:getInfoLen-1], t },
		"no forward hook": func(i, t []byte) ([]byte, []byte) { i[32] &^= 1 << hookForward; return i, t },
		"underflow past end": func(i, t []byte) ([]byte, []byte) {
			binary.NativeEndian.PutUint32(i[56+hookForward*4:], 1<<30)
			return i, t
		},
		"truncated table": func(i, t []byte) ([]byte, []byte) { return i, t[:200] },
		"target inside entry": func(i, t []byte) ([]byte, []byte) {
			off := testEntry + entryTargetOff
			binary.NativeEndian.PutUint16(t[off:], 8)
			return i, t
		},
		"target past end": func(i, t []byte) ([]byte, []byte) {
			off := testEntry + entryTargetOff
			binary.NativeEndian.PutUint16(t[off:], 0xffff)
			return i, t
		},
		"not a standard target": func(i, t []byte) ([]byte, []byte) { copy(t[testEntry+entryLen+2:], "LOG"); return i, t },
	} {
		i, tb := legacyTable(verdictDrop)
		i, tb = mangle(i, tb)
		if v, err := legacyPolicy(i, tb, hookForward); err == nil {
			t.Errorf("%s: verdict %d, want an error", name, v)
		}
	}
}

func FuzzLegacyPolicy(f *testing.F) {
	info, table := legacyTable(verdictDrop)
	f.Add(info, table)
	f.Add(info[:10], table[:10])
	f.Fuzz(func(t *testing.T, info, table []byte) {
		v, err := legacyPolicy(info, table, hookForward)
		if err != nil {
			return
		}
		// Every offset is relative to the start: bytes after the table
		// cannot change what was read from inside it.
		longer := append(append([]byte(nil), table...), make([]byte, 64)...)
		if v2, err := legacyPolicy(info, longer, hookForward); err != nil || v2 != v {
			t.Fatalf("verdict %d, then %d, %v with 64 bytes appended", v, v2, err)
		}
	})
}
