package keyport_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/internal/fixture"
	"github.com/keyport/keyport/store/storetest"
)

// historyWorld is a claimed domain and a way to add finished issuer jobs
// to its history directly in the store.
func historyWorld(t *testing.T) (*fixture.World, *keyport.Domain, func(op keyport.IssuerOp, st keyport.JobState, params any)) {
	t.Helper()
	ctx := context.Background()
	w := fixture.New(t, storetest.Open(t, storetest.SQLitePath(t)), 1, 1)
	p, _, wk := w.Provider(t, "Bank A", fixture.RSAKeys()[0])
	c, _, err := w.Svc.Claim(ctx, p, keyport.ClaimRequest{EID: fixture.EID(t, 0), WrappingKeyID: wk})
	if err != nil {
		t.Fatal(err)
	}
	d, err := w.Store.GetDomain(ctx, c.EID, c.AID)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	add := func(op keyport.IssuerOp, st keyport.JobState, params any) {
		b, _ := json.Marshal(params)
		n++
		j := &keyport.Job{Ref: fmt.Sprintf("job_h%d", n), Kind: keyport.JobIssuer, DomainID: d.ID, ModuleID: d.ModuleID,
			ProviderID: p.ProviderID, State: st, Issuer: &keyport.IssuerPayload{Op: op, EID: d.EID, AID: d.AID, Params: b}}
		if err := w.Store.CreateJob(ctx, j); err != nil {
			t.Fatal(err)
		}
	}
	return w, d, add
}

// Who locked a domain is its newest lock's, however long its history: the
// history was read 500 jobs from the oldest, so a provider that locked it
// once and then changed access rules 500 times saw the issuer's later lock
// as its own, and could undo it.
func TestWhoLockedADomainIsItsNewestLocksAfterAnyNumberOfJobs(t *testing.T) {
	w, d, add := historyWorld(t)
	lock := func(by string, on bool) map[string]any { return map[string]any{"aid": d.AID, "lock": on, "by": by} }
	add(keyport.OpLock, keyport.JobDone, lock("provider", true))
	add(keyport.OpUnlock, keyport.JobDone, lock("provider", false))
	for range 600 {
		add(keyport.OpStoreAccessRule, keyport.JobDone, map[string]any{"rules": []string{"acr_x"}})
	}
	add(keyport.OpLock, keyport.JobDone, lock("admin", true))
	if who, err := keyport.LockedBy(context.Background(), w.Store, d); err != nil || who != "admin" {
		t.Fatalf("locked by %q (%v) after 603 issuer jobs, the last the issuer's lock; want admin", who, err)
	}
}

// A release frees its domain only once the removal of the access rules
// queued after it is done: an earlier owner's done removal, 500 jobs
// before, satisfied the gate while this release's had failed, and the
// domain could go to the next owner with the last one's rules on the card.
func TestAReleaseGateLooksAtItsOwnRuleRemovalAfterAnyNumberOfJobs(t *testing.T) {
	w, d, add := historyWorld(t)
	add(keyport.OpRelease, keyport.JobDone, map[string]any{})
	add(keyport.OpRemoveDomainAccessRules, keyport.JobDone, map[string]any{})
	for range 600 {
		add(keyport.OpStoreAccessRule, keyport.JobDone, map[string]any{})
	}
	add(keyport.OpRelease, keyport.JobDone, map[string]any{})
	add(keyport.OpRemoveDomainAccessRules, keyport.JobFailed, map[string]any{})
	if why, err := keyport.ReleaseRulesRemoved(context.Background(), w.Store, d); err != nil || why == "" {
		t.Fatalf("the gate: %q %v, want it closed: this release's rule removal failed", why, err)
	}
	add(keyport.OpRemoveDomainAccessRules, keyport.JobDone, map[string]any{})
	if why, err := keyport.ReleaseRulesRemoved(context.Background(), w.Store, d); err != nil || why != "" {
		t.Fatalf("the gate after a done removal: %q %v, want it open", why, err)
	}
}
