package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"time"
)

// RRResult is one request/response run over a single TCP connection.
type RRResult struct {
	From, To     netip.AddrPort
	Size         int   // bytes in each request and each response
	Transactions int64 // completed request/response pairs in Duration
	Duration     time.Duration
}

// Rate is transactions per second.
func (r RRResult) Rate() float64 {
	if r.Duration <= 0 {
		return 0
	}
	return float64(r.Transactions) / r.Duration.Seconds()
}

// rrWarmup is run, not counted, so that the first transactions' ARP and
// route lookups and the Go scheduler's wake-up costs stay out of the rate.
const rrWarmup = 100 * time.Millisecond

// RequestResponse connects from src on node from to a listener on dst on
// node to, and for d sends size bytes and waits for size bytes back, one
// transaction at a time, as netperf's TCP_RR does. Transactions per second
// is the latency of the whole path, stack included, under load.
func (l *Lab) RequestResponse(ctx context.Context, from int, src netip.Addr, to int, dst netip.Addr, size int, d time.Duration) (RRResult, error) {
	nf, err := l.node(from)
	if err != nil {
		return RRResult{}, err
	}
	nt, err := l.node(to)
	if err != nil {
		return RRResult{}, err
	}
	if size < 1 || size > 1<<20 || d <= 0 {
		return RRResult{}, fmt.Errorf("lab: request/response of %d bytes for %v", size, d)
	}
	what := fmt.Sprintf("request/response %s %s -> %s %s", nf.Name, src, nt.Name, dst)

	var cl closers
	defer cl.closeAll()
	stop := context.AfterFunc(ctx, cl.closeAll)
	defer stop()
	conn, pc, err := connectPair(ctx, &cl, nf, nt, src, dst, what)
	res := RRResult{Size: size}
	if conn != nil {
		res.From, res.To = conn.LocalAddr().(*net.TCPAddr).AddrPort(), conn.RemoteAddr().(*net.TCPAddr).AddrPort()
	}
	if err != nil {
		return res, err
	}
	// Both ends default to TCP_NODELAY in Go, so each write is a segment.

	echo := echoServer(pc, size)
	count, dur, rerr := rrClient(conn, size, d)
	res.Duration = dur
	res.Transactions = count
	if rerr == nil {
		rerr = conn.CloseWrite()
	}
	if rerr == nil {
		rerr = <-echo
	}
	if rerr != nil {
		return res, fmt.Errorf("lab: %s: after %d transactions: %w", what, count, errors.Join(ctx.Err(), rerr))
	}
	return res, nil
}

// echoServer sends every size-byte request read from pc back, in a
// goroutine, until the client closes its write side (nil on the returned
// channel) or a read or write fails.
func echoServer(pc *net.TCPConn, size int) <-chan error {
	echo := make(chan error, 1)
	go func() {
		buf := make([]byte, size)
		for {
			if _, err := io.ReadFull(pc, buf); err != nil {
				if errors.Is(err, io.EOF) {
					err = nil // the client's CloseWrite: done
				}
				echo <- err
				return
			}
			if _, err := pc.Write(buf); err != nil {
				echo <- err
				return
			}
		}
	}()
	return echo
}

// rrClient runs transactions of size bytes each way on conn, uncounted for
// rrWarmup, then counted for at least d. It returns the count and how long
// the counted ones took, up to the first error.
func rrClient(conn *net.TCPConn, size int, d time.Duration) (count int64, took time.Duration, rerr error) {
	req, resp := make([]byte, size), make([]byte, size)
	one := func() error {
		if _, err := conn.Write(req); err != nil {
			return err
		}
		_, err := io.ReadFull(conn, resp)
		return err
	}
	for warm := time.Now().Add(rrWarmup); time.Now().Before(warm) && rerr == nil; {
		rerr = one()
	}
	start := time.Now()
	end := start.Add(d)
	for rerr == nil {
		if rerr = one(); rerr == nil {
			count++
			// time.Now is a vDSO call: cheap next to a round trip.
			if count&15 == 0 && !time.Now().Before(end) {
				break
			}
		}
	}
	return count, time.Since(start), rerr
}
