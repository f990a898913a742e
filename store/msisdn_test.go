package store_test

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/store"
	"github.com/keyport/keyport/store/storetest"
)

// otaNumbers returns the MSISDN of each module by id, "" for none.
func otaNumbers(t *testing.T, s *store.Store, ms []*keyport.Module) []string {
	t.Helper()
	out := make([]string, len(ms))
	for i, m := range ms {
		o, err := s.GetModuleOTA(ctx, m.ID)
		if err != nil {
			t.Fatal(err)
		}
		out[i] = o.MSISDN
	}
	return out
}

// A number reaches one module: setting one that another module has is
// ErrConflict naming the number (masked: the error may be logged) and
// that module, and changes nothing;
// setting a module's own number again is no conflict; once the holder's
// is cleared, the number may move.
func TestSetModuleMSISDNRefusesANumberAnotherModuleHas(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		ms := importOTA(t, s) // modules 1 and 2 have …001 and …002
		err := s.SetModuleMSISDN(ctx, ms[2].ID, "4915200000001")
		if !errors.Is(err, keyport.ErrConflict) || !strings.Contains(err.Error(), "+**********001") ||
			strings.Contains(err.Error(), "4915200000001") || !strings.Contains(err.Error(), string(ms[0].EID)) {
			t.Fatalf("SetModuleMSISDN of module 1's number on module 3: %v; want ErrConflict naming the number masked and module 1", err)
		}
		if err := s.SetModuleMSISDN(ctx, ms[1].ID, "4915200000001"); !errors.Is(err, keyport.ErrConflict) {
			t.Fatalf("SetModuleMSISDN of module 1's number on module 2: %v; want ErrConflict", err)
		}
		if got := otaNumbers(t, s, ms); !slices.Equal(got, []string{"4915200000001", "4915200000002", ""}) {
			t.Fatalf("MSISDNs after the refused sets: %q", got)
		}
		if err := s.SetModuleMSISDN(ctx, ms[0].ID, "4915200000001"); err != nil {
			t.Fatalf("setting module 1's own number again: %v", err)
		}
		if err := s.SetModuleMSISDN(ctx, ms[0].ID, ""); err != nil {
			t.Fatal(err)
		}
		if err := s.SetModuleMSISDN(ctx, ms[2].ID, "4915200000001"); err != nil {
			t.Fatalf("the number after its holder cleared it: %v", err)
		}
		if eid, err := s.ModuleByMSISDN(ctx, "4915200000001"); err != nil || eid != ms[2].EID {
			t.Fatalf("by MSISDN after the move: %s, %v", eid, err)
		}
	})
}

// The database itself refuses a second module a number, whatever writes
// it: the unique index of migration 20, not only the writers' look.
func TestTheDatabaseRefusesASecondModuleAnMSISDN(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		ms := importOTA(t, s)
		if err := store.ExecForTest(s, `INSERT INTO module_ota (module_id, msisdn) VALUES (?, ?)`, ms[2].ID, "4915200000001"); err == nil {
			t.Error("INSERT of module 1's number for module 3: accepted")
		}
		if err := store.ExecForTest(s, `UPDATE module_ota SET msisdn = ? WHERE module_id = ?`, "4915200000001", ms[1].ID); err == nil {
			t.Error("UPDATE of module 2 to module 1's number: accepted")
		}
		if got := otaNumbers(t, s, ms); !slices.Equal(got, []string{"4915200000001", "4915200000002", ""}) {
			t.Fatalf("MSISDNs after the refused writes: %q", got)
		}
	})
}

