package subnet

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"
)

const (
	renewBackoffMin = time.Second
	renewBackoffMax = time.Minute
	// renewTimeout bounds one attempt, so an unreachable store shows up as
	// failing renewals rather than one call hanging until it returns.
	renewTimeout = 10 * time.Second
)

// KeepAlive keeps l alive until ctx is done, then returns nil. It renews
// the lease in place at Expiration − margin (at once if that is past) and
// hands every renewed lease to renewed, and every failed attempt's error to
// failed (either may be nil), so the daemon can show a renewal in trouble
// long before the lease could expire. A reservation has no TTL and is left
// alone.
//
// Transient errors are retried every 1 s, doubling up to 1 min, and logged
// on the first failure and on recovery only. If the lease is gone (expired,
// deleted by an operator) KeepAlive returns an error wrapping
// ErrLeaseNotFound: the node no longer owns its subnet.
func KeepAlive(ctx context.Context, s Store, c Clock, log *slog.Logger, l Lease, margin time.Duration, renewed func(Lease), failed func(error)) error {
	if c == nil {
		c = RealClock{}
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if l.Reserved() {
		log.Info("subnet is a reservation, not renewing it", "subnet", l.Subnet)
		<-ctx.Done()
		return nil
	}

	var backoff time.Duration // > 0 while renewals fail
	justRenewed := false
	for {
		var wait time.Duration
		if backoff > 0 {
			wait = backoff
		} else {
			wait = l.Expiration.Sub(c.Now()) - margin
			if wait <= 0 && justRenewed {
				// margin ≥ the TTL: renewing "at once" again would spin.
				// Renew at half the remaining life instead.
				wait = max(l.Expiration.Sub(c.Now())/2, renewBackoffMin)
			}
		}
		if wait > 0 {
			select {
			case <-ctx.Done():
				return nil
			case <-c.After(wait):
			}
		} else if ctx.Err() != nil {
			return nil
		}

		rctx, cancel := context.WithTimeout(ctx, renewTimeout)
		r, err := s.RenewLease(rctx, l)
		cancel()
		if err == nil {
			if backoff > 0 {
				log.Info("lease renewal recovered", "subnet", r.Subnet, "expires", r.Expiration)
			} else {
				log.Info("lease renewed", "subnet", r.Subnet, "expires", r.Expiration)
			}
			backoff, justRenewed, l = 0, true, r
			if renewed != nil {
				renewed(r)
			}
			continue
		}
		if ctx.Err() != nil {
			return nil
		}
		if errors.Is(err, ErrLeaseNotFound) {
			return fmt.Errorf("renew lease %s: %w", l.Subnet, err)
		}
		justRenewed = false
		if failed != nil {
			failed(err)
		}
		if backoff == 0 {
			log.Warn("lease renewal failing, retrying", "subnet", l.Subnet, "expires", l.Expiration, "err", err)
			backoff = renewBackoffMin
		} else {
			backoff = min(2*backoff, renewBackoffMax)
		}
	}
}
