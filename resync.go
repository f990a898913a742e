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
// moved the counter, or a key change's answer (a second-key script's or a
// rotation's) left its outcome unproven (keyChangeUnproven), so the card
// may be on the new key set, whose counter is another. The domain is marked unverified (SeqUnverified) in
// the same transaction: GET domain reports no counter, SubmitScript and
// SubmitDataScript refuse (ErrCounterResync), and the queued probe wakes
// the module. In the module's next session the probe's script — the
// admin session's targeted application selects the SSD, then INITIALIZE
// UPDATE with a random host challenge, and no EXTERNAL AUTHENTICATE — goes
// out like any data script, and answerData records the counter of the
// answer (SetDomainKeys with the KVN and KCVs unchanged, which clears the
// mark) and tells the provider (job.done webhook, audit event
// counter.resync). The INITIALIZE UPDATE asks for the domain's KVN or,
// while the domain has pending key sets (pendingKeys: a key change's
// outcome is unproven; for an ASSIGNED domain, its first key change: once
// that ran, the card answers 6A88 to INITIALIZE UPDATE on KVN 30), for
// the first key set the card has (P1 = 00, PROTOCOLS.md §1):
// the KVN in the answer's key information says which one answered, and
// the job's result reports it (card_kvn). keyport records the counter only
// when that KVN is the domain's or a pending one, and never records the
// KVN itself: only a confirmed second key or rotation moves it.
//
// The read is not authenticated: the card cryptogram of the answer is
// under the provider's keys, which keyport does not hold. That is
// acceptable because the counter only says where the provider's next
// precomputed script starts: a forged counter can only make that script
// fail on the card (its cryptograms would not match), never make a script
// succeed falsely, since every confirmation is still the card's proof
// under the domain's keys. The same holds for the KVN of the answer: it is
// reported, and it picks nothing but whether the counter is recorded; the
// pending key sets come from the job history alone, and a rotation from
// one is confirmed only by the R-MAC its provider declared under those
// keys. A probe that does not tell the counter clears the mark all the
// same (counter.resync.failed): keyport reports the last counter it knew,
// and a provider's script built on a wrong one fails and leaves the
// card's counter, read from its answer, behind.
func counterProbe(eid EID, d *Domain, anyKeySet bool) (*DataPayload, error) {
	hc := make([]byte, 8)
	if _, err := rand.Read(hc); err != nil {
		return nil, err
	}
	kvn := byte(d.KVN)
	if anyKeySet {
		kvn = 0 // the first key set the card has
	}
	iu := gp.InitializeUpdate(kvn, hc)
	return &DataPayload{EID: eid, AID: d.AID, APDUs: apduHex([]gp.Command{iu}),
		Probe: true, ProbeState: d.State}, nil
}

// probeKeySet says why a counter probe's answer from key set kvn (nil: the
// answer named none) does not tell domain d's counter, "" when it does:
// kvn is the domain's KVN or one of its pending key sets.
func (s *Service) probeKeySet(ctx context.Context, d *Domain, kvn *int) (string, error) {
	if kvn == nil {
		return "the INITIALIZE UPDATE answer names no key set", nil
	}
	if *kvn == d.KVN {
		return "", nil
	}
	pending, err := pendingKeys(ctx, s.Store, d)
	if err != nil || hasPendingKVN(pending, *kvn) {
		return "", err
	}
	return fmt.Sprintf("the card answered with key set %02X, which is neither the domain's (KVN %02X) nor a pending one: its counter is not the domain's, and keyport keeps the last one it knew", *kvn, d.KVN), nil
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
	// The failed job this probe follows is already final in tx: a key
	// change it leaves unproven is among the pending key sets.
	pendingSets, err := pendingKeys(ctx, tx, d)
	if err != nil {
		return err
	}
	payload, err := counterProbe(eid, d, len(pendingSets) > 0)
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