// Two requests giving one number to two modules at once, each in its own
// transaction as Service.SetMSISDN runs it: exactly one gets it, the
// other is ErrConflict, in every round.
func TestParallelSetsOfOneMSISDNOnTwoModulesLetOnlyOneThrough(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		ms := importOTA(t, s)
		a, b := ms[1], ms[2]
		const rounds = 20
		for r := range rounds {
			number := fmt.Sprintf("49160000%05d", r)
			start := make(chan struct{})
			errs := make([]error, 2)
			var wg sync.WaitGroup
			for i, m := range []*keyport.Module{a, b} {
				wg.Add(1)
				go func() {
					defer wg.Done()
					<-start
					errs[i] = s.Tx(ctx, func(tx keyport.Repo) error {
						if _, err := tx.GetModuleOTA(ctx, m.ID); err != nil {
							return err
						}
						return tx.SetModuleMSISDN(ctx, m.ID, number)
					})
				}()
			}
			close(start)
			wg.Wait()
			won := 0
			for i, err := range errs {
				switch {
				case err == nil:
					won++
				case !errors.Is(err, keyport.ErrConflict) || !strings.Contains(err.Error(), keyport.MaskedMSISDN(number)) ||
					strings.Contains(err.Error(), number):
					t.Fatalf("round %d, module %d: %v; want nil or ErrConflict naming the number masked", r, i, err)
				}
			}
			if won != 1 {
				t.Fatalf("round %d: %d of the two parallel sets of %s succeeded; want exactly one", r, won, number)
			}
			holders := 0
			for _, n := range otaNumbers(t, s, []*keyport.Module{a, b}) {
				if n == number {
					holders++
				}
			}
			if holders != 1 {
				t.Fatalf("round %d: %d modules have %s", r, holders, number)
			}
			// Both free for the next round.
			for _, m := range []*keyport.Module{a, b} {
				if err := s.SetModuleMSISDN(ctx, m.ID, ""); err != nil {
					t.Fatal(err)
				}
			}
		}
	})
}

// An import (here as perso registers and as a store test imports: one
// transaction) with a number another module has, or one an earlier line
// has, in the same chunk or chunks back, fails with a LineError naming
// the line and the number, and stores nothing.
func TestImportWithAnMSISDNAnotherModuleHasNamesTheLineAndImportsNothing(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		ms := importOTA(t, s) // module 1 has …001
		b := createBatch(t, s, "b")
		cases := []struct {
			name string
			dup  func(ms []*keyport.ModuleImport)
			line int
			text string
		}{
			{"stored", func(ms []*keyport.ModuleImport) { ms[1099].MSISDN = "4915200000001" }, 1100, string(ms[0].EID)},
			{"same chunk", func(ms []*keyport.ModuleImport) {
				ms[1100].MSISDN = "4917000000300"
				ms[1104].MSISDN = "4917000000300"
			}, 1105, "already on line 1101"},
			{"chunks back", func(ms []*keyport.ModuleImport) {
				ms[299].MSISDN = "4917000000300"
				ms[1100].MSISDN = "4917000000300"
			}, 1101, string(testEID(1000 + 300))},
		}
		for _, c := range cases {
			var file []*keyport.ModuleImport
			for i := 1; i <= 1300; i++ {
				file = append(file, testModule(i, 1000+i, 1))
			}
			c.dup(file)
			n, err := s.ImportModules(ctx, b.ID, fromSlice(file))
			var lineErr *keyport.LineError
			if !errors.As(err, &lineErr) || lineErr.Line != c.line || !errors.Is(err, keyport.ErrConflict) ||
				!strings.Contains(err.Error(), "MSISDN +") || !strings.Contains(err.Error(), c.text) {
				t.Fatalf("%s: ImportModules = %d, %v; want a LineError at line %d wrapping ErrConflict, naming %s", c.name, n, err, c.line, c.text)
			}
			if got := countRows(t, s, "modules"); got != "3" {
				t.Fatalf("%s: %s modules stored after a failed import, want the 3 before it", c.name, got)
			}
		}
	})
}

