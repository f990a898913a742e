package main

import (
	"context"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/internal/fixture"
	"github.com/keyport/keyport/store/storetest"
)

func TestTwoOperatorsExportAModulePSKUnderDualControlOnTheCommandLine(t *testing.T) {
	o := capture(t)
	dir := t.TempDir()
	dsn := storetest.SQLitePath(t)
	w := fixture.New(t, storetest.Open(t, dsn), 1, 1)
	eid := string(fixture.EID(t, 0))
	common := []string{"--data-dir", filepath.Join(dir, "data"), "--db", dsn, "--hsm", w.Token.URI, "--dual-control", "2"}
	run := func(args ...string) error {
		o.out.Reset()
		return run(context.Background(), append(args, common...))
	}
	out := filepath.Join(dir, "module.psk")
	err := run("module", "psk", eid, "--out", out, "--operator", "alice")
	var ee exitError
	if !errors.As(err, &ee) || ee.code != exitApprovalPending {
		t.Fatalf("module psk under dual control: %v, want exit %d", err, exitApprovalPending)
	}
	if _, serr := os.Stat(out); !os.IsNotExist(serr) {
		t.Fatal("a PSK file was written before the approval")
	}
	reqs, _ := w.Svc.ListApprovals(context.Background(), fixture.Admin, 10)
	if len(reqs) != 1 || reqs[0].RequestedBy != "operator:alice" {
		t.Fatalf("requests %+v", reqs)
	}
	id := reqs[0].ID
	if !strings.Contains(o.out.String(), "keyport approval approve "+id) {
		t.Fatalf("the command did not say what to do next: %s", o.out.String())
	}
	if err := run("approval", "approve", id, "--operator", "alice"); !errors.Is(err, keyport.ErrOwnRequest) {
		t.Fatalf("alice approves her own request: %v", err)
	}
	if err := run("approval", "execute", id, "--out", out, "--operator", "alice"); !errors.Is(err, keyport.ErrConflict) {
		t.Fatalf("execute before approval: %v", err)
	}
	if err := run("approval", "approve", id, "--operator", "bob"); err != nil {
		t.Fatal(err)
	}
	if err := run("approval", "execute", id, "--out", out, "--operator", "bob"); !errors.Is(err, keyport.ErrForbidden) {
		t.Fatalf("bob executes alice's request: %v", err)
	}
	if err := run("approval", "execute", id, "--out", out, "--operator", "alice"); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(out)
	if err != nil || strings.TrimSpace(string(b)) != hex.EncodeToString(w.HandshakePSK(t, fixture.EID(t, 0))) {
		t.Fatalf("PSK file %q, %v", b, err)
	}
	if st, _ := os.Stat(out); st.Mode().Perm() != 0o600 {
		t.Fatalf("PSK file mode %v", st.Mode().Perm())
	}
	if err := run("approval", "execute", id, "--out", filepath.Join(dir, "again.psk"), "--operator", "alice"); !errors.Is(err, keyport.ErrConflict) {
		t.Fatalf("a second execution: %v", err)
	}
	if _, serr := os.Stat(filepath.Join(dir, "again.psk")); !os.IsNotExist(serr) {
		t.Fatal("a refused execution left a file")
	}
	if err := run("approval", "list"); err != nil || !strings.Contains(o.out.String(), id) || !strings.Contains(o.out.String(), "executed") {
		t.Fatalf("list: %v\n%s", err, o.out.String())
	}
	if n := w.CountAudit(t, "module.psk-export"); n != 1 {
		t.Fatalf("%d exports in the audit trail", n)
	}
}
