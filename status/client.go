package status

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"
)

// Fetch asks a running daemon for its /status: over the unix socket, or
// over HTTP when url (http://IP:PORT, the daemon's healthz listener) is set.
// It returns the decoded document and the raw JSON.
func Fetch(ctx context.Context, socket, url string) (*Status, []byte, error) {
	client := &http.Client{Timeout: 5 * time.Second}
	target := strings.TrimSuffix(url, "/") + "/status"
	if url == "" {
		target = "http://weft/status"
		client.Transport = &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		}}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return nil, nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		if url == "" {
			return nil, nil, fmt.Errorf("no weft daemon answers on %s (is it running? pass --socket or --url): %w", socket, err)
		}
		return nil, nil, fmt.Errorf("ask %s: %w", target, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, nil, fmt.Errorf("read %s: %w", target, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, nil, fmt.Errorf("ask %s: %s", target, resp.Status)
	}
	var s Status
	if err := json.Unmarshal(raw, &s); err != nil {
		return nil, nil, fmt.Errorf("decode %s: %w", target, err)
	}
	return &s, raw, nil
}
