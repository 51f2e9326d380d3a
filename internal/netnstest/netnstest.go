// Package netnstest is the one helper for tests that need their own network
// namespace: it creates namespaces and the veth pairs between them, moves
// threads in and out, and removes everything when the test ends. What a test
// builds inside (TUNs, bridges, routes, nftables) stays with the test.
//
// Creating a namespace needs root; tests that call New are skipped without
// it, so `go test ./...` passes as a normal user.
package netnstest

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// seq makes namespace names unique within the process; the pid in the name
// makes them unique across test binaries running at the same time.
var seq atomic.Int64

// SkipUnlessRoot skips t unless it runs as root, as every test that creates
// a namespace, a device or an nftables table must.
func SkipUnlessRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: needs root (CAP_NET_ADMIN) to create network namespaces and devices; run go test as root")
	}
}

// RequireTool skips t unless the program tool is on PATH, naming the Debian
// package that has it; under CI=true, where .ci/run installs every tool a
// test needs, a missing one fails instead. It returns the tool's path.
func RequireTool(t testing.TB, tool, pkg string) string {
	t.Helper()
	path, err := exec.LookPath(tool)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s not found: apt-get install -y %s", tool, pkg)
		}
		t.Skipf("skipping: needs %s (apt-get install -y %s)", tool, pkg)
	}
	return path
}

// NS is a fresh, named network namespace.
type NS struct {
	// Name is the namespace's name under /run/netns, for `ip netns exec`
	// and for messages.
	Name string
	// Handle is an open fd of the namespace: for netlink.NewHandleAt,
	// nftables.WithNetNSFd or a veth peer.
	Handle netns.NsHandle
	// Netlink is a netlink handle whose socket lives in the namespace.
	Netlink *netlink.Handle
}

// New creates a namespace with lo up, skipping t unless root. It is
// deleted when the test ends, even on failure, and its devices go with it.
// The calling goroutine does not enter it: use Netlink or Do.
func New(t testing.TB) *NS {
	t.Helper()
	SkipUnlessRoot(t)
	name := fmt.Sprintf("weft-%s-%d-%d", label(t.Name()), os.Getpid(), seq.Add(1))
	type result struct {
		ns  netns.NsHandle
		err error
	}
	ch := make(chan result)
	go func() {
		// NewNamed moves this thread into the new namespace. Left locked,
		// the thread ends with this goroutine instead of serving others.
		runtime.LockOSThread()
		ns, err := netns.NewNamed(name)
		ch <- result{ns, err}
	}()
	r := <-ch
	if r.err != nil {
		t.Fatalf("create netns %s: %v", name, r.err)
	}
	t.Cleanup(func() {
		r.ns.Close()
		if err := netns.DeleteNamed(name); err != nil {
			t.Errorf("delete netns %s: %v", name, err)
		}
	})
	h, err := netlink.NewHandleAt(r.ns)
	if err != nil {
		t.Fatalf("netlink handle in netns %s: %v", name, err)
	}
	t.Cleanup(h.Close)
	n := &NS{Name: name, Handle: r.ns, Netlink: h}
	n.LinkUp(t, "lo")
	return n
}

// label shortens a test name to what a namespace name can hold: enough to
// tell which test left a namespace behind if one is killed before cleanup.
func label(test string) string {
	test = strings.Map(func(r rune) rune {
		if 'a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9' {
			return r
		}
		return '_'
	}, test)
	return test[:min(len(test), 40)]
}

// Do runs f with the calling goroutine's thread in n, then moves the thread
// back where it was. Sockets and devices f creates stay in n. The thread is
// locked meanwhile, so nothing else runs in n; f runs on the calling
// goroutine, so it may call t.Fatal. Do returns f's error, or why the
// thread could not move.
func (n *NS) Do(f func() error) error {
	runtime.LockOSThread()
	back, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("get netns of this thread: %w", err)
	}
	defer back.Close()
	if err := netns.Set(n.Handle); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter netns %s: %w", n.Name, err)
	}
	defer func() {
		if err := netns.Set(back); err != nil {
			// The thread stays locked, so Go discards it with the
			// goroutine; but the caller would go on in n, so stop.
			panic(fmt.Sprintf("leave netns %s: %v", n.Name, err))
		}
		runtime.UnlockOSThread()
	}()
	return f()
}

