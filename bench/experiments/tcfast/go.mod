module github.com/weft-net/weft/bench/experiments/tcfast

go 1.26.8

require (
	github.com/cilium/ebpf v0.22.0
	golang.org/x/sys v0.49.0
)

require github.com/weft-net/weft v0.0.0

require (
	golang.org/x/net v0.61.0 // indirect
	golang.zx2c4.com/wintun v0.0.0-20230126152724-0fa3db229ce2 // indirect
	golang.zx2c4.com/wireguard v0.0.0-20260522210424-ecfc5a8d5446 // indirect
)

// The repository's own weft, for tunnel/tuntest's packet checks.
replace github.com/weft-net/weft => ../../..
