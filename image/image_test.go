package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/weft-net/weft/internal/netnstest"
)

// The version the test binaries and images carry.
const testVersion = "v0.0.0-imagetest"

var testEpoch = time.Unix(1700000000, 0).UTC()

var tmpRoot string // removed when the tests end

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "weft-image-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	tmpRoot = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// goBuild builds pkg (in dir) for linux/arch as make image does:
// CGO_ENABLED=0, -trimpath, stripped.
func goBuild(dir, pkg, arch, out, ldflags string) error {
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w "+ldflags, "-o", out, pkg)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+arch)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build %s for %s: %w\n%s", pkg, arch, err, out)
	}
	return nil
}

type binaries struct {
	once sync.Once
	path map[string]string
	err  error
}

var weftBins, smallBins binaries

// weftBinaries is weft for linux/amd64 and linux/arm64, built once.
func weftBinaries(t *testing.T) map[string]string {
	t.Helper()
	weftBins.once.Do(func() {
		weftBins.path = map[string]string{}
		for _, arch := range []string{"amd64", "arm64"} {
			p := filepath.Join(tmpRoot, "weft-linux-"+arch)
			if weftBins.err = goBuild(".", "github.com/weft-net/weft", arch, p,
				"-X main.version="+testVersion+" -X main.commit=imagetest"); weftBins.err != nil {
				return
			}
			weftBins.path[arch] = p
		}
	})
	if weftBins.err != nil {
		t.Fatal(weftBins.err)
	}
	return weftBins.path
}

// smallBinaries are a static program of a few lines for each architecture:
// the tests that build images many times in the test's own process (slow
// to compress under -race) use these.
func smallBinaries(t *testing.T) map[string]string {
	t.Helper()
	smallBins.once.Do(func() {
		smallBins.path = map[string]string{}
		dir := filepath.Join(tmpRoot, "small")
		if smallBins.err = os.Mkdir(dir, 0o755); smallBins.err != nil {
			return
		}
		for name, text := range map[string]string{"go.mod": "module small\n\ngo 1.26\n",
			"main.go": "package main\n\nfunc main() { println(\"small\") }\n"} {
			if smallBins.err = os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); smallBins.err != nil {
				return
			}
		}
		for _, arch := range []string{"amd64", "arm64"} {
			p := filepath.Join(tmpRoot, "small-linux-"+arch)
			if smallBins.err = goBuild(dir, ".", arch, p, ""); smallBins.err != nil {
				return
			}
			smallBins.path[arch] = p
		}
	})
	if smallBins.err != nil {
		t.Fatal(smallBins.err)
	}
	return smallBins.path
}

func testOptions(t *testing.T, out string) options {
	return options{bins: smallBinaries(t), name: "ghcr.io/weft-net/weft", version: testVersion,
		revision: "0123456789abcdef0123456789abcdef01234567", source: "https://github.com/weft-net/weft",
		created: testEpoch, out: out}
}

var shared struct {
	once sync.Once
	o    options
	r    *result
	err  error
}

// sharedImage is weft's image, built once by the command as make image
// runs it (SOURCE_DATE_EPOCH from the environment), for the tests that
// read it; its digests are the ones the command printed.
func sharedImage(t *testing.T) (options, *result) {
	t.Helper()
	o := testOptions(t, filepath.Join(tmpRoot, "shared"))
	o.bins = weftBinaries(t)
	shared.once.Do(func() { shared.o = o; shared.r, shared.err = runCommand(o) })
	if shared.err != nil {
		t.Fatal(shared.err)
	}
	return shared.o, shared.r
}

// runCommand builds this command (without -race: compressing weft is
// slow under it) and runs it, reading the digests from what it prints.
func runCommand(o options) (*result, error) {
	tool := filepath.Join(tmpRoot, "image")
	cmd := exec.Command("go", "build", "-o", tool, ".")
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("build the command: %w\n%s", err, out)
	}
	cmd = exec.Command(tool, "-amd64", o.bins["amd64"], "-arm64", o.bins["arm64"], "-name", o.name, "-version", o.version,
		"-revision", o.revision, "-source", o.source, "-out", o.out)
	cmd.Env = append(os.Environ(), fmt.Sprintf("SOURCE_DATE_EPOCH=%d", o.created.Unix()))
	out, err := cmd.CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("%s: %w\n%s", strings.Join(cmd.Args, " "), err, out)
	}
	return parseOutput(string(out), o)
}