// Run runs a command in n (through ip netns exec, as an operator would),
// with stdin as its input, and returns what it printed, stdout and stderr
// together; an error says how it ended and carries that output.
func (n *NS) Run(stdin, name string, args ...string) (string, error) {
	cmd := exec.Command("ip", append([]string{"netns", "exec", n.Name, name}, args...)...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s in %s: %w\n%s", name, strings.Join(args, " "), n.Name, err, out)
	}
	return string(out), nil
}

// Enter creates a namespace as New does and moves the calling goroutine
// into it for the rest of the test, for tests whose every socket and
// device belongs there. The goroutine's thread stays locked and never moves
// back: when the test's goroutine ends Go discards the thread, so no other
// goroutine ever runs in the namespace. Goroutines the test starts,
// subtests included, run outside it; sockets they are handed keep theirs.
func Enter(t testing.TB) *NS {
	t.Helper()
	n := New(t)
	runtime.LockOSThread()
	if err := netns.Set(n.Handle); err != nil {
		t.Fatalf("enter netns %s: %v", n.Name, err)
	}
	return n
}

// Link returns the device called name in n.
func (n *NS) Link(t testing.TB, name string) netlink.Link {
	t.Helper()
	l, err := n.Netlink.LinkByName(name)
	if err != nil {
		t.Fatalf("netns %s: find %s: %v", n.Name, name, err)
	}
	return l
}

// LinkUp sets the device called name in n up.
func (n *NS) LinkUp(t testing.TB, name string) {
	t.Helper()
	if err := n.Netlink.LinkSetUp(n.Link(t, name)); err != nil {
		t.Fatalf("netns %s: set %s up: %v", n.Name, name, err)
	}
}

// AddAddr adds cidr (an address with its prefix length) to the device
// called name in n.
func (n *NS) AddAddr(t testing.TB, name, cidr string) {
	t.Helper()
	a, err := netlink.ParseAddr(cidr)
	if err != nil {
		t.Fatalf("netns %s: address for %s: %v", n.Name, name, err)
	}
	if err := n.Netlink.AddrAdd(n.Link(t, name), a); err != nil {
		t.Fatalf("netns %s: add %s to %s: %v", n.Name, cidr, name, err)
	}
}

// End is one end of a veth pair.
type End struct {
	NS   *NS
	Name string
	Addr string // added as by AddAddr; "" for none
}

// Veth is a veth pair to create: a link between two namespaces, or two
// devices in one (this kernel has no dummy driver).
type Veth struct {
	A, B End
	MTU  int  // of both ends; 0 leaves the kernel's default
	Down bool // leave both ends down, as a new device starts
}

// Add creates the pair, adds the ends' addresses and, unless Down, sets
// both ends up. It returns A's end. The pair goes with its namespaces.
func (v Veth) Add(t testing.TB) netlink.Link {
	t.Helper()
	// The netlink package gives the peer the MTU of LinkAttrs too.
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: v.A.Name, MTU: v.MTU},
		PeerName: v.B.Name, PeerNamespace: netlink.NsFd(v.B.NS.Handle)}
	if err := v.A.NS.Netlink.LinkAdd(veth); err != nil {
		t.Fatalf("add veth %s (netns %s) - %s (netns %s): %v", v.A.Name, v.A.NS.Name, v.B.Name, v.B.NS.Name, err)
	}
	for _, e := range []End{v.A, v.B} {
		if e.Addr != "" {
			e.NS.AddAddr(t, e.Name, e.Addr)
		}
		if !v.Down {
			e.NS.LinkUp(t, e.Name)
		}
	}
	return v.A.NS.Link(t, v.A.Name)
}
