// Package kubetest runs a real kube-apiserver, on a real etcd, for tests:
// the Kubernetes lease store is tested against the API server itself (its
// validation, RBAC, TokenRequest and watch semantics), never a fake
// clientset. The binary is built once by `make kube-apiserver`.
//
// No controllers run, so a test plays kube-controller-manager: it creates
// Nodes (CreateNode) and assigns their podCIDR (SetPodCIDR). Only tests
// import this package.
package kubetest

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/weft-net/weft/etcd/etcdtest"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// Version is the kube-apiserver the tests run; the Makefile's KUBE_VERSION.
const Version = "v1.37.2"

const module = "github.com/weft-net/weft"

const (
	// readyTimeout bounds the wait for /readyz. Generous: ready in about
	// 3 s on an idle machine, much longer on a loaded 2-vCPU CI runner.
	readyTimeout = time.Minute
	// stopTimeout is how long Stop waits after SIGTERM before SIGKILL.
	stopTimeout = 20 * time.Second
	// callTimeout bounds each API call the helpers make.
	callTimeout = 30 * time.Second
)

// Option changes how Start runs the API server.
type Option func(*options)

type options struct {
	addr netip.Addr
}

// WithAddress serves on addr instead of 127.0.0.1, e.g. a lab's 198.18.K.1
// host address, so daemons in network namespaces reach the API server. The
// address must be loopback or in 198.18.0.0/15 and already on an interface.
func WithAddress(addr netip.Addr) Option {
	return func(o *options) { o.addr = addr }
}

// testNet is the benchmarking range (RFC 2544) that tests may use besides
// loopback.
var testNet = netip.MustParsePrefix("198.18.0.0/15")

// Server is a running kube-apiserver and its etcd.
type Server struct {
	// URL is the API server's address, https://host:port.
	URL string
	// CAFile is the PEM file of the CA that signed the serving certificate;
	// CAData is its content.
	CAFile string
	CAData []byte
	// AdminToken is a bearer token for a user in system:masters.
	AdminToken string
	// LogFile holds the API server's output, across restarts.
	LogFile string

	bin   string
	args  []string
	cfg   *rest.Config
	admin kubernetes.Interface

	mu      sync.Mutex
	proc    *process // nil while stopped
	exitErr error    // set if the API server exited without being stopped
}

// Start runs etcd and kube-apiserver on a free port of 127.0.0.1 (or
// WithAddress) and waits until the API server is ready. Both are stopped
// when the test ends, the API server first; on failure the test log gets
// the tail of the API server's log. It skips t if the binary is missing
// (fails under CI=true): run make kube-apiserver.
func Start(t testing.TB, opts ...Option) *Server {
	t.Helper()
	bin := Binary(t)
	o := options{addr: netip.MustParseAddr("127.0.0.1")}
	for _, opt := range opts {
		opt(&o)
	}
	if !o.addr.IsLoopback() && !testNet.Contains(o.addr) {
		t.Fatalf("kubetest: address %s: tests use only loopback or %s", o.addr, testNet)
	}
	dir := t.TempDir()
	etcd := etcdtest.Start(t) // its cleanup runs after the API server's
	f, err := writeFiles(dir, o.addr)
	if err != nil {
		t.Fatalf("kubetest: %v", err)
	}
	caData, err := os.ReadFile(f.ca)
	if err != nil {
		t.Fatalf("kubetest: %v", err)
	}
	s := &Server{CAFile: f.ca, CAData: caData, AdminToken: f.adminToken, LogFile: filepath.Join(dir, "kube-apiserver.log"), bin: bin}
	t.Cleanup(func() {
		s.Stop()
		s.mu.Lock()
		exitErr := s.exitErr
		s.mu.Unlock()
		if exitErr != nil {
			t.Errorf("kubetest: %v", exitErr)
		}
		if t.Failed() {
			t.Logf("kubetest: last lines of %s:\n%s", s.LogFile, tail(s.LogFile, 40))
		}
	})

	begin := time.Now()
	// A free port can be taken before the API server binds it; a few
	// attempts make a collision practically impossible.
	for attempt := range 5 {
		port, err := freePort(o.addr)
		if err != nil {
			t.Fatalf("kubetest: %v", err)
		}
		s.URL = "https://" + netip.AddrPortFrom(o.addr, port).String()
		s.args = []string{
			"--etcd-servers=" + etcd,
			"--bind-address=" + o.addr.String(),
			"--advertise-address=" + o.addr.String(),
			"--secure-port=" + strconv.Itoa(int(port)),
			"--cert-dir=" + filepath.Join(dir, "certs"),
			"--tls-cert-file=" + f.cert,
			"--tls-private-key-file=" + f.key,
			"--token-auth-file=" + f.tokens,
			// A signing key pair, so the TokenRequest API issues
			// ServiceAccount tokens, as it does for a daemon's pod.
			"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
			"--service-account-key-file=" + f.saPub,
			"--service-account-signing-key-file=" + f.saKey,
			"--authorization-mode=Node,RBAC",
			"--service-cluster-ip-range=198.18.200.0/24",
			// Neither matters for a test, and both need controllers or
			// more than one address.
			"--enable-priority-and-fairness=false",
			"--endpoint-reconciler-type=none",
		}
		err = s.start()
		if err == nil {
			break
		}
		if !errors.Is(err, errAddrInUse) || attempt == 4 {
			t.Fatalf("kubetest: %v", err)
		}
	}
	t.Logf("kubetest: kube-apiserver %s ready at %s after %v", Version, s.URL, time.Since(begin).Round(time.Millisecond))

	s.cfg = &rest.Config{
		Host:            s.URL,
		BearerToken:     s.AdminToken,
		TLSClientConfig: rest.TLSClientConfig{CAData: s.CAData},
		// The test is the only client: no client-side throttling.
		QPS: -1,
	}
	if s.admin, err = kubernetes.NewForConfig(s.cfg); err != nil {
		t.Fatalf("kubetest: admin client: %v", err)
	}
	return s
}

