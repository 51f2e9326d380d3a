package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Where the binary goes: kube-flannel.yml's flannel container runs
// /opt/bin/flanneld; /usr/bin/weft is a relative symlink to it, which
// resolves both inside a container and in a rootfs unpacked anywhere.
const (
	entrypoint = "/opt/bin/flanneld"
	weftLink   = "/usr/bin/weft"
)

// The image's labels (OCI annotation keys), also the index's annotations.
const (
	labelSource   = "org.opencontainers.image.source"
	labelRevision = "org.opencontainers.image.revision"
	labelVersion  = "org.opencontainers.image.version"
	labelTitle    = "org.opencontainers.image.title"
)

// elfMachine is each architecture's ELF machine, checked so that an amd64
// binary never lands in the arm64 image.
var elfMachine = map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64}

type options struct {
	bins     map[string]string // GOARCH → static binary
	name     string            // repository, e.g. ghcr.io/weft-net/weft
	version  string
	revision string
	source   string
	created  time.Time // every mtime and created time (SOURCE_DATE_EPOCH)
	out      string
}

type archResult struct {
	arch       string
	archive    string  // the docker-archive's path
	archiveSum v1.Hash // sha256 of the archive file
	manifest   v1.Hash // the OCI manifest's digest (what the index lists)
	config     v1.Hash // the config's digest: the image ID docker and podman show
}

type result struct {
	ref    string // name:tag in the archives
	tag    string
	arches []archResult
	layout string  // the OCI layout's directory
	index  v1.Hash // the multi-arch index's digest
}

// build writes the archives and the layout.
func build(o options) (*result, error) {
	if len(o.bins) == 0 {
		return nil, errors.New("no binaries: give -amd64 and/or -arm64")
	}
	tag := tagFor(o.version)
	ref, err := name.NewTag(o.name+":"+tag, name.StrictValidation)
	if err != nil {
		return nil, fmt.Errorf("image name %q: %w", o.name+":"+tag, err)
	}
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return nil, err
	}
	r := &result{ref: ref.String(), tag: tag, layout: filepath.Join(o.out, "oci")}
	arches := make([]string, 0, len(o.bins))
	for arch := range o.bins {
		if _, ok := elfMachine[arch]; !ok {
			return nil, fmt.Errorf("architecture %q: want amd64 or arm64", arch)
		}
		arches = append(arches, arch)
	}
	slices.Sort(arches) // the index's order, so its digest is the same each time

	var adds []mutate.IndexAddendum
	for _, arch := range arches {
		img, err := imageFor(o, arch)
		if err != nil {
			return nil, err
		}
		a := archResult{arch: arch, archive: filepath.Join(o.out, fmt.Sprintf("weft-%s-%s.tar", tag, arch))}
		if a.manifest, err = img.Digest(); err != nil {
			return nil, err
		}
		if a.config, err = img.ConfigName(); err != nil {
			return nil, err
		}
		if err := writeAtomic(a.archive, func(f *os.File) error { return tarball.Write(ref, img, f) }); err != nil {
			return nil, fmt.Errorf("write %s: %w", a.archive, err)
		}
		if a.archiveSum, err = fileSum(a.archive); err != nil {
			return nil, err
		}
		r.arches = append(r.arches, a)
		adds = append(adds, mutate.IndexAddendum{Add: plainImage{img},
			Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: arch}}})
	}

	idx := mutate.AppendManifests(mutate.IndexMediaType(empty.Index, types.OCIImageIndex), adds...)
	idx = mutate.Annotations(idx, labels(o)).(v1.ImageIndex)
	if r.index, err = idx.Digest(); err != nil {
		return nil, err
	}
	if err := writeLayout(r.layout, idx, map[string]string{
		"org.opencontainers.image.ref.name": tag,   // skopeo's oci:DIR:TAG
		"io.containerd.image.name":          r.ref, // the name ctr import gives it
	}); err != nil {
		return nil, fmt.Errorf("write %s: %w", r.layout, err)
	}
	return r, nil
}

// plainImage is an image whose index entry has no artifactType:
// go-containerregistry gives an OCI manifest's entry its config's media type
// as one, which the image spec keeps for artifacts, not images.
type plainImage struct{ v1.Image }

func (plainImage) ArtifactType() (string, error) { return "", nil }

// tagFor is version as a tag: characters a tag cannot hold (a semver
// build's +, for instance) become -.
func tagFor(version string) string {
	t := regexp.MustCompile(`[^A-Za-z0-9_.-]`).ReplaceAllString(version, "-")
	if t == "" || t[0] == '.' || t[0] == '-' {
		t = "v" + t
	}
	if len(t) > 128 {
		t = t[:128]
	}
	return t
}

func labels(o options) map[string]string {
	l := map[string]string{labelTitle: "weft", labelSource: o.source, labelVersion: o.version}
	if o.revision != "" {
		l[labelRevision] = o.revision
	}
	return l
}

// imageFor is the image for one architecture, every media type OCI's.
func imageFor(o options, arch string) (v1.Image, error) {
	bin, err := readStatic(o.bins[arch], arch)
	if err != nil {
		return nil, err
	}
	layerTar, err := rootfs(bin, o.created)
	if err != nil {
		return nil, err
	}
	l, err := newLayer(layerTar)
	if err != nil {
		return nil, err
	}
	created := v1.Time{Time: o.created}
	history := v1.History{Created: created, CreatedBy: "make image: weft " + o.version + " at " + entrypoint + ", " + weftLink + " → it",
		Comment: "from scratch"}
	img := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	if img, err = mutate.Append(img, mutate.Addendum{Layer: l, History: history, MediaType: types.OCILayer}); err != nil {
		return nil, err
	}
	return mutate.ConfigFile(img, &v1.ConfigFile{
		Architecture: arch,
		OS:           "linux",
		Created:      created,
		Config: v1.Config{
			Entrypoint: []string{entrypoint},
			// The usual PATH, for the iptables tools of an image built
			// FROM this one (weft looks them up on PATH).
			Env:        []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/opt/bin"},
			WorkingDir: "/",
			Labels:     labels(o),
		},
		RootFS:  v1.RootFS{Type: "layers", DiffIDs: []v1.Hash{l.diffID}},
		History: []v1.History{history},
	})
}

