package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/weft-net/weft/status"
)

// Set at build time by the Makefile (-ldflags "-X main.version=... -X main.commit=...").
var (
	version = "dev"
	commit  = ""
)

// options holds every flag. Names and defaults follow flanneld's, so a
// flanneld unit's ExecStart line works unchanged.
type options struct {
	etcdEndpoints string
	etcdPrefix    string
	etcdKeyFile   string
	etcdCertFile  string
	etcdCAFile    string
	etcdUsername  string
	etcdPassword  string

	ifaces        []string
	ifaceRegexes  []string
	ifaceCanReach string
	publicIP      string

	ipMasq                   bool
	ipMasqFullyRandomDisable bool
	iptablesForwardRules     bool
	iptablesResync           int

	subnetFile        string
	renewMarginMinute int
	healthzIP         string
	healthzPort       int
	verbosity         int
	printVersion      bool

	// weft's own additions.
	tunName      string
	mtu          int
	sourceCheck  string
	statusSocket string
	logFormat    string
	peerMetrics  bool
	offload      bool
	splitDirs    bool
	offloads     string
	fastPath     string
	fastAttach   string

	// flanneld's Kubernetes subnet manager: the leases are the Nodes.
	kubeSubnetMgr      bool
	kubeAPIURL         string
	kubeconfigFile     string
	kubeAnnotationPref string
	netConfigPath      string
	setNodeNetUnavail  bool

	ignoredLog []string // flanneld's glog/klog flags given, noted at start
}

// flanneldOnlyFlags are flanneld's flags for what weft does not do, with
// why and what instead; boolean ones count only when true.
var flanneldOnlyFlags = []struct{ name, why string }{
	{"public-ipv6", "weft's udp backend is IPv4 only, as flannel's"},
}

// flanneldBoolFlags are the boolean ones among flanneldOnlyFlags.
var flanneldBoolFlags = map[string]bool{}

// glogFlags are the logging flags flanneld takes from glog/klog. weft logs
// with log/slog to stderr (-log-format, -v), so they are accepted and noted.
var glogFlags = []string{"logtostderr", "alsologtostderr", "log_dir", "log_file", "stderrthreshold", "vmodule", "log_backtrace_at"}

func (o *options) etcdFlags(fs *pflag.FlagSet) {
	fs.StringVar(&o.etcdEndpoints, "etcd-endpoints", "http://127.0.0.1:4001,http://127.0.0.1:2379", "comma-separated etcd endpoints")
	fs.StringVar(&o.etcdPrefix, "etcd-prefix", "/coreos.com/network", "etcd prefix holding config and subnets")
	fs.StringVar(&o.etcdKeyFile, "etcd-keyfile", "", "TLS client key for etcd (used with -etcd-certfile)")
	fs.StringVar(&o.etcdCertFile, "etcd-certfile", "", "TLS client certificate for etcd (used with -etcd-keyfile)")
	fs.StringVar(&o.etcdCAFile, "etcd-cafile", "", "CA bundle to verify etcd's certificate")
	fs.StringVar(&o.etcdUsername, "etcd-username", "", "etcd user name")
	fs.StringVar(&o.etcdPassword, "etcd-password", "", "etcd password")
}