// Binary returns the kube-apiserver to run: $WEFT_KUBE_APISERVER, else
// bin/kube-apiserver-<Version> in weft's module root. If it is missing it
// skips t, or fails it under CI=true, where make test builds it first.
func Binary(t testing.TB) string {
	t.Helper()
	p := os.Getenv("WEFT_KUBE_APISERVER")
	if p == "" {
		root, err := moduleRoot()
		if err != nil {
			t.Fatalf("kubetest: %v", err)
		}
		p = filepath.Join(root, "bin", "kube-apiserver-"+Version)
	}
	if _, err := os.Stat(p); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("kube-apiserver not found at %s: run make kube-apiserver", p)
		}
		t.Skipf("skipping: needs kube-apiserver %s at %s: run make kube-apiserver (or set WEFT_KUBE_APISERVER)", Version, p)
	}
	return p
}

// moduleRoot walks up from the working directory, which go test sets to
// the package's directory, to the go.mod of weft's module (passing
// kube/apiserver's own).
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("find module root: %w", err)
	}
	for {
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil && modulePath(b) == module {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("find module root: no go.mod of %s above the working directory", module)
		}
		dir = parent
	}
}

func modulePath(gomod []byte) string {
	sc := bufio.NewScanner(bytes.NewReader(gomod))
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) == 2 && f[0] == "module" {
			return strings.Trim(f[1], `"`)
		}
	}
	return ""
}

// AdminConfig is a client configuration for a user in system:masters; the
// caller may change the copy.
func (s *Server) AdminConfig() *rest.Config { return rest.CopyConfig(s.cfg) }

// Admin is a clientset for a user in system:masters. It reconnects by
// itself after Restart.
func (s *Server) Admin() kubernetes.Interface { return s.admin }

// Stop stops the API server (SIGTERM, SIGKILL after stopTimeout) and waits
// until it has exited; etcd keeps running. It is a no-op while stopped.
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil {
		return
	}
	select {
	case <-s.proc.done:
		s.exitErr = fmt.Errorf("kube-apiserver exited before it was stopped: %w", s.proc.err)
	default:
		s.proc.stop()
	}
	s.proc = nil
}

// Restart stops the API server if it runs and starts it again with the
// same etcd data, port and certificates, so clients reconnect.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.Stop()
	if err := s.start(); err != nil {
		t.Fatalf("kubetest: restart: %v", err)
	}
}

