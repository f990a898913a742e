package keyport_test

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/internal/fixture"
	"github.com/keyport/keyport/store"
	"github.com/keyport/keyport/store/storetest"
)

// loading is an ImportModules whose file the test feeds line by line
// through a pipe, so that it can stop it half way.
type loading struct {
	w    *fixture.World
	pw   *io.PipeWriter
	done chan struct{}
	n    int
	err  error
}

func startImport(ctx context.Context, w *fixture.World) *loading {
	pr, pw := io.Pipe()
	l := &loading{w: w, pw: pw, done: make(chan struct{})}
	go func() {
		defer close(l.done)
		l.n, l.err = w.Svc.ImportModules(ctx, fixture.Admin, "b1", pr, keyport.VerifySample)
		pr.CloseWithError(errors.New("import returned"))
	}()
	return l
}

// lines sends the import lines of modules first to first+count-1, two
// domains each.
func (l *loading) lines(t *testing.T, first, count int) {
	t.Helper()
	var b strings.Builder
	for m := first; m < first+count; m++ {
		b.WriteString(l.w.ImportLine(t, fixture.EID(t, m), 2, ""))
		b.WriteByte('\n')
	}
	if _, err := io.WriteString(l.pw, b.String()); err != nil {
		t.Fatal(err)
	}
}

// stored waits until at least n modules of the import are stored (hidden).
func (l *loading) stored(t *testing.T, n int64) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		st, err := l.w.Store.PortalStats(ctx, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		if st.ModulesImporting >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d modules of the import stored after 60 s; want %d", st.ModulesImporting, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (l *loading) end(t *testing.T) (int, error) {
	t.Helper()
	l.pw.Close()
	select {
	case <-l.done:
	case <-time.After(120 * time.Second):
		t.Fatal("ImportModules did not return after its file ended")
	}
	return l.n, l.err
}

// rowsOf counts every module stored, hidden or not, and the imports not
// finished.
func rowsOf(t *testing.T, s *store.Store) (modules int64, imports int) {
	t.Helper()
	st, err := s.PortalStats(ctx, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	left, err := s.StaleImports(ctx, time.Now().Add(time.Hour), 100)
	if err != nil {
		t.Fatal(err)
	}
	return st.Modules + st.ModulesImporting, len(left)
}

// TestAnImportBeingLoadedHoldsNoWriteTransaction: on SQLite, the one writer
// of the deployment. An import file stops after its first chunk is stored;
// meanwhile other writes go through, and its modules are seen by no one:
// not claimable, not found, not counted, no audit event. Once the file ends
// every module is there and claimable.
func TestAnImportBeingLoadedHoldsNoWriteTransaction(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		w := fixture.New(t, s, 1, 1)
		p, _, wk := w.Provider(t, "Bank A", fixture.RSAKeys()[0])
		l := startImport(ctx, w)
		l.lines(t, 100, 700)
		l.stored(t, 500)

		writeBeside(t, "an import being loaded", func() error {
			_, _, err := w.Svc.AddProvider(ctx, fixture.Admin, "Bank Beside", "beside@example.com", keyport.KindBank)
			return err
		})
		for _, m := range []int{100, 599} {
			if _, _, err := w.Svc.Claim(ctx, p, keyport.ClaimRequest{EID: fixture.EID(t, m), WrappingKeyID: wk}); !errors.Is(err, keyport.ErrNotFound) {
				t.Fatalf("claim of module %d while its import loads: %v; want ErrNotFound", m, err)
			}
			if _, err := w.Store.GetModule(ctx, fixture.EID(t, m)); !errors.Is(err, keyport.ErrNotFound) {
				t.Fatalf("module %d found while its import loads: %v", m, err)
			}
		}
		if n := w.CountAudit(t, "import"); n != 1 { // the fixture's own import
			t.Fatalf("%d import events while the second import loads; want 1", n)
		}

		l.lines(t, 800, 300)
		n, err := l.end(t)
		if err != nil || n != 1000 {
			t.Fatalf("ImportModules = %d, %v", n, err)
		}
		if c, created, err := w.Svc.Claim(ctx, p, keyport.ClaimRequest{EID: fixture.EID(t, 100), WrappingKeyID: wk}); err != nil || !created {
			t.Fatalf("claim after the import: %+v, %v", c, err)
		}
		if mod, err := w.Store.GetModule(ctx, fixture.EID(t, 1099)); err != nil || len(mod.Domains) != 2 {
			t.Fatalf("the last module: %+v, %v", mod, err)
		}
		if n := w.CountAudit(t, "import"); n != 2 {
			t.Fatalf("%d import events; want 2", n)
		}
		if mods, imps := rowsOf(t, s); mods != 1001 || imps != 0 {
			t.Fatalf("%d modules and %d unfinished imports; want 1001 and 0", mods, imps)
		}
	})
}

