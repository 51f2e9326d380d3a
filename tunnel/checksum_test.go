package tunnel

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

// TestChecksumMatchesReference compares the unrolled checksum with the
// plain one for every length up to 2 KB and beyond the unrolled block,
// at every alignment within a word, with random, all-ones and all-zero
// data and several initial sums.
func TestChecksumMatchesReference(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	buf := make([]byte, 70000)
	lengths := []int{65535, 65536, 69999}
	for n := 0; n <= 2100; n++ {
		lengths = append(lengths, n)
	}
	fills := map[string]func(b []byte){
		"random": func(b []byte) {
			for i := range b {
				b[i] = byte(rng.Uint32())
			}
		},
		"ones":  func(b []byte) { fillWith(b, 0xff) },
		"zeros": func(b []byte) { fillWith(b, 0) },
	}
	initials := []uint32{0, 1, 0xffff, 0x2fffd, 0x12345}
	for name, fill := range fills {
		fill(buf)
		for _, n := range lengths {
			for align := 0; align < 8 && align+n <= len(buf); align++ {
				b := buf[align : align+n]
				for _, init := range initials {
					want := refChecksum(b, init)
					got := checksum(b, uint64(init))
					// 0x0000 and 0xffff are both ones'-complement zero.
					if got != want && !(got|want == 0xffff && got&want == 0) {
						t.Fatalf("%s len %d align %d initial %#x: checksum %#04x, reference %#04x", name, n, align, init, got, want)
					}
				}
			}
		}
	}
}

func fillWith(b []byte, v byte) {
	for i := range b {
		b[i] = v
	}
}

// TestChecksumVerifies: a buffer whose checksum field holds the computed
// value sums to zero, which is how receivers verify.
func TestChecksumVerifies(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for n := 2; n < 1600; n += 7 {
		b := make([]byte, n+n%2)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		b[0], b[1] = 0, 0
		c := checksum(b, 0x1234)
		b[0], b[1] = byte(c>>8), byte(c)
		if got := checksum(b, 0x1234); got != 0 && got != 0xffff {
			t.Fatalf("len %d: verifying sum %#04x", n, got)
		}
	}
}

func BenchmarkChecksum(b *testing.B) {
	for _, n := range []int{40, 64, 1400, 1500, 9000, 65535} {
		buf := make([]byte, n)
		for i := range buf {
			buf[i] = byte(i * 7)
		}
		b.Run(fmt.Sprintf("size=%d", n), func(b *testing.B) {
			b.SetBytes(int64(n))
			for b.Loop() {
				checksum(buf, 0)
			}
		})
		b.Run(fmt.Sprintf("reference/size=%d", n), func(b *testing.B) {
			b.SetBytes(int64(n))
			for b.Loop() {
				refChecksum(buf, 0)
			}
		})
	}
}
