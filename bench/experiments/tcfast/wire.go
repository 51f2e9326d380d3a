package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"

	"github.com/weft-net/weft/tunnel/tuntest"
)

// checkPcap reads a classic pcap file (Ethernet or Linux cooked captures) and
// checks that every UDP datagram to port carries exactly one whole inner IPv4
// packet with valid checksums (tuntest.VerifyIPv4): flannel's wire rule,
// which stock flanneld peers depend on.
func checkPcap(path string, port uint16) (total, good int, firstBad string, err error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, 0, "", err
	}
	total, good, firstBad, err = checkCapture(b, port)
	if err != nil {
		err = fmt.Errorf("%s: %w", path, err)
	}
	return total, good, firstBad, err
}

// checkCapture is checkPcap on the file's bytes.
func checkCapture(b []byte, port uint16) (total, good int, firstBad string, err error) {
	if len(b) < 24 || binary.LittleEndian.Uint32(b) != 0xa1b2c3d4 {
		return 0, 0, "", errors.New("not a little-endian microsecond pcap file")
	}
	var l2 int
	switch lt := binary.LittleEndian.Uint32(b[20:]); lt {
	case 1:
		l2 = 14
	case 113:
		l2 = 16
	default:
		return 0, 0, "", fmt.Errorf("link type %d", lt)
	}
	for off := 24; off+16 <= len(b); {
		n := int(binary.LittleEndian.Uint32(b[off+8:]))
		if off+16+n > len(b) {
			return total, good, firstBad, errors.New("truncated record")
		}
		pkt := b[off+16 : off+16+n]
		off += 16 + n
		if len(pkt) < l2+28 {
			continue
		}
		ip := pkt[l2:]
		ihl := int(ip[0]&15) * 4
		if ip[0]>>4 != 4 || ip[9] != 17 || len(ip) < ihl+8 || binary.BigEndian.Uint16(ip[ihl+2:]) != port {
			continue
		}
		total++
		if err := tuntest.VerifyIPv4(ip[ihl+8:]); err != nil {
			if firstBad == "" {
				firstBad = fmt.Sprintf("datagram %d: %v", total, err)
			}
			continue
		}
		good++
	}
	return total, good, firstBad, nil
}
