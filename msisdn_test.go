package keyport_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/internal/fixture"
	"github.com/keyport/keyport/store"
	"github.com/keyport/keyport/store/storetest"
)

// withMSISDN is an import line with an "msisdn" field.
func withMSISDN(line, msisdn string) string {
	return strings.Replace(line, `{"eid"`, `{"msisdn":"`+msisdn+`","eid"`, 1)
}

// msisdnOf returns module n's MSISDN ("" for none).
func msisdnOf(t *testing.T, w *fixture.World, n int) string {
	t.Helper()
	got, err := w.Svc.ModuleMSISDN(context.Background(), fixture.Admin, fixture.EID(t, n))
	if err != nil {
		t.Fatal(err)
	}
	return got
}

// SetMSISDN refuses a number another module has, in any form it takes,
// with ErrConflict naming the number (masked, as in every error) and that
// module, and neither stores nor audits it; a module's own number set
// again is no conflict.
func TestSetMSISDNRefusesANumberAnotherModuleHasNamingIt(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		ctx := context.Background()
		w := fixture.New(t, s, 2, 1)
		if err := w.Svc.SetMSISDN(ctx, fixture.Admin, fixture.EID(t, 0), "4915200000001"); err != nil {
			t.Fatal(err)
		}
		err := w.Svc.SetMSISDN(ctx, fixture.Admin, fixture.EID(t, 1), " +4915200000001")
		if !errors.Is(err, keyport.ErrConflict) || !strings.Contains(err.Error(), "+**********001") ||
			strings.Contains(err.Error(), "4915200000001") || !strings.Contains(err.Error(), string(fixture.EID(t, 0))) {
			t.Fatalf("SetMSISDN of module 0's number on module 1: %v; want ErrConflict naming the number masked and module 0", err)
		}
		if got := msisdnOf(t, w, 1); got != "" {
			t.Errorf("module 1 has %q after the refusal", got)
		}
		if n := w.CountAudit(t, "module.msisdn.set"); n != 1 {
			t.Errorf("%d module.msisdn.set events, want 1 (the refused set is not one)", n)
		}
		if err := w.Svc.SetMSISDN(ctx, fixture.Admin, fixture.EID(t, 0), "+4915200000001"); err != nil {
			t.Errorf("module 0's own number again: %v", err)
		}
	})
}

// Two admins' requests giving one number to two modules at the same time
// (goroutines, each through SetMSISDN's own transaction): exactly one
// succeeds in every round, the other is ErrConflict, and one module has
// the number.
func TestTwoParallelSetMSISDNsOfOneNumberOnTwoModulesLetOnlyOneThrough(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		ctx := context.Background()
		w := fixture.New(t, s, 2, 1)
		for r := range 10 {
			number := fmt.Sprintf("+49170000%04d", r)
			start := make(chan struct{})
			errs := make([]error, 2)
			var wg sync.WaitGroup
			for i := range 2 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					<-start
					errs[i] = w.Svc.SetMSISDN(ctx, fixture.Admin, fixture.EID(t, i), number)
				}()
			}
			close(start)
			wg.Wait()
			won, holders := 0, 0
			for i, err := range errs {
				switch {
				case err == nil:
					won++
				case !errors.Is(err, keyport.ErrConflict) || !strings.Contains(err.Error(), keyport.MaskedMSISDN(number)):
					t.Fatalf("round %d, module %d: %v; want nil or ErrConflict naming %s", r, i, err, keyport.MaskedMSISDN(number))
				}
				if msisdnOf(t, w, i) == strings.TrimPrefix(number, "+") {
					holders++
				}
			}
			if won != 1 || holders != 1 {
				t.Fatalf("round %d: %d of two parallel SetMSISDN of %s succeeded and %d modules have it; want one and one", r, won, number, holders)
			}
			for i := range 2 {
				if err := w.Svc.SetMSISDN(ctx, fixture.Admin, fixture.EID(t, i), ""); err != nil {
					t.Fatal(err)
				}
			}
		}
	})
}

