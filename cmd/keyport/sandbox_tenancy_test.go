package main

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/hsm/hsmtest"
	"github.com/keyport/keyport/internal/fixture"
	"github.com/keyport/keyport/store/storetest"
	"github.com/keyport/keyport/web"
)

// TestASandboxModuleIsTheTestModuleOfTheProviderHoldingItsDomains: in the
// shared pool, provider A's claim makes a module A's: provider B can
// neither claim its other domains (409) nor change its fault (409), B
// cannot set the fault of a module it holds no domain of (403), and A and
// an admin can; the module list tells each whose module it is. Two
// providers racing for one free module end with one holder.
func TestASandboxModuleIsTheTestModuleOfTheProviderHoldingItsDomains(t *testing.T) {
	ctx := context.Background()
	st := storetest.Open(t, storetest.SQLitePath(t))
	w := fixture.New(t, st, 1, 1)
	principal := func(name string) keyport.Principal {
		prov, token, err := w.Svc.AddProvider(ctx, fixture.Admin, name, name+"@bank.example", keyport.KindBank)
		if err != nil {
			t.Fatal(err)
		}
		p, err := w.Svc.Authenticate(ctx, token)
		if err != nil || p.ProviderID != prov.ID {
			t.Fatalf("%s: %+v %v", name, p, err)
		}
		if _, err := w.Svc.RegisterWrappingKey(ctx, p, fixture.PublicPEM(fixture.RSAKeys()[0])); err != nil {
			t.Fatal(err)
		}
		return p
	}
	a, b := principal("alpha"), principal("beta")
	run := testSandbox(t, w, &sandboxFlags{on: true, hsm: hsmtest.New(t), modules: 3, domains: 2, expiry: time.Minute},
		&cardLinkFlags{webhookTimeout: time.Second}, sandboxOptions{})
	sb := run.sb
	wk := func(p keyport.Principal) string {
		ks, err := w.Svc.ListWrappingKeys(ctx, p)
		if err != nil || len(ks) == 0 {
			t.Fatalf("wrapping keys: %v", err)
		}
		return ks[0].ID
	}
	m0, m1, m2 := run.eids[0], run.eids[1], run.eids[2]
	drop := keyport.Fault{Kind: keyport.FaultDrop, Command: 1}

	if err := sb.SetFault(ctx, a, m0, drop); !errors.Is(err, keyport.ErrForbidden) {
		t.Fatalf("fault on a module A holds no domain of: %v", err)
	}
	if _, _, err := sb.Claim(ctx, a, keyport.ClaimRequest{EID: m0, WrappingKeyID: wk(a)}); err != nil {
		t.Fatal(err)
	}
	if err := sb.SetFault(ctx, a, m0, drop); err != nil {
		t.Fatalf("A's fault on A's module: %v", err)
	}
	if _, _, err := sb.Claim(ctx, b, keyport.ClaimRequest{EID: m0, WrappingKeyID: wk(b)}); !errors.Is(err, keyport.ErrConflict) {
		t.Fatalf("B claims a domain of A's module: %v", err)
	}
	if err := sb.SetFault(ctx, b, m0, keyport.Fault{Kind: keyport.FaultNone}); !errors.Is(err, keyport.ErrConflict) || sb.Faults().Fault(m0).Kind != keyport.FaultDrop {
		t.Fatalf("B clears the fault of A's module: %v, fault %+v", err, sb.Faults().Fault(m0))
	}
	if _, _, err := sb.Claim(ctx, a, keyport.ClaimRequest{EID: m0, WrappingKeyID: wk(a)}); err != nil {
		t.Fatalf("A claims the other domain of its module: %v", err)
	}
	if err := sb.SetFault(ctx, fixture.Admin, m0, keyport.Fault{Kind: keyport.FaultNone}); err != nil {
		t.Fatalf("admin: %v", err)
	}

	list := func(p keyport.Principal) map[keyport.EID]keyport.SandboxModule {
		ms, err := sb.ListModules(ctx, p)
		if err != nil {
			t.Fatal(err)
		}
		out := map[keyport.EID]keyport.SandboxModule{}
		for _, m := range ms {
			out[m.EID] = m
		}
		return out
	}
	if la, lb := list(a), list(b); !la[m0].Yours || la[m0].Taken || lb[m0].Yours || !lb[m0].Taken || la[m1].Yours || la[m1].Taken {
		t.Fatalf("lists: A %+v, B %+v", la, lb)
	}
	if ad := list(fixture.Admin); ad[m0].Yours || !ad[m0].Taken || ad[m1].Taken {
		t.Fatalf("admin's list: %+v", ad)
	}

	// A race for m1: both claim at once; one provider holds it after.
	errs := make(chan error, 2)
	for _, p := range []keyport.Principal{a, b} {
		go func() {
			_, _, err := sb.Claim(ctx, p, keyport.ClaimRequest{EID: m1, WrappingKeyID: wk(p)})
			errs <- err
		}()
	}
	won := 0
	for range 2 {
		if err := <-errs; err == nil {
			won++
		} else if !errors.Is(err, keyport.ErrConflict) {
			t.Fatal(err)
		}
	}
	holders := 0
	for _, p := range []keyport.Principal{a, b} {
		if list(p)[m1].Yours {
			holders++
		}
	}
	if holders != 1 {
		t.Fatalf("after the race: %d claims won, %d providers hold module %s", won, holders, m1)
	}
	if list(a)[m2].Taken || list(b)[m2].Taken {
		t.Fatal("an unclaimed module is taken")
	}
}

