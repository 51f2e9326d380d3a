package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/weft-net/weft/etcd"
	"github.com/weft-net/weft/internal/logging"
	"github.com/weft-net/weft/kube"
	"github.com/weft-net/weft/node"
	"github.com/weft-net/weft/route"
	"github.com/weft-net/weft/status"
	"github.com/weft-net/weft/tunnel"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// runDaemon validates the flags into a node config and runs the node until
// ctx ends (clean exit) or something fatal happens (error, exit 1 so
// systemd restarts us).
func runDaemon(ctx context.Context, o *options, stderr io.Writer) error {
	log, err := logging.New(stderr, o.logFormat, o.verbosity)
	if err != nil {
		return err
	}
	cfg, err := o.nodeConfig()
	if err != nil {
		return err
	}
	if cfg.Kube != nil {
		log.Info("starting weft", "version", build().String(), "store", "kubernetes", "net-config-path", o.netConfigPath)
	} else {
		log.Info("starting weft", "version", build().String(), "etcd", o.etcdEndpoints, "prefix", o.etcdPrefix)
	}
	if len(o.ignoredLog) > 0 {
		log.Info("ignoring flanneld's glog flags: weft logs to stderr (-log-format, -v)", "flags", strings.Join(o.ignoredLog, " "))
	}
	return node.Run(ctx, cfg, log)
}

// openTUNOverride, when set (a build with -tags wgtun), opens the TUN in
// place of tunnel.OpenTUNConfig.
var openTUNOverride func(name string, mtu int) (tunnel.Device, error)

// nodeConfig checks the daemon's flags and turns them into the node's
// config; an error names the flag and what it takes.
func (o *options) nodeConfig() (node.Config, error) {
	margin, err := o.renewMargin()
	if err != nil {
		return node.Config{}, err
	}
	check, ok := tunnel.ParseSourceCheck(o.sourceCheck)
	if !ok {
		return node.Config{}, fmt.Errorf("-source-check=%s: must be strict, nat or off", o.sourceCheck)
	}
	offloads, err := node.ParseOffloads(o.offload, o.offloads)
	if err != nil {
		return node.Config{}, err
	}
	if err := o.checkFirewallFlags(); err != nil {
		return node.Config{}, err
	}
	fastPath, err := node.ParseFastPath(o.fastPath)
	if err != nil {
		return node.Config{}, err
	}
	if o.fastAttach != "auto" && o.fastAttach != "clsact" {
		return node.Config{}, fmt.Errorf("-fast-path-attach=%s: must be auto or clsact", o.fastAttach)
	}
	kc, err := o.kubeConfig()
	if err != nil {
		return node.Config{}, err
	}
	sel := route.Selector{Ifaces: o.ifaces, Regexes: o.ifaceRegexes}
	if o.ifaceCanReach != "" {
		if sel.CanReach, err = netip.ParseAddr(o.ifaceCanReach); err != nil {
			return node.Config{}, fmt.Errorf("-iface-can-reach=%s: not an IP address", o.ifaceCanReach)
		}
	}
	var pub netip.Addr
	if o.publicIP != "" {
		if pub, err = netip.ParseAddr(o.publicIP); err != nil || !pub.Is4() {
			return node.Config{}, fmt.Errorf("-public-ip=%s: not an IPv4 address", o.publicIP)
		}
	}
	return node.Config{
		Build: build(), Etcd: o.etcdConfig(nil), Kube: kc, NetConfPath: o.netConfigPath, Iface: sel, PublicIP: pub,
		SubnetFile: o.subnetFile, RenewMargin: margin,
		HealthzIP: o.healthzIP, HealthzPort: o.healthzPort, StatusSocket: o.statusSocket,
		TunName: o.tunName, MTU: o.mtu, SourceCheck: check, Offloads: offloads,
		SplitDirections: o.splitDirs, PeerMetrics: o.peerMetrics,
		Firewall: node.Firewall{Masquerade: o.ipMasq, FullyRandom: !o.ipMasqFullyRandomDisable,
			Forward: o.iptablesForwardRules, Resync: time.Duration(o.iptablesResync) * time.Second},
		FastPath: fastPath, FastPathClsact: o.fastAttach == "clsact", OpenTUN: openTUNOverride,
	}, nil
}

// kubeConfig is -kube-subnet-mgr's config, nil without it: the API
// client's config as flanneld builds it (the in-cluster config with
// neither -kube-api-url nor -kubeconfig-file), and the Node named by the
// environment, as for flanneld (kube-flannel.yml sets POD_NAME and
// POD_NAMESPACE).
func (o *options) kubeConfig() (*kube.Config, error) {
	if !o.kubeSubnetMgr {
		return nil, nil
	}
	var rc *rest.Config
	var err error
	if o.kubeAPIURL == "" && o.kubeconfigFile == "" {
		if rc, err = rest.InClusterConfig(); err != nil {
			return nil, fmt.Errorf("-kube-subnet-mgr: in-cluster config: %w (outside a pod, give -kubeconfig-file or -kube-api-url)", err)
		}
	} else if rc, err = clientcmd.BuildConfigFromFlags(o.kubeAPIURL, o.kubeconfigFile); err != nil {
		return nil, fmt.Errorf("-kube-subnet-mgr: -kube-api-url=%q -kubeconfig-file=%q: %w", o.kubeAPIURL, o.kubeconfigFile, err)
	}
	return &kube.Config{
		REST: rc, AnnotationPrefix: o.kubeAnnotationPref,
		NodeName: os.Getenv("NODE_NAME"), PodName: os.Getenv("POD_NAME"), PodNamespace: os.Getenv("POD_NAMESPACE"),
		SetNodeNetworkUnavailable: o.setNodeNetUnavail, UserAgent: "weft/" + version,
	}, nil
}

// checkFirewallFlags validates -iptables-resync before anything is leased.
func (o *options) checkFirewallFlags() error {
	if (o.ipMasq || o.iptablesForwardRules) && o.iptablesResync < 1 {
		return fmt.Errorf("-iptables-resync=%d: must be at least 1 second", o.iptablesResync)
	}
	return nil
}

func (o *options) etcdConfig(log *slog.Logger) etcd.Config {
	var eps []string
	for _, e := range strings.Split(o.etcdEndpoints, ",") {
		if e = strings.TrimSpace(e); e != "" {
			eps = append(eps, e)
		}
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return etcd.Config{
		Endpoints: eps,
		Prefix:    o.etcdPrefix,
		KeyFile:   o.etcdKeyFile,
		CertFile:  o.etcdCertFile,
		CAFile:    o.etcdCAFile,
		Username:  o.etcdUsername,
		Password:  o.etcdPassword,
		Logger:    log,
	}
}

// build names this binary for logs, /status and weft_build_info.
func build() status.Build { return status.Build{Version: version, Commit: commitString()} }