// layer is the image's layer, gzipped once with its digests computed once
// (go-containerregistry's tarball layer compresses again at every write and
// decompresses to find its diff ID). compress/gzip writes no name and no
// time (a zero ModTime), so the same tar gives the same bytes.
type layer struct {
	tar, gz      []byte
	diffID, hash v1.Hash
}

func newLayer(tarBytes []byte) (*layer, error) {
	var gz bytes.Buffer
	zw, err := gzip.NewWriterLevel(&gz, gzip.DefaultCompression)
	if err != nil {
		return nil, err
	}
	if _, err := zw.Write(tarBytes); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return &layer{tar: tarBytes, gz: gz.Bytes(), diffID: sha256Of(tarBytes), hash: sha256Of(gz.Bytes())}, nil
}

func (l *layer) Digest() (v1.Hash, error)            { return l.hash, nil }
func (l *layer) DiffID() (v1.Hash, error)            { return l.diffID, nil }
func (l *layer) Size() (int64, error)                { return int64(len(l.gz)), nil }
func (l *layer) MediaType() (types.MediaType, error) { return types.OCILayer, nil }
func (l *layer) Compressed() (io.ReadCloser, error)  { return io.NopCloser(bytes.NewReader(l.gz)), nil }
func (l *layer) Uncompressed() (io.ReadCloser, error) {
	return io.NopCloser(bytes.NewReader(l.tar)), nil
}

func sha256Of(b []byte) v1.Hash {
	sum := sha256.Sum256(b)
	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}
}

// readStatic reads a statically linked Linux binary for arch, refusing
// another architecture's or a dynamically linked one (scratch has no
// loader or libc).
func readStatic(path, arch string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	f, err := elf.NewFile(bytes.NewReader(b))
	if err != nil {
		return nil, fmt.Errorf("%s: not an ELF binary: %w", path, err)
	}
	defer f.Close()
	if f.Machine != elfMachine[arch] || f.OSABI != elf.ELFOSABI_NONE && f.OSABI != elf.ELFOSABI_LINUX {
		return nil, fmt.Errorf("%s is a %v binary, not linux/%s", path, f.Machine, arch)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return nil, fmt.Errorf("%s is dynamically linked; the image is from scratch: build it with CGO_ENABLED=0", path)
		}
	}
	return b, nil
}

// rootfs is the image's one layer, uncompressed: the directories, the
// binary and the link, owned by root, with fixed modes and mtime.
func rootfs(bin []byte, mtime time.Time) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	hdr := func(h *tar.Header) *tar.Header {
		h.ModTime, h.Format = mtime, tar.FormatUSTAR
		h.Uid, h.Gid, h.Uname, h.Gname = 0, 0, "root", "root"
		return h
	}
	entries := []*tar.Header{
		{Typeflag: tar.TypeDir, Name: "opt/", Mode: 0o755},
		{Typeflag: tar.TypeDir, Name: "opt/bin/", Mode: 0o755},
		{Typeflag: tar.TypeReg, Name: entrypoint[1:], Mode: 0o755, Size: int64(len(bin))},
		{Typeflag: tar.TypeDir, Name: "usr/", Mode: 0o755},
		{Typeflag: tar.TypeDir, Name: "usr/bin/", Mode: 0o755},
		{Typeflag: tar.TypeSymlink, Name: weftLink[1:], Mode: 0o777, Linkname: "../../opt/bin/flanneld"},
	}
	for _, h := range entries {
		if err := tw.WriteHeader(hdr(h)); err != nil {
			return nil, err
		}
		if h.Typeflag == tar.TypeReg {
			if _, err := tw.Write(bin); err != nil {
				return nil, err
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// writeLayout writes idx as an OCI layout at dir, replacing what was
// there: index.json lists idx, with annotations.
func writeLayout(dir string, idx v1.ImageIndex, annotations map[string]string) error {
	tmp := dir + ".tmp"
	if err := os.RemoveAll(tmp); err != nil {
		return err
	}
	p, err := layout.Write(tmp, mutate.IndexMediaType(empty.Index, types.OCIImageIndex))
	if err != nil {
		return err
	}
	if err := p.AppendIndex(idx, layout.WithAnnotations(annotations)); err != nil {
		return err
	}
	// go-containerregistry leaves layers 0600 and index.json 0755.
	if err := filepath.WalkDir(tmp, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		mode := fs.FileMode(0o644)
		if d.IsDir() {
			mode = 0o755
		}
		return os.Chmod(path, mode)
	}); err != nil {
		return err
	}
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	return os.Rename(tmp, dir)
}

// writeAtomic writes path through a temporary file in its directory.
func writeAtomic(path string, write func(*os.File) error) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if err := write(f); err != nil {
		f.Close()
		return err
	}
	if err := f.Chmod(0o644); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}

func fileSum(path string) (v1.Hash, error) {
	f, err := os.Open(path)
	if err != nil {
		return v1.Hash{}, err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return v1.Hash{}, err
	}
	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(h.Sum(nil))}, nil
}