// TestASandboxModuleItsProviderReleasesIsFreeForAnother: the sandbox API
// releases, locks and unlocks a provider's sandbox domains through the
// virtual module, as production does (202, the job marked sandbox), and
// each domain changes state only when its job is DONE. While provider A
// holds one domain of a module, provider B may not claim the other; once A
// has released both, B can, and B's domain locks and unlocks. Another
// provider's domain, or a domain outside the pool, is 404.
func TestASandboxModuleItsProviderReleasesIsFreeForAnother(t *testing.T) {
	ctx := context.Background()
	st := storetest.Open(t, storetest.SQLitePath(t))
	w := fixture.New(t, st, 1, 1)
	type provider struct {
		p     keyport.Principal
		token string
		wk    string
	}
	newProvider := func(name string) provider {
		prov, token, wk := w.Provider(t, name, fixture.RSAKeys()[0])
		return provider{prov, token, wk}
	}
	a, b := newProvider("alpha"), newProvider("beta")
	run := testSandbox(t, w, &sandboxFlags{on: true, hsm: hsmtest.New(t), modules: 2, domains: 2, expiry: time.Minute},
		&cardLinkFlags{webhookTimeout: time.Second}, sandboxOptions{Tick: 100 * time.Millisecond})
	sb := run.sb
	srv := httptest.NewServer(web.New(w.Svc, web.Options{Sandbox: sb}))
	defer srv.Close()
	post := func(who provider, path string) (int, keyport.JobView) {
		t.Helper()
		req, _ := http.NewRequest("POST", srv.URL+path, nil)
		req.Header.Set("Authorization", "Bearer "+who.token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var v keyport.JobView
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode == http.StatusAccepted {
			if err := json.Unmarshal(body, &v); err != nil || !v.Sandbox || resp.Header.Get("Location") != "/api/v1/sandbox/jobs/"+v.ID {
				t.Fatalf("POST %s: %s, Location %q (%v)", path, body, resp.Header.Get("Location"), err)
			}
		}
		return resp.StatusCode, v
	}
	done := func(who provider, v keyport.JobView) {
		t.Helper()
		giveUp := time.Now().Add(2 * time.Minute) // a hang, not a timing
		for {
			j, err := sb.GetJob(ctx, who.p, v.ID)
			if err != nil {
				t.Fatal(err)
			}
			if j.State.Final() {
				if j.State != keyport.JobDone {
					t.Fatalf("job %s (%s) ended %s: %s", j.Ref, j.Kind, j.State, j.LastError)
				}
				return
			}
			if time.Now().After(giveUp) {
				t.Fatalf("job %s still %s", j.Ref, j.State)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	state := func(eid keyport.EID, aid keyport.AID) keyport.DomainState {
		t.Helper()
		d, err := sb.Box.Store.GetDomain(ctx, eid, aid)
		if err != nil {
			t.Fatal(err)
		}
		return d.State
	}
	// becomes waits until the domain is in state want: a release ends with
	// its proof, a job of its own that the release job queues.
	becomes := func(who provider, eid keyport.EID, aid keyport.AID, want keyport.DomainState) {
		t.Helper()
		giveUp := time.Now().Add(2 * time.Minute) // a hang, not a timing
		for state(eid, aid) != want {
			if time.Now().After(giveUp) {
				jobs, _ := sb.ListJobs(ctx, who.p)
				t.Fatalf("domain %s/%s is %s, want %s; jobs %+v", eid, aid, state(eid, aid), want, jobs)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	m := run.eids[0]
	var aids []keyport.AID
	for range 2 {
		c, _, err := sb.Claim(ctx, a.p, keyport.ClaimRequest{EID: m, WrappingKeyID: a.wk})
		if err != nil {
			t.Fatal(err)
		}
		aids = append(aids, c.AID)
	}
	domain := func(aid keyport.AID) string { return "/api/v1/sandbox/domains/" + string(m) + "/" + string(aid) }

	if st, _ := post(b, domain(aids[0])+"/release"); st != http.StatusNotFound {
		t.Fatalf("B releases A's domain: %d", st)
	}
	if st, _ := post(a, "/api/v1/sandbox/domains/"+string(fixture.EID(t, 0))+"/"+string(aids[0])+"/release"); st != http.StatusNotFound {
		t.Fatalf("a release outside the sandbox pool: %d", st)
	}
	st0, j := post(a, domain(aids[0])+"/release")
	if st0 != http.StatusAccepted || state(m, aids[0]) != keyport.Releasing {
		t.Fatalf("release: %d, domain %s", st0, state(m, aids[0]))
	}
	done(a, j)
	becomes(a, m, aids[0], keyport.Unassigned)
	if _, _, err := sb.Claim(ctx, b.p, keyport.ClaimRequest{EID: m, AID: aids[0], WrappingKeyID: b.wk}); !errors.Is(err, keyport.ErrConflict) {
		t.Fatalf("B claims a domain of a module A still holds one of: %v", err)
	}
	_, j = post(a, domain(aids[1])+"/release")
	done(a, j)
	becomes(a, m, aids[1], keyport.Unassigned)
	mods, err := sb.ListModules(ctx, b.p)
	if err != nil {
		t.Fatal(err)
	}
	for _, mod := range mods {
		if mod.EID == m && (mod.Taken || mod.Free != 2) {
			t.Fatalf("after A released both domains, B sees %+v", mod)
		}
	}
	c, _, err := sb.Claim(ctx, b.p, keyport.ClaimRequest{EID: m, WrappingKeyID: b.wk})
	if err != nil {
		t.Fatalf("B claims the module A released: %v", err)
	}
	if _, err := sb.KeyPackage(ctx, b.p, m, c.AID); err != nil {
		t.Fatalf("B's key package of the released domain: %v", err)
	}
	_, j = post(b, domain(c.AID)+"/lock")
	done(b, j)
	if s := state(m, c.AID); s != keyport.Locked {
		t.Fatalf("after the lock: %s", s)
	}
	_, j = post(b, domain(c.AID)+"/unlock")
	done(b, j)
	if s := state(m, c.AID); s != keyport.Assigned {
		t.Fatalf("after the unlock: %s", s)
	}
}
