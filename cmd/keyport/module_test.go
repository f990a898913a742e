package main

import (
	"bytes"
	"context"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keyport/keyport/internal/fixture"
	"github.com/keyport/keyport/store/storetest"
)

func TestModulePSKWritesTheHandshakePSKOnceAndNeverOverwrites(t *testing.T) {
	o := capture(t)
	db := storetest.SQLitePath(t)
	w := fixture.New(t, storetest.Open(t, db), 1, 1)
	w.Svc.Link = w.HSM
	eid := fixture.EID(t, 0)
	out := filepath.Join(t.TempDir(), "module.psk")
	common := []string{"--data-dir", t.TempDir(), "--db", db, "--hsm", w.Token.URI}
	kp(t, o, common, "module", "psk", string(eid), "--out", out)
	b, _ := os.ReadFile(out)
	psk, err := hex.DecodeString(strings.TrimSpace(string(b)))
	want := w.HandshakePSK(t, eid)
	if err != nil || !bytes.Equal(psk, want) {
		t.Fatalf("PSK file holds %q, want the handshake PSK (%v)", b, err)
	}
	if fi, _ := os.Stat(out); fi.Mode().Perm() != 0o600 {
		t.Errorf("PSK file mode %v", fi.Mode().Perm())
	}
	if err := run(context.Background(), append([]string{"module", "psk", string(eid), "--out", out}, common...)); err == nil || !strings.Contains(err.Error(), "never overwritten") {
		t.Errorf("second export over the file: %v", err)
	}
	if err := run(context.Background(), append([]string{"module", "psk", "123", "--out", out + "2"}, common...)); err == nil || !strings.Contains(err.Error(), "32 digits") {
		t.Errorf("bad EID: %v", err)
	}
	if n := w.CountAudit(t, "module.psk-export"); n != 1 {
		t.Errorf("%d export audit events, want exactly the one export that was written", n)
	}
}

// The MSISDNs several modules share (left so by migration 20 in a
// database from before it) are listed with their modules, and migrate
// warns of them; a database without any says so.
func TestModuleSharedMSISDNsListsTheNumbersSeveralModulesHave(t *testing.T) {
	o := capture(t)
	db := storetest.SQLitePath(t)
	w := fixture.New(t, storetest.Open(t, db), 3, 1)
	common := []string{"--data-dir", t.TempDir(), "--db", db, "--hsm", w.Token.URI}
	if out := kp(t, o, common, "module", "shared-msisdns"); !strings.Contains(out, "no MSISDN is shared") {
		t.Errorf("listing with no shared number: %q", out)
	}
	for n := range 2 {
		storetest.ExecSQL(t, db, `INSERT INTO module_ota (module_id, msisdn, msisdn_shared)
			SELECT id, '4915200000009', TRUE FROM modules WHERE eid = ?`, string(fixture.EID(t, n)))
	}
	out := kp(t, o, common, "module", "shared-msisdns")
	if !strings.Contains(out, "+4915200000009") || !strings.Contains(out, string(fixture.EID(t, 0))+" "+string(fixture.EID(t, 1))) ||
		strings.Contains(out, string(fixture.EID(t, 2))) {
		t.Errorf("listing: %q; want +4915200000009 with modules 0 and 1 only", out)
	}
	if out := kp(t, o, []string{"--db", db}, "migrate"); !strings.Contains(out, "warning: 1 MSISDN(s) are each the number of several modules") {
		t.Errorf("migrate: %q; want the warning", out)
	}
}
