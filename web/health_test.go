package web_test

import (
	"errors"
	"io"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/keyport/keyport/internal/fixture"
	"github.com/keyport/keyport/store/storetest"
	"github.com/keyport/keyport/web"
)

func TestHealthAndReadinessFollowTheAdminListener(t *testing.T) {
	w := fixture.New(t, storetest.Open(t, storetest.SQLitePath(t)), 1, 1)
	var down atomic.Pointer[error]
	srv := httptest.NewServer(web.New(w.Svc, web.Options{AdminListener: func() error {
		if e := down.Load(); e != nil {
			return *e
		}
		return nil
	}}))
	t.Cleanup(srv.Close)
	cl := newContractTransport(t).client()
	get := func(path string) (int, string) {
		t.Helper()
		resp, err := cl.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get("/healthz"); code != 200 || !strings.Contains(body, `"admin_listener":"accepting"`) {
		t.Errorf("/healthz while accepting: %d %s", code, body)
	}
	if code, body := get("/readyz"); code != 200 || !strings.Contains(body, `"admin_listener":"ok"`) {
		t.Errorf("/readyz while accepting: %d %s", code, body)
	}
	stopped := errors.New("cardlink: accept: use of closed network connection")
	down.Store(&stopped)
	if code, body := get("/healthz"); code != 503 || !strings.Contains(body, `"admin_listener":"not accepting"`) {
		t.Errorf("/healthz with the admin listener stopped: %d %s", code, body)
	}
	if code, body := get("/readyz"); code != 503 || !strings.Contains(body, `"failing":["admin_listener"]`) {
		t.Errorf("/readyz with the admin listener stopped: %d %s", code, body)
	}
}

func TestHealthWithoutAnAdminServerReportsOnlyTheHSM(t *testing.T) {
	w := fixture.New(t, storetest.Open(t, storetest.SQLitePath(t)), 1, 1)
	srv := httptest.NewServer(web.New(w.Svc, web.Options{}))
	t.Cleanup(srv.Close)
	cl := newContractTransport(t).client()
	for _, path := range []string{"/healthz", "/readyz"} {
		resp, err := cl.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || strings.Contains(string(b), "admin_listener") {
			t.Errorf("%s: %d %s", path, resp.StatusCode, b)
		}
	}
}
