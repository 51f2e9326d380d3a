//go:build wgtun

package main

import "github.com/weft-net/weft/tunnel"

// Built with -tags wgtun, weft opens its TUN with wireguard-go's code: only
// for the TUN-layer comparison (bench/README.md).
func init() { openTUNOverride = tunnel.OpenWireGuardTUN }
