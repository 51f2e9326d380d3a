package lab

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Proc is a helper process that Spawn started in a node's namespace: an
// iperf3 server, or a second tunnel daemon next to weft. Close stops every
// Proc still running. Its methods are safe for concurrent use.
type Proc struct {
	Name    string // as given to Spawn
	Node    int
	LogFile string // stdout and stderr

	l       *Lab
	cmd     *exec.Cmd
	done    chan struct{} // closed when Wait returned; then state and waitErr are set
	state   *os.ProcessState
	waitErr error
}

var procNameRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// Spawn starts argv in node i's namespace (ip netns exec execs it in
// place, so the PID is argv[0]'s), with env (KEY=VALUE) added to the lab's
// environment. Output goes to <node dir>/<name>.log, truncated. The process
// dies with the lab's process (PR_SET_PDEATHSIG) and is stopped by Close.
func (l *Lab) Spawn(i int, name string, argv, env []string) (*Proc, error) {
	n, err := l.node(i)
	if err != nil {
		return nil, err
	}
	if !procNameRe.MatchString(name) {
		return nil, fmt.Errorf("lab: spawn %q: name must match %s", name, procNameRe)
	}
	if len(argv) == 0 || argv[0] == "" {
		return nil, fmt.Errorf("lab: spawn %s on %s: empty command", name, n.Name)
	}
	logFile := filepath.Join(n.Dir, name+".log")
	f, err := os.OpenFile(logFile, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lab: open log %s: %w", logFile, err)
	}
	cmd := exec.Command("ip", append([]string{"netns", "exec", n.NS}, argv...)...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = append(cleanEnv(os.Environ()), env...)
	p := &Proc{Name: name, Node: i, LogFile: logFile, l: l, cmd: cmd, done: make(chan struct{})}

	// Started and registered under procMu, so that Close (which sets
	// closed, then takes procMu) either sees the process or makes Spawn
	// fail.
	l.procMu.Lock()
	if l.closed.Load() {
		l.procMu.Unlock()
		f.Close()
		return nil, errors.New("lab: closed")
	}
	if err := l.spawner.start(cmd); err != nil {
		l.procMu.Unlock()
		f.Close()
		return nil, fmt.Errorf("lab: spawn %s on %s: %w", name, n.Name, err)
	}
	if l.procs == nil {
		l.procs = map[*Proc]struct{}{}
	}
	l.procs[p] = struct{}{}
	l.procMu.Unlock()

	go func() {
		p.waitErr = cmd.Wait()
		p.state = cmd.ProcessState
		f.Close()
		close(p.done)
		l.forget(p)
	}()
	l.log.Info("spawned", "node", n.Name, "name", name, "pid", cmd.Process.Pid, "cmd", strings.Join(argv, " "))
	return p, nil
}

func (l *Lab) forget(p *Proc) {
	l.procMu.Lock()
	delete(l.procs, p)
	l.procMu.Unlock()
}

// stopProcs stops every spawned process still running (used by Close).
func (l *Lab) stopProcs() {
	l.procMu.Lock()
	ps := make([]*Proc, 0, len(l.procs))
	for p := range l.procs {
		ps = append(ps, p)
	}
	l.procMu.Unlock()
	var wg sync.WaitGroup
	for _, p := range ps {
		wg.Go(func() {
			if err := p.Stop(l.opts.StopTimeout); err != nil {
				l.log.Warn("stop at close", "name", p.Name, "err", err)
			}
		})
	}
	wg.Wait()
}

// PID is the process's PID, 0 once it has exited.
func (p *Proc) PID() int {
	if p.Exited() {
		return 0
	}
	return p.cmd.Process.Pid
}

// Done is closed when the process has exited and been reaped.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Exited reports whether the process has exited.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// ExitState describes how the process ended ("exit status 1", "signal:
// killed"); empty while it runs.
func (p *Proc) ExitState() string {
	if !p.Exited() || p.state == nil {
		return ""
	}
	return p.state.String()
}

// Success reports an exit with status 0.
func (p *Proc) Success() bool { return p.Exited() && p.state != nil && p.state.Success() }

// Wait waits up to timeout for the process to exit by itself.
func (p *Proc) Wait(timeout time.Duration) error {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-p.done:
		return nil
	case <-t.C:
		return fmt.Errorf("lab: %s (pid %d) still running after %v", p.Name, p.cmd.Process.Pid, timeout)
	}
}

// Stop sends SIGTERM, waits up to timeout, then SIGKILLs. It returns nil
// when the process is gone, whatever its exit status, and an error only
// when it had to be killed.
func (p *Proc) Stop(timeout time.Duration) error {
	if p.Exited() {
		return nil
	}
	// os.Process refuses to signal once Wait reaped it, so a recycled PID
	// is never hit.
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("lab: signal %s (pid %d): %w", p.Name, p.cmd.Process.Pid, err)
	}
	if p.Wait(timeout) == nil {
		return nil
	}
	_ = p.cmd.Process.Kill()
	<-p.done
	return fmt.Errorf("lab: %s (pid %d) ignored SIGTERM for %v; killed", p.Name, p.cmd.Process.Pid, timeout)
}

// Interrupt sends SIGINT, which ends ping(8) and iperf3 with their
// summaries; Wait then collects the exit.
func (p *Proc) Interrupt() error {
	if err := p.cmd.Process.Signal(syscall.SIGINT); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("lab: signal %s (pid %d): %w", p.Name, p.cmd.Process.Pid, err)
	}
	return nil
}

// Output is what the process wrote so far.
func (p *Proc) Output() string {
	b, err := os.ReadFile(p.LogFile)
	if err != nil {
		return fmt.Sprintf("(no output: %v)", err)
	}
	return string(b)
}
