package lab

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os/exec"
	"regexp"
	"strconv"
	"sync"
	"time"
)

// PingResult is what ping(8) reported.
type PingResult struct {
	Sent, Received int
	// Loss is the lost fraction, 0..1.
	Loss          float64
	Min, Avg, Max time.Duration // zero when nothing came back
	Output        string
}

// OK reports whether every echo came back.
func (r PingResult) OK() bool { return r.Sent > 0 && r.Received == r.Sent }

// Ping runs `ping -c count -i 0.2 -W 1 [-I pod] to` in node from's
// namespace. The source is from's pod address once WaitReady set it, so the
// echo crosses the tunnel both ways. Lost echoes are a result, not an error;
// the error reports a ping that could not run or whose output is unreadable.
func (l *Lab) Ping(from int, to netip.Addr, count int) (PingResult, error) {
	n, err := l.node(from)
	if err != nil {
		return PingResult{}, err
	}
	if count < 1 {
		count = 1
	}
	args := []string{"netns", "exec", n.NS, "ping", "-n", "-c", strconv.Itoa(count), "-i", "0.2", "-W", "1"}
	if pod := l.Pod(from); pod.IsValid() {
		args = append(args, "-I", pod.Addr().String())
	}
	args = append(args, to.String())
	out, err := exec.Command("ip", args...).CombinedOutput()
	res, perr := ParsePing(string(out))
	if perr != nil {
		if err != nil {
			return res, fmt.Errorf("lab: ping %s from %s: %w: %s", to, n.Name, err, trimOut(out))
		}
		return res, fmt.Errorf("lab: ping %s from %s: %w", to, n.Name, perr)
	}
	// ping exits 1 when replies were missing: that is in res. Other
	// failures (exit 2: bad source address, no route) left no summary and
	// were reported above.
	return res, nil
}

var (
	pingCountRe = regexp.MustCompile(`(\d+) packets transmitted, (\d+) (?:packets )?received`)
	pingRTTRe   = regexp.MustCompile(`(?:rtt|round-trip) min/avg/max(?:/mdev)? = ([\d.]+)/([\d.]+)/([\d.]+)`)
)

// ParsePing reads the summary of iputils or busybox ping output.
func ParsePing(out string) (PingResult, error) {
	res := PingResult{Output: out}
	m := pingCountRe.FindStringSubmatch(out)
	if m == nil {
		return res, errors.New("no packet summary in ping output")
	}
	sent, err1 := strconv.Atoi(m[1])
	recv, err2 := strconv.Atoi(m[2])
	if err1 != nil || err2 != nil || sent < 0 || recv < 0 {
		return res, fmt.Errorf("bad packet summary %q", m[0])
	}
	res.Sent, res.Received = sent, recv
	switch {
	case sent == 0:
		res.Loss = 1
	case recv >= sent: // duplicates can make recv exceed sent
		res.Loss = 0
	default:
		res.Loss = float64(sent-recv) / float64(sent)
	}
	if r := pingRTTRe.FindStringSubmatch(out); r != nil {
		res.Min, res.Avg, res.Max = msDuration(r[1]), msDuration(r[2]), msDuration(r[3])
	}
	return res, nil
}

func msDuration(s string) time.Duration {
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || f < 0 || f > 1e9 {
		return 0
	}
	return time.Duration(f * float64(time.Millisecond))
}

// TransferResult is one TCP transfer.
type TransferResult struct {
	From, To netip.AddrPort
	Bytes    int64         // bytes the receiver got
	Duration time.Duration // from the first byte written to the receiver's EOF
	Sent     [sha256.Size]byte
	Received [sha256.Size]byte
}

// Match reports a byte-exact transfer: same SHA-256 both ends.
func (r TransferResult) Match() bool { return r.Sent == r.Received }

// Gbps is the goodput in Gb/s.
func (r TransferResult) Gbps() float64 {
	if r.Duration <= 0 {
		return 0
	}
	return float64(r.Bytes) * 8 / r.Duration.Seconds() / 1e9
}

// ErrMismatch: the receiver's SHA-256 differs from the sender's.
var ErrMismatch = errors.New("received data differs from sent data")

// Transfer sends nbytes of pseudo-random data over one TCP connection from
// node from's pod address to a listener on node to's pod address (both set
// by WaitReady), and compares SHA-256 at both ends. The result is filled as
// far as the transfer got; the error wraps ErrMismatch on a hash mismatch.
func (l *Lab) Transfer(ctx context.Context, from, to int, nbytes int64) (TransferResult, error) {
	for _, i := range []int{from, to} {
		if _, err := l.node(i); err != nil {
			return TransferResult{}, err
		}
		if !l.Pod(i).IsValid() {
			return TransferResult{}, fmt.Errorf("lab: transfer: node %d has no pod address yet (WaitReady)", i)
		}
	}
	return l.TransferAddr(ctx, from, l.Pod(from).Addr(), to, l.Pod(to).Addr(), nbytes)
}

