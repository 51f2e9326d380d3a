package status

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"
)

// DefaultSocket is where `weft status` finds the daemon.
const DefaultSocket = "/run/weft/weft.sock"

// Handler serves /healthz (alive), /readyz (503 until the lease, device,
// route and subnet.env exist, and while renewals fail), /status (JSON;
// ?peers=0 leaves out the per-peer list) and /metrics.
func (h *Health) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		h.mu.Lock()
		ready, since, renewErr, exp := h.ready, h.renewFailingSince, h.renewErr, h.lease.Expiration
		h.mu.Unlock()
		if !ready {
			http.Error(w, "not ready: lease, device, route or subnet file not in place yet", http.StatusServiceUnavailable)
			return
		}
		if !since.IsZero() {
			http.Error(w, fmt.Sprintf("not ready: lease renewal failing since %s (lease expires %s): %s",
				since.Format(time.RFC3339), exp.Format(time.RFC3339), renewErr), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	mux.Handle("GET /metrics", h.metricsHandler())
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(h.Status(r.URL.Query().Get("peers") != "0"))
	})
	return mux
}

// Serve starts the healthz listener on ip:port; the returned func shuts
// it down.
func (h *Health) Serve(ip string, port int, log *slog.Logger) (func(), error) {
	addr := net.JoinHostPort(ip, strconv.Itoa(port))
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("healthz listener on %s (-healthz-ip/-healthz-port): %w", addr, err)
	}
	stop := h.serveOn(ln, log, "healthz server stopped", "addr", addr)
	log.Info("serving /healthz, /readyz and /status", "addr", addr)
	return stop, nil
}

// ServeSocket serves the same endpoints on a unix socket (root only, 0600),
// so `weft status` works without a -healthz-port. A stale socket from a
// killed run is replaced; a live one belongs to another daemon. The
// returned func shuts it down and removes the socket.
func (h *Health) ServeSocket(path string, log *slog.Logger) (func(), error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("status socket %s: %w", path, err)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("status socket %s is in use by another running daemon (pass -status-socket)", path)
	}
	os.Remove(path)
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("status socket %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("status socket %s: %w", path, err)
	}
	stop := h.serveOn(ln, log, "status socket stopped", "socket", path)
	return func() {
		stop()
		os.Remove(path)
	}, nil
}

// serveOn serves Handler on ln until the returned func shuts it down; a
// server that stops by itself is logged with msg and attrs.
func (h *Health) serveOn(ln net.Listener, log *slog.Logger, msg string, attrs ...any) func() {
	srv := &http.Server{Handler: h.Handler(), ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error(msg, append(attrs, "err", err)...)
		}
	}()
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	}
}
