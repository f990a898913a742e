package store_test

import (
	"errors"
	"testing"
	"time"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/store"
	"github.com/keyport/keyport/store/storetest"
)

// stagedModules yields count modules numbered from first, the first of them
// with an MSISDN, and calls after (if set) once before each module past the
// first chunk's 500.
func stagedModules(first, count int, after func(i int)) func() (*keyport.ModuleImport, error) {
	next := modules(first, count, 2)
	i := 0
	return func() (*keyport.ModuleImport, error) {
		i++
		if after != nil && i > 500 {
			after(i)
		}
		m, err := next()
		if m != nil && i == 1 {
			m.MSISDN = "4915200000777"
		}
		return m, err
	}
}

// hiddenEverywhere fails unless the module is seen by no lookup.
func hiddenEverywhere(t *testing.T, s *store.Store, n int) {
	t.Helper()
	if _, err := s.GetModule(ctx, testEID(n)); !errors.Is(err, keyport.ErrNotFound) {
		t.Errorf("GetModule of staged module %d: %v; want ErrNotFound", n, err)
	}
	if _, err := s.GetAdminModule(ctx, testEID(n)); !errors.Is(err, keyport.ErrNotFound) {
		t.Errorf("GetAdminModule of staged module %d: %v; want ErrNotFound", n, err)
	}
	if _, err := s.GetDomain(ctx, testEID(n), testAID(1)); !errors.Is(err, keyport.ErrNotFound) {
		t.Errorf("GetDomain of staged module %d: %v; want ErrNotFound", n, err)
	}
	if _, err := s.FirstUnassigned(ctx, testEID(n)); !errors.Is(err, keyport.ErrNotFound) {
		t.Errorf("FirstUnassigned of staged module %d: %v; want ErrNotFound", n, err)
	}
}

