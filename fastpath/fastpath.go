// Package fastpath is weft's kernel data plane: two eBPF programs (C in
// bpf/, built by bpf2go into the committed weft_bpfel.go and .o) that carry
// flannel's udp wire format in the kernel, beside weft's userspace path,
// which keeps everything the programs do not take.
//
// weft_encap runs at egress of weft's TUN and sends a packet for a peer
// that decapsulates in its kernel straight out of the underlay, once the
// next hop is resolved (bpf_fib_lookup). weft_decap runs at ingress of the
// underlay and hands a datagram that passes weft's ingress policy to the
// TUN's ingress. Minimum kernel: 5.10 for the helpers (bpf_fib_lookup with
// BPF_FIB_LOOKUP_OUTPUT, bpf_skb_adjust_room's UDP encapsulation flags);
// TCX links need 6.6, older kernels get a clsact qdisc with direct-action
// cls_bpf filters.
package fastpath

//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -cc clang -cflags "-O2 -g -Wall -Werror $BPF_CFLAGS" -target bpfel weft bpf/weft.c

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/cilium/ebpf"
)

// Config is what the programs need to know of the node.
type Config struct {
	Local       netip.Addr   // this node's underlay address, the lease's PublicIP
	Subnet      netip.Prefix // this node's lease
	Port        uint16       // the backend port
	SourceCheck uint8        // as tunnel.SourceCheck: 0 strict, 1 nat, 2 off
	Underlay    int          // ifindex of the underlay interface
	TUN         int          // ifindex of weft's TUN
	// GSOToUserspace leaves TCP super-packets to the userspace path: for
	// an underlay that cannot segment UDP tunnel packets (no
	// tx-udp_tnl-segmentation), where the kernel would segment them in
	// software, slower than the userspace path's UDP GSO.
	GSOToUserspace bool
}

// Config flags, as bpf/weft.c has them.
const cfgGSOToUserspace = 1

// Peer flags, as bpf/weft.c has them.
const peerKernelDecap = 1

// Counter indexes, as bpf/weft.c's enum counter.
const (
	ctrTxPackets = iota
	ctrTxBytes
	ctrRxPackets
	ctrRxBytes
	ctrPassNoPeer
	ctrPassNoNeigh
	ctrPassCheck
	ctrErrors
	ctrPassGSO
	numCounters
)

// Programs are the loaded programs and their maps.
type Programs struct {
	objs weftObjects
}

// Load loads the programs and maps and writes c into the config map. The
// verifier's refusal is returned with its log.
func Load(c Config) (*Programs, error) {
	if !c.Local.Is4() || !c.Subnet.Addr().Is4() {
		return nil, fmt.Errorf("fastpath: local %s and subnet %s must be IPv4", c.Local, c.Subnet)
	}
	p := &Programs{}
	if err := loadWeftObjects(&p.objs, nil); err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			// The whole verifier log says why, not only its last line.
			return nil, fmt.Errorf("fastpath: load eBPF programs: %w\n%s", err, strings.Join(ve.Log, "\n"))
		}
		return nil, fmt.Errorf("fastpath: load eBPF programs: %w", err)
	}
	sub := c.Subnet.Masked()
	mask := ^uint32(0) << (32 - sub.Bits())
	var port [2]byte
	binary.BigEndian.PutUint16(port[:], c.Port)
	cfg := weftConfig{
		Local:       be32(c.Local),
		Subnet:      be32(sub.Addr()),
		SubnetMask:  hostToBE(mask),
		Port:        binary.NativeEndian.Uint16(port[:]),
		SourceCheck: c.SourceCheck,
		Underlay:    uint32(c.Underlay),
		Tun:         uint32(c.TUN),
	}
	if c.GSOToUserspace {
		cfg.Flags |= cfgGSOToUserspace
	}
	if err := p.objs.Config.Put(uint32(0), &cfg); err != nil {
		p.Close()
		return nil, fmt.Errorf("fastpath: write config map: %w", err)
	}
	return p, nil
}

// Close releases the programs and maps (attachments hold their own
// references: detach first).
func (p *Programs) Close() error { return p.objs.Close() }

// SetPeer routes subnet to addr; kernelDecap says the peer decapsulates in
// its kernel, so the kernel may encapsulate toward it.
func (p *Programs) SetPeer(subnet netip.Prefix, addr netip.Addr, kernelDecap bool) error {
	v := weftPeer{Addr: be32(addr)}
	if kernelDecap {
		v.Flags = peerKernelDecap
	}
	k := lpmKey(subnet)
	if err := p.objs.Peers.Put(&k, &v); err != nil {
		return fmt.Errorf("fastpath: set peer %s at %s: %w", subnet, addr, err)
	}
	return nil
}

// DeletePeer removes subnet; an absent one is not an error.
func (p *Programs) DeletePeer(subnet netip.Prefix) error {
	k := lpmKey(subnet)
	if err := p.objs.Peers.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("fastpath: delete peer %s: %w", subnet, err)
	}
	return nil
}

// Counters are the programs' counters, summed over CPUs.
type Counters struct {
	TxPackets, TxBytes, RxPackets, RxBytes uint64
	PassNoPeer, PassNoNeigh, PassCheck     uint64 // packets left to the userspace path
	PassGSO                                uint64 // super-packets left to it (Config.GSOToUserspace)
	Errors                                 uint64 // helper failures: dropped
}

// Counters reads the per-CPU counters.
func (p *Programs) Counters() (Counters, error) {
	var per []weftCounters // one per possible CPU
	if err := p.objs.Counters.Lookup(uint32(0), &per); err != nil {
		return Counters{}, fmt.Errorf("fastpath: read counters: %w", err)
	}
	var sums [numCounters]uint64
	for _, cpu := range per {
		for i := range sums {
			sums[i] += cpu.N[i]
		}
	}
	return Counters{TxPackets: sums[ctrTxPackets], TxBytes: sums[ctrTxBytes], RxPackets: sums[ctrRxPackets],
		RxBytes: sums[ctrRxBytes], PassNoPeer: sums[ctrPassNoPeer], PassNoNeigh: sums[ctrPassNoNeigh],
		PassCheck: sums[ctrPassCheck], PassGSO: sums[ctrPassGSO], Errors: sums[ctrErrors]}, nil
}

func lpmKey(p netip.Prefix) weftLpmKey {
	p = p.Masked()
	return weftLpmKey{Prefixlen: uint32(p.Bits()), Addr: be32(p.Addr())}
}

// be32 is a's bytes as the uint32 the kernel reads in network order.
func be32(a netip.Addr) uint32 {
	b := a.As4()
	return binary.NativeEndian.Uint32(b[:])
}

func hostToBE(v uint32) uint32 {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], v)
	return binary.NativeEndian.Uint32(b[:])
}
