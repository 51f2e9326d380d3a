package node

import (
	"context"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
)

// notify sends state to systemd when run as a Type=notify unit; outside
// systemd ($NOTIFY_SOCKET unset) it does nothing.
func notify(log *slog.Logger, state string) {
	if _, err := daemon.SdNotify(false, state); err != nil {
		log.Debug("sd_notify", "state", state, "err", err)
	}
}

// watchdogInterval is the unit's WatchdogSec, or 0 without one.
func watchdogInterval() time.Duration {
	interval, err := daemon.SdWatchdogEnabled(false)
	if err != nil {
		return 0
	}
	return interval
}

// watchdog sends WATCHDOG=1 only while the data plane runs: a wedged or
// stopped plane stops the pings and systemd restarts us.
func (n *node) watchdog(ctx context.Context, interval time.Duration, planeUp *atomic.Bool) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(interval / 2):
		}
		if planeUp.Load() {
			notify(n.log, daemon.SdNotifyWatchdog)
		}
	}
}
