package keyport_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/internal/fixture"
	"github.com/keyport/keyport/store/storetest"
)

// recorder is a keyport.Metrics that keeps what it was told.
type recorder struct {
	mu                         sync.Mutex
	claims, packages, webhooks []keyport.Result
	started, lines             int
	ended                      []string
}

func (r *recorder) add(to *[]keyport.Result, x keyport.Result) {
	r.mu.Lock()
	*to = append(*to, x)
	r.mu.Unlock()
}
func (r *recorder) Claimed(x keyport.Result)          { r.add(&r.claims, x) }
func (r *recorder) KeyPackageServed(x keyport.Result) { r.add(&r.packages, x) }
func (r *recorder) WebhookDelivered(x keyport.Result) { r.add(&r.webhooks, x) }
func (r *recorder) ImportStarted()                    { r.mu.Lock(); r.started++; r.mu.Unlock() }
func (r *recorder) ImportLine()                       { r.mu.Lock(); r.lines++; r.mu.Unlock() }
func (r *recorder) ImportEnded(x keyport.Result, n int) {
	r.mu.Lock()
	r.ended = append(r.ended, fmt.Sprintf("%s/%d", x, n))
	r.mu.Unlock()
}

func TestResultOfMapsEveryErrorKindAndNothingElse(t *testing.T) {
	for err, want := range map[error]keyport.Result{
		nil:                                      keyport.ResultOK,
		fmt.Errorf("x: %w", keyport.ErrConflict): keyport.ResultConflict,
		keyport.Invalid("f", "bad"):              keyport.ResultInvalid,
		keyport.ErrNotFound:                      keyport.ResultNotFound,
		keyport.ErrForbidden:                     keyport.ResultForbidden,
		keyport.ErrUnauthenticated:               keyport.ResultUnauthenticated,
		fmt.Errorf("hsm: %w", keyport.ErrUnavailable):   keyport.ResultUnavailable,
		fmt.Errorf("x: %w", context.DeadlineExceeded):   keyport.ResultCanceled,
		errors.New("eid 89049032000000000000000000000"): keyport.ResultError,
	} {
		if got := keyport.ResultOf(err); got != want {
			t.Errorf("ResultOf(%v) = %s, want %s", err, got, want)
		}
	}
}

func TestUseCasesReportClaimsPackagesAndImportsByResult(t *testing.T) {
	ctx := context.Background()
	w := fixture.New(t, storetest.Open(t, storetest.SQLitePath(t)), 2, 2)
	rec := &recorder{}
	w.Svc.Metrics = rec
	p, _, wk := w.Provider(t, "Bank A", fixture.RSAKeys()[0])
	req := keyport.ClaimRequest{EID: fixture.EID(t, 0), WrappingKeyID: wk, IdempotencyKey: "k1"}
	c, _, err := w.Svc.Claim(ctx, p, req)
	if err != nil {
		t.Fatal(err)
	}
	if _, created, err := w.Svc.Claim(ctx, p, req); err != nil || created {
		t.Fatalf("replay: %v %v", created, err)
	}
	if _, _, err := w.Svc.Claim(ctx, p, keyport.ClaimRequest{EID: fixture.EID(t, 0), AID: c.AID, WrappingKeyID: wk}); !errors.Is(err, keyport.ErrConflict) {
		t.Fatalf("claim of a taken domain: %v", err)
	}
	if _, err := w.Svc.KeyPackage(ctx, p, c.EID, c.AID); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Svc.KeyPackage(ctx, p, c.EID, fixture.AID(2)); err == nil {
		t.Fatal("the package of an unclaimed domain")
	}
	file := w.ImportLine(t, fixture.EID(t, 5), 1, "") + "\n" + w.ImportLine(t, fixture.EID(t, 6), 1, "") + "\n"
	if n, err := w.Svc.ImportModules(ctx, fixture.Admin, "b1", bytes.NewReader([]byte(file)), keyport.VerifyAll); err != nil || n != 2 {
		t.Fatalf("import: %d %v", n, err)
	}
	if _, err := w.Svc.ImportModules(ctx, fixture.Admin, "b1", bytes.NewReader([]byte(file)), keyport.VerifyAll); err == nil {
		t.Fatal("the same modules imported twice")
	}
	want := fmt.Sprint([]keyport.Result{keyport.ResultOK, keyport.ResultReplayed, keyport.ResultConflict})
	if got := fmt.Sprint(rec.claims); got != want {
		t.Errorf("claims %s, want %s", got, want)
	}
	if got := fmt.Sprint(rec.packages); got != fmt.Sprint([]keyport.Result{keyport.ResultOK, keyport.ResultNotFound}) {
		t.Errorf("packages %s", got)
	}
	if rec.started != 2 || rec.lines < 3 || fmt.Sprint(rec.ended) != "[ok/2 conflict/0]" {
		t.Errorf("imports: %d started, %d lines, ended %v", rec.started, rec.lines, rec.ended)
	}
}
