// Command image writes weft's container image without a container daemon:
// from scratch plus the static weft binary, one image per architecture,
// reproducible (the same binaries and flags give the same digests). It
// writes, under -out:
//
//	weft-<tag>-<arch>.tar   a docker-archive (docker load -i, podman load -i,
//	                        ctr -n k8s.io images import), tagged <name>:<tag>
//	oci/                    an OCI image layout whose index.json names
//	                        (ref.name <tag>) one image index covering every
//	                        architecture
//
// The image holds /opt/bin/flanneld, the binary, where kube-flannel.yml's
// flannel container runs it, and /usr/bin/weft, a link to it; its
// entrypoint is /opt/bin/flanneld. `make image` builds the binaries and runs
// this; see README.md, "The image".
package main

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

func main() {
	var o options
	var epoch, amd64, arm64 string
	flag.StringVar(&amd64, "amd64", "", "the static linux/amd64 weft binary")
	flag.StringVar(&arm64, "arm64", "", "the static linux/arm64 weft binary")
	flag.StringVar(&o.name, "name", "ghcr.io/weft-net/weft", "the image's repository, tagged <name>:<version> in the archives")
	flag.StringVar(&o.version, "version", "", "weft's version: the tag (characters a tag cannot hold become -) and the version label (default: git describe)")
	flag.StringVar(&o.revision, "revision", "", "the source's commit, the revision label (default: git rev-parse HEAD)")
	flag.StringVar(&o.source, "source", "https://github.com/weft-net/weft", "the source label")
	flag.StringVar(&epoch, "epoch", "", "the files' mtime and the image's created time, in Unix seconds (default: $SOURCE_DATE_EPOCH, else HEAD's commit time)")
	flag.StringVar(&o.out, "out", "bin/image", "the directory the archives and oci/ go to")
	flag.Parse()
	if flag.NArg() > 0 {
		fail(fmt.Errorf("unexpected arguments %q", flag.Args()))
	}
	o.bins = map[string]string{}
	for arch, p := range map[string]string{"amd64": amd64, "arm64": arm64} {
		if p != "" {
			o.bins[arch] = p
		}
	}
	if o.version == "" {
		o.version = git("describe", "--tags", "--always", "--dirty")
	}
	if o.version == "" {
		o.version = "dev"
	}
	if o.revision == "" {
		o.revision = git("rev-parse", "HEAD")
	}
	if epoch == "" {
		epoch = os.Getenv("SOURCE_DATE_EPOCH")
	}
	if epoch == "" {
		epoch = git("log", "-1", "--format=%ct")
	}
	if epoch == "" {
		fail(fmt.Errorf("no -epoch, no SOURCE_DATE_EPOCH and no git commit to take the time from"))
	}
	sec, err := strconv.ParseInt(epoch, 10, 64)
	if err != nil || sec < 0 {
		fail(fmt.Errorf("epoch %q: want Unix seconds", epoch))
	}
	o.created = time.Unix(sec, 0).UTC()

	r, err := build(o)
	if err != nil {
		fail(err)
	}
	fmt.Printf("image %s (created %s, SOURCE_DATE_EPOCH=%d)\n", r.ref, o.created.Format(time.RFC3339), sec)
	for _, a := range r.arches {
		fmt.Printf("  linux/%-5s %s\n", a.arch, a.archive)
		fmt.Printf("    manifest  %s\n    image ID  %s (config)\n    archive   %s (sha256 of the file)\n", a.manifest, a.config, a.archiveSum)
	}
	fmt.Printf("  index       %s (ref.name %s)\n    index     %s\n", r.layout, r.tag, r.index)
}

// git is git's output in the current directory, or "" outside a checkout.
func git(args ...string) string {
	out, err := exec.Command("git", args...).Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "image:", err)
	os.Exit(1)
}
