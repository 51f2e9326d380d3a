// Package logging builds weft's logger: log/slog, text or JSON, with
// repeats of one message in a row held back and counted.
package logging

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"
)

// repeatWindow is how long an identical message (same level and text) in a
// row is held back after it was logged: a failing dependency then costs one
// line per window with a count, not one per retry.
const repeatWindow = 30 * time.Second

// New returns the logger for -log-format (text or json) and -v (0: info,
// more: debug), writing to w.
func New(w io.Writer, format string, verbosity int) (*slog.Logger, error) {
	level := slog.LevelInfo
	if verbosity > 0 {
		level = slog.LevelDebug
	}
	opts := &slog.HandlerOptions{Level: level}
	var h slog.Handler
	switch format {
	case "text", "":
		h = slog.NewTextHandler(w, opts)
	case "json":
		h = slog.NewJSONHandler(w, opts)
	default:
		return nil, fmt.Errorf("-log-format=%s: must be text or json", format)
	}
	return slog.New(newDedupHandler(h, repeatWindow, time.Now)), nil
}

// dedupHandler drops a record whose level and message were logged less
// than window ago with nothing else logged since, and adds "repeated=N" to
// the next one of them let through. Only repeats in a row: a state that
// flips back within the window ("etcd connection lost", "... up", "...
// lost") is logged each time, or the log would end on the wrong state.
type dedupHandler struct {
	next   slog.Handler
	state  *dedupState
	window time.Duration
	now    func() time.Time
}

type dedupState struct {
	mu   sync.Mutex
	seen map[dedupKey]*dedupEntry
	last dedupKey // of the last record let through
}

type dedupKey struct {
	level slog.Level
	msg   string
}

type dedupEntry struct {
	last       time.Time
	suppressed int
}

func newDedupHandler(next slog.Handler, window time.Duration, now func() time.Time) *dedupHandler {
	return &dedupHandler{next: next, window: window, now: now, state: &dedupState{seen: map[dedupKey]*dedupEntry{}}}
}

func (h *dedupHandler) Enabled(ctx context.Context, l slog.Level) bool { return h.next.Enabled(ctx, l) }

func (h *dedupHandler) Handle(ctx context.Context, r slog.Record) error {
	k := dedupKey{r.Level, r.Message}
	now := h.now()
	st := h.state
	st.mu.Lock()
	e := st.seen[k]
	if e != nil && k == st.last && now.Sub(e.last) < h.window {
		e.suppressed++
		st.mu.Unlock()
		return nil
	}
	suppressed := 0
	if e == nil {
		e = &dedupEntry{}
		st.seen[k] = e
		if len(st.seen) > 1024 { // bound memory: forget everything old
			for key, old := range st.seen {
				if now.Sub(old.last) >= h.window {
					delete(st.seen, key)
				}
			}
		}
	}
	suppressed, e.suppressed, e.last = e.suppressed, 0, now
	st.last = k
	st.mu.Unlock()
	if suppressed > 0 {
		r = r.Clone()
		r.AddAttrs(slog.Int("repeated", suppressed))
	}
	return h.next.Handle(ctx, r)
}

func (h *dedupHandler) WithAttrs(as []slog.Attr) slog.Handler {
	c := *h
	c.next = h.next.WithAttrs(as)
	return &c
}

func (h *dedupHandler) WithGroup(name string) slog.Handler {
	c := *h
	c.next = h.next.WithGroup(name)
	return &c
}
