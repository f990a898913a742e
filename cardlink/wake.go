package cardlink

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/keyport/keyport"
)

// WakeHub is the push trigger keyport has today: the handset agents'
// wake-up channel. An agent keeps a long poll open on the admin server
// (WakeUpPath, over its module's TLS-PSK); Wake answers it, and the agent
// opens the admin session. It implements keyport.Trigger.
//
// In the field the trigger is an SCP80-secured SMS to the ISD (GP Amd B,
// PROTOCOLS.md §3.1); its SMPP link is cardlink/smpp, which no Trigger
// uses yet. A module whose agent is
// not waiting on this replica is ErrUnreachable here; ReplicaWake then
// publishes the wake-up to the other replicas (PostgreSQL), the job is
// retried with backoff, and a waiting agent also finds its jobs by polling
// the database (AdminServerConfig.WakeCheck), which bounds a wake-up that
// no bus carried.
type WakeHub struct {
	mu      sync.Mutex
	waiters map[keyport.EID]map[chan struct{}]struct{}
}

var _ keyport.Trigger = (*WakeHub)(nil)

// NewWakeHub returns an empty hub.
func NewWakeHub() *WakeHub {
	return &WakeHub{waiters: map[keyport.EID]map[chan struct{}]struct{}{}}
}

// Wake tells every agent of the module waiting here to open a session.
func (h *WakeHub) Wake(ctx context.Context, eid keyport.EID) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	ws := h.waiters[eid]
	if len(ws) == 0 {
		return fmt.Errorf("cardlink: wake %s: no handset agent waiting: %w", eid, keyport.ErrUnreachable)
	}
	for ch := range ws {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
	return nil
}

// Waiting returns how many agents of the module wait here.
func (h *WakeHub) Waiting(eid keyport.EID) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.waiters[eid])
}

// Wait blocks until the module is woken, hasWork (checked at once and
// then every check) reports a job, or ctx ends; it reports whether to open
// a session.
func (h *WakeHub) Wait(ctx context.Context, eid keyport.EID, check time.Duration, hasWork func() bool) bool {
	ch := make(chan struct{}, 1)
	h.mu.Lock()
	if h.waiters[eid] == nil {
		h.waiters[eid] = map[chan struct{}]struct{}{}
	}
	h.waiters[eid][ch] = struct{}{}
	h.mu.Unlock()
	defer func() {
		h.mu.Lock()
		delete(h.waiters[eid], ch)
		if len(h.waiters[eid]) == 0 {
			delete(h.waiters, eid)
		}
		h.mu.Unlock()
	}()
	if hasWork != nil && hasWork() {
		return true
	}
	t := time.NewTicker(check)
	defer t.Stop()
	for {
		select {
		case <-ch:
			return true
		case <-t.C:
			if hasWork != nil && hasWork() {
				return true
			}
		case <-ctx.Done():
			return false
		}
	}
}