func (o *options) daemonFlags(fs *pflag.FlagSet) {
	fs.StringArrayVar(&o.ifaces, "iface", nil, "interface name or IP for the underlay (repeatable; first match wins; default: the default route's)")
	fs.StringArrayVar(&o.ifaceRegexes, "iface-regex", nil, "regex matched against interface IPs, then names (repeatable)")
	fs.StringVar(&o.ifaceCanReach, "iface-can-reach", "", "use the interface that routes to this IP")
	fs.StringVar(&o.publicIP, "public-ip", "", "PublicIP to publish in the lease (default: the interface's IP)")
	fs.BoolVar(&o.ipMasq, "ip-masq", false, "masquerade traffic leaving the overlay network (nftables table ip weft; kept when weft stops)")
	fs.BoolVar(&o.ipMasqFullyRandomDisable, "ip-masq-fully-random-disable", false, "masquerade without fully random source ports")
	fs.BoolVar(&o.iptablesForwardRules, "iptables-forward-rules", true, "accept forwarded traffic from and to the network (nftables table ip weft)")
	fs.IntVar(&o.iptablesResync, "iptables-resync", 5, "seconds between checks that repair the nftables rules")
	fs.StringVar(&o.subnetFile, "subnet-file", "/run/flannel/subnet.env", "file the lease is written to (flannel's subnet.env)")
	fs.IntVar(&o.renewMarginMinute, "subnet-lease-renew-margin", 60, "renew the lease this many minutes before it expires (1..1439)")
	fs.StringVar(&o.healthzIP, "healthz-ip", "0.0.0.0", "address for /healthz, /readyz and /status")
	fs.IntVar(&o.healthzPort, "healthz-port", 0, "port for /healthz, /readyz and /status (0: off)")
	fs.IntVar(&o.verbosity, "v", 0, "log verbosity (0: info, 1 and more: debug)")
	fs.BoolVar(&o.printVersion, "version", false, "print the version and exit")
	fs.StringVar(&o.tunName, "tun-name", "udp0", "name of the TUN device")
	fs.IntVar(&o.mtu, "mtu", 0, "TUN MTU (0: the interface's MTU minus 28)")
	fs.StringVar(&o.statusSocket, "status-socket", status.DefaultSocket, "unix socket the weft status command asks (empty: none)")
	fs.StringVar(&o.logFormat, "log-format", "text", "log format: text or json")
	fs.BoolVar(&o.offload, "offload", true, "use kernel offloads on the data path (UDP GSO/GRO, TUN TSO and checksums) where the kernel has them; false is the plain path")
	fs.StringVar(&o.offloads, "offloads", "tun,gso,gro", "with -offload, which offloads to use: tun (TSO, checksum offload and coalesced writes on the TUN), gso (UDP segmentation on send), gro (UDP coalescing on receive); leave one out to work around a kernel bug in it")
	fs.StringVar(&o.fastPath, "fast-path", "auto", "the in-kernel fast path (eBPF on the TUN and the underlay): auto (where the kernel allows, else the userspace path alone, said once at start), on (exit 1 if it cannot run), off (the userspace path alone)")
	fs.StringVar(&o.fastAttach, "fast-path-attach", "auto", "how the fast path's programs attach: auto (TCX on Linux 6.6 and later, else a tc clsact qdisc's filters) or clsact (always tc filters, e.g. to run after other tc programs)")
	fs.BoolVar(&o.splitDirs, "split-directions", false, "forward each direction in a thread of its own instead of one thread polling TUN and socket together (for comparison; slower on few CPUs)")
	fs.BoolVar(&o.peerMetrics, "peer-metrics", false, "export per-peer traffic counters on /metrics (one series per node: mind the cardinality)")
	fs.BoolVar(&o.kubeSubnetMgr, "kube-subnet-mgr", false, "lease through the Kubernetes API instead of etcd: the subnet is this Node's spec.podCIDR, peers are the Nodes (kube-flannel.yml)")
	fs.StringVar(&o.kubeAPIURL, "kube-api-url", "", "Kubernetes API server URL (default: the pod's in-cluster config)")
	fs.StringVar(&o.kubeconfigFile, "kubeconfig-file", "", "kubeconfig file (default: the pod's in-cluster config)")
	fs.StringVar(&o.kubeAnnotationPref, "kube-annotation-prefix", "flannel.alpha.coreos.com", "prefix of flannel's Node annotations (at most one '/')")
	fs.StringVar(&o.netConfigPath, "net-config-path", "/etc/kube-flannel/net-conf.json", "with -kube-subnet-mgr, the network config file (kube-flannel.yml's ConfigMap)")
	fs.BoolVar(&o.setNodeNetUnavail, "set-node-network-unavailable", true, "with -kube-subnet-mgr, set the Node's NetworkUnavailable condition to False once the path is up")
	fs.StringVar(&o.sourceCheck, "source-check", "strict", "which datagrams to accept: strict (from the PublicIP of the lease holding the inner source), nat (inner source in any lease, for peers behind NAT), off (any, as flanneld)")

	// flanneld's flags weft does not implement, hidden: registered so that a
	// flanneld unit's ExecStart gets an explanation (checkFlanneldOnly)
	// instead of "unknown flag".
	hidden := func(name string, isBool bool) {
		fs.String(name, "", "flanneld's; see flanneldOnlyFlags")
		if isBool {
			fs.Lookup(name).NoOptDefVal = "true"
		}
		fs.Lookup(name).Hidden = true
	}
	for _, f := range flanneldOnlyFlags {
		hidden(f.name, flanneldBoolFlags[f.name])
	}
	for _, name := range glogFlags {
		hidden(name, name == "logtostderr" || name == "alsologtostderr")
	}
}

// checkFlanneldOnly refuses flanneld's flags for what weft does not do,
// saying why, and collects the glog/klog flags given, to be noted at start.
func (o *options) checkFlanneldOnly(fs *pflag.FlagSet) error {
	for _, f := range flanneldOnlyFlags {
		fl := fs.Lookup(f.name)
		if !fl.Changed {
			continue
		}
		v := fl.Value.String()
		if flanneldBoolFlags[f.name] && !isTrue(v) {
			continue // -kube-subnet-mgr=false is what weft does anyway
		}
		return fmt.Errorf("flanneld's -%s=%s: %s", f.name, v, f.why)
	}
	for _, name := range glogFlags {
		if fs.Lookup(name).Changed {
			o.ignoredLog = append(o.ignoredLog, "-"+name)
		}
	}
	return nil
}

