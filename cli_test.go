package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// parseOnly parses args like the real command line, without running the daemon.
func parseOnly(t *testing.T, args []string) (*options, error) {
	t.Helper()
	root := newRootCommand(&bytes.Buffer{}, &bytes.Buffer{})
	var got *options
	// Replace the daemon with a capture of the parsed options.
	root.RunE = func(cmd *cobra.Command, _ []string) error {
		if err := applyEnv(cmd.Flags()); err != nil {
			return err
		}
		got = optionsOf(t, cmd)
		return nil
	}
	root.SetArgs(normalizeArgs(root, args))
	err := root.ExecuteContext(context.Background())
	return got, err
}

// optionsOf reads the parsed values back from the flag set.
func optionsOf(t *testing.T, cmd *cobra.Command) *options {
	t.Helper()
	fs := cmd.Flags()
	o := &options{}
	o.etcdEndpoints, _ = fs.GetString("etcd-endpoints")
	o.etcdPrefix, _ = fs.GetString("etcd-prefix")
	o.ifaces, _ = fs.GetStringArray("iface")
	o.ipMasq, _ = fs.GetBool("ip-masq")
	o.subnetFile, _ = fs.GetString("subnet-file")
	o.verbosity, _ = fs.GetInt("v")
	o.healthzPort, _ = fs.GetInt("healthz-port")
	o.tunName, _ = fs.GetString("tun-name")
	o.mtu, _ = fs.GetInt("mtu")
	o.renewMarginMinute, _ = fs.GetInt("subnet-lease-renew-margin")
	return o
}

func TestFlagsFlanneldDefaults(t *testing.T) {
	o, err := parseOnly(t, nil)
	if err != nil {
		t.Fatal(err)
	}
	if o.etcdEndpoints != "http://127.0.0.1:4001,http://127.0.0.1:2379" || o.etcdPrefix != "/coreos.com/network" ||
		o.subnetFile != "/run/flannel/subnet.env" || o.renewMarginMinute != 60 || o.tunName != "udp0" || o.mtu != 0 {
		t.Errorf("defaults differ from flanneld's: %+v", o)
	}
}

func TestFlagsSingleAndDoubleDash(t *testing.T) {
	for _, args := range [][]string{
		{"-etcd-endpoints=http://198.18.0.1:2379", "-etcd-prefix=/kubernetes/network", "-iface=eth1", "-iface=198.18.0.2", "-ip-masq", "-v=2", "-mtu", "1400"},
		{"--etcd-endpoints=http://198.18.0.1:2379", "--etcd-prefix", "/kubernetes/network", "--iface=eth1", "--iface", "198.18.0.2", "--ip-masq", "--v=2", "--mtu=1400"},
	} {
		o, err := parseOnly(t, args)
		if err != nil {
			t.Fatalf("%v: %v", args, err)
		}
		if o.etcdEndpoints != "http://198.18.0.1:2379" || o.etcdPrefix != "/kubernetes/network" || !o.ipMasq ||
			o.verbosity != 2 || o.mtu != 1400 || strings.Join(o.ifaces, ",") != "eth1,198.18.0.2" {
			t.Errorf("%v parsed as %+v", args, o)
		}
	}
}

func TestFlagsFromEnvironmentCommandLineWins(t *testing.T) {
	t.Setenv("FLANNELD_ETCD_PREFIX", "/atomic.io/network")
	t.Setenv("FLANNELD_ETCD_ENDPOINTS", "http://198.18.0.9:2379")
	t.Setenv("FLANNELD_IP_MASQ", "true")
	t.Setenv("FLANNELD_SUBNET_LEASE_RENEW_MARGIN", "30")
	o, err := parseOnly(t, []string{"-etcd-endpoints=http://198.18.0.1:2379"})
	if err != nil {
		t.Fatal(err)
	}
	if o.etcdPrefix != "/atomic.io/network" || !o.ipMasq || o.renewMarginMinute != 30 {
		t.Errorf("environment not applied: %+v", o)
	}
	if o.etcdEndpoints != "http://198.18.0.1:2379" {
		t.Errorf("command line must win over the environment, got %q", o.etcdEndpoints)
	}
}

func TestFlagsBadEnvironmentNamesVariable(t *testing.T) {
	t.Setenv("FLANNELD_HEALTHZ_PORT", "abc")
	_, err := parseOnly(t, nil)
	if err == nil || !strings.Contains(err.Error(), "FLANNELD_HEALTHZ_PORT") {
		t.Fatalf("want an error naming FLANNELD_HEALTHZ_PORT, got %v", err)
	}
}