// A database from before migration 20 may hold numbers several modules
// share: migrating keeps every row as it was and succeeds; the PoR lookup
// picks none of the sharers (ErrConflict); SharedMSISDNs lists them; no
// writer gives the number to a further module; once all but one is
// cleared, the number is that module's again, and set anew it is under
// the unique index.
func TestMigrationKeepsSharedMSISDNsAndAttributesThemToNoModule(t *testing.T) {
	storetest.EachDSN(t, func(t *testing.T, dsn string) {
		old, err := store.OpenAtVersionForTest(ctx, dsn, 19)
		if err != nil {
			t.Fatal(err)
		}
		b := createBatch(t, old, "b")
		importModules(t, old, b.ID, 1, 5, 1)
		for n, number := range map[int]string{1: "4915200000009", 2: "4915200000009", 3: "4915200000009",
			4: "4915200000010", 5: "4915200000011"} {
			if err := store.ExecForTest(old, `INSERT INTO module_ota (module_id, msisdn) SELECT id, ? FROM modules WHERE eid = ?`,
				number, string(testEID(n))); err != nil {
				t.Fatal(err)
			}
		}
		old.Close()

		s := storetest.Open(t, dsn)
		var ms []*keyport.Module
		for n := 1; n <= 5; n++ {
			m, err := s.GetModule(ctx, testEID(n))
			if err != nil {
				t.Fatal(err)
			}
			ms = append(ms, m)
		}
		if got := otaNumbers(t, s, ms); !slices.Equal(got, []string{"4915200000009", "4915200000009", "4915200000009", "4915200000010", "4915200000011"}) {
			t.Fatalf("MSISDNs after migrating: %q; want them as they were", got)
		}
		if eid, err := s.ModuleByMSISDN(ctx, "4915200000009"); !errors.Is(err, keyport.ErrConflict) {
			t.Fatalf("ModuleByMSISDN of a shared number: %s, %v; want ErrConflict", eid, err)
		}
		if eid, err := s.ModuleByMSISDN(ctx, "4915200000010"); err != nil || eid != testEID(4) {
			t.Fatalf("ModuleByMSISDN of a number of one module: %s, %v", eid, err)
		}
		shared, err := s.SharedMSISDNs(ctx)
		if err != nil || len(shared) != 1 || shared[0].MSISDN != "4915200000009" ||
			!slices.Equal(shared[0].EIDs, []keyport.EID{testEID(1), testEID(2), testEID(3)}) {
			t.Fatalf("SharedMSISDNs = %+v, %v", shared, err)
		}
		if err := s.SetModuleMSISDN(ctx, ms[3].ID, "4915200000009"); !errors.Is(err, keyport.ErrConflict) {
			t.Fatalf("setting a shared number on a fourth module: %v; want ErrConflict", err)
		}
		if err := s.SetModuleMSISDN(ctx, ms[0].ID, "4915200000009"); !errors.Is(err, keyport.ErrConflict) {
			t.Fatalf("setting a shared number again on a module sharing it: %v; want ErrConflict", err)
		}
		imp := testModule(1, 6, 1)
		imp.MSISDN = "4915200000009"
		if _, err := s.ImportModules(ctx, b.ID, fromSlice([]*keyport.ModuleImport{imp})); !errors.Is(err, keyport.ErrConflict) {
			t.Fatalf("importing a module with a shared number: %v; want ErrConflict", err)
		}

		for _, m := range ms[1:3] {
			if err := s.SetModuleMSISDN(ctx, m.ID, ""); err != nil {
				t.Fatal(err)
			}
		}
		if eid, err := s.ModuleByMSISDN(ctx, "4915200000009"); err != nil || eid != testEID(1) {
			t.Fatalf("ModuleByMSISDN once two of the three cleared it: %s, %v", eid, err)
		}
		if shared, err := s.SharedMSISDNs(ctx); err != nil || len(shared) != 0 {
			t.Fatalf("SharedMSISDNs once two of the three cleared it: %+v, %v", shared, err)
		}
		if err := s.SetModuleMSISDN(ctx, ms[1].ID, "4915200000009"); !errors.Is(err, keyport.ErrConflict) {
			t.Fatalf("giving the number back to a module that cleared it: %v; want ErrConflict", err)
		}
		if err := s.SetModuleMSISDN(ctx, ms[0].ID, "4915200000009"); err != nil {
			t.Fatalf("setting its number again on its one module: %v", err)
		}
		if err := store.ExecForTest(s, `UPDATE module_ota SET msisdn = ? WHERE module_id = ?`, "4915200000009", ms[1].ID); err == nil {
			t.Error("the unique index does not cover the number once set again")
		}
	})
}

