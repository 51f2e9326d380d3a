package lab

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/weft-net/weft/status"
)

// ErrNotRunning: the node has no daemon running.
var ErrNotRunning = errors.New("weft not running")

// weftProc is one daemon process, tracked by its PID (ip netns exec execs
// weft in place, so the PID is weft's).
type weftProc struct {
	cmd  *exec.Cmd
	done chan struct{} // closed when Wait returned; then state/waitErr are set
	// state is the exit state; waitErr is Wait's error.
	state   *os.ProcessState
	waitErr error
}

func (p *weftProc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// exitCode is the exit status, or -1 when a signal ended the process.
func (p *weftProc) exitCode() int {
	if p.state == nil {
		return -1
	}
	return p.state.ExitCode()
}

// WeftArgs returns the arguments StartWeft gives node i's daemon before
// any extra ones: etcd endpoint and prefix, subnet file, healthz listener
// and Options.WeftArgs. Callers wanting another spelling (single-dash
// flags, environment) start from this and use StartWeftWith.
func (l *Lab) WeftArgs(i int) []string {
	n := l.nodes[i]
	args := []string{
		"--etcd-endpoints=" + l.EtcdEndpoint(),
		"--etcd-prefix=" + l.opts.Prefix,
		"--subnet-file=" + n.SubnetFile,
		"--healthz-ip=0.0.0.0",
		"--healthz-port=" + strconv.Itoa(HealthzPort),
		// One socket per node: the namespaces share the host's /run.
		"--status-socket=" + filepath.Join(n.Dir, "weft.sock"),
	}
	return append(args, l.opts.WeftArgs...)
}

// StartWeft starts weft in node i's namespace with WeftArgs(i) followed by
// extraArgs.
func (l *Lab) StartWeft(i int, extraArgs ...string) error {
	if i < 0 || i >= len(l.nodes) {
		return fmt.Errorf("lab: no node %d (have %d)", i, len(l.nodes))
	}
	return l.StartWeftWith(i, append(l.WeftArgs(i), extraArgs...), nil)
}

// StartWeftWith starts weft in node i's namespace with exactly args, and
// env (KEY=VALUE) added to the lab's environment. Inherited FLANNELD_*
// variables are dropped so that only what the caller passes counts. Output
// is appended to the node's LogFile, after a header line.
func (l *Lab) StartWeftWith(i int, args, env []string) error {
	if l.opts.WeftBin == "" {
		return errors.New("lab: no weft binary (Options.WeftBin)")
	}
	return l.StartDaemon(i, l.opts.WeftBin, args, env)
}

// StartDaemon starts bin (weft, or another tunnel daemon such as a stock
// flanneld for interop tests) in node i's namespace, managed like weft:
// logged to the node's LogFile, stopped by PID with StopWeft/KillWeft.
func (l *Lab) StartDaemon(i int, bin string, args, env []string) error {
	n, err := l.node(i)
	if err != nil {
		return err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if l.closed.Load() { // checked under n.mu: Close reads n.proc under it after setting closed
		return errors.New("lab: closed")
	}
	if n.proc != nil && !n.proc.exited() {
		return fmt.Errorf("lab: start weft on %s: already running as pid %d", n.Name, n.proc.cmd.Process.Pid)
	}
	f, err := os.OpenFile(n.LogFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("lab: open log %s: %w", n.LogFile, err)
	}
	fmt.Fprintf(f, "=== weftlab %s: start %s in %s: %s %s\n",
		time.Now().Format(time.RFC3339Nano), n.Name, n.NS, strings.Join(env, " "), strings.Join(args, " "))

	cmd := exec.Command("ip", append([]string{"netns", "exec", n.NS, bin}, args...)...)
	cmd.Stdout, cmd.Stderr = f, f // an *os.File is handed to the child directly, no copying goroutine
	cmd.Env = append(cleanEnv(os.Environ()), env...)
	if err := l.spawner.start(cmd); err != nil {
		f.Close()
		return fmt.Errorf("lab: start weft on %s: %w", n.Name, err)
	}
	p := &weftProc{cmd: cmd, done: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		p.state = cmd.ProcessState
		f.Close()
		close(p.done)
	}()
	n.proc = p
	n.pod = netip.Prefix{}
	l.log.Info("weft started", "node", n.Name, "pid", cmd.Process.Pid)
	return nil
}

func cleanEnv(env []string) []string {
	out := env[:0:0]
	for _, kv := range env {
		if !strings.HasPrefix(kv, "FLANNELD_") {
			out = append(out, kv)
		}
	}
	return out
}

// PID is the PID of node i's daemon, 0 when none runs.
func (l *Lab) PID(i int) int {
	n, err := l.node(i)
	if err != nil {
		return 0
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.proc == nil || n.proc.exited() {
		return 0
	}
	return n.proc.cmd.Process.Pid
}

// StopWeft sends SIGTERM to node i's daemon and waits up to
// Options.StopTimeout, then SIGKILLs it. It returns the exit code (-1 when
// a signal ended it). The error is ErrNotRunning when nothing runs, and
// non-nil when the daemon had to be killed.
func (l *Lab) StopWeft(i int) (int, error) {
	n, err := l.node(i)
	if err != nil {
		return -1, err
	}
	return l.stopNode(n, l.opts.StopTimeout, false)
}

// KillWeft SIGKILLs node i's daemon and waits for it to be gone.
func (l *Lab) KillWeft(i int) error {
	n, err := l.node(i)
	if err != nil {
		return err
	}
	_, err = l.stopNode(n, l.opts.StopTimeout, true)
	return err
}

func (l *Lab) stopNode(n *node, timeout time.Duration, kill bool) (int, error) {
	n.mu.Lock()
	p := n.proc
	n.mu.Unlock()
	if p == nil {
		return -1, ErrNotRunning
	}
	if p.exited() {
		return p.exitCode(), fmt.Errorf("lab: stop weft on %s: %w (it had exited with %s)", n.Name, ErrNotRunning, p.state)
	}
	pid := p.cmd.Process.Pid
	sig := syscall.SIGTERM
	if kill {
		sig = syscall.SIGKILL
	}
	// Signal by PID through os.Process, which refuses once Wait has reaped
	// it, so a recycled PID is never hit.
	if err := p.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return -1, fmt.Errorf("lab: signal weft pid %d on %s: %w", pid, n.Name, err)
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-p.done:
		l.log.Info("weft stopped", "node", n.Name, "pid", pid, "signal", sig.String(), "exit", p.state.String())
		return p.exitCode(), nil
	case <-t.C:
	}
	_ = p.cmd.Process.Kill()
	<-p.done
	return p.exitCode(), fmt.Errorf("lab: weft pid %d on %s ignored %s for %v; killed", pid, n.Name, sig, timeout)
}

// WaitExit waits up to timeout for node i's daemon to exit by itself and
// returns its exit code (-1 when a signal ended it).
func (l *Lab) WaitExit(i int, timeout time.Duration) (int, error) {
	n, err := l.node(i)
	if err != nil {
		return -1, err
	}
	n.mu.Lock()
	p := n.proc
	n.mu.Unlock()
	if p == nil {
		return -1, ErrNotRunning
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-p.done:
		return p.exitCode(), nil
	case <-t.C:
		return -1, fmt.Errorf("lab: weft pid %d on %s still running after %v", p.cmd.Process.Pid, n.Name, timeout)
	}
}

// Running reports whether node i's daemon is alive.
func (l *Lab) Running(i int) bool { return l.PID(i) != 0 }

// Log returns everything node i's daemons wrote so far.
func (l *Lab) Log(i int) string {
	b, err := os.ReadFile(l.nodes[i].LogFile)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	return string(b)
}

// URL is http://<node i's underlay address>:HealthzPort + path.
func (l *Lab) URL(i int, path string) string {
	return "http://" + netip.AddrPortFrom(l.nodes[i].Addr, HealthzPort).String() + path
}

var httpClient = &http.Client{Timeout: 2 * time.Second}

// Ready reports whether node i's /readyz answers 200.
func (l *Lab) Ready(i int) bool {
	resp, err := httpClient.Get(l.URL(i, "/readyz"))
	if err != nil {
		return false
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// WaitReady polls node i's /readyz until it answers 200, then gives the
// node its pod address (see Pod). It fails early if the daemon exits.
func (l *Lab) WaitReady(i int, timeout time.Duration) error {
	n, err := l.node(i)
	if err != nil {
		return err
	}
	n.mu.Lock()
	p := n.proc
	n.mu.Unlock()
	if p == nil {
		return fmt.Errorf("lab: wait for %s: %w", n.Name, ErrNotRunning)
	}
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for !l.Ready(i) {
		if time.Now().After(deadline) {
			return fmt.Errorf("lab: %s not ready after %v; log tail:\n%s", n.Name, timeout, tail(l.Log(i), 20))
		}
		select {
		case <-p.done:
			return fmt.Errorf("lab: weft on %s exited with %s before ready; log tail:\n%s", n.Name, p.state, tail(l.Log(i), 20))
		case <-tick.C:
		}
	}
	return l.setupPod(n)
}

// WaitSubnetFile waits until node i's subnet file exists, then gives the
// node its pod address. It is WaitReady for daemons without /readyz
// (flanneld writes the file last, when it is ready).
func (l *Lab) WaitSubnetFile(i int, timeout time.Duration) error {
	n, err := l.node(i)
	if err != nil {
		return err
	}
	deadline := time.Now().Add(timeout)
	for {
		if _, err := os.Stat(n.SubnetFile); err == nil {
			return l.setupPod(n)
		}
		if !l.Running(i) {
			return fmt.Errorf("lab: daemon on %s exited before writing %s; log tail:\n%s", n.Name, n.SubnetFile, tail(l.Log(i), 20))
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("lab: %s: no %s after %v; log tail:\n%s", n.Name, n.SubnetFile, timeout, tail(l.Log(i), 20))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Pod is node i's pod address (FLANNEL_SUBNET's first host, e.g.
// 198.19.7.1/24) on the device pod0, as set by the last WaitReady;
// the zero Prefix before.
func (l *Lab) Pod(i int) netip.Prefix {
	n := l.nodes[i]
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.pod
}

// setupPod puts FLANNEL_SUBNET from the node's subnet.env on pod0, the
// stand-in for cni0: pings between pod addresses cross the tunnel.
func (l *Lab) setupPod(n *node) error {
	env, err := ReadSubnetEnv(n.SubnetFile)
	if err != nil {
		return err
	}
	pod, err := netip.ParsePrefix(env["FLANNEL_SUBNET"])
	if err != nil || !pod.Addr().Is4() {
		return fmt.Errorf("lab: %s: FLANNEL_SUBNET=%q is not an IPv4 prefix", n.SubnetFile, env["FLANNEL_SUBNET"])
	}
	if _, err := l.addrOnBridge(n, PodLink, pod); err != nil {
		return err
	}
	n.mu.Lock()
	n.pod = pod
	n.mu.Unlock()
	return nil
}

// ReadSubnetEnv parses a subnet.env file (KEY=VALUE lines).
func ReadSubnetEnv(path string) (map[string]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("lab: read subnet file: %w", err)
	}
	defer f.Close()
	env, err := ParseSubnetEnv(f)
	if err != nil {
		return nil, fmt.Errorf("lab: parse %s: %w", path, err)
	}
	return env, nil
}

// ParseSubnetEnv parses subnet.env content: KEY=VALUE lines; blank lines
// and # comments are skipped, anything else is an error.
func ParseSubnetEnv(r io.Reader) (map[string]string, error) {
	env := map[string]string{}
	sc := bufio.NewScanner(r)
	for line := 1; sc.Scan(); line++ {
		s := strings.TrimSpace(sc.Text())
		if s == "" || strings.HasPrefix(s, "#") {
			continue
		}
		k, v, ok := strings.Cut(s, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("line %d: %q is not KEY=VALUE", line, s)
		}
		env[k] = v
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return env, nil
}

// Status is the daemon's /status document, as package status defines it.
type Status = status.Status

// Counters are the data path counters in a Status.
type Counters = status.Counters

// Status fetches and decodes node i's /status.
func (l *Lab) Status(i int) (*Status, error) {
	return l.StatusContext(context.Background(), i)
}

// StatusContext is Status with a context.
func (l *Lab) StatusContext(ctx context.Context, i int) (*Status, error) {
	var s Status
	if err := l.GetJSON(ctx, i, "/status", &s); err != nil {
		return nil, err
	}
	return &s, nil
}

// GetJSON fetches path from node i's status server and decodes the JSON
// answer (at most 4 MiB) into v.
func (l *Lab) GetJSON(ctx context.Context, i int, path string, v any) error {
	return l.GetJSONAt(ctx, i, HealthzPort, path, v)
}

// GetJSONAt is GetJSON from a status server on port of node i's underlay
// address: a second daemon's, with its own -healthz-port.
func (l *Lab) GetJSONAt(ctx context.Context, i, port int, path string, v any) error {
	n, err := l.node(i)
	if err != nil {
		return err
	}
	u := "http://" + netip.AddrPortFrom(n.Addr, uint16(port)).String() + path
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return fmt.Errorf("lab: GET %s: %w", u, err)
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		return fmt.Errorf("lab: GET %s: %w", u, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("lab: GET %s: %s", u, resp.Status)
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 4<<20)).Decode(v); err != nil {
		return fmt.Errorf("lab: decode %s: %w", u, err)
	}
	return nil
}

func tail(s string, lines int) string {
	s = strings.TrimRight(s, "\n")
	idx := len(s)
	for range lines {
		j := strings.LastIndexByte(s[:idx], '\n')
		if j < 0 {
			return s
		}
		idx = j
	}
	return s[idx+1:]
}
