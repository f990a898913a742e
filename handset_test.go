package keyport_test

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/internal/fixture"
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
	if tls, err := w.Svc.ModulePSK(ctx, string(eid)); err != nil || !bytes.Equal(tls, psk) {
		t.Errorf("exported PSK differs from the handshake's: %v", err)
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
