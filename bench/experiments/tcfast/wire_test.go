package main

import (
	"encoding/binary"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/weft-net/weft/tunnel/tuntest"
)

func inner(n int) []byte {
	payload := make([]byte, n)
	for i := range payload {
		payload[i] = byte(i * 7)
	}
	return tuntest.IPv4TCP(netip.MustParseAddr("198.19.1.1"), netip.MustParseAddr("198.19.2.1"), 1, payload)
}

// capture writes a pcap with one Ethernet/IPv4/UDP frame per payload.
func capture(t testing.TB, port uint16, payloads ...[]byte) string {
	t.Helper()
	b := make([]byte, 24)
	binary.LittleEndian.PutUint32(b, 0xa1b2c3d4)
	binary.LittleEndian.PutUint32(b[20:], 1)
	for _, pl := range payloads {
		f := make([]byte, 14+28+len(pl))
		f[12], f[13] = 0x08, 0x00
		ip := f[14:]
		ip[0], ip[9] = 0x45, 17
		binary.BigEndian.PutUint16(ip[2:], uint16(28+len(pl)))
		binary.BigEndian.PutUint16(ip[20:], port)
		binary.BigEndian.PutUint16(ip[22:], port)
		copy(ip[28:], pl)
		rec := make([]byte, 16)
		binary.LittleEndian.PutUint32(rec[8:], uint32(len(f)))
		binary.LittleEndian.PutUint32(rec[12:], uint32(len(f)))
		b = append(append(b, rec...), f...)
	}
	path := filepath.Join(t.TempDir(), "c.pcap")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestCheckPcap(t *testing.T) {
	good := inner(1000)
	badSum := inner(1000)
	badSum[45] ^= 1
	twoInOne := append(inner(10), inner(10)...)
	odd := inner(101)
	for _, tc := range []struct {
		name     string
		payloads [][]byte
		good     int
		why      string
	}{
		{"valid", [][]byte{good, odd}, 2, ""},
		{"corrupt payload", [][]byte{good, badSum}, 1, "bad TCP checksum"},
		{"two packets in one datagram", [][]byte{twoInOne}, 0, "bad lengths: ihl 20, total 50, have 100"},
		{"not IPv4", [][]byte{make([]byte, 30)}, 0, "not an IPv4 packet"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			total, n, why, err := checkPcap(capture(t, 8285, tc.payloads...), 8285)
			if err != nil {
				t.Fatal(err)
			}
			if total != len(tc.payloads) || n != tc.good || !strings.Contains(why, tc.why) {
				t.Fatalf("got %d datagrams, %d good, %q; want %d, %d, %q", total, n, why, len(tc.payloads), tc.good, tc.why)
			}
		})
	}
	if total, _, _, _ := checkPcap(capture(t, 8289, good), 8285); total != 0 {
		t.Fatalf("a datagram to another port was counted")
	}
}

// FuzzCheckCapture: any bytes, no panic, and the counts stay consistent: a
// first bad datagram is named exactly when not every datagram is good.
func FuzzCheckCapture(f *testing.F) {
	for _, pl := range [][][]byte{{inner(1000)}, {inner(10), append(inner(10), 1)}} {
		b, err := os.ReadFile(capture(f, 8285, pl...))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		total, good, firstBad, err := checkCapture(b, 8285)
		if err != nil {
			return
		}
		if good < 0 || good > total || (firstBad != "") != (good < total) {
			t.Fatalf("total %d, good %d, first bad %q", total, good, firstBad)
		}
	})
}
