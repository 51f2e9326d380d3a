package tunnel_test

import (
	"errors"
	"fmt"
	"net/netip"
	"syscall"
	"testing"

	"github.com/weft-net/weft/tunnel"
	"github.com/weft-net/weft/tunnel/tuntest"
)

// offloadConns binds 127.0.0.1 and 127.0.0.2 on the same free port with
// UDP GSO and GRO on.
func offloadConns(t *testing.T) (a, b tunnel.Conn) {
	listen := func(s string) (tunnel.Conn, error) {
		c, err := tunnel.ListenUDPConfig(tunnel.UDPConfig{Addr: netip.MustParseAddrPort(s), GSO: true, GRO: true})
		if err == nil {
			t.Cleanup(func() { c.Close() })
			if st := offload(c); !st.GSO || !st.GRO {
				t.Fatalf("offloads not granted: %+v", st)
			}
		}
		return c, err
	}
	for range 20 {
		a, err := listen("127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		b, err := listen(fmt.Sprintf("127.0.0.2:%d", a.LocalAddr().Port()))
		if errors.Is(err, syscall.EADDRINUSE) {
			a.Close()
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		return a, b
	}
	t.Fatal("no port free on both 127.0.0.1 and 127.0.0.2")
	return nil, nil
}

// TestForwardOverUDPOffloads runs the forwarder, unchanged, over Conns
// with GSO and GRO: a TUN batch of split TSO segments (equal sizes, a
// shorter last one, then others) goes out as GSO messages, arrives as GRO
// messages and is written to the peer's TUN packet for packet, in order,
// with nothing allocated per batch.
func TestForwardOverUDPOffloads(t *testing.T) {
	ca, cb := offloadConns(t)
	devA, devB := tuntest.NewDevice("udp0", 1472), tuntest.NewDevice("udp0", 1472)
	fa := newNode(t, devA, ca, subnetA, tunnel.Peer{Subnet: subnetB, Addr: cb.LocalAddr().Addr()})
	fb := newNode(t, devB, cb, subnetB, tunnel.Peer{Subnet: subnetA, Addr: ca.LocalAddr().Addr()})

	var pkts [][]byte
	for i := range tuntest.BatchSize {
		n := 1444 // a 1472-byte inner packet
		switch {
		case i == 44:
			n = 300 // the tail of a super-packet
		case i > 56:
			n = 12 + i // acknowledgements and such, all different
		}
		payload := make([]byte, n)
		for j := range payload {
			payload[j] = byte(i ^ j)
		}
		pkts = append(pkts, tuntest.IPv4UDP(hostA, hostB, payload))
	}
	inject := func() {
		for _, p := range pkts {
			devA.Inject(p)
		}
	}
	inject()
	if err := fa.StepTUNToUDP(); err != nil {
		t.Fatal(err)
	}
	for i := range pkts {
		for len(devB.Written()) == 0 {
			if err := fb.StepUDPToTUN(); err != nil {
				t.Fatal(err)
			}
		}
		requireForwarded(t, pkts[i], receive(t, devB))
	}
	if sa, sb := offload(ca), offload(cb); sa.GSOSends == 0 || sb.GROReceives == 0 {
		t.Fatalf("offloads idle: sender %+v, receiver %+v", sa, sb)
	}

	delivered := 0
	devB.SetWriteHook(func([]byte) error { delivered++; return nil })
	var failed error
	allocs := testing.AllocsPerRun(100, func() {
		inject()
		if err := fa.StepTUNToUDP(); err != nil {
			failed = err
			return
		}
		for want := delivered + len(pkts); delivered < want; {
			if err := fb.StepUDPToTUN(); err != nil {
				failed = err
				return
			}
		}
	})
	if failed != nil {
		t.Fatal(failed)
	}
	if allocs != 0 {
		t.Errorf("one batch allocates %.1f times", allocs)
	}
	if c := fb.Counters(); c.Dropped() != 0 || c.RxPackets != uint64(delivered+len(pkts)) {
		t.Errorf("receiver counters %+v, delivered %d", c, delivered)
	}
}
