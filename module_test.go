package keyport_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"testing"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/internal/fixture"
	"github.com/keyport/keyport/store"
	"github.com/keyport/keyport/store/storetest"
)

func TestExportHandsetPSKIsForAdminsAuditedAndTheModulesOwnPSK(t *testing.T) {
	w := fixture.New(t, storetest.Open(t, storetest.SQLitePath(t)), 2, 1)
	w.Svc.Link = w.HSM
	ctx := context.Background()
	eid := fixture.EID(t, 1)
	psk, err := w.Svc.ExportHandsetPSK(ctx, fixture.Admin, eid)
	if err != nil || len(psk) < 16 {
		t.Fatalf("export: %d bytes, %v", len(psk), err)
	}
	// The same PSK the admin server's handshake uses for that identity.
	if tls := w.HandshakePSK(t, eid); !bytes.Equal(tls, psk) {
		t.Error("exported PSK differs from the handshake's")
	}
	if other, _ := w.Svc.ExportHandsetPSK(ctx, fixture.Admin, fixture.EID(t, 0)); bytes.Equal(other, psk) {
		t.Error("two modules share a PSK")
	}
	if n := w.CountAudit(t, "module.psk-export"); n != 2 {
		t.Errorf("%d export audit events, want 2", n)
	}
	p, _, _ := w.Provider(t, "Bank A", fixture.RSAKeys()[0])
	if _, err := w.Svc.ExportHandsetPSK(ctx, p, eid); !errors.Is(err, keyport.ErrForbidden) {
		t.Errorf("provider export: %v, want ErrForbidden", err)
	}
	if _, err := w.Svc.ExportHandsetPSK(ctx, fixture.Admin, fixture.EID(t, 99)); !errors.Is(err, keyport.ErrNotFound) {
		t.Errorf("unknown module: %v, want ErrNotFound", err)
	}
}

func TestLookupShowsAProviderOnlyFreeDomainsAndItsOwn(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		ctx := context.Background()
		w := fixture.New(t, s, 1, 3)
		a, _, wkA := w.Provider(t, "Bank A", fixture.RSAKeys()[0])
		b, _, wkB := w.Provider(t, "Bank B", fixture.RSAKeys()[0])
		eid := fixture.EID(t, 0)
		if _, _, err := w.Svc.Claim(ctx, a, keyport.ClaimRequest{EID: eid, AID: fixture.AID(1), WrappingKeyID: wkA}); err != nil {
			t.Fatal(err)
		}
		if _, _, err := w.Svc.Claim(ctx, b, keyport.ClaimRequest{EID: eid, AID: fixture.AID(2), WrappingKeyID: wkB}); err != nil {
			t.Fatal(err)
		}
		v, err := w.Svc.LookupModule(ctx, a, eid)
		if err != nil {
			t.Fatal(err)
		}
		var seen []string
		for _, d := range v.Domains {
			seen = append(seen, string(d.AID)+":"+string(d.State))
			if d.Wrapped != nil {
				t.Error("lookup returned stored wrapped keys")
			}
		}
		if want := fmt.Sprint([]string{string(fixture.AID(1)) + ":ASSIGNED", string(fixture.AID(3)) + ":UNASSIGNED"}); fmt.Sprint(seen) != want {
			t.Errorf("provider A sees %v, want %v", seen, want)
		}
		if _, err := w.Svc.KeyPackage(ctx, a, eid, fixture.AID(2)); !errors.Is(err, keyport.ErrNotFound) {
			t.Errorf("A fetched B's package: %v", err)
		}
		if _, err := w.Svc.GetDomain(ctx, a, eid, fixture.AID(2)); !errors.Is(err, keyport.ErrNotFound) {
			t.Errorf("A read B's domain: %v", err)
		}
		if _, _, err := w.Svc.Claim(ctx, a, keyport.ClaimRequest{EID: eid, WrappingKeyID: wkB}); err == nil {
			t.Error("A claimed with B's wrapping key")
		}
	})
}

