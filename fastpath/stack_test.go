package fastpath

import (
	"testing"

	"github.com/cilium/ebpf/asm"
)

// TestNoNarrowStackStores: the committed programs write their stack only
// with 8-byte stores (clang's register spills). Linux 6.1's verifier, for a
// loader with CAP_BPF but not CAP_PERFMON (the shipped unit), refuses a
// store narrower than 8 bytes into a stack slot holding a spilled register
// ("attempt to corrupt spilled pointer on stack"), and newer kernels do
// not; this catches on any kernel what only 6.1 would refuse at load.
func TestNoNarrowStackStores(t *testing.T) {
	spec, err := loadWeft()
	if err != nil {
		t.Fatal(err)
	}
	for name, p := range spec.Programs {
		n := 0
		for _, ins := range p.Instructions {
			op := ins.OpCode
			if (op.Class() == asm.StXClass || op.Class() == asm.StClass) && ins.Dst == asm.RFP {
				n++
				if op.Size() != asm.DWord {
					t.Errorf("%s: %v: a %v store to the stack (scratch belongs in the scratch map)", name, ins, op.Size())
				}
			}
		}
		t.Logf("%s: %d instructions, %d stack stores", name, len(p.Instructions), n)
	}
}

// TestCountersLayout: the C counters value has one slot per Go counter.
func TestCountersLayout(t *testing.T) {
	if got := len(weftCounters{}.N); got != numCounters {
		t.Fatalf("bpf/weft.c has %d counters, fastpath.go %d", got, numCounters)
	}
}
