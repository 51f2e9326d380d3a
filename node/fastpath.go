package node

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/dataplane"
	"github.com/weft-net/weft/fastpath"
	"github.com/weft-net/weft/route"
	"github.com/weft-net/weft/status"
	"github.com/weft-net/weft/subnet"
)

// startFastPath starts the kernel data plane beside the userspace one, as
// -fast-path says: nil with auto when the kernel does not allow it (said
// once, with why; the userspace path then carries everything), an error
// with on. It runs after the TUN exists and before any peer is published,
// and says how the fast path came up, as it recorded into /status.
func (n *node) startFastPath(lease subnet.Lease) (dataplane.Plane, status.FastPath, error) {
	mode := n.cfg.FastPath
	if mode == "" {
		mode = FastPathAuto
	}
	st := status.FastPath{Mode: string(mode)}
	// Whatever this run's mode: a filter a killed run left would send
	// every datagram to its TUN, which is gone.
	removed, err := fastpath.RemoveLeftovers(n.nl, n.iface.Index)
	for _, r := range removed {
		n.log.Info("removed the fast path's filter an earlier run left", "filter", r)
	}
	if err != nil {
		return nil, st, fmt.Errorf("%w (remove it with: tc filter del dev %s ingress pref %d)", err, n.iface.Name, fastpath.ClsactPriority)
	}
	if mode == FastPathOff {
		st.Reason = "-fast-path=off"
		n.health.SetFastPath(st)
		return nil, st, nil
	}
	plane, info, err := n.hooks.openFastPath(n, lease)
	if err != nil {
		if mode == FastPathOn {
			return nil, st, fmt.Errorf("-fast-path=on: %w (-fast-path=auto runs the userspace path alone instead)", err)
		}
		st.Reason = err.Error()
		n.health.SetFastPath(st)
		attrs := []any{"reason", err, "fix", "run with CAP_BPF on Linux 5.10 or later, or set -fast-path=off to say this is intended"}
		if mc, ok := errors.AsType[*missingCapsError](err); ok {
			attrs = []any{"missing", strings.Join(mc.missing, ","), "reason", err, "fix", mc.fix()}
		}
		n.log.Warn("kernel fast path not running: the userspace path carries all traffic", attrs...)
		return nil, st, nil
	}
	st.Running, st.Attach, st.SuperPackets = true, info.Attach, info.SuperPackets
	n.health.SetFastPath(st)
	n.log.Info("kernel fast path attached", "attach", info.Attach, "tun", n.cfg.TunName, "underlay", n.iface.Name,
		"super-packets", info.SuperPackets)
	return plane, st, nil
}

// openKernel loads the fast path's programs and attaches them to the TUN
// and the underlay, in the node's namespace.
func openKernel(n *node, lease subnet.Lease) (dataplane.Plane, status.FastPath, error) {
	var info status.FastPath
	if missing := fastpath.MissingCaps(fastpath.HasCap); len(missing) > 0 {
		return nil, info, &missingCapsError{missing: missing}
	}
	link, err := n.nl.LinkByName(n.cfg.TunName)
	if err != nil {
		return nil, info, fmt.Errorf("find device %s: %w", n.cfg.TunName, err)
	}
	gsoUser := n.superPacketsToUserspace()
	info.SuperPackets = status.PathKernel
	if gsoUser {
		info.SuperPackets = status.PathUserspace + " (" + n.iface.Name + " cannot segment UDP tunnel packets)"
	}
	progs, err := fastpath.Load(fastpath.Config{
		Local: n.iface.Addr, Subnet: lease.Subnet, Port: uint16(n.netCfg.BackendPort),
		SourceCheck: uint8(n.cfg.SourceCheck), Underlay: n.iface.Index, TUN: link.Attrs().Index,
		GSOToUserspace: gsoUser,
	})
	if err != nil {
		if verifierWantsPerfmon(fastpath.HasCap, err) {
			return nil, info, &missingCapsError{missing: []string{"CAP_PERFMON"}, err: err}
		}
		return nil, info, err
	}
	attach := func(p *fastpath.Programs) (a *fastpath.Attachment, err error) {
		err = n.inNetns(func() (err error) {
			a, err = p.Attach(n.nl, link.Attrs().Index, n.iface.Index, n.cfg.FastPathClsact)
			return err
		})
		return a, err
	}
	a, err := attach(progs)
	if err != nil {
		progs.Close()
		return nil, info, err
	}
	pl := fastpath.NewPlane(progs, a, n.log)
	pl.Reattach = attach
	info.Attach = string(a.Mode)
	return pl, info, nil
}