func TestAPrincipalWithoutAProviderSeesNoDomain(t *testing.T) {
	s := storetest.Open(t, storetest.SQLitePath(t))
	w := fixture.New(t, s, 1, 1)
	ctx := context.Background()
	if _, err := w.Svc.GetDomain(ctx, keyport.Principal{}, fixture.EID(t, 0), fixture.AID(1)); !errors.Is(err, keyport.ErrForbidden) {
		t.Errorf("GetDomain with an empty principal: %v, want ErrForbidden", err)
	}
	if _, err := w.Svc.ListDomains(ctx, keyport.Principal{}); !errors.Is(err, keyport.ErrForbidden) {
		t.Errorf("ListDomains with an empty principal: %v", err)
	}
	if _, err := w.Svc.KeyPackage(ctx, keyport.Principal{}, fixture.EID(t, 0), fixture.AID(1)); !errors.Is(err, keyport.ErrForbidden) {
		t.Errorf("KeyPackage with an empty principal: %v", err)
	}
}

// registration is a personalized module of batch "p1" with n domains, with
// placeholder blobs (RegisterModule stores them; it does not unwrap them).
func registration(t testing.TB, eid keyport.EID, n int) *keyport.ModuleImport {
	blobs := func(b byte) keyport.KeyBlobs {
		return keyport.KeyBlobs{keyport.UsageENC: bytes.Repeat([]byte{b}, 24), keyport.UsageMAC: bytes.Repeat([]byte{b + 1}, 24),
			keyport.UsageDEK: bytes.Repeat([]byte{b + 2}, 24)}
	}
	m := &keyport.ModuleImport{Line: 1, EID: eid, ISDAID: "A000000151000000", ISDKeys: blobs(0x10), PSK: bytes.Repeat([]byte{0x20}, 45)}
	for i := 1; i <= n; i++ {
		m.Domains = append(m.Domains, keyport.Domain{EID: eid, AID: fixture.AID(i), KVN: 0x30, State: keyport.Unassigned,
			KeySource: keyport.KeyGenerated, Wrapped: blobs(byte(0x30 + 3*i)),
			KCV: map[keyport.KeyUsage]string{keyport.UsageENC: "111111", keyport.UsageMAC: "222222", keyport.UsageDEK: "333333"}})
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
	if err != nil || len(m.Domains) != 2 || m.Domains[0].KeySource != keyport.KeyGenerated || m.Domains[1].KCV[keyport.UsageMAC] != "222222" ||
		!bytes.Equal(m.Domains[1].Wrapped[keyport.UsageDEK], bytes.Repeat([]byte{0x38}, 24)) ||
		!bytes.Equal(m.ISDKeys[keyport.UsageMAC], bytes.Repeat([]byte{0x11}, 24)) || !bytes.Equal(m.PSK, bytes.Repeat([]byte{0x20}, 45)) {
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

func TestRegisterModuleAndItsReadsAreForAdminsAndGeneratedBatchesOnly(t *testing.T) {
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
	noPSK := registration(t, eid, 1)
	noPSK.PSK = nil
	if _, err := w.Svc.RegisterModule(ctx, fixture.Admin, "p1", noPSK, nil); !errors.Is(err, keyport.ErrInvalid) {
		t.Errorf("no PSK: %v, want ErrInvalid", err)
	}
	noKeys := registration(t, eid, 1)
	delete(noKeys.Domains[0].Wrapped, keyport.UsageDEK)
	if _, err := w.Svc.RegisterModule(ctx, fixture.Admin, "p1", noKeys, nil); !errors.Is(err, keyport.ErrInvalid) {
		t.Errorf("a domain without its DEK blob: %v, want ErrInvalid", err)
	}
	if _, err := w.Svc.GetModule(ctx, fixture.Admin, eid); !errors.Is(err, keyport.ErrNotFound) {
		t.Errorf("a refused registration stored the module: %v", err)
	}
	if b, err := w.Svc.GetBatch(ctx, fixture.Admin, "p1"); err != nil || b.KeySource != keyport.KeyGenerated {
		t.Errorf("admin reads the batch: %+v, %v", b, err)
	}
}
