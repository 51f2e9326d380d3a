package fastpath

import (
	"errors"
	"fmt"
	"slices"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Mode is how the programs are attached.
type Mode string

const (
	// ModeTCX: TCX links (Linux 6.6+), appended after any other program on
	// the hook; they go with weft's process, even after kill -9.
	ModeTCX Mode = "tcx"
	// ModeClsact: direct-action cls_bpf filters under a clsact qdisc
	// (created if absent, never removed: others may use it), at a priority
	// of weft's own; a restart replaces the filters a killed run left.
	ModeClsact Mode = "clsact"
)

// ClsactPriority is the filter priority weft's filters take: after the
// usual 1 (Cilium's, tc's default), so that programs there run first.
const ClsactPriority = 0xc0de

// Attachment is the two programs on their hooks.
type Attachment struct {
	Mode    Mode
	links   []link.Link
	filters []*netlink.BpfFilter
	nl      *netlink.Handle
}

// Attach puts weft_encap on the TUN's egress and weft_decap on the
// underlay's ingress, by TCX where the kernel has it, else by clsact
// (always with forceClsact). It must run in the devices' network namespace
// (TCX resolves ifindexes in the calling thread's), and nl must be a handle
// there.
func (p *Programs) Attach(nl *netlink.Handle, tun, underlay int, forceClsact bool) (*Attachment, error) {
	if !forceClsact {
		a, err := p.attachTCX(tun, underlay)
		if err == nil {
			return a, nil
		}
		if !errors.Is(err, ebpf.ErrNotSupported) {
			return nil, err
		}
	}
	return p.attachClsact(nl, tun, underlay)
}

func (p *Programs) attachTCX(tun, underlay int) (*Attachment, error) {
	a := &Attachment{Mode: ModeTCX}
	for _, h := range []struct {
		prog    *ebpf.Program
		ifindex int
		at      ebpf.AttachType
	}{{p.objs.WeftEncap, tun, ebpf.AttachTCXEgress}, {p.objs.WeftDecap, underlay, ebpf.AttachTCXIngress}} {
		l, err := link.AttachTCX(link.TCXOptions{Interface: h.ifindex, Program: h.prog, Attach: h.at, Anchor: link.Tail()})
		if err != nil {
			return nil, errors.Join(fmt.Errorf("fastpath: attach %s to ifindex %d by TCX: %w", h.prog, h.ifindex, err), a.Detach())
		}
		a.links = append(a.links, l)
	}
	return a, nil
}

func (p *Programs) attachClsact(nl *netlink.Handle, tun, underlay int) (*Attachment, error) {
	a := &Attachment{Mode: ModeClsact, nl: nl}
	for _, h := range []struct {
		prog    *ebpf.Program
		name    string
		ifindex int
		parent  uint32
	}{{p.objs.WeftEncap, "weft_encap", tun, netlink.HANDLE_MIN_EGRESS}, {p.objs.WeftDecap, "weft_decap", underlay, netlink.HANDLE_MIN_INGRESS}} {
		f, err := replaceFilter(nl, h.ifindex, h.parent, h.name, h.prog)
		if err != nil {
			return nil, errors.Join(err, a.Detach())
		}
		a.filters = append(a.filters, f)
	}
	return a, nil
}

// replaceFilter adds a clsact qdisc to ifindex if it has none, removes the
// filters of weft's name a killed run left at parent, and adds prog.
func replaceFilter(nl *netlink.Handle, ifindex int, parent uint32, name string, prog *ebpf.Program) (*netlink.BpfFilter, error) {
	q := &netlink.GenericQdisc{QdiscType: "clsact", QdiscAttrs: netlink.QdiscAttrs{LinkIndex: ifindex,
		Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT}}
	if err := nl.QdiscAdd(q); err != nil && !errors.Is(err, unix.EEXIST) {
		return nil, fmt.Errorf("fastpath: add clsact qdisc to ifindex %d: %w", ifindex, err)
	}
	if _, err := deleteFilters(nl, ifindex, parent, name); err != nil {
		return nil, err
	}
	f := &netlink.BpfFilter{FilterAttrs: netlink.FilterAttrs{LinkIndex: ifindex, Parent: parent, Handle: 1,
		Protocol: unix.ETH_P_ALL, Priority: ClsactPriority}, Fd: prog.FD(), Name: name, DirectAction: true}
	if err := nl.FilterAdd(f); err != nil {
		return nil, fmt.Errorf("fastpath: add %s filter to ifindex %d: %w", name, ifindex, err)
	}
	// The program's ID is how a listed filter is known to be this one.
	if info, err := prog.Info(); err == nil {
		if id, ok := info.ID(); ok {
			f.Id = int(id)
		}
	}
	return f, nil
}

// deleteFilters removes the filters of weft's priority and one of names at
// parent of ifindex (a killed run's), saying which; without a clsact qdisc
// there are none.
func deleteFilters(nl *netlink.Handle, ifindex int, parent uint32, names ...string) ([]string, error) {
	link, err := nl.LinkByIndex(ifindex)
	if err != nil {
		return nil, fmt.Errorf("fastpath: find ifindex %d: %w", ifindex, err)
	}
	filters, err := nl.FilterList(link, parent)
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) { // no clsact qdisc
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("fastpath: list filters of %s: %w", link.Attrs().Name, err)
	}
	var removed []string
	for _, f := range filters {
		b, ok := f.(*netlink.BpfFilter)
		if !ok || b.Priority != ClsactPriority || !slices.Contains(names, b.Name) {
			continue
		}
		if err := nl.FilterDel(b); err != nil {
			return removed, fmt.Errorf("fastpath: delete an earlier run's %s filter on %s: %w", b.Name, link.Attrs().Name, err)
		}
		removed = append(removed, b.Name+" on "+link.Attrs().Name)
	}
	return removed, nil
}