// TestAnImportThatFailsLateLeavesNothing: a bad line after two chunks were
// stored, or the caller gone half way, rejects the file and deletes what
// it stored.
func TestAnImportThatFailsLateLeavesNothing(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		w := fixture.New(t, s, 1, 1)
		l := startImport(ctx, w)
		l.lines(t, 100, 1050)
		l.stored(t, 1000)
		io.WriteString(l.pw, `{"eid":"89"}`+"\n")
		l.lines(t, 1150, 10)
		_, err := l.end(t)
		var ie *keyport.ImportErrors
		if !errors.As(err, &ie) || len(ie.Lines) != 1 || ie.Lines[0].Line != 1051 {
			t.Fatalf("got %v; want line 1051 refused", err)
		}
		if mods, imps := rowsOf(t, s); mods != 1 || imps != 0 {
			t.Fatalf("%d modules and %d unfinished imports after the rejected file; want 1 and 0", mods, imps)
		}

		cctx, cancel := context.WithCancel(ctx)
		l = startImport(cctx, w)
		l.lines(t, 100, 600)
		l.stored(t, 500)
		cancel()
		if _, err := l.end(t); !errors.Is(err, context.Canceled) {
			t.Fatalf("import whose caller went: %v; want context.Canceled", err)
		}
		if mods, imps := rowsOf(t, s); mods != 1 || imps != 0 {
			t.Fatalf("%d modules and %d unfinished imports after the caller went; want 1 and 0", mods, imps)
		}
		// The same file again, whole: nothing of the failures is in its way.
		l = startImport(ctx, w)
		l.lines(t, 100, 1100)
		if n, err := l.end(t); err != nil || n != 1100 {
			t.Fatalf("the file again: %d, %v", n, err)
		}
	})
}

// TestTheSweepFinishesImportsWhoseProcessStopped: a loading import left by
// a process that stopped is dropped and a committed one is published, once
// either has been untouched for ImportStaleAfter; neither is touched
// before.
func TestTheSweepFinishesImportsWhoseProcessStopped(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		w := fixture.New(t, s, 1, 1)
		b, err := s.GetBatch(ctx, "b1")
		if err != nil {
			t.Fatal(err)
		}
		stage := func(first int) *keyport.Import {
			imp, err := s.BeginImport(ctx, b.ID)
			if err != nil {
				t.Fatal(err)
			}
			i := 0
			if _, err := s.StageModules(ctx, imp, func() (*keyport.ModuleImport, error) {
				if i == 600 {
					return nil, nil
				}
				i++
				return &keyport.ModuleImport{Line: i, EID: fixture.EID(t, first+i), ISDAID: "A000000151000000",
					Domains: []keyport.Domain{{AID: fixture.AID(1), KVN: 0x30, State: keyport.Unassigned, KeySource: keyport.KeyImported}}}, nil
			}); err != nil {
				t.Fatal(err)
			}
			return imp
		}
		stage(1000) // left LOADING, as by a process that stopped
		committed := stage(2000)
		if err := s.CommitImport(ctx, committed.ID, 600); err != nil {
			t.Fatal(err)
		}

		if done, err := w.Svc.SweepImports(ctx, time.Now().Add(-keyport.ImportStaleAfter), 10); err != nil || len(done) != 0 {
			t.Fatalf("the sweep finished %+v (%v) of imports touched just now", done, err)
		}
		if mods, imps := rowsOf(t, s); mods != 1201 || imps != 2 {
			t.Fatalf("%d modules, %d imports before the sweep", mods, imps)
		}
		later := time.Now().Add(keyport.ImportStaleAfter + time.Minute)
		done, err := w.Svc.SweepImports(ctx, later.Add(-keyport.ImportStaleAfter), 10)
		if err != nil || len(done) != 2 {
			t.Fatalf("the sweep finished %+v, %v; want both", done, err)
		}
		if mods, imps := rowsOf(t, s); mods != 601 || imps != 0 {
			t.Fatalf("%d modules, %d imports after the sweep; want 601, 0", mods, imps)
		}
		if _, err := s.GetModule(ctx, fixture.EID(t, 2300)); err != nil {
			t.Errorf("a module of the committed import after the sweep: %v", err)
		}
		if _, err := s.GetModule(ctx, fixture.EID(t, 1300)); !errors.Is(err, keyport.ErrNotFound) {
			t.Errorf("a module of the dropped import after the sweep: %v", err)
		}
	})
}