func TestStagedModulesAreSeenByNoLookupUntilPublished(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		b := createBatch(t, s, "b")
		importModules(t, s, b.ID, 1, 3, 2) // visible from the start
		imp, err := s.BeginImport(ctx, b.ID)
		if err != nil {
			t.Fatal(err)
		}
		n, err := s.StageModules(ctx, imp, stagedModules(101, 1200, func(i int) {
			if i == 501 {
				// The first chunk is committed: seen by none.
				hiddenEverywhere(t, s, 101)
				hiddenEverywhere(t, s, 600)
			}
		}))
		if err != nil || n != 1200 {
			t.Fatalf("StageModules = %d, %v", n, err)
		}
		for _, m := range []int{101, 700, 1300} {
			hiddenEverywhere(t, s, m)
		}
		if eid, err := s.ModuleByMSISDN(ctx, "4915200000777"); !errors.Is(err, keyport.ErrNotFound) {
			t.Errorf("ModuleByMSISDN found staged module %s (%v)", eid, err)
		}
		st, err := s.PortalStats(ctx, time.Now().Add(-time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		if st.Modules != 3 || st.ModulesImporting != 1200 || st.DomainsByState[keyport.Unassigned] != 6 {
			t.Errorf("stats while staged: %d modules, %d importing, %d unassigned; want 3, 1200, 6",
				st.Modules, st.ModulesImporting, st.DomainsByState[keyport.Unassigned])
		}
		if _, err := s.GetModule(ctx, testEID(2)); err != nil {
			t.Errorf("a module imported before: %v", err)
		}

		if err := s.CommitImport(ctx, imp.ID, n); err != nil {
			t.Fatal(err)
		}
		if err := s.DropImport(ctx, imp.ID); !errors.Is(err, keyport.ErrConflict) {
			t.Errorf("DropImport of a committed import: %v; want ErrConflict", err)
		}
		if err := s.PublishImport(ctx, imp.ID); err != nil {
			t.Fatal(err)
		}
		for _, m := range []int{101, 700, 1300} {
			mod, err := s.GetModule(ctx, testEID(m))
			if err != nil || len(mod.Domains) != 2 || mod.Domains[0].BatchID != b.ID {
				t.Fatalf("module %d after publishing: %+v, %v", m, mod, err)
			}
			if d, err := s.FirstUnassigned(ctx, testEID(m)); err != nil || d.AID != testAID(1) || d.BatchID != b.ID {
				t.Errorf("FirstUnassigned of module %d after publishing: %+v, %v", m, d, err)
			}
		}
		if eid, err := s.ModuleByMSISDN(ctx, "4915200000777"); err != nil || eid != testEID(101) {
			t.Errorf("ModuleByMSISDN after publishing: %s, %v", eid, err)
		}
		st, err = s.PortalStats(ctx, time.Now().Add(-time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		if st.Modules != 1203 || st.ModulesImporting != 0 || st.DomainsByState[keyport.Unassigned] != 2406 {
			t.Errorf("stats after publishing: %d modules, %d importing, %d unassigned", st.Modules, st.ModulesImporting,
				st.DomainsByState[keyport.Unassigned])
		}
		if c := countRows(t, s, "imports"); c != "0" {
			t.Errorf("%s imports left after publishing", c)
		}
		// Published twice (the loader and a sweep): nothing more happens.
		if err := s.PublishImport(ctx, imp.ID); err != nil {
			t.Errorf("second PublishImport: %v", err)
		}
	})
}

func TestDroppingAnImportDeletesWhatItStoredAndStopsItsLoader(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		b := createBatch(t, s, "b")
		importModules(t, s, b.ID, 1, 3, 2)
		imp, err := s.BeginImport(ctx, b.ID)
		if err != nil {
			t.Fatal(err)
		}
		dropped := false
		// The sweep takes the import for abandoned while its loader still
		// runs, after two chunks are in.
		_, err = s.StageModules(ctx, imp, stagedModules(101, 1800, func(i int) {
			if i == 1001 && !dropped {
				dropped = true
				if err := s.DropImport(ctx, imp.ID); err != nil {
					t.Errorf("DropImport: %v", err)
				}
			}
		}))
		if !errors.Is(err, keyport.ErrConflict) {
			t.Fatalf("StageModules after its import was dropped: %v; want ErrConflict", err)
		}
		if err := s.CommitImport(ctx, imp.ID, 1000); !errors.Is(err, keyport.ErrConflict) {
			t.Errorf("CommitImport of a dropped import: %v; want ErrConflict", err)
		}
		for table, want := range map[string]string{"modules": "3", "domains": "6", "module_ota": "0", "imports": "0"} {
			if c := countRows(t, s, table); c != want {
				t.Errorf("%s %s rows after the drop; want %s", c, table, want)
			}
		}
		// The loader drops it too, as its error makes it: nothing happens.
		if err := s.DropImport(ctx, imp.ID); err != nil {
			t.Errorf("second DropImport: %v", err)
		}
		// Its EIDs are free again: a later import of them succeeds.
		importModules(t, s, b.ID, 101, 10, 2)
		if _, err := s.GetModule(ctx, testEID(105)); err != nil {
			t.Errorf("module re-imported after the drop: %v", err)
		}

		// A new import never gets the dropped one's id: the old loader's
		// id cannot name it.
		next, err := s.BeginImport(ctx, b.ID)
		if err != nil {
			t.Fatal(err)
		}
		if next.ID == imp.ID {
			t.Errorf("import id %d given twice", imp.ID)
		}
		if _, err := s.BeginImport(ctx, 9999); !errors.Is(err, keyport.ErrNotFound) {
			t.Errorf("BeginImport of an unknown batch: %v", err)
		}
	})
}

func TestAStagedModuleConflictsWithAVisibleOneAndAnotherImportsStagedOne(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		b := createBatch(t, s, "b")
		importModules(t, s, b.ID, 1, 3, 2)
		a, _ := s.BeginImport(ctx, b.ID)
		if _, err := s.StageModules(ctx, a, modules(100, 10, 2)); err != nil {
			t.Fatal(err)
		}
		c, _ := s.BeginImport(ctx, b.ID)
		var le *keyport.LineError
		if _, err := s.StageModules(ctx, c, modules(105, 3, 2)); !errors.As(err, &le) || le.Line != 1 || !errors.Is(err, keyport.ErrConflict) {
			t.Errorf("an EID another import staged: %v; want a LineError at line 1, ErrConflict", err)
		}
		if _, err := s.StageModules(ctx, c, modules(3, 1, 2)); !errors.Is(err, keyport.ErrConflict) {
			t.Errorf("an EID already visible: %v; want ErrConflict", err)
		}
		if _, err := s.ImportModules(ctx, b.ID, modules(109, 1, 2)); !errors.Is(err, keyport.ErrConflict) {
			t.Errorf("a module registered at once with a staged EID: %v; want ErrConflict", err)
		}
	})
}