// Detach removes the programs from their hooks (not the clsact qdisc);
// devices already gone are not an error.
func (a *Attachment) Detach() error {
	var errs []error
	for _, l := range a.links {
		errs = append(errs, l.Close())
	}
	for _, f := range a.filters {
		if err := a.nl.FilterDel(f); err != nil && !errors.Is(err, unix.ENODEV) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("fastpath: delete %s filter: %w", f.Name, err))
		}
	}
	a.links, a.filters = nil, nil
	return errors.Join(errs...)
}

// Intact reports whether both programs are still on their hooks: an
// operator's `tc qdisc del dev eth0 clsact`, or another tool detaching TCX
// links, takes them off without weft noticing otherwise.
func (a *Attachment) Intact() (bool, error) {
	for _, l := range a.links {
		info, err := l.Info()
		if err != nil {
			return false, fmt.Errorf("fastpath: read TCX link: %w", err)
		}
		// A detached TCX link reports no device.
		if tcx := info.TCX(); tcx == nil || tcx.Ifindex == 0 {
			return false, nil
		}
	}
	for _, f := range a.filters {
		link, err := a.nl.LinkByIndex(f.LinkIndex)
		if err != nil {
			return false, fmt.Errorf("fastpath: find ifindex %d: %w", f.LinkIndex, err)
		}
		filters, err := a.nl.FilterList(link, f.Parent)
		if err != nil && !errors.Is(err, unix.EINVAL) { // EINVAL: the qdisc is gone
			return false, fmt.Errorf("fastpath: list filters of %s: %w", link.Attrs().Name, err)
		}
		found := false
		for _, g := range filters {
			if b, ok := g.(*netlink.BpfFilter); ok && b.Name == f.Name && b.Priority == f.Priority && b.Id == f.Id {
				found = true
			}
		}
		if !found {
			return false, nil
		}
	}
	return true, nil
}

// RemoveLeftovers deletes the filters of weft's names and priority that a
// killed run left at ifindex's ingress (the underlay) and egress (a TUN of
// the same name is new, but a clsact qdisc on it may not be), whatever the
// mode of this run: a stale weft_decap would redirect every datagram to a
// TUN that is gone. TCX links go with the process that held them. It says
// what it removed; a device without a clsact qdisc has nothing to remove.
func RemoveLeftovers(nl *netlink.Handle, ifindex int) ([]string, error) {
	var removed []string
	for _, parent := range []uint32{netlink.HANDLE_MIN_INGRESS, netlink.HANDLE_MIN_EGRESS} {
		r, err := deleteFilters(nl, ifindex, parent, "weft_encap", "weft_decap")
		removed = append(removed, r...)
		if err != nil {
			return removed, err
		}
	}
	return removed, nil
}
