package lab

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"

	"github.com/vishvananda/netlink"
)

var (
	staleNSRe   = regexp.MustCompile(`^wl([0-9a-f]+)-[0-9a-f]+-(hub|n[0-9]+)$`)
	staleLinkRe = regexp.MustCompile(`^wl([0-9a-f]+)-[0-9a-f]+$`)
)

// CleanupStale removes what labs of dead processes left behind (after
// SIGKILL or a test-binary timeout, Close never ran): their namespaces,
// with any process still inside (killed by PID), and their host veths. A
// lab whose process is alive is left alone: the creating PID is part of
// every name. It returns what it removed.
func CleanupStale(log *slog.Logger) ([]string, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var removed []string
	var errs []error

	// Host veths first: deleting a namespace would take them along
	// asynchronously.
	h, err := netlink.NewHandle()
	if err != nil {
		return nil, fmt.Errorf("lab: netlink handle: %w", err)
	}
	defer h.Close()
	links, err := retryDump(h.LinkList)
	if err != nil {
		return nil, fmt.Errorf("lab: list links: %w", err)
	}
	for _, link := range links {
		name := link.Attrs().Name
		m := staleLinkRe.FindStringSubmatch(name)
		if m == nil || alive(m[1]) {
			continue
		}
		if _, ok := link.(*netlink.Veth); !ok {
			continue
		}
		if err := h.LinkDel(link); err != nil {
			errs = append(errs, fmt.Errorf("lab: delete link %s: %w", name, err))
			continue
		}
		log.Info("removed link", "link", name)
		removed = append(removed, "link "+name)
	}
	entries, err := os.ReadDir("/run/netns")
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return removed, errors.Join(append(errs, fmt.Errorf("lab: list namespaces: %w", err))...)
	}
	for _, e := range entries {
		m := staleNSRe.FindStringSubmatch(e.Name())
		if m == nil || alive(m[1]) {
			continue
		}
		name := e.Name()
		out, err := exec.Command("ip", "netns", "pids", name).Output()
		if err != nil {
			errs = append(errs, fmt.Errorf("lab: list processes in %s: %w", name, err))
			continue
		}
		for _, f := range strings.Fields(string(out)) {
			pid, err := strconv.Atoi(f)
			if err != nil || pid <= 1 {
				continue
			}
			log.Info("kill leftover process", "ns", name, "pid", pid)
			if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
				errs = append(errs, fmt.Errorf("lab: kill pid %d in %s: %w", pid, name, err))
			}
		}
		if err := deleteNS(name); err != nil {
			errs = append(errs, err)
			continue
		}
		log.Info("removed namespace", "ns", name)
		removed = append(removed, "netns "+name)
	}

	return removed, errors.Join(errs...)
}

// alive reports whether the process with the hex PID exists; in doubt, yes.
func alive(hexPID string) bool {
	pid, err := strconv.ParseInt(hexPID, 16, 32)
	if err != nil || pid <= 0 {
		return true
	}
	err = syscall.Kill(int(pid), 0)
	return !errors.Is(err, syscall.ESRCH)
}
