package main

import (
	"context"
	"errors"
	"regexp"
	"testing"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/cardlink/cardlinktest"
	"github.com/keyport/keyport/internal/fixture"
)

var queuedJobRE = regexp.MustCompile(`queued as job (\S+);`)

// TestDomainCommandsQueueTheLockUnlockAndReleaseTheCardConfirms: `keyport domain
// lock` queues the issuer's lock, recorded for the operator; the module's
// next admin session runs it and the card's read-back moves the domain to
// LOCKED; a second lock is refused; `unlock` brings it back and `release`
// hands the domain back, unassigned. Bad arguments queue nothing.
func TestDomainCommandsQueueTheLockUnlockAndReleaseTheCardConfirms(t *testing.T) {
	ctx := context.Background()
	o := capture(t)
	w := cardlinktest.NewIssuerWorld(t, cardlinktest.LinkOptions{NoWorker: true})
	common := []string{"--data-dir", t.TempDir(), "--db", w.DBPath, "--hsm", w.World.Token.URI, "--operator", "alice"}
	jobs := func() int {
		js, err := w.Store.ListJobs(ctx, keyport.JobFilter{Limit: 100})
		if err != nil {
			t.Fatal(err)
		}
		return len(js)
	}
	before := jobs()
	for _, bad := range [][]string{
		{"domain", "lock", string(w.EID)},
		{"domain", "lock", "123", string(w.AID)},
		{"domain", "lock", string(w.EID), "not-hex"},
	} {
		var ee exitError
		if err := run(ctx, append(bad, common...)); !errors.As(err, &ee) || ee.code != 2 {
			t.Errorf("%v: %v, want a usage error", bad, err)
		}
	}
	if n := jobs(); n != before {
		t.Fatalf("bad arguments queued %d jobs", n-before)
	}
	step := func(verb string, want keyport.DomainState) {
		t.Helper()
		out := kp(t, o, common, "domain", verb, string(w.EID), string(w.AID))
		m := queuedJobRE.FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("%s: %q names no job", verb, out)
		}
		if _, err := w.Agent().Session(ctx); err != nil {
			t.Fatal(err)
		}
		j, err := w.Svc.GetJob(ctx, fixture.Admin, m[1])
		if err != nil || j.State != keyport.JobDone || j.Result == nil || !j.Result.Confirmed {
			t.Fatalf("%s job: %+v %v", verb, j, err)
		}
		d, err := w.Store.GetDomain(ctx, w.EID, w.AID)
		if err != nil || d.State != want {
			t.Fatalf("after %s: %+v %v", verb, d, err)
		}
	}
	step("lock", keyport.Locked)
	if w.CountAudit(t, "domain.lock.request") != 1 {
		t.Fatal("the lock request is not audited once")
	}
	evs, _ := w.Store.RecentAudit(ctx, 50)
	found := false
	for _, e := range evs {
		if e.Action == "domain.lock.request" && e.Actor == "operator:alice" {
			found = true
		}
	}
	if !found {
		t.Fatalf("the lock request is not the operator's: %+v", evs)
	}
	n := jobs()
	if err := run(ctx, append([]string{"domain", "lock", string(w.EID), string(w.AID)}, common...)); !errors.Is(err, keyport.ErrConflict) || jobs() != n {
		t.Fatalf("a second lock: %v", err)
	}
	step("unlock", keyport.Personalized)
	step("release", keyport.Unassigned)
}
