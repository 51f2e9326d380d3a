// Command tcfast is a measurement prototype for the decision issue #4 asks
// for, not part of weft: flannel's udp wire format (outer IPv4, UDP, the inner
// IPv4 packet and nothing else) encapsulated at TC egress of a TUN device and
// decapsulated at TC ingress of the underlay by two small eBPF programs, with
// weft's ingress check (the inner source must belong to the subnet the outer
// source leases). One peer, set by flags; run.sh sets it up in a weftlab
// cluster and compares it with kernel VXLAN and weft.
//
// The programs are written with cilium/ebpf's assembler, so building needs no
// clang. They are attached with TCX links (Linux 6.6+), which the kernel drops
// when this process exits: nothing is left behind.
package main

import (
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"syscall"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/weft-net/weft/tunnel"
	"golang.org/x/sys/unix"
)

// From include/uapi/linux/bpf.h and the TCX return codes.
const (
	adjRoomMAC      = 1
	adjEncapL3IPv4  = 1 << 1
	adjEncapL4UDP   = 1 << 4
	redirectIngress = 1
	tcxNext         = -1 // the next program, else the stack: weft's socket
	tcxDrop         = 2

	// struct __sk_buff offsets.
	skbLen     = 0
	skbData    = 76
	skbDataEnd = 80
)

type config struct {
	dev, underlay string
	createTUN     bool
	local, peer   netip.Addr
	peerNet       netip.Prefix
	peerMAC       net.HardwareAddr
	port          uint16
}

func main() {
	var c config
	var local, peer, peerNet, peerMAC string
	var port uint
	flag.StringVar(&c.dev, "dev", "bx0", "overlay device whose egress encapsulates")
	flag.BoolVar(&c.createTUN, "create-tun", true, "create -dev as a TUN and hold it open (false: attach to an existing device, such as weft's udp0)")
	flag.StringVar(&c.underlay, "underlay", "eth0", "underlay device whose ingress decapsulates")
	flag.StringVar(&local, "local", "", "this node's underlay address")
	flag.StringVar(&peer, "peer", "", "the peer's underlay address")
	flag.StringVar(&peerNet, "peer-net", "", "the subnet the peer leases")
	flag.StringVar(&peerMAC, "peer-mac", "", "the peer's underlay MAC (a prototype: no neighbour lookup)")
	flag.UintVar(&port, "port", 8285, "UDP port, both ends")
	check := flag.String("check-pcap", "", "check the datagrams to -port in this capture, then exit")
	flag.Parse()
	if *check != "" {
		total, good, bad, err := checkPcap(*check, uint16(port))
		if err != nil {
			fmt.Fprintln(os.Stderr, "tcfast:", err)
			os.Exit(1)
		}
		fmt.Printf("%d datagrams, %d of them one whole inner IPv4 packet with valid checksums %s\n", total, good, bad)
		if total == 0 || good != total {
			os.Exit(1)
		}
		return
	}
	err := func() (err error) {
		if c.local, err = netip.ParseAddr(local); err != nil {
			return fmt.Errorf("-local: %w", err)
		}
		if c.peer, err = netip.ParseAddr(peer); err != nil {
			return fmt.Errorf("-peer: %w", err)
		}
		if c.peerNet, err = netip.ParsePrefix(peerNet); err != nil {
			return fmt.Errorf("-peer-net: %w", err)
		}
		if c.peerMAC, err = net.ParseMAC(peerMAC); err != nil || len(c.peerMAC) != 6 {
			return fmt.Errorf("-peer-mac %q: an Ethernet address is needed", peerMAC)
		}
		if port == 0 || port > 65535 {
			return errors.New("-port: 1 to 65535")
		}
		c.port = uint16(port)
		return run(c)
	}()
	if err != nil {
		fmt.Fprintln(os.Stderr, "tcfast:", err)
		os.Exit(1)
	}
}

