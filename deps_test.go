package main

import (
	"encoding/json"
	"errors"
	"io"
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/weft-net/weft"

// importRules is style.md's dependency table: what each package must not
// reach, directly or through others. "stdlib" allows only the standard
// library and the listed module packages.
var importRules = []struct {
	pkg       string
	forbidden []string
	onlyStd   []string // if set: stdlib plus these
	direct    bool     // check direct imports only (fakes may reach what their package reaches)
}{
	// The seam between the node and the data planes: types only.
	{pkg: "/dataplane", onlyStd: []string{}},
	// A data plane never reaches etcd, leases, netlink, the node or status.
	{pkg: "/tunnel", forbidden: []string{module + "/subnet", module + "/etcd", module + "/route", module + "/firewall",
		module + "/node", module + "/status", module + "/bench",
		"go.etcd.io/", "github.com/vishvananda/", "github.com/spf13/", "github.com/coreos/"}},
	{pkg: "/tunnel/tuntest", onlyStd: []string{module + "/tunnel", module + "/dataplane"}, direct: true},
	{pkg: "/subnet", onlyStd: []string{}},
	{pkg: "/subnet/subnettest", onlyStd: []string{module + "/subnet"}, direct: true},
	{pkg: "/etcd", forbidden: []string{module + "/tunnel", module + "/route", module + "/node", module + "/status", module + "/bench",
		"github.com/vishvananda/", "github.com/spf13/"}},
	// firewall writes iptables only through go-iptables (flanneld's library).
	{pkg: "/firewall", forbidden: []string{module + "/tunnel", module + "/subnet", module + "/etcd", module + "/route", module + "/node",
		module + "/status", module + "/bench", "go.etcd.io/", "github.com/vishvananda/", "github.com/spf13/", "github.com/coreos/go-systemd"}},
	{pkg: "/route", forbidden: []string{module + "/tunnel", module + "/subnet", module + "/etcd", module + "/node", module + "/status",
		module + "/bench", "go.etcd.io/", "github.com/spf13/"}},
	// The kernel data plane, like the userspace one, never reaches etcd,
	// leases, the node or status.
	{pkg: "/fastpath", forbidden: []string{module + "/subnet", module + "/etcd", module + "/node", module + "/status",
		module + "/route", module + "/firewall", module + "/bench", "go.etcd.io/", "github.com/spf13/", "github.com/coreos/"}},
	// status reads the data planes only through their reports.
	{pkg: "/status", forbidden: []string{module + "/node", module + "/tunnel", module + "/subnet", module + "/etcd", module + "/route",
		module + "/firewall", module + "/bench", "go.etcd.io/", "github.com/vishvananda/", "github.com/spf13/"}},
	// The node may use the libraries and the seam, never the command line.
	{pkg: "/node", forbidden: []string{module + "/bench", "github.com/spf13/"}},
	{pkg: "/internal/logging", onlyStd: []string{}},
	{pkg: "/internal/netnstest", onlyStd: []string{"github.com/vishvananda/netlink", "github.com/vishvananda/netns"}, direct: true},
	// The Kubernetes lease store, like etcd's, never reaches the data
	// planes, the device or the node; nor the command line's flag
	// libraries (client-go's kubeconfig loader brings them: the command
	// line builds the client's config).
	{pkg: "/kube", forbidden: []string{module + "/tunnel", module + "/fastpath", module + "/route", module + "/firewall",
		module + "/node", module + "/status", module + "/etcd", module + "/bench", "go.etcd.io/", "github.com/vishvananda/", "github.com/spf13/"}},
	// The kube-apiserver harness plays the cluster, never weft: not the
	// store it tests, the daemon or the data planes.
	{pkg: "/kube/kubetest", forbidden: []string{module + "/kube", module + "/node", module + "/subnet", module + "/tunnel",
		module + "/fastpath", module + "/route", module + "/firewall", module + "/status", module + "/bench",
		"github.com/vishvananda/"}},
	// The manifest's package holds no code, only kube-weft.yml; its tests
	// (which go list without -test does not see) use kube/kubetest and
	// subnet's parser.
	{pkg: "/deploy", onlyStd: []string{}},
	// The image tool packages the built binary: nothing of weft's, no data
	// plane, no etcd, netlink or Kubernetes in it.
	{pkg: "/image", forbidden: []string{module + "/", "go.etcd.io/", "github.com/vishvananda/", "github.com/cilium/",
		"github.com/google/nftables", "github.com/coreos/", "k8s.io/"}},
}

type goPackage struct {
	ImportPath string
	Standard   bool
	Deps       []string
	Imports    []string
}

func listPackages(t *testing.T) map[string]goPackage {
	t.Helper()
	cmd := exec.Command("go", "list", "-deps", "-json", "./...")
	out, err := cmd.Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("go list: %v\n%s", err, ee.Stderr)
		}
		t.Fatalf("go list: %v", err)
	}
	pkgs := map[string]goPackage{}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for {
		var p goPackage
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatalf("decode go list output: %v", err)
		}
		pkgs[p.ImportPath] = p
	}
	return pkgs
}

// TestImportRules enforces the dependency direction of style.md, so the data
// path never grows a dependency on etcd, netlink or the lease logic.
func TestImportRules(t *testing.T) {
	pkgs := listPackages(t)
	for _, r := range importRules {
		p, ok := pkgs[module+r.pkg]
		if !ok {
			t.Errorf("package %s not found", module+r.pkg)
			continue
		}
		deps := p.Deps
		if r.direct {
			deps = p.Imports
		}
		for _, dep := range deps {
			for _, f := range r.forbidden {
				if dep == f || strings.HasPrefix(dep, f) && (strings.HasSuffix(f, "/") || strings.HasPrefix(dep, f+"/")) {
					t.Errorf("%s must not import %s (it does, through its dependencies)", p.ImportPath, dep)
				}
			}
			if r.onlyStd != nil && !pkgs[dep].Standard && !contains(r.onlyStd, dep) {
				t.Errorf("%s may import only the standard library and %v, but reaches %s", p.ImportPath, r.onlyStd, dep)
			}
		}
	}
	// Nothing but bench's own commands and tests imports bench; only the
	// command line imports the node.
	for path, p := range pkgs {
		for _, imp := range p.Imports {
			if strings.HasPrefix(imp, module+"/bench") && !strings.HasPrefix(path, module+"/bench") {
				t.Errorf("%s imports %s; bench is a leaf", path, imp)
			}
			if imp == module+"/node" && path != module && !strings.HasPrefix(path, module+"/bench") {
				t.Errorf("%s imports %s; only the command line (and bench) may", path, imp)
			}
			// go list without -test: any importer here is not a test.
			if imp == module+"/kube/kubetest" && !strings.HasPrefix(path, module+"/bench") {
				t.Errorf("%s imports %s; only tests (and bench) may", path, imp)
			}
			if imp == module+"/image" {
				t.Errorf("%s imports %s; the image tool is a command, imported by nothing", path, imp)
			}
		}
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
