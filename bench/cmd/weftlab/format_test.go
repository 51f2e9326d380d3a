package main

import (
	"bytes"
	"strings"
	"testing"
)

func TestParseSize(t *testing.T) {
	good := map[string]int64{
		"256MiB": 256 << 20, "1GiB": 1 << 30, "1.5GiB": 3 << 29, "100MB": 100e6,
		"4096": 4096, "64KiB": 64 << 10, "10M": 10 << 20, " 2 MiB ": 2 << 20, "1B": 1,
	}
	for in, want := range good {
		if got, err := parseSize(in); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "MiB", "-1MiB", "0", "1XB", "2TiB", "NaN", "1e30"} {
		if got, err := parseSize(in); err == nil {
			t.Errorf("parseSize(%q) = %d, want an error", in, got)
		}
	}
}

func TestHumanBytes(t *testing.T) {
	for n, want := range map[int64]string{
		0: "0 B", 1023: "1023 B", 1024: "1 KiB", 256 << 20: "256 MiB", 3 << 29: "1.5 GiB",
	} {
		if got := humanBytes(n); got != want {
			t.Errorf("humanBytes(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestTableAlignsRunes(t *testing.T) {
	var b bytes.Buffer
	tw := newTable(&b, "  ", "from → to", "loss")
	tw.row("n0 → n1", "0%")
	tw.flush()
	lines := strings.Split(strings.TrimRight(b.String(), "\n"), "\n")
	if len(lines) != 2 {
		t.Fatalf("got %q", b.String())
	}
	// "loss" and "0%" start in the same column (counted in runes).
	col := func(s, sub string) int { return len([]rune(s[:strings.Index(s, sub)])) }
	if col(lines[0], "loss") != col(lines[1], "0%") {
		t.Errorf("columns not aligned:\n%s", b.String())
	}
}

func TestDrops(t *testing.T) {
	if got := drops(map[string]uint64{"no_route": 0}); got != "0" {
		t.Errorf("drops = %q", got)
	}
	if got := drops(map[string]uint64{"ttl": 2, "no_route": 1, "x": 0}); got != "no_route=1 ttl=2" {
		t.Errorf("drops = %q", got)
	}
}
