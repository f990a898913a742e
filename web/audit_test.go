package web_test

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/keyport/keyport/internal/fixture"
	"github.com/keyport/keyport/store/storetest"
	"github.com/keyport/keyport/web"
)

// The verify endpoint the console's button shares: a keyed log verifies,
// and deleting its last row makes it name that row.
func TestVerifyAuditNamesADeletedLastRow(t *testing.T) {
	dsn := storetest.SQLitePath(t)
	w := fixture.New(t, storetest.Open(t, dsn), 1, 1)
	admin, _, err := w.Svc.CreateAdminToken(context.Background(), fixture.Admin, "test", 0)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(web.New(w.Svc, web.Options{Log: slog.New(slog.NewTextHandler(testLog{t}, nil))}))
	t.Cleanup(srv.Close)
	cl := newContractTransport(t).client()
	verify := func() map[string]any {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPost, srv.URL+"/api/v1/admin/audit/verify", strings.NewReader(""))
		req.Header.Set("Authorization", "Bearer "+admin)
		resp, err := cl.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var out map[string]any
		if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("verify: %d %v", resp.StatusCode, err)
		}
		return out
	}
	got := verify()
	n, _ := got["events"].(float64)
	if got["ok"] != true || got["keyed_head"] != true || n < 2 {
		t.Fatalf("verify of an untouched log: %v", got)
	}
	if k := storetest.ExecSQL(t, dsn, `DELETE FROM audit_events WHERE seq = ?`, int64(n)); k != 1 {
		t.Fatalf("deleted %d rows", k)
	}
	if got := verify(); got["ok"] != false || got["row"] != n || !strings.Contains(got["reason"].(string), "rows deleted") {
		t.Fatalf("verify after deleting the last row (%v): %v", n, got)
	}
}
