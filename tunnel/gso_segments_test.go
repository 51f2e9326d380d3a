package tunnel

import "testing"

// GSOSegments must fill a UDP GSO message without overflowing it, so a
// TUN super-packet capped at it leaves as exactly one message.
func TestGSOSegments(t *testing.T) {
	for mtu, want := range map[int]int{1472: 44, 1450: 44, 8972: 7, 576: 63, 68: 63, 65535: 1, 0: 63} {
		got := GSOSegments(mtu)
		if got != want {
			t.Errorf("GSOSegments(%d) = %d, want %d", mtu, got, want)
		}
		if mtu > 0 && got > 1 && got*mtu > gsoMaxBytes {
			t.Errorf("GSOSegments(%d) = %d: %d bytes overflow a %d-byte GSO message", mtu, got, got*mtu, gsoMaxBytes)
		}
	}
}
