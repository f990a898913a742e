package store_test

import (
	"errors"
	"testing"

	"github.com/keyport/keyport/store"
	"github.com/keyport/keyport/store/storetest"
)

func TestMigrateTwiceChangesNothing(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		before, err := s.Migrations(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Migrate(ctx); err != nil {
			t.Fatalf("second Migrate: %v", err)
		}
		after, err := s.Migrations(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(before) != store.MigrationSteps() || len(after) != len(before) {
			t.Fatalf("migrations before %d, after %d, want %d", len(before), len(after), store.MigrationSteps())
		}
		for i := range before {
			if before[i] != after[i] {
				t.Errorf("migration %d changed: %+v -> %+v", i, before[i], after[i])
			}
		}
		v, err := s.SchemaVersion(ctx)
		if err != nil || v != store.LatestVersion() {
			t.Fatalf("SchemaVersion = %d, %v; want %d", v, err, store.LatestVersion())
		}
	})
}

func TestOpenRefusesAnUnmigratedDatabaseUnlessAskedToMigrate(t *testing.T) {
	storetest.EachDSN(t, func(t *testing.T, dsn string) {
		if _, err := store.Open(ctx, dsn); !errors.Is(err, store.ErrSchemaTooOld) {
			t.Fatalf("Open of an empty database: %v, want ErrSchemaTooOld", err)
		}
		s, err := store.OpenOptions{Migrate: true}.Open(ctx, dsn)
		if err != nil {
			t.Fatalf("Open with Migrate: %v", err)
		}
		s.Close()
		s, err = store.Open(ctx, dsn)
		if err != nil {
			t.Fatalf("Open of a migrated database: %v", err)
		}
		s.Close()
	})
}

func TestOpenRefusesASchemaNewerThanTheCode(t *testing.T) {
	storetest.EachDSN(t, func(t *testing.T, dsn string) {
		s := storetest.Open(t, dsn)
		if err := store.ExecForTest(s, `INSERT INTO schema_migrations (version, description, applied_at)
			VALUES (999, 'from the future', CURRENT_TIMESTAMP)`); err != nil {
			t.Fatal(err)
		}
		if _, err := store.Open(ctx, dsn); !errors.Is(err, store.ErrSchemaTooNew) {
			t.Fatalf("Open: %v, want ErrSchemaTooNew", err)
		}
		if _, err := (store.OpenOptions{Migrate: true}).Open(ctx, dsn); !errors.Is(err, store.ErrSchemaTooNew) {
			t.Fatalf("Open with Migrate: %v, want ErrSchemaTooNew", err)
		}
		if err := s.Migrate(ctx); !errors.Is(err, store.ErrSchemaTooNew) {
			t.Fatalf("Migrate: %v, want ErrSchemaTooNew", err)
		}
	})
}

func TestBothDatabasesHaveTheSameTablesAndColumns(t *testing.T) {
	var got []map[string][]string
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		cols, err := store.ColumnsForTest(s)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, cols)
	})
	if len(got) != 2 {
		t.Skip("one database did not run")
	}
	sqlite, pg := got[0], got[1]
	if len(sqlite) != len(pg) {
		t.Errorf("tables: sqlite %d, postgres %d", len(sqlite), len(pg))
	}
	for table, cols := range sqlite {
		if len(pg[table]) != len(cols) {
			t.Errorf("table %s: sqlite %v, postgres %v", table, cols, pg[table])
			continue
		}
		for i := range cols {
			if cols[i] != pg[table][i] {
				t.Errorf("table %s column %d: sqlite %s, postgres %s", table, i, cols[i], pg[table][i])
			}
		}
	}
}
