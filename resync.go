package keyport

import (
	"context"
	"crypto/rand"
	"fmt"

	"github.com/keyport/keyport/gp"
)

// ErrCounterResync refuses a provider's script while its domain's sequence
// counter is unverified (Domain.SeqUnverified): keyport reads it again in
// the module's next admin session, and a script built on the counter it
// reported before would fail on the card. It wraps ErrConflict (409).
var ErrCounterResync = fmt.Errorf("%w: the domain's sequence counter is resynchronizing: an answer from the card was lost, so keyport re-reads the counter in the module's next admin session; nothing was stored: build the script again on the counter GET /api/v1/domains/{eid}/{aid} reports after that session", ErrConflict)

// ActionCounterResync is the audit action of a counter probe's end
// (".failed" appended when the card did not tell the counter).
const ActionCounterResync = "counter.resync"

// A counter probe is a data job (DataPayload.Probe) keyport queues itself
// when it lost track of a domain's SCP03 sequence counter: a card job's
// answer was lost after the script went out (a broken session, or a SENT
// job that expired), so the card may have run its INITIALIZE UPDATE and
// moved the counter. The domain is marked unverified (SeqUnverified) in the
// same transaction: GET domain reports no counter, SubmitScript and
// SubmitDataScript refuse (ErrCounterResync), and the queued probe wakes
// the module. In the module's next session the probe's script — the
// admin session's targeted application selects the SSD, then INITIALIZE
// UPDATE on the domain's KVN with a random host challenge, and no EXTERNAL
// AUTHENTICATE — goes out like any data script, and answerData records the
// counter of the answer (SetDomainKeys with the KVN and KCVs unchanged,
// which clears the mark) and tells the provider (job.done webhook, audit
// event counter.resync).
//
// The read is not authenticated: the card cryptogram of the answer is
// under the provider's keys, which keyport does not hold. That is
// acceptable because the counter only says where the provider's next
// precomputed script starts: a forged counter can only make that script
// fail on the card (its cryptograms would not match), never make a script
// succeed falsely, since every confirmation is still the card's proof
// under the domain's keys. A probe that does not tell the counter clears
// the mark all the same (counter.resync.failed): keyport reports the last
// counter it knew, and a provider's script built on a wrong one fails and
// leaves the card's counter, read from its answer, behind.
func counterProbe(eid EID, d *Domain) (*DataPayload, error) {
	hc := make([]byte, 8)
	if _, err := rand.Read(hc); err != nil {
		return nil, err
	}
	iu := gp.InitializeUpdate(byte(d.KVN), hc)
	return &DataPayload{EID: eid, AID: d.AID, APDUs: apduHex([]gp.Command{iu}),
		Probe: true, ProbeState: d.State}, nil
}

// answerLost wraps the end of card job j, whose answer was lost after its
// script went out, so that the same transaction marks its domain's counter
// unverified and queues a counter probe (see counterProbe). Issuer jobs
// learn the counter themselves when their dialog starts over: e is
// returned unchanged for them.
func (s *Service) answerLost(j *Job, e jobEnd) jobEnd {
	eid, aid, _, _, err := j.cardScript()
	if err != nil {
		return e
	}
	prev := e.in
	e.in = func(ctx context.Context, tx Repo) (DomainState, error) {
		d, err := tx.GetDomain(ctx, eid, aid)
		if err != nil {
			return "", err
		}
		ds := d.State
		if prev != nil {
			if ds, err = prev(ctx, tx); err != nil {
				return "", err
			}
		}
		if err := s.queueCounterProbe(ctx, tx, eid, d, j.ProviderID); err != nil {
			return "", err
		}
		return ds, nil
	}
	return e
}

// queueCounterProbe marks domain d's counter unverified and queues its
// probe, with its audit event and the provider's job.queued webhook, in
// tx. Nothing when a probe for d is already pending.
func (s *Service) queueCounterProbe(ctx context.Context, tx Repo, eid EID, d *Domain, providerID string) error {
	if err := tx.SetCounterUnverified(ctx, d.ID, true); err != nil {
		return err
	}
	pending, err := tx.ListJobs(ctx, JobFilter{DomainID: d.ID, Kind: JobData, States: []JobState{JobQueued, JobSent}})
	if err != nil {
		return err
	}
	for _, p := range pending {
		if p.Data != nil && p.Data.Probe {
			return nil
		}
	}
	payload, err := counterProbe(eid, d)
	if err != nil {
		return err
	}
	now := s.now().UTC()
	// No expiry: the mark stays until the module comes back.
	j := &Job{Ref: NewID("job"), Kind: JobData, DomainID: d.ID, ModuleID: d.ModuleID, ProviderID: providerID,
		State: JobQueued, NextRunAt: now, Data: payload}
	if err := tx.CreateJob(ctx, j); err != nil {
		return err
	}
	if err := s.audit(ctx, tx, "system", "counter.unverified", domainObject(eid, d.AID),
		map[string]any{"job": j.Ref, "last_counter": d.SeqCounter}); err != nil {
		return err
	}
	if providerID == "" {
		return nil
	}
	prov, err := tx.GetProvider(ctx, providerID)
	if err != nil {
		return err
	}
	return s.notify(ctx, tx, j, d.State, prov.WebhookURL)
}

// CounterState is what GET domain says of the counter: "known", or
// "resynchronizing" while it is unverified (the counter is then null).
func (d *Domain) CounterState() string {
	if d.SeqUnverified {
		return "resynchronizing"
	}
	return "known"
}
