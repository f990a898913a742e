package web_test

import (
	"context"
	"strings"
	"testing"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/internal/fixture"
)

// TestTheDashboardCountsAnImportStillLoadingApart: the modules an import
// has stored before its file is in are hidden, so the dashboard says how
// many there are instead of counting them as claimable, and lists the
// imports under way with their progress.
func TestTheDashboardCountsAnImportStillLoadingApart(t *testing.T) {
	p := startPortal(t, 1, 1)
	ctx := context.Background()
	b, err := p.w.Store.GetBatch(ctx, "b1")
	if err != nil {
		t.Fatal(err)
	}
	imp, err := p.w.Store.BeginImport(ctx, b.ID)
	if err != nil {
		t.Fatal(err)
	}
	i := 0
	n, err := p.w.Store.StageModules(ctx, imp, func() (*keyport.ModuleImport, error) {
		if i == 600 {
			return nil, nil
		}
		i++
		return &keyport.ModuleImport{Line: i, EID: fixture.EID(t, 100+i), ISDAID: "A000000151000000",
			Domains: []keyport.Domain{{AID: fixture.AID(1), KVN: 0x30, State: keyport.Unassigned, KeySource: keyport.KeyImported}}}, nil
	})
	if err != nil || n != 600 {
		t.Fatalf("StageModules = %d, %v", n, err)
	}
	cl, _ := signedIn(t, p.srv.URL, p.adminEmail, p.adminPW)
	_, _, page := getPage(t, cl, p.srv.URL+"/admin")
	if !strings.Contains(page, `id="importing"`) || !strings.Contains(page, "600 modules stored by an import still loading") ||
		!strings.Contains(page, `<div class="hint">Modules</div><div class="stat">1</div>`) ||
		!strings.Contains(page, `<tr><td>b1</td><td>loading</td><td>600</td>`) {
		t.Fatalf("dashboard while an import loads: %s", page)
	}
	// A second import, begun but with nothing stored yet, is listed too.
	if _, err := p.w.Store.BeginImport(ctx, b.ID); err != nil {
		t.Fatal(err)
	}
	if _, _, page = getPage(t, cl, p.srv.URL+"/admin"); strings.Count(page, `<tr><td>b1</td><td>loading</td>`) != 2 ||
		!strings.Contains(page, `<tr><td>b1</td><td>loading</td><td>0</td>`) {
		t.Fatalf("dashboard with two imports under way: %s", page)
	}
	if err := p.w.Store.CommitImport(ctx, imp.ID, n); err != nil {
		t.Fatal(err)
	}
	_, _, page = getPage(t, cl, p.srv.URL+"/admin")
	if !strings.Contains(page, `<tr><td>b1</td><td>committed, being shown</td><td>600</td>`) {
		t.Fatalf("dashboard with a committed import: %s", page)
	}
	if err := p.w.Store.PublishImport(ctx, imp.ID); err != nil {
		t.Fatal(err)
	}
	_, _, page = getPage(t, cl, p.srv.URL+"/admin")
	if strings.Contains(page, `id="importing"`) || !strings.Contains(page, `<div class="hint">Modules</div><div class="stat">601</div>`) ||
		strings.Contains(page, `<td>committed, being shown</td>`) || strings.Count(page, `<tr><td>b1</td><td>loading</td>`) != 1 {
		t.Fatalf("dashboard after the import: %s", page)
	}
}