// verifierWantsPerfmon says whether err, from loading the programs with
// the capabilities fastpath.MissingCaps asks for, is the refusal of a
// verifier that wants CAP_PERFMON as well: Linux 6.1's refuses some of the
// programs' stack stores without it (EACCES, with the verifier's log),
// which Linux 6.18 accepts.
func verifierWantsPerfmon(has func(int) bool, err error) bool {
	_, verifier := errors.AsType[*ebpf.VerifierError](err)
	return verifier && errors.Is(err, unix.EACCES) && !has(unix.CAP_PERFMON) && !has(unix.CAP_SYS_ADMIN)
}

// missingCapsError: the fast path cannot run for want of capabilities.
type missingCapsError struct {
	missing []string // "CAP_BPF", ...
	err     error    // the kernel's refusal, when it came to that
}

func (e *missingCapsError) Error() string {
	s := "missing " + strings.Join(e.missing, " and ") + ", which loading and attaching the fast path's eBPF programs needs"
	if e.err != nil {
		s += " on this kernel: " + e.err.Error()
	}
	return s
}

func (e *missingCapsError) Unwrap() error { return e.err }

// fix says how to grant the missing capabilities, in a systemd unit and
// in a Kubernetes manifest.
func (e *missingCapsError) fix() string {
	k8s := make([]string, len(e.missing))
	for i, c := range e.missing {
		k8s[i] = strings.TrimPrefix(c, "CAP_")
	}
	return "systemd: add " + strings.Join(e.missing, " ") + " to AmbientCapabilities= (and to CapabilityBoundingSet=, if set) in the unit; " +
		"Kubernetes: securityContext.capabilities.add: [" + strings.Join(k8s, ", ") + "]; " +
		"CAP_SYS_ADMIN covers CAP_BPF and CAP_PERFMON too; or set -fast-path=off to say the userspace path alone is intended"
}

// superPacketsToUserspace says whether TCP super-packets should take the
// userspace path: where the underlay cannot segment UDP tunnel packets,
// the kernel path would segment them in software, and the userspace path's
// UDP GSO is faster (one TCP stream on the lab's NIC-like underlay: 9.0
// against 6.7 Gb/s). Without UDP GSO the kernel path keeps them.
func (n *node) superPacketsToUserspace() bool {
	if !n.cfg.Offloads.GSO {
		return false
	}
	var on bool
	err := n.inNetns(func() (err error) {
		on, err = route.FeatureActive(n.iface.Name, "tx-udp_tnl-segmentation")
		return err
	})
	if err != nil {
		n.log.Debug("read the underlay's offloads; super-packets take the kernel path", "iface", n.iface.Name, "err", err)
		return false
	}
	return !on
}

// advertTimeout bounds one write of the advertisement.
const advertTimeout = 5 * time.Second

// advertise makes the lease's BackendData say whether this node
// decapsulates in its kernel (peers then encapsulate toward it in theirs),
// writing only when that changes. Peers follow through their lease watch;
// until then they send finished datagrams, which either path takes, so a
// change of mode loses nothing. It returns the lease as now stored.
func (n *node) advertise(ctx context.Context, l subnet.Lease, kernel bool) (subnet.Lease, error) {
	if l.Attrs.KernelDecap() == kernel {
		return l, nil
	}
	next := l
	if err := next.Attrs.SetKernelDecap(kernel); err != nil {
		return l, fmt.Errorf("lease %s: %w", l.Subnet, err)
	}
	backoff := retry{}
	for {
		cctx, cancel := context.WithTimeout(ctx, advertTimeout)
		err := n.store.PutLeaseAttrs(cctx, next)
		cancel()
		if err == nil {
			n.log.Info("lease updated: in-kernel decapsulation "+map[bool]string{true: "advertised", false: "withdrawn"}[kernel],
				"subnet", l.Subnet)
			return next, nil
		}
		if errors.Is(err, subnet.ErrLeaseNotFound) || ctx.Err() != nil {
			return l, err
		}
		if err := backoff.wait(ctx, n.log, "update lease "+l.Subnet.String(), err); err != nil {
			return l, err
		}
	}
}

// withdraw takes the advertisement back at a stop, so that peers send
// finished datagrams to whatever runs here next (a restart with
// -fast-path=off, or flanneld). It tries for a moment only: a stop must not
// wait on a lost etcd.
func (n *node) withdraw(l subnet.Lease) {
	if !l.Attrs.KernelDecap() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if _, err := n.advertise(ctx, l, false); err != nil {
		n.log.Warn("could not withdraw the in-kernel decapsulation from the lease; the next start does", "subnet", l.Subnet, "err", err)
	}
}
