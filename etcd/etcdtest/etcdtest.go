// Package etcdtest runs a real single-member etcd server inside the test
// process (go.etcd.io/etcd/server/v3/embed), so the etcd Store is tested
// against etcd itself rather than a mock. The end-to-end lab harness reuses
// StartServer to run etcd on a chosen address and to stop and restart it.
package etcdtest

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// readyTimeout bounds the wait for the server to become ready. Generous: a
// loaded 2-vCPU CI machine can take seconds to elect the single member.
const readyTimeout = time.Minute

// memberName is fixed so a restart on the same data dir finds its member.
const memberName = "weft-etcdtest"

// peerURLFile remembers the peer URL chosen on first start, because a
// restarted member must come back with the peer URL it was created with.
const peerURLFile = "weft-etcdtest-peer-url"

// Option changes how a server is started.
type Option func(*options)

type options struct {
	tls *transport.TLSInfo
}

// WithClientTLS serves clients over TLS (an https:// client URL) with the
// given server certificate and key. If clientCAFile is set, clients must
// present a certificate signed by it.
func WithClientTLS(certFile, keyFile, clientCAFile string) Option {
	return func(o *options) {
		o.tls = &transport.TLSInfo{
			CertFile:       certFile,
			KeyFile:        keyFile,
			TrustedCAFile:  clientCAFile,
			ClientCertAuth: clientCAFile != "",
		}
	}
}

// Server is a running embedded etcd server.
type Server struct {
	etcd      *embed.Etcd
	dir       string
	clientURL string
	closeOnce sync.Once
}

// Start runs an etcd server on a free 127.0.0.1 port in a fresh t.TempDir(),
// stops it when the test ends and returns its client endpoint
// ("http://127.0.0.1:port", or https with WithClientTLS).
func Start(t testing.TB, opts ...Option) string {
	t.Helper()
	return NewServer(t, opts...).Endpoint()
}

// NewServer is Start for tests that also need to stop the server (Close)
// or restart it (StartServer with Dir and Endpoint). Cleanup is registered
// with t; Close is idempotent.
func NewServer(t testing.TB, opts ...Option) *Server {
	t.Helper()
	scheme := "http"
	if o := collect(opts); o.tls != nil {
		scheme = "https"
	}
	var lastErr error
	// Choosing a free port and binding it later races with other processes;
	// a few attempts make a collision practically impossible.
	for attempt := range 5 {
		port, err := freePort()
		if err != nil {
			t.Fatalf("etcdtest: %v", err)
		}
		dir := filepath.Join(t.TempDir(), fmt.Sprintf("etcd-%d", attempt))
		s, err := StartServer(dir, fmt.Sprintf("%s://127.0.0.1:%d", scheme, port), opts...)
		if err == nil {
			t.Cleanup(s.Close)
			return s
		}
		lastErr = err
		if !errors.Is(err, syscall.EADDRINUSE) && !strings.Contains(err.Error(), "address already in use") {
			break
		}
	}
	t.Fatalf("etcdtest: %v", lastErr)
	return nil
}

// StartServer runs a single-member etcd server with data in dir (created if
// missing) serving clients on clientURL, e.g. "http://198.18.5.1:23790"
// ("https://..." with WithClientTLS), and waits until it is ready. Calling it again with the same dir and clientURL
// after Close restarts the same member with its data. The peer URL is a free
// 127.0.0.1 port, chosen on first start and kept in dir. The server's logs
// are discarded and fsync is off: this is a test server.
func StartServer(dir, clientURL string, opts ...Option) (*Server, error) {
	o := collect(opts)
	cu, err := url.Parse(clientURL)
	if err != nil {
		return nil, fmt.Errorf("start etcd: client URL %q: %w", clientURL, err)
	}
	want := "http"
	if o.tls != nil {
		want = "https"
	}
	if cu.Scheme != want || cu.Port() == "" {
		return nil, fmt.Errorf("start etcd: client URL %q: want %s://host:port", clientURL, want)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("start etcd: %w", err)
	}
	// A peer port chosen just now can be taken before etcd binds it (a
	// parallel test's listener): on a first start, choose again.
	for attempt := 0; ; attempt++ {
		e, fresh, err := startOnce(dir, cu, o)
		if err == nil {
			return &Server{etcd: e, dir: dir, clientURL: clientURL}, nil
		}
		if !fresh || attempt == 4 || !strings.Contains(err.Error(), "address already in use") {
			return nil, err
		}
		for _, f := range []string{filepath.Join(dir, peerURLFile), filepath.Join(dir, "data")} {
			if rerr := os.RemoveAll(f); rerr != nil {
				return nil, fmt.Errorf("%w (and clearing %s for another peer port: %w)", err, f, rerr)
			}
		}
	}
}

// startOnce starts etcd once; fresh says the peer URL was chosen for it.
func startOnce(dir string, cu *url.URL, o options) (*embed.Etcd, bool, error) {
	clientURL := cu.String()
	peerURL, fresh, err := loadPeerURL(dir)
	if err != nil {
		return nil, false, fmt.Errorf("start etcd in %s: %w", dir, err)
	}
	pu, err := url.Parse(peerURL)
	if err != nil {
		return nil, false, fmt.Errorf("start etcd in %s: peer URL %q: %w", dir, peerURL, err)
	}

	cfg := embed.NewConfig()
	cfg.Name = memberName
	cfg.Dir = filepath.Join(dir, "data")
	cfg.ListenClientUrls = []url.URL{*cu}
	cfg.AdvertiseClientUrls = []url.URL{*cu}
	cfg.ListenPeerUrls = []url.URL{*pu}
	cfg.AdvertisePeerUrls = []url.URL{*pu}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.Logger = "zap"
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	cfg.UnsafeNoFsync = true
	if o.tls != nil {
		cfg.ClientTLSInfo = *o.tls
	}

	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, fresh, fmt.Errorf("start etcd on %s (peer %s): %w", clientURL, peerURL, err)
	}
	timer := time.NewTimer(readyTimeout)
	defer timer.Stop()
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return nil, fresh, fmt.Errorf("start etcd on %s (peer %s): %w", clientURL, peerURL, err)
	case <-timer.C:
		e.Close()
		return nil, false, fmt.Errorf("start etcd on %s: not ready after %v", clientURL, readyTimeout)
	}
	return e, fresh, nil
}

// Endpoint is the client URL to give to clients.
func (s *Server) Endpoint() string { return s.clientURL }

// Dir is the server's directory, for a restart with StartServer.
func (s *Server) Dir() string { return s.dir }

// Close stops the server and waits until it has released its ports. It is
// safe to call more than once.
func (s *Server) Close() {
	s.closeOnce.Do(func() {
		s.etcd.Close()
		<-s.etcd.Server.StopNotify()
	})
}

func collect(opts []Option) options {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	return o
}

// loadPeerURL returns the peer URL stored in dir, choosing and storing a
// free one on first use (fresh).
func loadPeerURL(dir string) (u string, fresh bool, err error) {
	name := filepath.Join(dir, peerURLFile)
	b, err := os.ReadFile(name)
	if err == nil {
		return strings.TrimSpace(string(b)), false, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return "", false, fmt.Errorf("read peer URL: %w", err)
	}
	port, err := freePort()
	if err != nil {
		return "", false, err
	}
	u = fmt.Sprintf("http://127.0.0.1:%d", port)
	if err := os.WriteFile(name, []byte(u+"\n"), 0o600); err != nil {
		return "", false, fmt.Errorf("write peer URL: %w", err)
	}
	return u, true, nil
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
