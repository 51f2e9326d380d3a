package kube

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/client-go/gentype"
	"k8s.io/client-go/rest"
)

// weft's typed clients are client-go's generic ones (gentype, of which
// kubernetes/typed/core/v1 is made) over a scheme of core/v1 alone.
// client-go's clientset and its scheme bring every API group: measured,
// the binary went from 56.7 MB to 32.8 MB without them, and the daemon's
// RSS at 5,000 Nodes (bench/scale kube-scale) from 72.6 to 58.2 MiB, most
// of it the binary's pages that their init functions touch.
var (
	scheme         = runtime.NewScheme()
	codecs         = serializer.NewCodecFactory(scheme)
	parameterCodec = runtime.NewParameterCodec(scheme)
)

func init() {
	if err := corev1.AddToScheme(scheme); err != nil {
		panic(err)
	}
	metav1.AddToGroupVersion(scheme, schema.GroupVersion{Version: "v1"})
}

// coreClient is the part of core/v1 weft reads and writes: Nodes, and
// the Pod that names its Node.
type coreClient struct {
	rest  rest.Interface
	nodes *gentype.ClientWithList[*corev1.Node, *corev1.NodeList]
}

func (c *coreClient) Nodes() *gentype.ClientWithList[*corev1.Node, *corev1.NodeList] { return c.nodes }

func (c *coreClient) Pods(namespace string) *gentype.Client[*corev1.Pod] {
	return gentype.NewClient[*corev1.Pod]("pods", c.rest, parameterCodec, namespace,
		func() *corev1.Pod { return &corev1.Pod{} }, gentype.PrefersProtobuf[*corev1.Pod]())
}

// newCoreClient is kubernetes/typed/core/v1's NewForConfig on weft's scheme.
func newCoreClient(rc *rest.Config) (*coreClient, error) {
	c := *rc
	gv := corev1.SchemeGroupVersion
	c.GroupVersion, c.APIPath = &gv, "/api"
	c.NegotiatedSerializer = rest.CodecFactoryForGeneratedClient(scheme, codecs).WithoutConversion()
	if c.UserAgent == "" {
		c.UserAgent = rest.DefaultKubernetesUserAgent()
	}
	httpClient, err := rest.HTTPClientFor(&c)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client for %s: %w", c.Host, err)
	}
	client, err := rest.RESTClientForConfigAndClient(&c, httpClient)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client for %s: %w", c.Host, err)
	}
	return &coreClient{rest: client,
		nodes: gentype.NewClientWithList[*corev1.Node, *corev1.NodeList]("nodes", client, parameterCodec, "",
			func() *corev1.Node { return &corev1.Node{} }, func() *corev1.NodeList { return &corev1.NodeList{} },
			gentype.PrefersProtobuf[*corev1.Node]()),
	}, nil
}