// TransferAddr is Transfer between explicit addresses: src on node from,
// dst on node to (for example the underlay addresses, for a baseline).
func (l *Lab) TransferAddr(ctx context.Context, from int, src netip.Addr, to int, dst netip.Addr, nbytes int64) (TransferResult, error) {
	nf, err := l.node(from)
	if err != nil {
		return TransferResult{}, err
	}
	nt, err := l.node(to)
	if err != nil {
		return TransferResult{}, err
	}
	if nbytes < 0 {
		return TransferResult{}, fmt.Errorf("lab: transfer of %d bytes", nbytes)
	}
	what := fmt.Sprintf("transfer %s %s -> %s %s", nf.Name, src, nt.Name, dst)

	// Whatever blocks (accept, dial, read, write) is unblocked by closing
	// its socket when ctx ends.
	var cl closers
	defer cl.closeAll()
	stop := context.AfterFunc(ctx, cl.closeAll)
	defer stop()
	conn, pc, err := connectPair(ctx, &cl, nf, nt, src, dst, what)
	res := TransferResult{}
	if conn != nil {
		res.From, res.To = conn.LocalAddr().(*net.TCPAddr).AddrPort(), conn.RemoteAddr().(*net.TCPAddr).AddrPort()
	}
	if err != nil {
		return res, err
	}

	seed := uint64(time.Now().UnixNano())
	buffered := nbytes <= maxBufferedTransfer
	var store []byte
	if buffered {
		store = faultedIn(nbytes)
	}
	rc := receiveTransfer(pc, store, buffered)
	sent, start, werr := sendTransfer(conn, seed, nbytes, buffered)
	res.Sent = sent
	r := <-rc
	res.Bytes, res.Received, res.Duration = r.n, r.sum, r.end.Sub(start)
	if err := errors.Join(werr, r.err); err != nil {
		return res, fmt.Errorf("lab: %s: after %d of %d bytes: %w", what, r.n, nbytes, errors.Join(ctx.Err(), err))
	}
	if r.n != nbytes || !res.Match() {
		return res, fmt.Errorf("lab: %s: %w (%d of %d bytes, sha256 %x sent, %x received)",
			what, ErrMismatch, r.n, nbytes, res.Sent[:8], res.Received[:8])
	}
	return res, nil
}

// faultedIn allocates a buffered transfer's n-byte receive buffer and
// touches every page of it.
func faultedIn(n int64) []byte {
	store := make([]byte, n)
	for i := 0; i < len(store); i += 4096 {
		store[i] = 0 // fault the pages in before the clock starts
	}
	return store
}

// transferRecv is what the receiving end of a transfer got.
type transferRecv struct {
	n   int64
	sum [sha256.Size]byte
	end time.Time
	err error
}

// receiveTransfer reads pc to its end in a goroutine and sends the byte
// count, SHA-256 and end time on the returned channel. A buffered
// transfer reads into store and hashes after the clock stopped; otherwise
// it hashes as it reads.
func receiveTransfer(pc *net.TCPConn, store []byte, buffered bool) <-chan transferRecv {
	rc := make(chan transferRecv, 1)
	go func() {
		var r transferRecv
		h := sha256.New()
		if buffered {
			m, err := io.ReadFull(pc, store)
			r.n = int64(m)
			if err == nil { // anything beyond len(store) is a mismatch too
				var extra int64
				extra, err = io.Copy(io.Discard, pc)
				r.n += extra
			} else if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
				err = nil // short: the hashes will differ
			}
			r.end, r.err = time.Now(), err
			h.Write(store[:m])
		} else {
			r.n, r.err = io.CopyBuffer(h, pc, make([]byte, 256<<10))
			r.end = time.Now()
		}
		h.Sum(r.sum[:0])
		rc <- r
	}()
	return rc
}

// sendTransfer writes the first nbytes of the stream for seed to conn and
// closes its write side (or, on error, the whole connection, to unblock the
// receiver). It returns the SHA-256 of what it sent, zero if a buffered
// transfer failed, and when the clock started.
func sendTransfer(conn *net.TCPConn, seed uint64, nbytes int64, buffered bool) (sum [sha256.Size]byte, start time.Time, werr error) {
	var sendHash hash.Hash
	if !buffered {
		sendHash = sha256.New()
	}
	start = time.Now()
	werr = writeStream(conn, seed, nbytes, sendHash)
	if werr == nil {
		werr = conn.CloseWrite()
	}
	if werr != nil {
		conn.Close() // unblock the receiver
	}
	switch {
	case sendHash != nil:
		sendHash.Sum(sum[:0])
	case werr == nil:
		sum = streamSum(seed, nbytes) // while the receiver hashes
	}
	return sum, start, werr
}

// MaxBufferedTransfer is the largest transfer the receiver keeps in memory
// and hashes after the clock stopped. SHA-256 runs at only 0.3–0.5 GB/s on
// CPUs without SHA extensions, so hashing inline would cap the measured
// rate below what the tunnel does; larger transfers hash inline at both
// ends.
const MaxBufferedTransfer = 1 << 30