func TestStaleImportsAreThoseUntouchedSinceTheTime(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		b := createBatch(t, s, "b")
		a, _ := s.BeginImport(ctx, b.ID)
		if got, err := s.StaleImports(ctx, time.Now().Add(-time.Minute), 10); err != nil || len(got) != 0 {
			t.Fatalf("StaleImports a minute ago: %+v, %v", got, err)
		}
		got, err := s.StaleImports(ctx, time.Now().Add(time.Minute), 10)
		if err != nil || len(got) != 1 || got[0].ID != a.ID || got[0].State != keyport.ImportLoading || got[0].BatchID != b.ID {
			t.Fatalf("StaleImports: %+v, %v", got, err)
		}
	})
}

// TestStaleImportsOfTheZeroTimeAreAllUnfinishedOnes: an import a replica
// whose clock runs two hours ahead touched is not stale an hour from now,
// but a restore and the checks before a key migration, which ask with the
// zero time, still find it.
func TestStaleImportsOfTheZeroTimeAreAllUnfinishedOnes(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		b := createBatch(t, s, "b")
		a, err := s.BeginImport(ctx, b.ID)
		if err != nil {
			t.Fatal(err)
		}
		ahead := keyport.AuditTime(time.Now().Add(2 * time.Hour))
		if err := store.ExecForTest(s, "UPDATE imports SET updated_at = ? WHERE id = ?", ahead, a.ID); err != nil {
			t.Fatal(err)
		}
		if got, err := s.StaleImports(ctx, time.Now().Add(time.Hour), 10); err != nil || len(got) != 0 {
			t.Fatalf("StaleImports an hour from now: %+v, %v; want none", got, err)
		}
		got, err := s.StaleImports(ctx, time.Time{}, 10)
		if err != nil || len(got) != 1 || got[0].ID != a.ID {
			t.Fatalf("StaleImports of the zero time: %+v, %v; want import %d", got, err, a.ID)
		}
	})
}

// TestADropRacingTheCommitOfItsImportLeavesTheCommittedImport: the sweep
// takes an import for abandoned just as its slow loader commits it. The
// drop waits for the commit and then finds the import committed: it
// refuses and deletes nothing.
func TestADropRacingTheCommitOfItsImportLeavesTheCommittedImport(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		b := createBatch(t, s, "b")
		imp, err := s.BeginImport(ctx, b.ID)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.StageModules(ctx, imp, modules(1, 10, 2)); err != nil {
			t.Fatal(err)
		}
		dropped := make(chan error, 1)
		err = s.Tx(ctx, func(tx keyport.Repo) error {
			if err := tx.CommitImport(ctx, imp.ID, 10); err != nil {
				return err
			}
			go func() { dropped <- s.DropImport(ctx, imp.ID) }()
			// The drop waits for this transaction (SQLite: for the
			// writer; PostgreSQL: for the import row's lock).
			time.Sleep(300 * time.Millisecond)
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if err := <-dropped; !errors.Is(err, keyport.ErrConflict) {
			t.Fatalf("a drop racing the commit: %v; want ErrConflict", err)
		}
		if c := countRows(t, s, "modules"); c != "10" {
			t.Fatalf("%s modules left of the committed import; want 10", c)
		}
		if err := s.PublishImport(ctx, imp.ID); err != nil {
			t.Fatal(err)
		}
		if _, err := s.GetModule(ctx, testEID(5)); err != nil {
			t.Fatalf("a module of the committed import: %v", err)
		}
	})
}
