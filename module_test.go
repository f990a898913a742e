package keyport_test

import (
	"bytes"
	"context"
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
			if d.Imported != nil {
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