// errAddrInUse: the chosen port was taken before the API server bound it.
var errAddrInUse = errors.New("address already in use")

// start runs the API server and waits until /readyz is ok.
func (s *Server) start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc != nil {
		return nil
	}
	log, err := os.OpenFile(s.LogFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("start kube-apiserver: %w", err)
	}
	fmt.Fprintf(log, "=== kubetest: %s %s\n", time.Now().Format(time.RFC3339Nano), strings.Join(s.args, " "))
	p, err := startProcess(s.bin, s.args, log)
	log.Close() // the child has its own descriptor
	if err != nil {
		return fmt.Errorf("start kube-apiserver: %w", err)
	}
	if err := s.waitReady(p); err != nil {
		p.stop()
		if strings.Contains(tail(s.LogFile, 40), "address already in use") {
			err = fmt.Errorf("%w: %w", err, errAddrInUse)
		}
		return fmt.Errorf("start kube-apiserver on %s: %w (its log: %s)", s.URL, err, s.LogFile)
	}
	s.proc = p
	return nil
}

// waitReady polls /readyz as the admin (anonymous users may not read it
// before RBAC's bootstrap roles exist) until it answers 200.
func (s *Server) waitReady(p *process) error {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(s.CAData) {
		return errors.New("no certificate in CA file")
	}
	c := &http.Client{
		Timeout:   2 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}},
	}
	defer c.CloseIdleConnections()
	deadline := time.Now().Add(readyTimeout)
	var last error
	for {
		req, err := http.NewRequest(http.MethodGet, s.URL+"/readyz", nil)
		if err != nil {
			return fmt.Errorf("readyz: %w", err)
		}
		req.Header.Set("Authorization", "Bearer "+s.AdminToken)
		if resp, err := c.Do(req); err != nil {
			last = err
		} else {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = fmt.Errorf("readyz: %s", resp.Status)
		}
		select {
		case <-p.done:
			return fmt.Errorf("exited before ready: %w", p.err)
		case <-time.After(200 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready after %v: %w", readyTimeout, last)
		}
	}
}

// process is one run of the API server.
type process struct {
	cmd  *exec.Cmd
	done chan struct{} // closed when it has exited
	err  error         // Wait's result, set before done is closed
}

// startProcess starts bin with its output to log. The child gets SIGKILL
// if the test binary dies first (a panic, a go test timeout), so no API
// server outlives its test.
func startProcess(bin string, args []string, log *os.File) (*process, error) {
	p := &process{done: make(chan struct{})}
	started := make(chan error, 1)
	go func() {
		// Pdeathsig fires when the thread that started the child exits,
		// not the process: keep this goroutine, locked to that thread,
		// alive until the child has exited.
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		cmd := exec.Command(bin, args...)
		cmd.Stdout, cmd.Stderr = log, log
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		p.cmd = cmd
		started <- nil
		p.err = cmd.Wait()
		close(p.done)
	}()
	if err := <-started; err != nil {
		return nil, err
	}
	return p, nil
}

// stop sends SIGTERM to the process, by its PID, then SIGKILL after
// stopTimeout, and waits until it has exited.
func (p *process) stop() {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	timer := time.NewTimer(stopTimeout)
	defer timer.Stop()
	select {
	case <-p.done:
		return
	case <-timer.C:
	}
	_ = p.cmd.Process.Kill()
	<-p.done
}

// freePort returns a TCP port on addr that was free a moment ago.
func freePort(addr netip.Addr) (uint16, error) {
	l, err := net.Listen("tcp", netip.AddrPortFrom(addr, 0).String())
	if err != nil {
		return 0, fmt.Errorf("find free port on %s: %w", addr, err)
	}
	defer l.Close()
	return uint16(l.Addr().(*net.TCPAddr).Port), nil
}

// tail returns about the last n lines of the file, for failure messages.
func tail(name string, n int) string {
	b, err := os.ReadFile(name)
	if err != nil {
		return fmt.Sprintf("(read %s: %v)", name, err)
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// ctx bounds one helper's API call; it ends with the test.
func ctx(t testing.TB) (context.Context, context.CancelFunc) {
	return context.WithTimeout(t.Context(), callTimeout)
}
