package main

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/internal/fixture"
	"github.com/keyport/keyport/store/storetest"
	"github.com/keyport/keyport/web"
)

// While keyport re-reads a domain's counter, sp script --submit tells the
// provider to retry after the module's next session, whether it reads the
// counter from the portal or was given one, and queues nothing.
func TestSPScriptSubmitWhileTheCounterIsResynchronizingSaysToRetryLater(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	w := fixture.New(t, storetest.Open(t, storetest.SQLitePath(t)), 1, 1)
	sp := fixture.RSAKeys()[0]
	der, _ := x509.MarshalPKCS8PrivateKey(sp)
	keyPath, pkgPath, tokenPath := filepath.Join(dir, "sp.pem"), filepath.Join(dir, "pkg.json"), filepath.Join(dir, "token")
	os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
	prov, token, wk := w.Provider(t, "Resync Bank", sp)
	eid, aid := fixture.EID(t, 0), fixture.AID(1)
	if _, _, err := w.Svc.Claim(ctx, prov, keyport.ClaimRequest{EID: eid, AID: aid, WrappingKeyID: wk}); err != nil {
		t.Fatal(err)
	}
	pkg, err := w.Svc.KeyPackage(ctx, prov, eid, aid)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(pkgPath, pkg, 0o600)
	os.WriteFile(tokenPath, []byte(token+"\n"), 0o600)
	d, err := w.Store.GetDomain(ctx, eid, aid)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Store.SetCounterUnverified(ctx, d.ID, true); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(web.New(w.Svc, web.Options{}))
	defer srv.Close()
	for i, extra := range [][]string{nil, {"--counter", "0"}} {
		args := append([]string{"sp", "script", "--package", pkgPath, "--key", keyPath, "--generate",
			"--submit", srv.URL, "--token-file", tokenPath, "--new-keys-out", filepath.Join(dir, "keys-"+string(rune('a'+i))+".json")}, extra...)
		err := run(ctx, args)
		if err == nil || !strings.Contains(err.Error(), "retry after the module's next admin session") {
			t.Errorf("sp script --submit %v while resynchronizing: %v", extra, err)
		}
	}
	js, err := w.Svc.ListJobs(ctx, fixture.Admin, keyport.JobFilter{})
	if err != nil || len(js) != 0 {
		t.Fatalf("%d jobs queued while resynchronizing (%v)", len(js), err)
	}
}
