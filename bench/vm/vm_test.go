package vm

import (
	"os"
	"testing"
)

// kernelOrSkip is the unpacked kernel package WEFT_VM_KERNEL names
// (make kernel-matrix downloads and unpacks Debian's 6.1).
func kernelOrSkip(t *testing.T) Kernel {
	t.Helper()
	dir := os.Getenv("WEFT_VM_KERNEL")
	if dir == "" {
		t.Skip("WEFT_VM_KERNEL unset: make kernel-matrix fetches a kernel and runs these")
	}
	k, err := FindKernel(dir)
	if err != nil {
		t.Fatal(err)
	}
	return k
}
