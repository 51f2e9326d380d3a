package netnstest

import (
	"errors"
	"net"
	"os"
	"testing"
	"time"

	"github.com/vishvananda/netns"
)

// threadNS reports whether the calling goroutine's thread is in ns. The
// caller must have its thread locked for the answer to mean anything.
func threadNS(t *testing.T, ns netns.NsHandle) bool {
	t.Helper()
	cur, err := netns.Get()
	if err != nil {
		t.Fatalf("get netns of this thread: %v", err)
	}
	defer cur.Close()
	return cur.Equal(ns)
}

// TestDo: f runs in the namespace, its error comes back, and the thread
// returns to the namespace it came from.
func TestDo(t *testing.T) {
	n := New(t)
	outer := Enter(t) // a known namespace to come back to
	errF := errors.New("from f")
	err := n.Do(func() error {
		if !threadNS(t, n.Handle) {
			t.Errorf("f does not run in netns %s", n.Name)
		}
		return errF
	})
	if !errors.Is(err, errF) {
		t.Errorf("Do = %v, want f's error", err)
	}
	if !threadNS(t, outer.Handle) {
		t.Errorf("after Do the thread is not back in netns %s", outer.Name)
	}
}

// TestVeth joins two namespaces: both ends get the MTU, addresses and
// link up, and a datagram crosses.
func TestVeth(t *testing.T) {
	a, b := New(t), New(t)
	Veth{MTU: 1400,
		A: End{NS: a, Name: "va", Addr: "198.18.5.1/24"},
		B: End{NS: b, Name: "vb", Addr: "198.18.5.2/24"}}.Add(t)
	for _, e := range []struct {
		n    *NS
		name string
	}{{a, "va"}, {b, "vb"}} {
		attrs := e.n.Link(t, e.name).Attrs()
		if attrs.MTU != 1400 || attrs.Flags&net.FlagUp == 0 {
			t.Errorf("%s in netns %s: mtu %d flags %v, want mtu 1400, up", e.name, e.n.Name, attrs.MTU, attrs.Flags)
		}
	}

	var ln *net.UDPConn
	if err := b.Do(func() (err error) {
		ln, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(198, 18, 5, 2)})
		return err
	}); err != nil {
		t.Fatalf("listen in netns %s: %v", b.Name, err)
	}
	defer ln.Close()
	if err := a.Do(func() error {
		c, err := net.DialUDP("udp4", nil, ln.LocalAddr().(*net.UDPAddr))
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.Write([]byte("across"))
		return err
	}); err != nil {
		t.Fatalf("send from netns %s: %v", a.Name, err)
	}
	if err := ln.SetReadDeadline(time.Now().Add(3 * time.Second)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	k, from, err := ln.ReadFromUDP(buf)
	if err != nil || string(buf[:k]) != "across" || !from.IP.Equal(net.IPv4(198, 18, 5, 1)) {
		t.Errorf("read %q from %v, %v; want \"across\" from 198.18.5.1", buf[:k], from, err)
	}
}

// TestCleanup: the namespace a test made, entered or not, is gone when
// the test ends.
func TestCleanup(t *testing.T) {
	var names []string
	t.Run("new", func(t *testing.T) { names = append(names, New(t).Name) })
	t.Run("enter", func(t *testing.T) {
		n := Enter(t)
		if !threadNS(t, n.Handle) {
			t.Errorf("Enter left the goroutine outside netns %s", n.Name)
		}
		names = append(names, n.Name)
	})
	for _, name := range names {
		if _, err := os.Stat("/run/netns/" + name); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("netns %s still named after its test: %v", name, err)
		}
	}
}
