package node

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/weft-net/weft/status"
	"github.com/weft-net/weft/subnet"
)

// ownLease reads this node's lease back from etcd.
func ownLease(t *testing.T, n *testNode, own netip.Prefix) subnet.Lease {
	t.Helper()
	leases, _, err := n.store.ListLeases(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range leases {
		if l.Subnet == own {
			return l
		}
	}
	t.Fatalf("our lease %s is not in etcd", own)
	return subnet.Lease{}
}

// With the fast path attached, the kernel plane gets the same peers as the
// userspace one, /status says how it runs, and the lease advertises
// in-kernel decapsulation until a clean stop withdraws it.
func TestNodeFastPath(t *testing.T) {
	kernel := &fakePlane{stopped: make(chan struct{})}
	n := startTestNodeWith(t, testFastPath{mode: FastPathAuto, plane: kernel}, peerA, peerB)
	s := n.waitReady(t)
	if f := s.FastPath; f == nil || !f.Running || f.Attach != "fake" || f.Mode != "auto" {
		t.Errorf("status fast path: %+v, want running, attached by fake, mode auto", f)
	}
	// The running fast path proves its helpers, not an attach mode it did
	// not take; offloads the flags leave off are not probed.
	if k := s.Kernel; k == nil || k.Release == "" || len(k.Features) != 6 || !k.Features[0].Unknown() ||
		!k.Features[1].Detected || k.Features[1].Detail != "in use" || k.Features[4].Name != "udp_gso" || !k.Features[4].Unknown() {
		t.Errorf("status kernel: %+v", k)
	}
	if _, _, peers := kernel.state(); len(peers) != 2 {
		t.Errorf("kernel plane has peers %v, want %s and %s", peers, peerA, peerB)
	}
	own := s.Lease.Subnet
	if l := ownLease(t, n, own); !l.Attrs.KernelDecap() || l.Reserved() {
		t.Errorf("lease while the fast path runs: %+v, want the advertisement on a TTL lease", l)
	}
	n.stop()
	if err := n.wait(t); err != nil {
		t.Fatalf("clean stop: %v", err)
	}
	<-kernel.stopped
	if l := ownLease(t, n, own); l.Attrs.KernelDecap() {
		t.Errorf("lease after a clean stop: BackendData %s, want the advertisement withdrawn", l.Attrs.BackendData)
	}
}

// With auto, a fast path that cannot attach leaves the userspace path
// alone, says why in /status, and withdraws an advertisement an earlier
// run left on this node's lease (kill -9 leaves it there).
func TestNodeFastPathFallback(t *testing.T) {
	stale := netip.MustParsePrefix("198.19.50.0/24")
	n := startTestNodeWith(t, testFastPath{mode: FastPathAuto, err: errors.New("missing CAP_BPF (test)"), stale: stale})
	s := n.waitReady(t)
	if f := s.FastPath; f == nil || f.Running || !strings.Contains(f.Reason, "missing CAP_BPF (test)") {
		t.Errorf("status fast path: %+v, want not running with the reason", f)
	}
	if s.Lease.Subnet != stale {
		t.Fatalf("node leased %s, want its own earlier lease %s", s.Lease.Subnet, stale)
	}
	if l := ownLease(t, n, stale); l.Attrs.KernelDecap() {
		t.Errorf("lease after falling back: BackendData %s, want the earlier run's advertisement withdrawn", l.Attrs.BackendData)
	}
	if s.Counters.Paths != nil {
		if k, ok := s.Counters.Paths[status.PathKernel]; ok && k != (status.Traffic{}) {
			t.Errorf("kernel path counters without a kernel plane: %+v", k)
		}
	}
}

// With on, a fast path that cannot attach stops the start with the reason.
func TestNodeFastPathOnFails(t *testing.T) {
	n := startTestNodeWith(t, testFastPath{mode: FastPathOn, err: errors.New("missing CAP_BPF (test)"), noWait: true})
	err := n.wait(t)
	if err == nil || !strings.Contains(err.Error(), "-fast-path=on") || !strings.Contains(err.Error(), "missing CAP_BPF (test)") {
		t.Fatalf("start with -fast-path=on and a failing attach: %v, want the flag and the reason", err)
	}
	if _, err := n.ns.Netlink.LinkByName("udp0"); err == nil {
		t.Error("the device is still there after the failed start")
	}
}
