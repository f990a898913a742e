package cardlink

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/internal/wait"
)

// ReplicaWake is the wake-up channel of a replica that shares its database
// with others: a module whose agent waits here is woken here, and one whose
// agent does not is published on Bus, so that the replica holding the
// agent's long poll wakes it (Follow). It implements keyport.Trigger.
//
// A published wake-up is not an answer: Wake then returns nil without
// knowing whether any replica had the agent, and the job is woken again
// with backoff until the module opens its session, as with a local wake-up
// that the module does not act on.
type ReplicaWake struct {
	Hub *WakeHub
	// Bus carries wake-ups to the other replicas; nil: this replica only.
	Bus keyport.WakeBus
}

var _ keyport.Trigger = ReplicaWake{}

// Wake implements keyport.Trigger.
func (r ReplicaWake) Wake(ctx context.Context, eid keyport.EID) error {
	err := r.Hub.Wake(ctx, eid)
	if err == nil || r.Bus == nil || !errors.Is(err, keyport.ErrUnreachable) {
		return err
	}
	if perr := r.Bus.PublishWake(ctx, eid); perr != nil {
		return fmt.Errorf("%w; publishing it to the other replicas failed: %v", err, perr)
	}
	return nil
}

// Follow hands the wake-ups published on bus to the agents waiting on h,
// until ctx ends. A lost connection is logged and listened again after a
// backoff (1 s doubling to 30 s); wake-ups published meanwhile are found
// by the waiting agents' polling (AdminServerConfig.WakeCheck).
func (h *WakeHub) Follow(ctx context.Context, bus keyport.WakeBus, log *slog.Logger) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	delay := time.Second
	for ctx.Err() == nil {
		start := time.Now()
		err := bus.ListenWakes(ctx, func(eid keyport.EID) {
			if h.Wake(ctx, eid) == nil {
				log.Info("wake-up from the bus delivered", "eid", eid)
			}
		})
		if ctx.Err() != nil {
			return
		}
		if time.Since(start) > time.Minute {
			delay = time.Second
		}
		log.Warn("wake-up bus lost; listening again", "err", err, "retry_in", delay)
		if wait.Sleep(ctx, delay) != nil {
			return
		}
		delay = min(2*delay, 30*time.Second)
	}
}