func run(c config) error {
	if c.createTUN {
		// weft's own TUN, held open so the device has carrier; its queue is
		// never read, since every packet routed to it is redirected at TC
		// egress.
		tun, err := tunnel.OpenTUN(c.dev, 1472)
		if err != nil {
			return err
		}
		defer tun.Close()
	}
	dev, err := net.InterfaceByName(c.dev)
	if err != nil {
		return fmt.Errorf("overlay device: %w", err)
	}
	ul, err := net.InterfaceByName(c.underlay)
	if err != nil {
		return fmt.Errorf("underlay device: %w", err)
	}
	if len(ul.HardwareAddr) != 6 {
		return fmt.Errorf("underlay %s has no Ethernet address", c.underlay)
	}

	// Both maps: LPM key {prefix length, IPv4 address}, value a peer's underlay
	// address. routes: inner destination → peer; owners: inner source → the
	// only underlay address allowed to send it.
	routes, err := newLPM("routes")
	if err != nil {
		return err
	}
	defer routes.Close()
	owners, err := newLPM("owners")
	if err != nil {
		return err
	}
	defer owners.Close()
	key := make([]byte, 8)
	binary.LittleEndian.PutUint32(key, uint32(c.peerNet.Bits()))
	a := c.peerNet.Masked().Addr().As4()
	copy(key[4:], a[:])
	p := c.peer.As4()
	for _, m := range []*ebpf.Map{routes, owners} {
		if err := m.Put(key, p[:]); err != nil {
			return fmt.Errorf("map %s: %w", m.String(), err)
		}
	}

	enc, err := load("weft_encap", encap(c, routes, ul))
	if err != nil {
		return err
	}
	defer enc.Close()
	dec, err := load("weft_decap", decap(c, owners, dev))
	if err != nil {
		return err
	}
	defer dec.Close()
	l1, err := link.AttachTCX(link.TCXOptions{Interface: dev.Index, Program: enc, Attach: ebpf.AttachTCXEgress})
	if err != nil {
		return fmt.Errorf("attach to %s egress: %w", c.dev, err)
	}
	defer l1.Close()
	l2, err := link.AttachTCX(link.TCXOptions{Interface: ul.Index, Program: dec, Attach: ebpf.AttachTCXIngress})
	if err != nil {
		return fmt.Errorf("attach to %s ingress: %w", c.underlay, err)
	}
	defer l2.Close()
	slog.Info("ready", "dev", c.dev, "underlay", c.underlay, "peer", c.peer, "peer-net", c.peerNet, "port", c.port)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	<-sig
	return nil
}

func newLPM(name string) (*ebpf.Map, error) {
	m, err := ebpf.NewMap(&ebpf.MapSpec{Name: name, Type: ebpf.LPMTrie, KeySize: 8, ValueSize: 4,
		MaxEntries: 16384, Flags: unix.BPF_F_NO_PREALLOC})
	if err != nil {
		return nil, fmt.Errorf("map %s: %w", name, err)
	}
	return m, nil
}

func load(name string, insns asm.Instructions) (*ebpf.Program, error) {
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{Name: name, Type: ebpf.SchedCLS, License: "GPL", Instructions: insns})
	if err != nil {
		return nil, fmt.Errorf("load %s: %w", name, err)
	}
	return p, nil
}

// imm returns the 32-bit immediate whose little-endian bytes are b: the
// programs store network-order fields with plain stores.
func imm(b []byte) int64 {
	var v [4]byte
	copy(v[:], b)
	return int64(int32(binary.LittleEndian.Uint32(v[:])))
}

