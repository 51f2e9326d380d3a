package logging

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
	"time"
)

func TestDedupHandlerRateLimitsRepeats(t *testing.T) {
	var buf bytes.Buffer
	now := time.Date(2026, 11, 22, 0, 0, 0, 0, time.UTC)
	log := slog.New(newDedupHandler(slog.NewTextHandler(&buf, nil), 30*time.Second, func() time.Time { return now }))
	for range 5 {
		log.Warn("etcd unreachable", "err", "timeout")
	}
	log.Warn("another message")
	now = now.Add(31 * time.Second)
	log.Warn("etcd unreachable", "err", "timeout")
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 3 {
		t.Fatalf("got %d lines, want 3:\n%s", len(lines), buf.String())
	}
	if strings.Contains(lines[0], "repeated") || !strings.Contains(lines[2], "repeated=4") {
		t.Errorf("repeat count not reported once the window passed:\n%s", buf.String())
	}
}

// A state that flips back within the window is logged each time: holding
// back the second "lost" would leave the log saying "up".
func TestDedupHandlerLogsEveryStateChange(t *testing.T) {
	var buf bytes.Buffer
	now := time.Date(2026, 11, 22, 0, 0, 0, 0, time.UTC)
	log := slog.New(newDedupHandler(slog.NewTextHandler(&buf, nil), 30*time.Second, func() time.Time { return now }))
	for range 2 {
		log.Warn("etcd connection lost")
		now = now.Add(time.Second)
		log.Info("etcd connection up")
		now = now.Add(time.Second)
	}
	log.Warn("etcd connection lost")
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 5 || !strings.Contains(lines[4], "etcd connection lost") {
		t.Fatalf("got %d lines, want all 5 state changes:\n%s", len(lines), buf.String())
	}
}

func TestLogFormats(t *testing.T) {
	var buf bytes.Buffer
	log, err := New(&buf, "json", 1)
	if err != nil {
		t.Fatal(err)
	}
	log.Debug("hello", "subnet", "198.19.7.0/24")
	var rec map[string]any
	if err := json.Unmarshal(buf.Bytes(), &rec); err != nil || rec["msg"] != "hello" || rec["subnet"] != "198.19.7.0/24" {
		t.Errorf("json log line %q: %v", buf.String(), err)
	}
	buf.Reset()
	log, _ = New(&buf, "text", 0)
	log.Debug("hidden")
	log.Info("shown")
	if strings.Contains(buf.String(), "hidden") || !strings.Contains(buf.String(), "msg=shown") {
		t.Errorf("text log at -v=0: %q", buf.String())
	}
	if _, err := New(&buf, "xml", 0); err == nil || !strings.Contains(err.Error(), "-log-format=xml") {
		t.Errorf("bad format: %v", err)
	}
}