var (
	headRE  = regexp.MustCompile(`(?m)^image (\S+) \(created (\S+), SOURCE_DATE_EPOCH=(\d+)\)$`)
	archRE  = regexp.MustCompile(`(?m)^  linux/(\w+) +(\S+)\n    manifest  (\S+)\n    image ID  (\S+) \(config\)\n    archive   (\S+) `)
	indexRE = regexp.MustCompile(`(?m)^  index +(\S+) \(ref.name (\S+)\)\n    index     (\S+)$`)
)

func parseOutput(out string, o options) (*result, error) {
	head, idx := headRE.FindStringSubmatch(out), indexRE.FindStringSubmatch(out)
	arches := archRE.FindAllStringSubmatch(out, -1)
	if head == nil || idx == nil || len(arches) != len(o.bins) {
		return nil, fmt.Errorf("unexpected output:\n%s", out)
	}
	if want := o.created.Format(time.RFC3339); head[2] != want || head[3] != fmt.Sprint(o.created.Unix()) {
		return nil, fmt.Errorf("created %s (epoch %s), want %s:\n%s", head[2], head[3], want, out)
	}
	r := &result{ref: head[1], layout: idx[1], tag: idx[2]}
	var err error
	if r.index, err = v1.NewHash(idx[3]); err != nil {
		return nil, err
	}
	for _, m := range arches {
		a := archResult{arch: m[1], archive: m[2]}
		for i, h := range []*v1.Hash{&a.manifest, &a.config, &a.archiveSum} {
			if *h, err = v1.NewHash(m[3+i]); err != nil {
				return nil, fmt.Errorf("%q: %w", m[0], err)
			}
		}
		r.arches = append(r.arches, a)
	}
	return r, nil
}