// An import file with a number another module has, or with one number
// on two of its lines (in one chunk of the staged import, or chunks
// apart), is rejected as a whole, naming the line and the number (masked):
// nothing of it is stored, and the module that had the number keeps it.
func TestImportRefusesAnMSISDNAnotherModuleHasOrAnEarlierLineHas(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		ctx := context.Background()
		w := fixture.New(t, s, 1, 1)
		if err := w.Svc.SetMSISDN(ctx, fixture.Admin, fixture.EID(t, 0), "+4915200000001"); err != nil {
			t.Fatal(err)
		}
		file := func(numbers map[int]string) []string {
			var lines []string
			for i := 1; i <= 600; i++ {
				l := w.ImportLine(t, fixture.EID(t, 100+i), 1, "")
				if n, ok := numbers[i]; ok {
					l = withMSISDN(l, n)
				}
				lines = append(lines, l)
			}
			return lines
		}
		cases := []struct {
			name  string
			lines []string
			line  int
			text  string
		}{
			{"another module's", file(map[int]string{2: "+4915200000002", 3: "4915200000001"}), 3, string(fixture.EID(t, 0))},
			{"twice in one chunk", file(map[int]string{2: "+4915200000002", 4: "4915200000002"}), 4, "already on line 2"},
			{"twice chunks apart", file(map[int]string{2: "+4915200000002", 550: "4915200000002"}), 550, "earlier in this file"},
		}
		for _, c := range cases {
			_, err := w.Svc.ImportModules(ctx, fixture.Admin, "b1", strings.NewReader(strings.Join(c.lines, "\n")), keyport.VerifyNone)
			var le *keyport.LineError
			if !errors.As(err, &le) || le.Line != c.line || !errors.Is(err, keyport.ErrConflict) ||
				!strings.Contains(err.Error(), "MSISDN +**********00") || strings.Contains(err.Error(), "49152000000") || !strings.Contains(err.Error(), c.text) {
				t.Fatalf("%s: %v; want a LineError at line %d wrapping ErrConflict, naming %s and the number masked", c.name, err, c.line, c.text)
			}
			if _, err := s.GetModule(ctx, fixture.EID(t, 101)); !errors.Is(err, keyport.ErrNotFound) {
				t.Fatalf("%s: module 101 stored from a rejected file: %v", c.name, err)
			}
			if got := msisdnOf(t, w, 0); got != "4915200000001" {
				t.Fatalf("%s: module 0 has %q after the rejected import", c.name, got)
			}
		}
		// The same file without the duplicate goes in.
		if n, err := w.Svc.ImportModules(ctx, fixture.Admin, "b1", strings.NewReader(strings.Join(file(map[int]string{2: "+4915200000002"}), "\n")), keyport.VerifyNone); err != nil || n != 600 {
			t.Fatalf("the file without its duplicate: %d, %v", n, err)
		}
	})
}

// perso's registration of a module with a number another module has is
// refused: nothing is registered, and the run can be repeated with
// another number.
func TestRegisterModuleRefusesAnMSISDNAnotherModuleHas(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		ctx := context.Background()
		w := fixture.New(t, s, 1, 1)
		if _, _, err := w.Svc.CreateBatch(ctx, fixture.Admin, "p1", "", nil); err != nil {
			t.Fatal(err)
		}
		if err := w.Svc.SetMSISDN(ctx, fixture.Admin, fixture.EID(t, 0), "+4915200000001"); err != nil {
			t.Fatal(err)
		}
		eid := fixture.EID(t, 50)
		m := registration(t, eid, 1)
		m.MSISDN = "4915200000001"
		already, err := w.Svc.RegisterModule(ctx, fixture.Admin, "p1", m, nil)
		if !errors.Is(err, keyport.ErrConflict) || already || !strings.Contains(err.Error(), "+**********001") {
			t.Fatalf("RegisterModule with module 0's number: already %v, %v; want ErrConflict naming the number masked", already, err)
		}
		if _, err := s.GetModule(ctx, eid); !errors.Is(err, keyport.ErrNotFound) {
			t.Fatalf("the module was registered: %v", err)
		}
		if n := w.CountAudit(t, "perso"); n != 0 {
			t.Errorf("%d perso events after the refusal", n)
		}
		m.MSISDN = "4915200000050"
		if already, err := w.Svc.RegisterModule(ctx, fixture.Admin, "p1", m, nil); err != nil || already {
			t.Fatalf("RegisterModule with a free number: already %v, %v", already, err)
		}
	})
}