func TestFlagsUnknownIsNamed(t *testing.T) {
	for _, arg := range []string{"-no-such-flag=1", "--no-such-flag", "-kube-subnet-mgrx"} {
		_, err := parseOnly(t, []string{arg})
		name := strings.TrimLeft(strings.SplitN(arg, "=", 2)[0], "-")
		if err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("%s: want an error naming %q, got %v", arg, name, err)
		}
	}
}

func TestNormalizeLeavesShorthandsAndDashDash(t *testing.T) {
	root := newRootCommand(&bytes.Buffer{}, &bytes.Buffer{})
	got := normalizeArgs(root, []string{"config", "put", "-f", "x.json", "-etcd-prefix=/p", "--", "-etcd-prefix=/q"})
	want := []string{"config", "put", "-f", "x.json", "--etcd-prefix=/p", "--", "-etcd-prefix=/q"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("normalizeArgs = %v, want %v", got, want)
	}
}

func TestVersionOutput(t *testing.T) {
	for _, args := range [][]string{{"version"}, {"-version"}, {"--version"}} {
		var out bytes.Buffer
		if err := execute(context.Background(), args, &out, &bytes.Buffer{}); err != nil {
			t.Fatalf("%v: %v", args, err)
		}
		s := out.String()
		if !strings.HasPrefix(s, "weft ") || !strings.Contains(s, "commit ") || !strings.Contains(s, "go1.") {
			t.Errorf("%v printed %q; want version, commit and Go version", args, s)
		}
	}
}

func TestRenewMarginRange(t *testing.T) {
	for m, ok := range map[int]bool{0: false, 1: true, 60: true, 1439: true, 1440: false} {
		_, err := (&options{renewMarginMinute: m}).renewMargin()
		if (err == nil) != ok {
			t.Errorf("margin %d: err = %v", m, err)
		}
	}
}

// flanneld's flags for what weft does not do are refused with the reason,
// from the command line or the environment; false booleans and glog's
// logging flags pass (the latter noted at start).
func TestFlanneldOnlyFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		env  string // FLANNELD_PUBLIC_IPV6
		want string // in the error; "" for none
		logs []string
	}{
		{args: []string{"--public-ipv6=2001:db8::1"}, want: "IPv4 only"},
		{env: "2001:db8::1", want: "-public-ipv6=2001:db8::1: weft's udp backend is IPv4 only"},
		{args: []string{"--logtostderr", "--alsologtostderr=true", "--log_dir=/var/log", "--v=2"}, logs: []string{"-logtostderr", "-alsologtostderr", "-log_dir"}},
	} {
		t.Setenv("FLANNELD_PUBLIC_IPV6", tc.env)
		if tc.env == "" {
			os.Unsetenv("FLANNELD_PUBLIC_IPV6")
		}
		o := &options{}
		fs := pflag.NewFlagSet("weft", pflag.ContinueOnError)
		o.daemonFlags(fs)
		if err := fs.Parse(tc.args); err != nil {
			t.Fatalf("%v: parse: %v", tc.args, err)
		}
		if err := applyEnv(fs); err != nil {
			t.Fatalf("%v: env: %v", tc.args, err)
		}
		err := o.checkFlanneldOnly(fs)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%v env %q: %v, want no error", tc.args, tc.env, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%v env %q: %v, want an error with %q", tc.args, tc.env, err, tc.want)
		}
		if strings.Join(o.ignoredLog, " ") != strings.Join(tc.logs, " ") {
			t.Errorf("%v: glog flags noted %v, want %v", tc.args, o.ignoredLog, tc.logs)
		}
	}
	// Single-dash, as in flanneld units, through the whole command line.
	err := execute(context.Background(), []string{"-public-ipv6=2001:db8::1"}, &bytes.Buffer{}, &bytes.Buffer{})
	if err == nil || !strings.Contains(err.Error(), "IPv4 only") {
		t.Errorf("weft -public-ipv6: %v", err)
	}
	var help bytes.Buffer
	if err := execute(context.Background(), []string{"--help"}, &help, &bytes.Buffer{}); err != nil || strings.Contains(help.String(), "public-ipv6") {
		t.Errorf("--help lists the hidden flanneld flags (%v):\n%s", err, help.String())
	}
}

