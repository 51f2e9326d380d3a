package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/weft-net/weft/etcd/etcdtest"
	"github.com/weft-net/weft/subnet"
)

// `weft config put` and `get` against a real etcd: the file is validated
// by the daemon's parser before anything is written.
func TestConfigPutGet(t *testing.T) {
	ep := etcdtest.Start(t)
	dir := t.TempDir()
	run := func(args ...string) (string, error) {
		var out bytes.Buffer
		err := execute(context.Background(), append(args, "-etcd-endpoints="+ep, "-etcd-prefix=/weft.test/network"), &out, &bytes.Buffer{})
		return out.String(), err
	}

	if _, err := run("config", "get"); err == nil || !strings.Contains(err.Error(), "weft config put -f") {
		t.Fatalf("get of a missing config: %v; want an error saying how to create it", err)
	}

	bad := filepath.Join(dir, "bad.json")
	if err := os.WriteFile(bad, []byte(`{"Network":"198.19.0.0/16","Backend":{"Type":"vxlan"}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := run("config", "put", "-f", bad); err == nil || !strings.Contains(err.Error(), "vxlan") {
		t.Fatalf("put of a vxlan config: %v; want an error naming the backend type", err)
	}
	if _, err := run("config", "get"); err == nil {
		t.Fatal("an invalid config was written to etcd")
	}

	good := filepath.Join(dir, "good.json")
	const cfg = `{"Network":"198.19.0.0/16","SubnetLen":24,"Backend":{"Type":"udp","Port":8285}}`
	if err := os.WriteFile(good, []byte(cfg+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := run("config", "put", "-f", good)
	if err != nil || !strings.Contains(out, "198.19.0.0/16") {
		t.Fatalf("put: %q, %v", out, err)
	}
	out, err = run("config", "get")
	if err != nil || strings.TrimSpace(out) != cfg {
		t.Fatalf("get = %q, %v; want %s", out, err, cfg)
	}
}

func TestConfigExampleIsValid(t *testing.T) {
	data, err := os.ReadFile("config.example.json")
	if err != nil {
		t.Fatal(err)
	}
	c, err := subnet.ParseConfig(data)
	if err != nil {
		t.Fatalf("config.example.json: %v", err)
	}
	if c.BackendType != "udp" || c.BackendPort != 8285 || !strings.HasPrefix(c.Network.String(), "198.19.") {
		t.Errorf("config.example.json parsed as %+v", c)
	}
}