// The proof-of-receipt lookup takes the sender in any form
// NormalizeMSISDN does (an SMSC may put a "+" before it) and finds no
// module for one that is not an E.164 number.
func TestModuleByMSISDNNormalizesTheSender(t *testing.T) {
	ctx := context.Background()
	w := fixture.New(t, storetest.Open(t, storetest.SQLitePath(t)), 1, 1)
	if err := w.Svc.SetMSISDN(ctx, fixture.Admin, fixture.EID(t, 0), "4915200000001"); err != nil {
		t.Fatal(err)
	}
	for _, from := range []string{"4915200000001", "+4915200000001"} {
		if eid, err := w.Svc.ModuleByMSISDN(ctx, from); err != nil || eid != fixture.EID(t, 0) {
			t.Errorf("ModuleByMSISDN(%q) = %s, %v; want module 0", from, eid, err)
		}
	}
	for _, from := range []string{"", "keyport", "004915200000001"} {
		if eid, err := w.Svc.ModuleByMSISDN(ctx, from); !errors.Is(err, keyport.ErrNotFound) {
			t.Errorf("ModuleByMSISDN(%q) = %s, %v; want ErrNotFound", from, eid, err)
		}
	}
}

// A module whose MSISDN other modules also have (marked msisdn_shared by
// migration 20) has no SMS target: SMSTarget is ErrMSISDNShared, which is
// ErrNoSMSReach (so a trigger falls back to the wake-up channel), and uses
// no counter, while its PoR keys stay available. Cleared on one of the two
// others it is still shared; cleared on both, the module is SMS-reachable
// again.
func TestSMSTargetRefusesASharedMSISDNUntilEveryOtherModuleHasClearedIt(t *testing.T) {
	storetest.EachDSN(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		w := fixture.New(t, storetest.Open(t, dsn), 3, 1)
		w.OTAKeys(t, 3)
		for n := range 3 {
			storetest.ExecSQL(t, dsn, `UPDATE module_ota SET msisdn = '4915200000009', msisdn_shared = TRUE
				WHERE module_id = (SELECT id FROM modules WHERE eid = ?)`, string(fixture.EID(t, n)))
		}
		eid := fixture.EID(t, 0)
		refused := func(when string) {
			t.Helper()
			target, err := w.Svc.SMSTarget(ctx, eid, w.HSM)
			if !errors.Is(err, keyport.ErrMSISDNShared) || !errors.Is(err, keyport.ErrNoSMSReach) || strings.Contains(err.Error(), "4915200000009") {
				t.Fatalf("%s: SMSTarget = %+v, %v; want ErrMSISDNShared (ErrNoSMSReach) without the number", when, target, err)
			}
			if keys, err := w.Svc.SMSKeys(ctx, eid, w.HSM); err != nil || keys.Counter != 0 {
				t.Fatalf("%s: SMSKeys = %+v, %v; want the PoR keys, and no counter used", when, keys, err)
			}
		}
		refused("shared by three")
		if err := w.Svc.SetMSISDN(ctx, fixture.Admin, fixture.EID(t, 1), ""); err != nil {
			t.Fatal(err)
		}
		refused("still another module's")
		if err := w.Svc.SetMSISDN(ctx, fixture.Admin, fixture.EID(t, 2), ""); err != nil {
			t.Fatal(err)
		}
		target, err := w.Svc.SMSTarget(ctx, eid, w.HSM)
		if err != nil || target.MSISDN != "4915200000009" || target.Counter != 1 {
			t.Fatalf("SMSTarget once every other module cleared the number: %+v, %v; want it, with counter 1", target, err)
		}
	})
}