// encap runs at egress of the overlay device, where the packet starts at the
// inner IPv4 header. A destination in routes gets 28 bytes of room (outer IPv4
// and UDP, which also marks a GSO packet SKB_GSO_UDP_TUNNEL, so that each
// segment leaves as one datagram carrying one whole inner packet), then an
// Ethernet header, and is redirected to the underlay. Anything else goes on to
// the TUN, where weft's own path takes it.
func encap(c config, routes *ebpf.Map, ul *net.Interface) asm.Instructions {
	la := c.local.As4()
	pm, lm := []byte(c.peerMAC), []byte(ul.HardwareAddr)
	var ports [4]byte
	binary.BigEndian.PutUint16(ports[0:], c.port)
	binary.BigEndian.PutUint16(ports[2:], c.port)
	return program(start(20), asm.Instructions{
		asm.LoadMem(asm.R4, asm.R2, 0, asm.Byte),
		asm.RSh.Imm(asm.R4, 4),
		asm.JNE.Imm(asm.R4, 4, "next"),
		asm.LoadMem(asm.R4, asm.R2, 16, asm.Word), // inner destination
	}, lookup(routes), asm.Instructions{
		asm.LoadMem(asm.R7, asm.R0, 0, asm.Word), // the peer's underlay address
	}, adjustRoom(28, adjEncapL3IPv4|adjEncapL4UDP), asm.Instructions{
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.Mov.Imm(asm.R2, 14),
		asm.Mov.Imm(asm.R3, 0),
		asm.FnSkbChangeHead.Call(),
		asm.JNE.Imm(asm.R0, 0, "drop"),
		// Ethernet, IPv4 and UDP headers at fp-50..fp-9, IPv4 4-byte aligned.
		asm.StoreImm(asm.RFP, -50, imm(pm[0:2]), asm.Half),
		asm.StoreImm(asm.RFP, -48, imm(pm[2:6]), asm.Word),
		asm.StoreImm(asm.RFP, -44, imm(lm[0:4]), asm.Word),
		asm.StoreImm(asm.RFP, -40, imm(lm[4:6]), asm.Half),
		asm.StoreImm(asm.RFP, -38, imm([]byte{0x08, 0x00}), asm.Half),
		asm.LoadMem(asm.R8, asm.R6, skbLen, asm.Word),
		asm.Sub.Imm(asm.R8, 14), // outer IPv4 total length
		asm.StoreImm(asm.RFP, -36, imm([]byte{0x45, 0}), asm.Half),
		asm.Mov.Reg(asm.R1, asm.R8),
		asm.HostTo(asm.BE, asm.R1, asm.Half),
		asm.StoreMem(asm.RFP, -34, asm.R1, asm.Half),
		asm.StoreImm(asm.RFP, -32, imm([]byte{0, 0, 0x40, 0}), asm.Word), // ID 0, DF, as a connected UDP socket sends
		asm.StoreImm(asm.RFP, -28, imm([]byte{64, 17}), asm.Half),
		asm.StoreImm(asm.RFP, -26, 0, asm.Half),
		asm.StoreImm(asm.RFP, -24, imm(la[:]), asm.Word),
		asm.StoreMem(asm.RFP, -20, asm.R7, asm.Word),
		asm.StoreImm(asm.RFP, -16, imm(ports[:]), asm.Word),
		asm.Mov.Reg(asm.R1, asm.R8),
		asm.Sub.Imm(asm.R1, 20),
		asm.HostTo(asm.BE, asm.R1, asm.Half),
		asm.StoreMem(asm.RFP, -12, asm.R1, asm.Half),
		asm.StoreImm(asm.RFP, -10, 0, asm.Half), // no UDP checksum: valid on IPv4, the inner packet has its own
		// Outer header checksum: bpf_csum_diff over the 20 bytes, folded.
		asm.Mov.Imm(asm.R1, 0),
		asm.Mov.Imm(asm.R2, 0),
		asm.Mov.Reg(asm.R3, asm.RFP),
		asm.Add.Imm(asm.R3, -36),
		asm.Mov.Imm(asm.R4, 20),
		asm.Mov.Imm(asm.R5, 0),
		asm.FnCsumDiff.Call(),
		asm.Mov.Reg(asm.R1, asm.R0),
		asm.RSh.Imm(asm.R1, 16),
		asm.And.Imm(asm.R0, 0xffff),
		asm.Add.Reg(asm.R0, asm.R1),
		asm.Mov.Reg(asm.R1, asm.R0),
		asm.RSh.Imm(asm.R1, 16),
		asm.And.Imm(asm.R0, 0xffff),
		asm.Add.Reg(asm.R0, asm.R1),
		asm.Xor.Imm(asm.R0, 0xffff),
		asm.StoreMem(asm.RFP, -26, asm.R0, asm.Half),
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.Mov.Imm(asm.R2, 0),
		asm.Mov.Reg(asm.R3, asm.RFP),
		asm.Add.Imm(asm.R3, -50),
		asm.Mov.Imm(asm.R4, 42),
		asm.Mov.Imm(asm.R5, 0),
		asm.FnSkbStoreBytes.Call(),
		asm.JNE.Imm(asm.R0, 0, "drop"),
	}, redirect(int32(ul.Index), 0))
}