var maxBufferedTransfer int64 = MaxBufferedTransfer // lowered by a test

const (
	streamBlock = 1 << 20 // random bytes, repeated
	streamUnit  = 4096    // each unit starts with its own 8-byte stamp
)

// stream is a transfer's content: one ChaCha8 block repeated, the first 8
// bytes of every 4 KiB unit replaced by the unit's index mixed with the
// seed. No two units are equal, so a lost, duplicated or misplaced
// segment changes the SHA-256; and it costs a copy, not a cipher, per
// byte, so the sender is never what limits the rate.
type stream struct {
	block []byte
	salt  uint64
	off   int64
}

func newStream(seed uint64) *stream {
	var key [32]byte
	binary.LittleEndian.PutUint64(key[:], seed)
	s := &stream{block: make([]byte, streamBlock), salt: seed * 0x9e3779b97f4a7c15}
	_, _ = rand.NewChaCha8(key).Read(s.block) // never fails
	return s
}

// fill writes the next len(p) bytes of the stream into p.
func (s *stream) fill(p []byte) {
	if len(p) == 0 {
		return
	}
	start := s.off
	for i := 0; i < len(p); {
		i += copy(p[i:], s.block[(start+int64(i))%streamBlock:])
	}
	end := start + int64(len(p))
	for u := start / streamUnit; u*streamUnit < end; u++ {
		var stamp [8]byte
		binary.LittleEndian.PutUint64(stamp[:], uint64(u)^s.salt)
		for j := range int64(len(stamp)) {
			if o := u*streamUnit + j - start; o >= 0 && o < int64(len(p)) {
				p[o] = stamp[j]
			}
		}
	}
	s.off = end
}

// writeStream writes the first n bytes of the stream for seed to w, and
// to h unless h is nil.
func writeStream(w io.Writer, seed uint64, n int64, h hash.Hash) error {
	s := newStream(seed)
	buf := make([]byte, 256<<10)
	for n > 0 {
		chunk := buf[:min(int64(len(buf)), n)]
		s.fill(chunk)
		if h != nil {
			h.Write(chunk)
		}
		if _, err := w.Write(chunk); err != nil {
			return err
		}
		n -= int64(len(chunk))
	}
	return nil
}

// streamSum is the SHA-256 of the first n bytes of the stream for seed:
// what writeStream sent.
func streamSum(seed uint64, n int64) [sha256.Size]byte {
	var sum [sha256.Size]byte
	h := sha256.New()
	_ = writeStream(h, seed, n, nil) // a hash never fails
	h.Sum(sum[:0])
	return sum
}

// connectPair opens one TCP connection from src on node nf to a listener on
// dst on node nt, each socket made in its node's namespace. The listener
// and both ends go to cl, which the caller closes (also when ctx ends).
// client is set as soon as the dial succeeded, for error reports.
func connectPair(ctx context.Context, cl *closers, nf, nt *node, src, dst netip.Addr, what string) (client, server *net.TCPConn, err error) {
	var ln *net.TCPListener
	if err := inNetns(nt.ns, func() (err error) {
		ln, err = net.ListenTCP("tcp4", net.TCPAddrFromAddrPort(netip.AddrPortFrom(dst, 0)))
		return err
	}); err != nil {
		return nil, nil, fmt.Errorf("lab: %s: listen in %s: %w", what, nt.NS, err)
	}
	cl.add(ln)
	to := ln.Addr().(*net.TCPAddr).AddrPort()
	if err := inNetns(nf.ns, func() error {
		d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(src, 0))}
		c, err := d.DialContext(ctx, "tcp4", to.String())
		if err != nil {
			return err
		}
		client = c.(*net.TCPConn)
		return nil
	}); err != nil {
		return nil, nil, fmt.Errorf("lab: %s: connect from %s: %w", what, nf.NS, err)
	}
	cl.add(client)
	server, err = ln.AcceptTCP()
	if err != nil {
		return client, nil, fmt.Errorf("lab: %s: accept: %w", what, errors.Join(ctx.Err(), err))
	}
	cl.add(server)
	if from := client.LocalAddr().(*net.TCPAddr).AddrPort(); server.RemoteAddr().(*net.TCPAddr).AddrPort() != from {
		return client, server, fmt.Errorf("lab: %s: accepted %s, not our %s", what, server.RemoteAddr(), from)
	}
	return client, server, nil
}

// closers closes a growing set of sockets once; a socket added after
// closeAll is closed at once.
type closers struct {
	mu   sync.Mutex
	done bool
	cs   []io.Closer
}

func (c *closers) add(x io.Closer) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done {
		x.Close()
		return
	}
	c.cs = append(c.cs, x)
}

func (c *closers) closeAll() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.done = true
	for _, x := range c.cs {
		x.Close()
	}
	c.cs = nil
}
