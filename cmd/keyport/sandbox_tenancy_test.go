package main

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/hsm/hsmtest"
	"github.com/keyport/keyport/internal/fixture"
	"github.com/keyport/keyport/store/storetest"
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
	prodApp := &app{cfg: config{DataDir: t.TempDir(), HSM: w.Token.URI}, log: slog.New(slog.DiscardHandler), store: st, hsm: w.HSM, svc: w.Svc}
	run, err := startSandbox(ctx, prodApp, &sandboxFlags{on: true, hsm: hsmtest.New(t), modules: 3, domains: 2, expiry: time.Minute},
		&cardLinkFlags{webhookTimeout: time.Second}, sandboxOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer run.Close()
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