// decap runs at ingress of the underlay, where the packet starts at the
// Ethernet header. A datagram to this node's address and port whose inner
// source belongs to the outer source's subnet loses its outer IPv4 and UDP
// headers and is redirected into the overlay device, as if the TUN had
// received it. Everything else goes on to the stack (weft's socket counts and
// drops what fails its checks).
func decap(c config, owners *ebpf.Map, dev *net.Interface) asm.Instructions {
	la := c.local.As4()
	var port [2]byte
	binary.BigEndian.PutUint16(port[:], c.port)
	return program(start(14+20+8+20), asm.Instructions{
		asm.LoadMem(asm.R4, asm.R2, 12, asm.Half),
		asm.JNE.Imm(asm.R4, int32(imm([]byte{0x08, 0x00})), "next"),
		asm.LoadMem(asm.R4, asm.R2, 14, asm.Byte),
		asm.JNE.Imm(asm.R4, 0x45, "next"), // options: leave it to weft
		asm.LoadMem(asm.R4, asm.R2, 14+6, asm.Half),
		asm.JSet.Imm(asm.R4, int32(imm([]byte{0x3f, 0xff})), "next"), // a fragment: leave it to the stack
		asm.LoadMem(asm.R4, asm.R2, 14+9, asm.Byte),
		asm.JNE.Imm(asm.R4, 17, "next"),
		asm.LoadMem(asm.R4, asm.R2, 14+16, asm.Word),
		asm.JNE.Imm32(asm.R4, int32(imm(la[:])), "next"), // 32-bit compare: no sign extension
		asm.LoadMem(asm.R4, asm.R2, 14+22, asm.Half),
		asm.JNE.Imm(asm.R4, int32(imm(port[:])), "next"),
		asm.LoadMem(asm.R4, asm.R2, 14+28, asm.Byte),
		asm.RSh.Imm(asm.R4, 4),
		asm.JNE.Imm(asm.R4, 4, "next"),
		asm.LoadMem(asm.R7, asm.R2, 14+12, asm.Word),    // outer source
		asm.LoadMem(asm.R4, asm.R2, 14+28+12, asm.Word), // inner source
	}, lookup(owners), asm.Instructions{
		asm.LoadMem(asm.R1, asm.R0, 0, asm.Word),
		asm.JNE.Reg(asm.R1, asm.R7, "next"),
	}, adjustRoom(-28, 0), redirect(int32(dev.Index), redirectIngress))
}

// Pieces both programs share. Registers: R6 holds the context throughout,
// R2 and R3 the packet's start and end after start.

// start loads the packet pointers and goes on to "next" when fewer than n
// bytes are there.
func start(n int32) asm.Instructions {
	return asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1),
		asm.LoadMem(asm.R2, asm.R6, skbData, asm.Word),
		asm.LoadMem(asm.R3, asm.R6, skbDataEnd, asm.Word),
		asm.Mov.Reg(asm.R4, asm.R2),
		asm.Add.Imm(asm.R4, n),
		asm.JGT.Reg(asm.R4, asm.R3, "next"),
	}
}

// lookup finds the IPv4 address in R4 in an LPM map; on a miss it goes on to
// "next", on a hit R0 points at the value.
func lookup(m *ebpf.Map) asm.Instructions {
	return asm.Instructions{
		asm.StoreImm(asm.RFP, -8, 32, asm.Word),
		asm.StoreMem(asm.RFP, -4, asm.R4, asm.Word),
		asm.LoadMapPtr(asm.R1, m.FD()),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -8),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "next"),
	}
}

// adjustRoom grows (diff > 0) or shrinks the packet right after its MAC
// header; a failure drops it.
func adjustRoom(diff, flags int32) asm.Instructions {
	return asm.Instructions{
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.Mov.Imm(asm.R2, diff),
		asm.Mov.Imm(asm.R3, adjRoomMAC),
		asm.Mov.Imm(asm.R4, flags),
		asm.FnSkbAdjustRoom.Call(),
		asm.JNE.Imm(asm.R0, 0, "drop"),
	}
}

// redirect hands the packet to ifindex (its ingress with redirectIngress) and
// ends the program, followed by the "next" and "drop" exits.
func redirect(ifindex, flags int32) asm.Instructions {
	return asm.Instructions{
		asm.Mov.Imm(asm.R1, ifindex),
		asm.Mov.Imm(asm.R2, flags),
		asm.FnRedirect.Call(),
		asm.Return(),
		asm.Mov.Imm(asm.R0, tcxNext).WithSymbol("next"),
		asm.Return(),
		asm.Mov.Imm(asm.R0, tcxDrop).WithSymbol("drop"),
		asm.Return(),
	}
}

func program(parts ...asm.Instructions) asm.Instructions {
	var p asm.Instructions
	for _, x := range parts {
		p = append(p, x...)
	}
	return p
}
