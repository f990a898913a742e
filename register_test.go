package keyport_test

import (
	"context"
	"encoding/json"
	"errors"
	"testing"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/internal/fixture"
	"github.com/keyport/keyport/store/storetest"
)

// registration is a personalized module of derived batch "p1" with n domains.
func registration(t testing.TB, eid keyport.EID, n int) *keyport.ModuleImport {
	m := &keyport.ModuleImport{Line: 1, EID: eid, ISDAID: "A000000151000000"}
	for i := 1; i <= n; i++ {
		m.Domains = append(m.Domains, keyport.Domain{EID: eid, AID: fixture.AID(i), KVN: 0x30, State: keyport.Unassigned,
			KeySource: keyport.KeyDerived, KCV: map[keyport.KeyUsage]string{keyport.UsageENC: "111111", keyport.UsageMAC: "222222", keyport.UsageDEK: "333333"}})
	}
	return m
}

func TestRegisterModuleStoresTheModuleWithAChainedPersoEventAndAcceptsTheSameOneAgain(t *testing.T) {
	ctx := context.Background()
	w := fixture.New(t, storetest.Open(t, storetest.SQLitePath(t)), 1, 1)
	if _, _, err := w.Svc.CreateBatch(ctx, fixture.Admin, "p1", "", nil); err != nil {
		t.Fatal(err)
	}
	eid := fixture.EID(t, 50)
	already, err := w.Svc.RegisterModule(ctx, fixture.Admin, "p1", registration(t, eid, 2), map[string]any{"isd_kvn": "31"})
	if err != nil || already {
		t.Fatalf("first registration: already %v, %v", already, err)
	}
	m, err := w.Svc.GetModule(ctx, fixture.Admin, eid)
	if err != nil || len(m.Domains) != 2 || m.Domains[0].KeySource != keyport.KeyDerived || m.Domains[1].KCV[keyport.UsageMAC] != "222222" {
		t.Fatalf("stored module %+v, %v", m, err)
	}
	evs, _ := w.Store.AuditEvents(ctx, 0, 1000)
	last := evs[len(evs)-1]
	var detail map[string]any
	if err := json.Unmarshal([]byte(last.Detail), &detail); err != nil {
		t.Fatal(err)
	}
	if last.Action != "perso" || last.Object != "module:"+string(eid) || last.Actor != "admin:test" ||
		detail["batch"] != "p1" || detail["isd_aid"] != "A000000151000000" || detail["isd_kvn"] != "31" || len(detail["domains"].([]any)) != 2 {
		t.Errorf("last audit event %+v", last)
	}

	// The same registration again (sequence counters moved): accepted, nothing written.
	again := registration(t, eid, 2)
	again.Domains[0].SeqCounter = 5
	already, err = w.Svc.RegisterModule(ctx, fixture.Admin, "p1", again, nil)
	if err != nil || !already {
		t.Fatalf("same registration again: already %v, %v", already, err)
	}
	if n := w.CountAudit(t, "perso"); n != 1 {
		t.Errorf("%d perso events, want 1", n)
	}
	if r, err := w.Svc.VerifyAudit(ctx); err != nil {
		t.Errorf("audit chain: %+v %v", r, err)
	}
}

func TestRegisterModuleRefusesADifferentModuleUnderTheSameEID(t *testing.T) {
	ctx := context.Background()
	w := fixture.New(t, storetest.Open(t, storetest.SQLitePath(t)), 1, 1)
	for _, name := range []string{"p1", "p2"} {
		if _, _, err := w.Svc.CreateBatch(ctx, fixture.Admin, name, "", nil); err != nil {
			t.Fatal(err)
		}
	}
	eid := fixture.EID(t, 51)
	if _, err := w.Svc.RegisterModule(ctx, fixture.Admin, "p1", registration(t, eid, 2), nil); err != nil {
		t.Fatal(err)
	}
	otherKCV := registration(t, eid, 2)
	otherKCV.Domains[1].KCV = map[keyport.KeyUsage]string{keyport.UsageENC: "AAAAAA", keyport.UsageMAC: "222222", keyport.UsageDEK: "333333"}
	otherISD := registration(t, eid, 2)
	otherISD.ISDAID = "A0000001510000"
	for name, c := range map[string]struct {
		batch string
		m     *keyport.ModuleImport
	}{
		"more domains": {"p1", registration(t, eid, 3)},
		"other KCVs":   {"p1", otherKCV},
		"other ISD":    {"p1", otherISD},
		"other batch":  {"p2", registration(t, eid, 2)},
	} {
		if already, err := w.Svc.RegisterModule(ctx, fixture.Admin, c.batch, c.m, nil); !errors.Is(err, keyport.ErrConflict) || already {
			t.Errorf("%s: already %v, %v; want ErrConflict", name, already, err)
		}
	}
	if n := w.CountAudit(t, "perso"); n != 1 {
		t.Errorf("%d perso events, want 1", n)
	}
}

func TestRegisterModuleAndItsReadsAreForAdminsAndDerivedBatchesOnly(t *testing.T) {
	ctx := context.Background()
	w := fixture.New(t, storetest.Open(t, storetest.SQLitePath(t)), 1, 1)
	if _, _, err := w.Svc.CreateBatch(ctx, fixture.Admin, "p1", "", nil); err != nil {
		t.Fatal(err)
	}
	eid := fixture.EID(t, 52)
	provider := keyport.Principal{ProviderID: "prv_x"}
	if _, err := w.Svc.RegisterModule(ctx, provider, "p1", registration(t, eid, 1), nil); !errors.Is(err, keyport.ErrForbidden) {
		t.Errorf("provider registers: %v, want ErrForbidden", err)
	}
	if _, err := w.Svc.GetBatch(ctx, provider, "p1"); !errors.Is(err, keyport.ErrForbidden) {
		t.Errorf("provider reads the batch: %v, want ErrForbidden", err)
	}
	if _, err := w.Svc.GetModule(ctx, provider, fixture.EID(t, 0)); !errors.Is(err, keyport.ErrForbidden) {
		t.Errorf("provider reads the module: %v, want ErrForbidden", err)
	}
	if _, err := w.Svc.RegisterModule(ctx, fixture.Admin, "b1", registration(t, eid, 1), nil); !errors.Is(err, keyport.ErrInvalid) {
		t.Errorf("imported batch: %v, want ErrInvalid", err)
	}
	imported := registration(t, eid, 1)
	imported.Domains[0].KeySource = keyport.KeyImported
	if _, err := w.Svc.RegisterModule(ctx, fixture.Admin, "p1", imported, nil); !errors.Is(err, keyport.ErrInvalid) {
		t.Errorf("a domain with imported keys: %v, want ErrInvalid", err)
	}
	if _, err := w.Svc.RegisterModule(ctx, fixture.Admin, "p1", registration(t, eid, 0), nil); !errors.Is(err, keyport.ErrInvalid) {
		t.Errorf("no domains: %v, want ErrInvalid", err)
	}
	if _, err := w.Svc.GetModule(ctx, fixture.Admin, eid); !errors.Is(err, keyport.ErrNotFound) {
		t.Errorf("a refused registration stored the module: %v", err)
	}
	if b, err := w.Svc.GetBatch(ctx, fixture.Admin, "p1"); err != nil || b.KeySource != keyport.KeyDerived {
		t.Errorf("admin reads the batch: %+v, %v", b, err)
	}
}
