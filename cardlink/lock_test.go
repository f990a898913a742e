package cardlink_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/cardlink/agent/ace"
	"github.com/keyport/keyport/cardlink/cardlinktest"
	"github.com/keyport/keyport/gp"
	"github.com/keyport/keyport/internal/fixture"
)

// issuerWorldSecond is the provider's second key set of an IssuerWorld
// (cardlinktest.NewIssuerWorld makes it so).
func issuerWorldSecond() map[keyport.KeyUsage][]byte {
	out := map[keyport.KeyUsage][]byte{}
	for _, u := range keyport.Usages {
		out[u] = make([]byte, 16)
		for i := range out[u] {
			out[u][i] = byte(i*7) + byte(len(u))
		}
	}
	return out
}

func selectSW(t *testing.T, w *cardlinktest.IssuerWorld) gp.SW {
	t.Helper()
	r, err := gp.NewHost(w.Card).Send(ctx, gp.Select(w.AID.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	return r.SW
}

func issuerDomain(t *testing.T, w *cardlinktest.IssuerWorld) *keyport.Domain {
	t.Helper()
	d, err := w.Store.GetDomain(ctx, w.EID, w.AID)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// runJob runs one admin session and returns job ref as it ended.
func runJob(t *testing.T, w *cardlinktest.IssuerWorld, ref string) *keyport.Job {
	t.Helper()
	if _, err := w.Agent().Session(ctx); err != nil {
		t.Fatal(err)
	}
	j, err := w.Svc.GetJob(ctx, fixture.Admin, ref)
	if err != nil {
		t.Fatal(err)
	}
	return j
}

func rotationFor(t *testing.T, w *cardlinktest.IssuerWorld, keys map[keyport.KeyUsage][]byte) (keyport.ScriptRequest, map[keyport.KeyUsage][]byte) {
	t.Helper()
	d := issuerDomain(t, w)
	next := map[keyport.KeyUsage][]byte{}
	for i, u := range keyport.Usages {
		next[u] = make([]byte, 16)
		for k := range next[u] {
			next[u][k] = byte(0x40 + i + k + d.KVN)
		}
	}
	req, err := keyport.RotateScript(w.AID, d.KVN, d.SeqCounter, keys, next)
	if err != nil {
		t.Fatal(err)
	}
	return req, next
}

func TestLockIsConfirmedByTheCardThenScriptsFailWithTheCardsSWAndUnlockRestoresTheDomain(t *testing.T) {
	w := cardlinktest.NewIssuerWorld(t, cardlinktest.LinkOptions{NoWorker: true})
	// The provider's app has a rule and opens its channel.
	app := newTestApp(t, "bank-app")
	_, rj := addRule(t, w, app)
	if j := runJob(t, w, rj.Ref); j.State != keyport.JobDone {
		t.Fatalf("rule job %s: %s", j.State, j.LastError)
	}
	enf := ace.NewEnforcer(w.Card, nil)
	if err := openAs(t, w, enf, app); err != nil {
		t.Fatalf("app before the lock: %v", err)
	}
	lock, err := w.Svc.LockDomain(ctx, fixture.Admin, w.EID, w.AID, true)
	if err != nil {
		t.Fatal(err)
	}
	if d := issuerDomain(t, w); d.State != keyport.Personalized {
		t.Fatalf("domain %s before the card confirmed the lock", d.State)
	}
	// Bad requests while the lock is pending: nothing is queued.
	if _, err := w.Svc.LockDomain(ctx, w.Prov, w.EID, w.AID, true); !errors.Is(err, keyport.ErrConflict) {
		t.Fatalf("second lock while one is pending: %v", err)
	}
	other, _, _ := w.Provider(t, "Other", fixture.RSAKeys()[0])
	if _, err := w.Svc.LockDomain(ctx, other, w.EID, w.AID, true); !errors.Is(err, keyport.ErrNotFound) {
		t.Fatalf("another provider's lock: %v", err)
	}
	if j := runJob(t, w, lock.Ref); j.State != keyport.JobDone || !j.Result.Confirmed {
		t.Fatalf("lock job %s: %s", j.State, j.LastError)
	}
	d := issuerDomain(t, w)
	if d.State != keyport.Locked || d.PriorState != keyport.Personalized {
		t.Fatalf("domain %s (prior %s) after the lock", d.State, d.PriorState)
	}
	if sw := selectSW(t, w); sw != gp.SWNotFound {
		t.Fatalf("SELECT of the locked SSD: %s, want 6A82", sw)
	}
	// The enforcer refuses the app: the card does not select the SSD.
	var refused *ace.AppError
	if err := openAs(t, w, enf, app); !errors.As(err, &refused) || refused.Code != ace.CodeCard || !strings.Contains(refused.Message, "6A82") {
		t.Fatalf("app while locked: %v", err)
	}
	// The provider's script goes to the card, which refuses it.
	req, _ := rotationFor(t, w, issuerWorldSecond())
	sj, err := w.Svc.SubmitScript(ctx, w.Prov, w.EID, w.AID, req)
	if err != nil {
		t.Fatal(err)
	}
	if j := runJob(t, w, sj.Ref); j.State != keyport.JobFailed || j.Result == nil || j.Result.SW != "6A82" {
		t.Fatalf("script on a locked domain: %s %+v", j.State, j.Result)
	}
	if _, err := w.Svc.LockDomain(ctx, fixture.Admin, w.EID, w.AID, true); !errors.Is(err, keyport.ErrConflict) {
		t.Fatalf("lock of a LOCKED domain: %v", err)
	}
	if _, err := w.Svc.LockDomain(ctx, w.Prov, w.EID, w.AID, false); !errors.Is(err, keyport.ErrForbidden) {
		t.Fatalf("the provider unlocks the issuer's lock: %v", err)
	}
	unlock, err := w.Svc.LockDomain(ctx, fixture.Admin, w.EID, w.AID, false)
	if err != nil {
		t.Fatal(err)
	}
	if j := runJob(t, w, unlock.Ref); j.State != keyport.JobDone {
		t.Fatalf("unlock job %s: %s", j.State, j.LastError)
	}
	if d := issuerDomain(t, w); d.State != keyport.Personalized {
		t.Fatalf("domain %s after the unlock", d.State)
	}
	if sw := selectSW(t, w); sw != gp.SWOK {
		t.Fatalf("SELECT after the unlock: %s", sw)
	}
	if err := openAs(t, w, enf, app); err != nil {
		t.Fatalf("app after the unlock: %v", err)
	}
	w.Card.Card.Reset()
	req, _ = rotationFor(t, w, issuerWorldSecond())
	sj, err = w.Svc.SubmitScript(ctx, w.Prov, w.EID, w.AID, req)
	if err != nil {
		t.Fatal(err)
	}
	if j := runJob(t, w, sj.Ref); j.State != keyport.JobDone {
		t.Fatalf("rotation after the unlock: %s %s", j.State, j.LastError)
	}
	for _, a := range []string{"domain.lock.request", "domain.lock.done", "domain.unlock.request", "domain.unlock.done", "rotation.failed", "rotation.confirmed"} {
		if n := w.CountAudit(t, a); n != 1 {
			t.Errorf("audit %s: %d events, want 1", a, n)
		}
	}
}

func TestAProviderLocksAndUnlocksItsOwnDomain(t *testing.T) {
	w := cardlinktest.NewIssuerWorld(t, cardlinktest.LinkOptions{NoWorker: true})
	lock, err := w.Svc.LockDomain(ctx, w.Prov, w.EID, w.AID, true)
	if err != nil {
		t.Fatal(err)
	}
	if j := runJob(t, w, lock.Ref); j.State != keyport.JobDone {
		t.Fatalf("lock %s: %s", j.State, j.LastError)
	}
	unlock, err := w.Svc.LockDomain(ctx, w.Prov, w.EID, w.AID, false)
	if err != nil {
		t.Fatal(err)
	}
	if j := runJob(t, w, unlock.Ref); j.State != keyport.JobDone {
		t.Fatalf("unlock %s: %s", j.State, j.LastError)
	}
	if d := issuerDomain(t, w); d.State != keyport.Personalized {
		t.Fatalf("domain %s", d.State)
	}
}

func TestALockTheCardRefusesFailsWithItsSWAndTheDomainKeepsItsState(t *testing.T) {
	w := cardlinktest.NewIssuerWorld(t, cardlinktest.LinkOptions{NoWorker: true})
	lock, err := w.Svc.LockDomain(ctx, fixture.Admin, w.EID, w.AID, true)
	if err != nil {
		t.Fatal(err)
	}
	w.Card.SetFault(func(apdu []byte) []byte {
		if len(apdu) > 1 && apdu[1] == gp.INSSetStatus {
			return []byte{0x69, 0x85}
		}
		return nil
	})
	j := runJob(t, w, lock.Ref)
	if j.State != keyport.JobFailed || j.Result == nil || j.Result.SW != "6985" {
		t.Fatalf("lock job %s %+v", j.State, j.Result)
	}
	if d := issuerDomain(t, w); d.State != keyport.Personalized {
		t.Fatalf("domain %s after a refused lock", d.State)
	}
	w.Card.SetFault(nil)
	retry, err := w.Svc.RetryIssuerJob(ctx, fixture.Admin, lock.Ref)
	if err != nil {
		t.Fatal(err)
	}
	if j := runJob(t, w, retry.Ref); j.State != keyport.JobDone {
		t.Fatalf("retried lock %s: %s", j.State, j.LastError)
	}
	if d := issuerDomain(t, w); d.State != keyport.Locked {
		t.Fatalf("domain %s after the retried lock", d.State)
	}
}
