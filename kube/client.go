// Package kube is weft's second lease store: the Kubernetes API, as
// flanneld's -kube-subnet-mgr uses it. The leases are the Nodes: a Node's
// subnet is its spec.podCIDR (assigned by kube-controller-manager), its
// public IP and backend data are flannel's annotations on it. weft reads
// them through a client-go informer that keeps only those fields, and
// publishes its own through the nodes/status subresource, as flanneld
// does, so weft and stock flanneld nodes share one cluster.
package kube

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"

	"time"

	"github.com/go-logr/logr"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"k8s.io/klog/v2"
)

// Config is -kube-subnet-mgr's flags and the pod's identity.
type Config struct {
	// REST is the API client's config, from -kube-api-url and
	// -kubeconfig-file or, with neither, the in-cluster config (the
	// command line builds it: client-go's kubeconfig loader comes with
	// flag libraries this package keeps out).
	REST *rest.Config
	// AnnotationPrefix is -kube-annotation-prefix (DefaultAnnotationPrefix).
	AnnotationPrefix string
	// NodeName is $NODE_NAME; when empty, the Node is the one the pod
	// PodNamespace/PodName ($POD_NAMESPACE, $POD_NAME) runs on.
	NodeName, PodName, PodNamespace string
	// SetNodeNetworkUnavailable is -set-node-network-unavailable: set the
	// Node's NetworkUnavailable condition to False once the path is up.
	SetNodeNetworkUnavailable bool
	// UserAgent names weft and its version in the API server's logs.
	UserAgent string
	Logger    *slog.Logger
}

// restConfig is the API client's config with weft's settings.
func (c Config) restConfig() (*rest.Config, error) {
	if c.REST == nil {
		return nil, errors.New("kubernetes client: no config")
	}
	rc := rest.CopyConfig(c.REST)
	// Protobuf: a list of thousands of Nodes decodes in a fraction of the
	// time and memory of JSON.
	rc.ContentType = "application/vnd.kubernetes.protobuf"
	rc.AcceptContentTypes = "application/vnd.kubernetes.protobuf,application/json"
	if c.UserAgent != "" {
		rc.UserAgent = c.UserAgent
	}
	return rc, nil
}

// rules are kube-flannel.yml's ClusterRole "flannel" rules, by the
// request each grants, for errors that say what is missing.
var rules = map[string]string{
	"get pods":           `{apiGroups: [""], resources: ["pods"], verbs: ["get"]}`,
	"get nodes":          `{apiGroups: [""], resources: ["nodes"], verbs: ["get", "list", "watch"]}`,
	"list nodes":         `{apiGroups: [""], resources: ["nodes"], verbs: ["get", "list", "watch"]}`,
	"watch nodes":        `{apiGroups: [""], resources: ["nodes"], verbs: ["get", "list", "watch"]}`,
	"patch nodes/status": `{apiGroups: [""], resources: ["nodes/status"], verbs: ["patch"]}`,
}

// ErrForbidden marks a request RBAC refused: it needs an operator, so the
// daemon stops saying which rule is missing instead of retrying.
var ErrForbidden = errors.New("forbidden by RBAC")

// apiError wraps err from request ("verb resource") on object (if any),
// naming the ClusterRole rule that grants it when RBAC refused it.
func apiError(err error, request, object string) error {
	if object != "" {
		request += " " + object
	}
	if apierrors.IsForbidden(err) {
		verb := strings.SplitN(request, " ", 3)
		return fmt.Errorf("%s: %w: the ServiceAccount may not %s %s; kube-flannel.yml's ClusterRole flannel (and deploy/kube-weft.yml's) grants it with the rule %s: %w",
			request, ErrForbidden, verb[0], verb[1], rules[verb[0]+" "+verb[1]], err)
	}
	return fmt.Errorf("%s: %w", request, err)
}

// resolveNode returns the Node's name: $NODE_NAME, else the node the pod
// $POD_NAMESPACE/$POD_NAME is scheduled on, retrying while the API server
// does not answer.
func resolveNode(ctx context.Context, client *coreClient, c Config, log *slog.Logger) (string, error) {
	if c.NodeName != "" {
		return c.NodeName, nil
	}
	if c.PodName == "" || c.PodNamespace == "" {
		return "", errors.New("-kube-subnet-mgr needs the Node's name: set NODE_NAME, or POD_NAME and POD_NAMESPACE " +
			"(kube-flannel.yml sets them from the downward API: fieldRef metadata.name and metadata.namespace)")
	}
	obj := c.PodNamespace + "/" + c.PodName
	delay := 500 * time.Millisecond
	var last string
	for {
		pod, err := client.Pods(c.PodNamespace).Get(ctx, c.PodName, metav1.GetOptions{})
		if err == nil {
			if pod.Spec.NodeName == "" {
				return "", fmt.Errorf("pod %s is not scheduled on a node (spec.nodeName empty)", obj)
			}
			return pod.Spec.NodeName, nil
		}
		err = apiError(err, "get pods", obj)
		if errors.Is(err, ErrForbidden) || apierrors.IsNotFound(err) {
			return "", err
		}
		if msg := err.Error(); msg != last {
			last = msg
			log.Warn("cannot read this pod to find its Node; retrying", "err", err)
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(delay):
		}
		delay = min(2*delay, 5*time.Second)
	}
}

// klogOnce: klog's logger is process-wide, and setting it races with
// client-go goroutines already logging.
var klogOnce sync.Once

// quietKlog sends client-go's own logging (klog: every failed watch
// retry, at error level) to log at debug level: weft logs the API
// server's state once per change itself, and -v shows client-go's detail.
// The first store's logger is used.
func quietKlog(log *slog.Logger) {
	klogOnce.Do(func() { setKlog(log) })
}

func setKlog(log *slog.Logger) {
	klog.SetLogger(logr.FromSlogHandler(debugHandler{log.Handler().WithAttrs([]slog.Attr{slog.String("source", "client-go")})}))
}

// debugHandler logs every record at debug level.
type debugHandler struct{ slog.Handler }

func (h debugHandler) Enabled(ctx context.Context, _ slog.Level) bool {
	return h.Handler.Enabled(ctx, slog.LevelDebug)
}

func (h debugHandler) Handle(ctx context.Context, r slog.Record) error {
	r.Level = slog.LevelDebug
	return h.Handler.Handle(ctx, r)
}

func (h debugHandler) WithAttrs(a []slog.Attr) slog.Handler {
	return debugHandler{h.Handler.WithAttrs(a)}
}

func (h debugHandler) WithGroup(name string) slog.Handler {
	return debugHandler{h.Handler.WithGroup(name)}
}
