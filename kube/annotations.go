package kube

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
)

// DefaultAnnotationPrefix is flanneld's -kube-annotation-prefix default.
const DefaultAnnotationPrefix = "flannel.alpha.coreos.com"

// annotations are the keys of flannel's lease annotations on a Node, for
// one -kube-annotation-prefix. IPv6 twins are left out: weft's udp
// backend, like flannel's, is IPv4 only.
type annotations struct {
	prefix            string // as normalised: ends in '/' or '-'
	managed           string // "true" on every Node whose flanneld (or weft) leases through the API
	backendType       string
	backendData       string
	publicIP          string
	publicIPOverwrite string // set by an operator: published as public-ip
	nodePublicIP      string // set by an operator: the address to use, as -public-ip
}

// prefixPattern is flanneld's check of a normalised prefix: an FQDN, one
// slash, an optional name part ending in '-'.
var prefixPattern = regexp.MustCompile(`^(?:[a-z0-9_-]+\.)+[a-z0-9_-]+/(?:[a-z0-9_-]+-)?$`)

// newAnnotations normalises prefix as flanneld does (a prefix without a
// slash gets one, one with a name part gets a '-') and returns its keys.
func newAnnotations(prefix string) (annotations, error) {
	p := prefix
	switch strings.Count(p, "/") {
	case 0:
		p += "/"
	case 1:
	default:
		return annotations{}, fmt.Errorf("-kube-annotation-prefix=%s: at most one '/'", prefix)
	}
	if !strings.HasSuffix(p, "/") && !strings.HasSuffix(p, "-") {
		p += "-"
	}
	if !prefixPattern.MatchString(p) {
		return annotations{}, errors.New("-kube-annotation-prefix=" + prefix +
			": must be a DNS name, optionally followed by /name (lower-case letters, digits, '-', '_'), such as " + DefaultAnnotationPrefix)
	}
	return annotations{
		prefix:            p,
		managed:           p + "kube-subnet-manager",
		backendType:       p + "backend-type",
		backendData:       p + "backend-data",
		publicIP:          p + "public-ip",
		publicIPOverwrite: p + "public-ip-overwrite",
		nodePublicIP:      p + "node-public-ip",
	}, nil
}

// ours reports whether key is one of flannel's annotations (of any
// family): the informer keeps only these.
func (a annotations) ours(key string) bool { return strings.HasPrefix(key, a.prefix) }