// sharedBefore20 opens dsn with modules 1 to 4 of a database from before
// migration 20, where modules 1, 2 and 3 had one number and module 4 its
// own, migrated: the three are marked msisdn_shared. It returns the
// modules by number.
func sharedBefore20(t *testing.T, dsn string) (*store.Store, []*keyport.Module) {
	t.Helper()
	old, err := store.OpenAtVersionForTest(ctx, dsn, 19)
	if err != nil {
		t.Fatal(err)
	}
	b := createBatch(t, old, "b")
	importModules(t, old, b.ID, 1, 4, 1)
	for n, number := range map[int]string{1: "4915200000009", 2: "4915200000009", 3: "4915200000009", 4: "4915200000010"} {
		if err := store.ExecForTest(old, `INSERT INTO module_ota (module_id, msisdn) SELECT id, ? FROM modules WHERE eid = ?`,
			number, string(testEID(n))); err != nil {
			t.Fatal(err)
		}
	}
	old.Close()
	s := storetest.Open(t, dsn)
	ms := []*keyport.Module{nil}
	for n := 1; n <= 4; n++ {
		m, err := s.GetModule(ctx, testEID(n))
		if err != nil {
			t.Fatal(err)
		}
		ms = append(ms, m)
	}
	return s, ms
}

// GetModuleOTA says a module's MSISDN is shared (no trigger SMS goes to
// it) while another module still has it: not once an admin has cleared it
// on every other module, though the mark stays until it is set again, and
// never for a number one module had before migration 20.
func TestGetModuleOTASaysAnMSISDNIsSharedOnlyWhileAnotherModuleStillHasIt(t *testing.T) {
	storetest.EachDSN(t, func(t *testing.T, dsn string) {
		s, ms := sharedBefore20(t, dsn)
		shared := func(when string, want ...bool) {
			t.Helper()
			for n := 1; n <= 4; n++ {
				o, err := s.GetModuleOTA(ctx, ms[n].ID)
				if err != nil {
					t.Fatal(err)
				}
				if o.Shared != want[n-1] {
					t.Errorf("%s: module %d (MSISDN %q) shared %v, want %v", when, n, o.MSISDN, o.Shared, want[n-1])
				}
			}
		}
		shared("after migrating", true, true, true, false)
		if err := s.SetModuleMSISDN(ctx, ms[3].ID, ""); err != nil {
			t.Fatal(err)
		}
		shared("once module 3 cleared it", true, true, false, false)
		if err := s.SetModuleMSISDN(ctx, ms[2].ID, ""); err != nil {
			t.Fatal(err)
		}
		shared("once modules 2 and 3 cleared it", false, false, false, false)
		if err := s.SetModuleMSISDN(ctx, ms[1].ID, "4915200000009"); err != nil {
			t.Fatal(err)
		}
		shared("once set again on module 1", false, false, false, false)
	})
}

// The store's errors about an MSISDN name it masked
// (keyport.MaskedMSISDN), never in full: they reach logs (a failed
// import's warning, a PoR ignored for a shared number) and an import's
// report. Each: a number another module has (set, imported), one given
// twice in a file (in one chunk, and chunks apart), and a number several
// modules have (ModuleByMSISDN).
func TestTheStoresMSISDNErrorsNameTheNumberMaskedOnly(t *testing.T) {
	storetest.EachDSN(t, func(t *testing.T, dsn string) {
		s, ms := sharedBefore20(t, dsn)
		b := createBatch(t, s, "b2")
		var errs []error
		errs = append(errs, s.SetModuleMSISDN(ctx, ms[1].ID, "4915200000010"))
		file := func(numbers map[int]string) func() (*keyport.ModuleImport, error) {
			var f []*keyport.ModuleImport
			for i := 1; i <= 1100; i++ {
				m := testModule(i, 100+i, 1)
				m.MSISDN = numbers[i]
				f = append(f, m)
			}
			return fromSlice(f)
		}
		for _, numbers := range []map[int]string{{5: "4915200000010"}, {5: "4917000000300", 9: "4917000000300"},
			{5: "4917000000300", 1050: "4917000000300"}} {
			_, err := s.ImportModules(ctx, b.ID, file(numbers))
			errs = append(errs, err)
		}
		_, err := s.ModuleByMSISDN(ctx, "4915200000009")
		errs = append(errs, err)
		for i, err := range errs {
			if !errors.Is(err, keyport.ErrConflict) {
				t.Fatalf("error %d: %v; want ErrConflict", i, err)
			}
			text := err.Error()
			full := ""
			for _, n := range []string{"4915200000009", "4915200000010", "4917000000300"} {
				if strings.Contains(text, keyport.MaskedMSISDN(n)) {
					full = n
				}
			}
			if full == "" || strings.Contains(text, full) {
				t.Errorf("error %d: %q; want the number masked, and only so", i, text)
			}
		}
	})
}
