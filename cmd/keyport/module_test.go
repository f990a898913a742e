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