func isTrue(v string) bool {
	switch strings.ToLower(v) {
	case "1", "t", "true":
		return true
	}
	return false
}

// execute runs weft with args (without the program name).
func execute(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	root := newRootCommand(stdout, stderr)
	root.SetArgs(normalizeArgs(root, args))
	return root.ExecuteContext(ctx)
}

func newRootCommand(stdout, stderr io.Writer) *cobra.Command {
	o := &options{}
	root := &cobra.Command{
		Use:   "weft [flags]",
		Short: "weft: flannel's udp backend, fast and safe (a drop-in replacement for flanneld)",
		Long: `weft replaces flanneld running the udp backend against etcd v3. It reads the
network config from <etcd-prefix>/config, leases a subnet under
<etcd-prefix>/subnets, creates the TUN device, routes the network through it
and forwards packets to the other nodes over UDP, with flannel's wire format.

Flags take flanneld's names and defaults, in -flag=value or --flag=value form,
or from FLANNELD_<NAME> environment variables (the command line wins).`,
		Args:          cobra.NoArgs,
		SilenceErrors: true,
		SilenceUsage:  true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := applyEnv(cmd.Flags()); err != nil {
				return err
			}
			if err := o.checkFlanneldOnly(cmd.Flags()); err != nil {
				return err
			}
			if o.printVersion {
				fmt.Fprintln(stdout, build().String())
				return nil
			}
			return runDaemon(cmd.Context(), o, stderr)
		},
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	o.etcdFlags(root.PersistentFlags())
	o.daemonFlags(root.Flags())
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error {
		return fmt.Errorf("%w (see 'weft --help')", err)
	})

	root.AddCommand(&cobra.Command{
		Use:   "version",
		Short: "print the version, commit and Go version",
		Args:  cobra.NoArgs,
		Run: func(*cobra.Command, []string) {
			fmt.Fprintln(stdout, build().String())
		},
	})
	root.AddCommand(newConfigCommand(o, stdout), newStatusCommand(stdout), newLeasesCommand(o, stdout),
		newLeaseCommand(o, stdout))
	return root
}

func commitString() string {
	if commit != "" {
		return commit
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" {
				return s.Value
			}
		}
	}
	return "unknown"
}

// normalizeArgs turns flanneld-style single-dash long flags (-etcd-prefix=x)
// into the double-dash form pflag parses (spf13/pflag#147). Single letters
// stay shorthands (-f, -o), except where a long flag of that name exists
// (-v=2). Everything after "--" is left alone.
func normalizeArgs(root *cobra.Command, args []string) []string {
	long := map[string]bool{}
	collect := func(fs *pflag.FlagSet) {
		fs.VisitAll(func(f *pflag.Flag) { long[f.Name] = true })
	}
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		collect(c.LocalFlags())
		collect(c.PersistentFlags())
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)

	out := make([]string, 0, len(args))
	for i, a := range args {
		if a == "--" {
			return append(out, args[i:]...)
		}
		if len(a) >= 2 && a[0] == '-' && a[1] != '-' {
			name, _, _ := strings.Cut(a[1:], "=")
			// A multi-letter word is always a long flag: unknown ones then
			// fail as "unknown flag: --name", naming the flag.
			if len(name) > 1 || long[name] {
				a = "-" + a
			}
		}
		out = append(out, a)
	}
	return out
}

// applyEnv fills every flag not given on the command line from
// FLANNELD_<NAME> (upper case, '-' → '_'), as flanneld does.
func applyEnv(fs *pflag.FlagSet) error {
	var err error
	fs.VisitAll(func(f *pflag.Flag) {
		if err != nil || f.Changed {
			return
		}
		key := "FLANNELD_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		v, ok := os.LookupEnv(key)
		if !ok {
			return
		}
		if e := fs.Set(f.Name, v); e != nil {
			err = fmt.Errorf("environment %s=%q: %w", key, v, e)
		}
	})
	return err
}

// renewMargin validates -subnet-lease-renew-margin as flanneld does.
func (o *options) renewMargin() (time.Duration, error) {
	if o.renewMarginMinute < 1 || o.renewMarginMinute > 1439 {
		return 0, fmt.Errorf("-subnet-lease-renew-margin=%d: must be between 1 and 1439 minutes", o.renewMarginMinute)
	}
	return time.Duration(o.renewMarginMinute) * time.Minute, nil
}