func TestTagFor(t *testing.T) {
	for in, want := range map[string]string{
		"v1.2.3": "v1.2.3", "e40d05a-dirty": "e40d05a-dirty", "v1.2.3+meta": "v1.2.3-meta", "-x": "v-x", "": "v",
	} {
		if got := tagFor(in); got != want {
			t.Errorf("tagFor(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestReadStaticRefuses: a binary of the other architecture, a dynamically
// linked one and a non-binary never make an image.
func TestReadStaticRefuses(t *testing.T) {
	b := smallBinaries(t)
	if _, err := readStatic(b["amd64"], "arm64"); err == nil || !strings.Contains(err.Error(), "not linux/arm64") {
		t.Errorf("amd64 binary as arm64: %v", err)
	}
	if _, err := readStatic(b["arm64"], "arm64"); err != nil {
		t.Errorf("arm64 binary: %v", err)
	}
	text := filepath.Join(t.TempDir(), "script")
	if err := os.WriteFile(text, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := readStatic(text, "amd64"); err == nil || !strings.Contains(err.Error(), "not an ELF") {
		t.Errorf("a script: %v", err)
	}
	if runtime.GOARCH == "amd64" {
		if sh, err := exec.LookPath("sh"); err == nil { // Debian's is dynamically linked
			if _, err := readStatic(sh, "amd64"); err == nil || !strings.Contains(err.Error(), "dynamically linked") {
				t.Errorf("%s: %v", sh, err)
			}
		}
	}
}

// TestReproducible: the same binaries and options give the same digests
// and byte-identical files, wherever the binaries are and whatever their
// mtime; another binary or another epoch gives other digests.
func TestReproducible(t *testing.T) {
	o1 := testOptions(t, filepath.Join(t.TempDir(), "one"))
	r1, err := build(o1)
	if err != nil {
		t.Fatal(err)
	}

	// The same bytes elsewhere, touched now.
	o2 := testOptions(t, filepath.Join(t.TempDir(), "two"))
	o2.bins = map[string]string{}
	for arch, p := range o1.bins {
		o2.bins[arch] = copyFile(t, p, filepath.Join(t.TempDir(), "copy-"+arch), nil)
	}
	r2, err := build(o2)
	if err != nil {
		t.Fatal(err)
	}
	if r1.index != r2.index {
		t.Errorf("index digest: %s, then %s", r1.index, r2.index)
	}
	for i, a := range r1.arches {
		b := r2.arches[i]
		if a.manifest != b.manifest || a.config != b.config || a.archiveSum != b.archiveSum {
			t.Errorf("%s: manifest %s config %s archive %s, then %s %s %s", a.arch, a.manifest, a.config, a.archiveSum,
				b.manifest, b.config, b.archiveSum)
		}
	}
	if d1, d2 := treeDigest(t, r1.layout), treeDigest(t, r2.layout); d1 != d2 {
		t.Errorf("the OCI layouts differ:\n%s\n%s", d1, d2)
	}
	t.Logf("two builds: index %s, amd64 %s, arm64 %s", r1.index, r1.arches[0].manifest, r1.arches[1].manifest)

	// One byte more in the amd64 binary: its image changes, arm64's not.
	o3 := testOptions(t, filepath.Join(t.TempDir(), "three"))
	o3.bins = map[string]string{"amd64": copyFile(t, o1.bins["amd64"], filepath.Join(t.TempDir(), "changed"), []byte{0}),
		"arm64": o1.bins["arm64"]}
	r3, err := build(o3)
	if err != nil {
		t.Fatal(err)
	}
	if r3.arches[0].manifest == r1.arches[0].manifest || r3.arches[0].config == r1.arches[0].config || r3.index == r1.index {
		t.Errorf("another amd64 binary, the same digests: manifest %s config %s index %s", r3.arches[0].manifest,
			r3.arches[0].config, r3.index)
	}
	if r3.arches[1].manifest != r1.arches[1].manifest {
		t.Errorf("the arm64 image changed with the amd64 binary: %s, then %s", r1.arches[1].manifest, r3.arches[1].manifest)
	}

	// Another SOURCE_DATE_EPOCH: another image.
	o4 := testOptions(t, filepath.Join(t.TempDir(), "four"))
	o4.bins = map[string]string{"amd64": o1.bins["amd64"]}
	o4.created = testEpoch.Add(time.Second)
	r4, err := build(o4)
	if err != nil {
		t.Fatal(err)
	}
	if r4.arches[0].manifest == r1.arches[0].manifest {
		t.Errorf("another epoch, the same manifest %s", r4.arches[0].manifest)
	}
}

// copyFile copies src to dst with extra appended, its mtime an hour from now.
func copyFile(t *testing.T, src, dst string, extra []byte) string {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, append(b, extra...), 0o700); err != nil {
		t.Fatal(err)
	}
	later := time.Now().Add(time.Hour)
	if err := os.Chtimes(dst, later, later); err != nil {
		t.Fatal(err)
	}
	return dst
}

// treeDigest lists a directory's files with their modes and contents' sizes
// and digests.
func treeDigest(t *testing.T, dir string) string {
	t.Helper()
	var lines []string
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		info, err := d.Info()
		if err != nil {
			return err
		}
		line := fmt.Sprintf("%s %v", rel, info.Mode())
		if !d.IsDir() {
			sum, err := fileSum(path)
			if err != nil {
				return err
			}
			line += fmt.Sprintf(" %d %s", info.Size(), sum)
		}
		lines = append(lines, line)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return strings.Join(lines, "\n")
}

// dockerArchive is what a docker-archive holds, read with archive/tar
// alone.
type dockerArchive struct {
	manifest []struct {
		Config   string
		RepoTags []string
		Layers   []string
	}
	config struct {
		Architecture string
		OS           string
		Created      time.Time
		Config       struct {
			Entrypoint []string
			Labels     map[string]string
		}
		History []struct {
			Created time.Time
		}
	}
	layer []byte // gzipped
}

func readDockerArchive(t *testing.T, path string) dockerArchive {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	files := map[string][]byte{}
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if files[h.Name], err = io.ReadAll(tr); err != nil {
			t.Fatal(err)
		}
	}
	var a dockerArchive
	if err := json.Unmarshal(files["manifest.json"], &a.manifest); err != nil || len(a.manifest) != 1 || len(a.manifest[0].Layers) != 1 {
		t.Fatalf("%s: manifest.json %s: %v", path, files["manifest.json"], err)
	}
	if err := json.Unmarshal(files[a.manifest[0].Config], &a.config); err != nil {
		t.Fatalf("%s: config %s: %v", path, a.manifest[0].Config, err)
	}
	a.layer = files[a.manifest[0].Layers[0]]
	return a
}

// TestArchive: each docker-archive's manifest, config and one layer: the
// tag, the platform, the entrypoint, the labels, no time but the epoch,
// and the layer's files owned by root with fixed modes.
func TestArchive(t *testing.T) {
	o, r := sharedImage(t)
	for _, a := range r.arches {
		if sum, err := fileSum(a.archive); err != nil || sum != a.archiveSum {
			t.Errorf("%s: sha256 %v (%v), printed %s", a.archive, sum, err, a.archiveSum)
		}
		d := readDockerArchive(t, a.archive)
		if got := d.manifest[0].RepoTags; !slices.Equal(got, []string{"ghcr.io/weft-net/weft:" + testVersion}) {
			t.Errorf("%s: tags %q", a.arch, got)
		}
		if d.manifest[0].Config != a.config.String() {
			t.Errorf("%s: config %s, built %s", a.arch, d.manifest[0].Config, a.config)
		}
		checkConfig(t, a.arch, d.config.Architecture, d.config.OS, d.config.Config.Entrypoint, d.config.Config.Labels, o)
		if !d.config.Created.Equal(testEpoch) || len(d.config.History) != 1 || !d.config.History[0].Created.Equal(testEpoch) {
			t.Errorf("%s: created %v, history %+v: want only %v", a.arch, d.config.Created, d.config.History, testEpoch)
		}

		zr, err := gzip.NewReader(bytes.NewReader(d.layer))
		if err != nil {
			t.Fatal(err)
		}
		tr := tar.NewReader(zr)
		var got []string
		for {
			h, err := tr.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, fmt.Sprintf("%c %s %o %d:%d %s", h.Typeflag, h.Name, h.Mode, h.Uid, h.Gid, h.Linkname))
			if !h.ModTime.Equal(testEpoch) {
				t.Errorf("%s: %s mtime %v, want %v", a.arch, h.Name, h.ModTime, testEpoch)
			}
		}
		want := []string{"5 opt/ 755 0:0 ", "5 opt/bin/ 755 0:0 ", "0 opt/bin/flanneld 755 0:0 ", "5 usr/ 755 0:0 ", "5 usr/bin/ 755 0:0 ",
			"2 usr/bin/weft 777 0:0 ../../opt/bin/flanneld"}
		if !slices.Equal(got, want) {
			t.Errorf("%s: layer\n%s\nwant\n%s", a.arch, strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
	}
}

func checkConfig(t *testing.T, arch, gotArch, gotOS string, entrypoint []string, labels map[string]string, o options) {
	t.Helper()
	if gotArch != arch || gotOS != "linux" {
		t.Errorf("%s: platform %s/%s", arch, gotOS, gotArch)
	}
	if !slices.Equal(entrypoint, []string{"/opt/bin/flanneld"}) {
		t.Errorf("%s: entrypoint %q", arch, entrypoint)
	}
	for k, v := range map[string]string{labelSource: o.source, labelRevision: o.revision, labelVersion: o.version} {
		if labels[k] != v {
			t.Errorf("%s: label %s = %q, want %q", arch, k, labels[k], v)
		}
	}
}

// TestRootfsRuns unpacks each archive's layer with tar, as a runtime does,
// and runs /opt/bin/flanneld -version and /usr/bin/weft -version from it:
// the host's architecture directly, the other under qemu-user-static.
func TestRootfsRuns(t *testing.T) {
	tarTool := netnstest.RequireTool(t, "tar", "tar")
	_, r := sharedImage(t)
	for _, a := range r.arches {
		root := t.TempDir()
		cmd := exec.Command(tarTool, "-xzf", "-", "-C", root)
		cmd.Stdin = bytes.NewReader(readDockerArchive(t, a.archive).layer)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s: unpack the layer: %v\n%s", a.arch, err, out)
		}
		runVersion(t, a.arch, root)
	}
}

// runVersion runs the binary of a rootfs unpacked at root, by both names.
func runVersion(t *testing.T, arch, root string) {
	t.Helper()
	for _, p := range []string{"/opt/bin/flanneld", "/usr/bin/weft"} {
		cmd := exec.Command(filepath.Join(root, p), "-version")
		if arch != runtime.GOARCH {
			qemu := map[string]string{"amd64": "qemu-x86_64-static", "arm64": "qemu-aarch64-static"}[arch]
			cmd = exec.Command(netnstest.RequireTool(t, qemu, "qemu-user-static"), filepath.Join(root, p), "-version")
		}
		out, err := cmd.CombinedOutput()
		want := "weft " + testVersion + " (commit imagetest, go"
		if err != nil || !strings.HasPrefix(string(out), want) || !strings.Contains(string(out), " linux/"+arch+")") {
			t.Errorf("%s: %s -version: %v\n%s\nwant %q ... linux/%s)", arch, p, err, out, want, arch)
			continue
		}
		t.Logf("%s: %s -version: %s", arch, p, strings.TrimSpace(string(out)))
	}
}

// inspect is what skopeo inspect and podman image inspect print, the
// fields both name alike.
type inspect struct {
	ID           string `json:"Id"`
	Digest       string
	RepoTags     []string
	Architecture string
	Os           string
	Labels       map[string]string
	Layers       []string
	Config       struct {
		Entrypoint []string
		Labels     map[string]string
	}
}

func runJSON(t *testing.T, v any, name string, args ...string) {
	t.Helper()
	cmd := exec.Command(name, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", filepath.Base(name), strings.Join(args, " "), err, stderr.Bytes())
	}
	if err := json.Unmarshal(out, v); err != nil {
		t.Fatalf("%s %s: %v\n%s", filepath.Base(name), strings.Join(args, " "), err, out)
	}
}

// TestSkopeo reads both forms with skopeo (containers/image): each
// docker-archive, and the OCI layout's index for each platform.
func TestSkopeo(t *testing.T) {
	skopeo := netnstest.RequireTool(t, "skopeo", "skopeo")
	o, r := sharedImage(t)
	var index struct {
		MediaType string
		Manifests []struct {
			MediaType string
			Digest    string
			Platform  struct{ Architecture, OS string }
		}
	}
	var top struct {
		Manifests []struct {
			MediaType   string
			Digest      string
			Annotations map[string]string
		}
	}
	if b, err := os.ReadFile(filepath.Join(r.layout, "index.json")); err != nil || json.Unmarshal(b, &top) != nil ||
		len(top.Manifests) != 1 || top.Manifests[0].Digest != r.index.String() ||
		top.Manifests[0].Annotations["org.opencontainers.image.ref.name"] != r.tag {
		t.Errorf("%s/index.json: %+v (%v), want the index %s named %s", r.layout, top, err, r.index, r.tag)
	}
	ociRef := "oci:" + r.layout + ":" + r.tag
	runJSON(t, &index, skopeo, "inspect", "--raw", ociRef)
	if index.MediaType != "application/vnd.oci.image.index.v1+json" || len(index.Manifests) != len(r.arches) {
		t.Fatalf("%s: %+v", ociRef, index)
	}
	for i, a := range r.arches {
		m := index.Manifests[i]
		if m.Digest != a.manifest.String() || m.Platform.OS != "linux" || m.Platform.Architecture != a.arch {
			t.Errorf("%s: index entry %d: %+v, want %s linux/%s", ociRef, i, m, a.manifest, a.arch)
		}

		var img, cfg inspect
		runJSON(t, &img, skopeo, "inspect", "--override-os", "linux", "--override-arch", a.arch, ociRef)
		runJSON(t, &cfg, skopeo, "inspect", "--config", "--override-os", "linux", "--override-arch", a.arch, ociRef)
		checkConfig(t, a.arch, img.Architecture, img.Os, cfg.Config.Entrypoint, img.Labels, o)

		da := "docker-archive:" + a.archive
		runJSON(t, &img, skopeo, "inspect", da)
		runJSON(t, &cfg, skopeo, "inspect", "--config", da)
		checkConfig(t, a.arch, img.Architecture, img.Os, cfg.Config.Entrypoint, img.Labels, o)
		t.Logf("skopeo: %s and %s: linux/%s, entrypoint %q", ociRef, da, img.Architecture, cfg.Config.Entrypoint)
	}
}

// TestPodman loads each archive with podman load -i into a storage of its
// own (vfs: no mounts), inspects it, and runs the binary from the rootfs
// podman unpacked.
func TestPodman(t *testing.T) {
	podman := netnstest.RequireTool(t, "podman", "podman")
	if os.Geteuid() != 0 {
		t.Skip("skipping: podman load as a user needs rootless podman's subuids; run go test as root")
	}
	o, r := sharedImage(t)
	keepHostClean(t)
	for _, a := range r.arches {
		dir := t.TempDir()
		storage := filepath.Join(dir, "storage.conf")
		conf := fmt.Sprintf("[storage]\ndriver = \"vfs\"\ngraphroot = %q\nrunroot = %q\n", filepath.Join(dir, "root"), filepath.Join(dir, "run"))
		if err := os.WriteFile(storage, []byte(conf), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "containers.conf"), nil, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Mkdir(filepath.Join(dir, "tmp"), 0o700); err != nil {
			t.Fatal(err)
		}
		pod := func(args ...string) *exec.Cmd {
			cmd := exec.Command(podman, append([]string{"--root", filepath.Join(dir, "root"), "--runroot", filepath.Join(dir, "run"),
				"--storage-driver", "vfs", "--tmpdir", filepath.Join(dir, "libpod"), "--network-config-dir", filepath.Join(dir, "net"),
				"--events-backend", "none", "--cgroup-manager", "cgroupfs"}, args...)...)
			cmd.Env = append(os.Environ(), "CONTAINERS_STORAGE_CONF="+storage, "CONTAINERS_CONF="+filepath.Join(dir, "containers.conf"),
				"TMPDIR="+filepath.Join(dir, "tmp"))
			return cmd
		}
		if out, err := pod("load", "-i", a.archive).CombinedOutput(); err != nil || !strings.Contains(string(out), "Loaded image: "+r.ref) {
			t.Fatalf("%s: podman load -i: %v\n%s", a.arch, err, out)
		}
		var imgs []inspect
		cmd := pod("image", "inspect", r.ref)
		out, err := cmd.Output()
		if err == nil {
			err = json.Unmarshal(out, &imgs)
		}
		if err != nil || len(imgs) != 1 {
			t.Fatalf("%s: podman image inspect: %v\n%s", a.arch, err, out)
		}
		img := imgs[0]
		if img.ID != a.config.Hex || !slices.Equal(img.RepoTags, []string{r.ref}) {
			t.Errorf("%s: podman: ID %s tags %q, want %s %q", a.arch, img.ID, img.RepoTags, a.config.Hex, r.ref)
		}
		checkConfig(t, a.arch, img.Architecture, img.Os, img.Config.Entrypoint, img.Config.Labels, o)

		mount, err := pod("image", "mount", r.ref).Output()
		if err != nil {
			t.Fatalf("%s: podman image mount: %v", a.arch, err)
		}
		runVersion(t, a.arch, strings.TrimSpace(string(mount)))
		if out, err := pod("image", "unmount", "--all").CombinedOutput(); err != nil {
			t.Errorf("%s: podman image unmount: %v\n%s", a.arch, err, out)
		}
		t.Logf("podman: loaded %s linux/%s, image ID %s", r.ref, img.Architecture, img.ID[:12])
	}
}

// keepHostClean removes, when the test ends, what podman 4.3 writes outside
// the storage and run directories it is given, unless it was there before:
// its blob cache, its network run directory and its lock's shared memory.
func keepHostClean(t *testing.T) {
	for _, p := range []string{"/var/lib/containers", "/run/containers", "/dev/shm/libpod_lock"} {
		if _, err := os.Lstat(p); err == nil {
			continue
		}
		t.Cleanup(func() { os.RemoveAll(p) })
	}
}
