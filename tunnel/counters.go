package tunnel

import (
	"fmt"
	"net/netip"
	"sync/atomic"
)

// Counters is a snapshot of a forwarder's traffic. Tx is the TUN→UDP
// direction (inner packets sent to peers), Rx is UDP→TUN (inner packets
// written to the TUN). Bytes are inner packet bytes.
type Counters struct {
	TxPackets, TxBytes uint64
	RxPackets, RxBytes uint64
	// Drops counts discarded packets by reason; Drops[DropNone] is unused.
	Drops [NumDropReasons]uint64
	// ReadErrors counts transient read errors the loops rode through.
	ReadErrors uint64
}

// Dropped returns the total of all drop reasons.
func (c Counters) Dropped() uint64 {
	var n uint64
	for _, d := range c.Drops {
		n += d
	}
	return n
}

// dirCounters belongs to one direction's goroutine, which is its only
// writer; atomics let Counters read it from any goroutine without a lock.
type dirCounters struct {
	packets, bytes atomic.Uint64
	readErrors     atomic.Uint64
	drops          [NumDropReasons]atomic.Uint64
}

func (d *dirCounters) drop(r DropReason, n int) { d.drops[r].Add(uint64(n)) }

// SendError is returned by Conn.Write when the kernel refused some datagrams
// of a batch (an unreachable peer, a full queue, a datagram too big for the
// path) while the rest were sent. The forwarder counts Failed as
// DropSendError and carries on.
type SendError struct {
	Dst         netip.AddrPort
	Failed      int   // datagrams not sent
	FailedBytes int   // their total length
	Err         error // the last error the kernel returned
}

func (e *SendError) Error() string {
	return fmt.Sprintf("send %d datagrams to %s: %v", e.Failed, e.Dst, e.Err)
}

func (e *SendError) Unwrap() error { return e.Err }
