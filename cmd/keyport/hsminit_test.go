package main

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keyport/keyport/hsm"
	"github.com/keyport/keyport/hsm/hsmtest"
	"github.com/keyport/keyport/store/storetest"
)

func TestServeRefusesAnOldTokenUntilHSMInitHasMigratedIt(t *testing.T) {
	o := capture(t)
	dir := t.TempDir()
	tok := hsmtest.NewToken(t)
	common := []string{"--data-dir", filepath.Join(dir, "data"), "--db", storetest.SQLitePath(t), "--hsm", tok.URI}
	out := kp(t, o, common, "hsm", "init")
	if !strings.Contains(out, "hsm: created "+hsm.LabelISDKEK) {
		t.Fatalf("first init: %s", out)
	}
	// The old keys: an ISD master and a batch master, as older versions made.
	hsmtest.OldKey(t, tok, hsm.LabelISDMaster, bytes.Repeat([]byte{1}, 32), true)
	hsmtest.OldKey(t, tok, hsm.BatchMasterLabel("old"), bytes.Repeat([]byte{2}, 32), true)

	err := run(context.Background(), append([]string{"serve", "--addr", "127.0.0.1:0"}, common...))
	if err == nil || !strings.Contains(err.Error(), "keyport hsm init") {
		t.Fatalf("serve on an old token: %v, want a refusal naming keyport hsm init", err)
	}
	out = kp(t, o, common, "hsm", "init")
	for _, want := range []string{"nothing created", "destroyed the old key " + hsm.LabelISDMaster, "destroyed the old key " + hsm.BatchMasterLabel("old")} {
		if !strings.Contains(out, want) {
			t.Fatalf("migrating init says:\n%s\nwant %q", out, want)
		}
	}
	if out = kp(t, o, common, "hsm", "init"); strings.Contains(out, "destroyed") {
		t.Fatalf("a third init did more: %s", out)
	}
}