// kube-flannel.yml's command line and environment make a Kubernetes node
// config: flanneld's flags, their FLANNELD_* forms, the Node from the
// downward API's POD_NAME and POD_NAMESPACE or from NODE_NAME.
func TestKubeSubnetMgrFlags(t *testing.T) {
	for _, k := range []string{"NODE_NAME", "FLANNELD_KUBE_ANNOTATION_PREFIX", "FLANNELD_SET_NODE_NETWORK_UNAVAILABLE", "FLANNELD_KUBECONFIG_FILE"} {
		t.Setenv(k, "")
		os.Unsetenv(k)
	}
	t.Setenv("POD_NAME", "kube-flannel-ds-x7k2p")
	t.Setenv("POD_NAMESPACE", "kube-flannel")
	parse := func(args ...string) *options {
		t.Helper()
		o := &options{}
		root := newRootCommand(&bytes.Buffer{}, &bytes.Buffer{})
		if err := root.ParseFlags(normalizeArgs(root, args)); err != nil {
			t.Fatal(err)
		}
		if err := applyEnv(root.Flags()); err != nil {
			t.Fatal(err)
		}
		fs := root.Flags()
		o.kubeSubnetMgr, _ = fs.GetBool("kube-subnet-mgr")
		o.kubeAPIURL, _ = fs.GetString("kube-api-url")
		o.kubeconfigFile, _ = fs.GetString("kubeconfig-file")
		o.kubeAnnotationPref, _ = fs.GetString("kube-annotation-prefix")
		o.netConfigPath, _ = fs.GetString("net-config-path")
		o.setNodeNetUnavail, _ = fs.GetBool("set-node-network-unavailable")
		return o
	}
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	os.Unsetenv("KUBERNETES_SERVICE_HOST")
	if _, err := parse("--kube-subnet-mgr").kubeConfig(); err == nil || !strings.Contains(err.Error(), "outside a pod, give -kubeconfig-file or -kube-api-url") {
		t.Errorf("outside a pod with neither flag: %v", err)
	}
	o := parse("--ip-masq", "--kube-subnet-mgr", "--kube-api-url=https://198.18.0.1:6443")
	k, err := o.kubeConfig()
	if err != nil || k == nil || k.PodName != "kube-flannel-ds-x7k2p" || k.PodNamespace != "kube-flannel" || k.NodeName != "" ||
		k.AnnotationPrefix != "flannel.alpha.coreos.com" || !k.SetNodeNetworkUnavailable || k.REST.Host != "https://198.18.0.1:6443" ||
		o.netConfigPath != "/etc/kube-flannel/net-conf.json" {
		t.Errorf("kube-flannel.yml's defaults: %+v, net-config-path %q", k, o.netConfigPath)
	}
	t.Setenv("NODE_NAME", "n7")
	t.Setenv("FLANNELD_KUBE_ANNOTATION_PREFIX", "example.com/weft")
	t.Setenv("FLANNELD_SET_NODE_NETWORK_UNAVAILABLE", "false")
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(kubeconfig, []byte(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://198.18.0.2:6443"}}]
users: [{name: u, user: {token: abc}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
`), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("FLANNELD_KUBECONFIG_FILE", kubeconfig)
	o = parse("-kube-subnet-mgr", "-net-config-path=/etc/weft/net-conf.json")
	k, err = o.kubeConfig()
	if err != nil || k == nil || k.NodeName != "n7" || k.AnnotationPrefix != "example.com/weft" || k.SetNodeNetworkUnavailable ||
		k.REST.Host != "https://198.18.0.2:6443" || k.REST.BearerToken != "abc" || o.netConfigPath != "/etc/weft/net-conf.json" {
		t.Errorf("flags and FLANNELD_* forms: %+v %v, net-config-path %q", k, err, o.netConfigPath)
	}
	if k, err := parse().kubeConfig(); k != nil || err != nil {
		t.Errorf("without -kube-subnet-mgr: %+v, %v", k, err)
	}
}
func TestFirewallFlags(t *testing.T) {
	for _, tc := range []struct {
		o      options
		errors bool
	}{
		{options{ipMasq: true, iptablesResync: 0}, true},
		{options{iptablesForwardRules: true, iptablesResync: -1}, true},
		{options{ipMasq: true, iptablesForwardRules: true, iptablesResync: 1}, false},
		{options{iptablesResync: 0}, false}, // unused when both are off
	} {
		if err := tc.o.checkFirewallFlags(); (err != nil) != tc.errors {
			t.Errorf("%+v: %v", tc.o, err)
		}
	}
	// flanneld's spelling parses, and the forward rules default to on.
	root := newRootCommand(&bytes.Buffer{}, &bytes.Buffer{})
	if err := root.ParseFlags(normalizeArgs(root, []string{"-ip-masq", "-ip-masq-fully-random-disable", "-iptables-resync=7"})); err != nil {
		t.Fatal(err)
	}
	fs := root.Flags()
	masq, _ := fs.GetBool("ip-masq")
	noRandom, _ := fs.GetBool("ip-masq-fully-random-disable")
	fwd, _ := fs.GetBool("iptables-forward-rules")
	resync, _ := fs.GetInt("iptables-resync")
	if !masq || !noRandom || !fwd || resync != 7 {
		t.Errorf("parsed ip-masq=%t ip-masq-fully-random-disable=%t iptables-forward-rules=%t iptables-resync=%d",
			masq, noRandom, fwd, resync)
	}
}
