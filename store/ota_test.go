package store_test

import (
	"bytes"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/gp"
	"github.com/keyport/keyport/store"
	"github.com/keyport/keyport/store/storetest"
)

// importOTA imports three modules: one with an MSISDN and OTA keys, one
// with an MSISDN only, one with neither.
func importOTA(t *testing.T, s *store.Store) []*keyport.Module {
	t.Helper()
	b := &keyport.Batch{Name: "ota", KeySource: keyport.KeyImported}
	if err := s.CreateBatch(ctx, b); err != nil {
		t.Fatal(err)
	}
	i := 0
	if _, err := s.ImportModules(ctx, b.ID, func() (*keyport.ModuleImport, error) {
		if i == 3 {
			return nil, nil
		}
		i++
		m := &keyport.ModuleImport{Line: i, EID: testEID(300 + i), ISDAID: "A000000151000000",
			Domains: []keyport.Domain{{AID: testAID(1), KVN: 0x30, State: keyport.Unassigned, KeySource: keyport.KeyImported, Wrapped: blobs(3)}}}
		switch i {
		case 1:
			m.MSISDN, m.OTAKVN, m.OTAKeys = "4915200000001", 1, blobs(5)
		case 2:
			m.MSISDN = "4915200000002"
		}
		return m, nil
	}); err != nil {
		t.Fatal(err)
	}
	var out []*keyport.Module
	for j := 1; j <= 3; j++ {
		m, err := s.GetModule(ctx, testEID(300+j))
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, m)
	}
	return out
}

func TestModuleOTAIsImportedSetAndCleared(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		ms := importOTA(t, s)
		o, err := s.GetModuleOTA(ctx, ms[0].ID)
		if err != nil || o.MSISDN != "4915200000001" || o.KVN != 1 || !bytes.Equal(o.Keys[keyport.UsageMAC], blobs(5)[keyport.UsageMAC]) || o.Counter != 0 {
			t.Fatalf("module 1: %+v, %v", o, err)
		}
		if o, err := s.GetModuleOTA(ctx, ms[2].ID); err != nil || o.MSISDN != "" || o.Keys != nil || o.ModuleID != ms[2].ID {
			t.Fatalf("module 3 (nothing stored): %+v, %v", o, err)
		}
		if eid, err := s.ModuleByMSISDN(ctx, "4915200000002"); err != nil || eid != testEID(302) {
			t.Fatalf("by MSISDN: %s, %v", eid, err)
		}
		if err := s.SetModuleMSISDN(ctx, ms[2].ID, "4915200000003"); err != nil {
			t.Fatal(err)
		}
		if err := s.SetModuleOTAKeys(ctx, ms[2].ID, 2, blobs(7)); err != nil {
			t.Fatal(err)
		}
		if o, err := s.GetModuleOTA(ctx, ms[2].ID); err != nil || o.MSISDN != "4915200000003" || o.KVN != 2 || !o.Keys.Complete() {
			t.Fatalf("module 3 after setting: %+v, %v", o, err)
		}
		if err := s.SetModuleMSISDN(ctx, ms[1].ID, ""); err != nil {
			t.Fatal(err)
		}
		if _, err := s.ModuleByMSISDN(ctx, "4915200000002"); !errors.Is(err, keyport.ErrNotFound) {
			t.Fatalf("a cleared MSISDN still finds its module: %v", err)
		}
		if _, err := s.ModuleByMSISDN(ctx, ""); !errors.Is(err, keyport.ErrNotFound) {
			t.Fatalf("the empty MSISDN finds a module: %v", err)
		}
	})
}

// Counters are strictly increasing and never handed out twice, however
// many callers allocate at once, in transactions or not.
func TestNextOTACounterNeverRepeats(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		ms := importOTA(t, s)
		const callers, each = 4, 10
		var mu sync.Mutex
		seen := map[uint64]bool{}
		var wg sync.WaitGroup
		errs := make(chan error, callers*each)
		for c := 0; c < callers; c++ {
			wg.Add(1)
			go func(c int) {
				defer wg.Done()
				last := uint64(0)
				for i := 0; i < each; i++ {
					var n uint64
					var err error
					if c%2 == 0 {
						err = s.Tx(ctx, func(tx keyport.Repo) error {
							n, err = tx.NextOTACounter(ctx, ms[0].ID)
							return err
						})
					} else {
						n, err = s.NextOTACounter(ctx, ms[0].ID)
					}
					if err != nil {
						errs <- err
						return
					}
					if n <= last {
						errs <- errors.New("a caller's counters went down")
					}
					last = n
					mu.Lock()
					if seen[n] {
						errs <- errors.New("a counter was handed out twice")
					}
					seen[n] = true
					mu.Unlock()
				}
			}(c)
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		o, _ := s.GetModuleOTA(ctx, ms[0].ID)
		if len(seen) != callers*each || o.Counter != callers*each {
			t.Fatalf("%d counters, stored %d", len(seen), o.Counter)
		}
		// An allocation rolled back with its transaction leaves nothing (a
		// sender seals only with a committed counter): the next follows the
		// last committed one.
		_ = s.Tx(ctx, func(tx keyport.Repo) error {
			if _, err := tx.NextOTACounter(ctx, ms[0].ID); err != nil {
				return err
			}
			return errors.New("rolled back")
		})
		n, err := s.NextOTACounter(ctx, ms[0].ID)
		if err != nil || n != callers*each+1 {
			t.Fatalf("after a rollback: %d, %v", n, err)
		}
		// A module without a row gets one, from 1.
		if n, err := s.NextOTACounter(ctx, ms[2].ID); err != nil || n != 1 {
			t.Fatalf("first counter of a new row: %d, %v", n, err)
		}
	})
}

// A trigger SMS's message ids find its module until they are older than
// the window kept; an id the SMSC gives again names the newer message.
func TestSMSMessageIDsFindTheirModuleForTheReceiptWindow(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		ms := importOTA(t, s)
		t0 := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
		week := 7 * 24 * time.Hour
		if err := s.RecordSMS(ctx, ms[0].EID, []string{"a-1", "a-2"}, t0, week); err != nil {
			t.Fatal(err)
		}
		if err := s.RecordSMS(ctx, ms[1].EID, nil, t0, week); err != nil {
			t.Fatalf("no ids: %v", err)
		}
		for _, id := range []string{"a-1", "a-2"} {
			if eid, err := s.ModuleBySMS(ctx, id); err != nil || eid != ms[0].EID {
				t.Errorf("%s: %s %v, want %s", id, eid, err, ms[0].EID)
			}
		}
		if _, err := s.ModuleBySMS(ctx, "b-1"); !errors.Is(err, keyport.ErrNotFound) {
			t.Errorf("an id never recorded: %v, want ErrNotFound", err)
		}
		// Six days later, a-2 again (for module 2) and b-1: a-1 is kept.
		if err := s.RecordSMS(ctx, ms[1].EID, []string{"a-2", "b-1"}, t0.Add(6*24*time.Hour), week); err != nil {
			t.Fatal(err)
		}
		if eid, err := s.ModuleBySMS(ctx, "a-2"); err != nil || eid != ms[1].EID {
			t.Errorf("a reused id: %s %v, want %s", eid, err, ms[1].EID)
		}
		if eid, err := s.ModuleBySMS(ctx, "a-1"); err != nil || eid != ms[0].EID {
			t.Errorf("a-1 within the window: %s %v", eid, err)
		}
		if err := s.RecordSMS(ctx, testEID(999), []string{"z-1"}, t0, week); !errors.Is(err, keyport.ErrNotFound) {
			t.Errorf("an unknown module: %v, want ErrNotFound", err)
		}
		if _, err := s.ModuleBySMS(ctx, "z-1"); !errors.Is(err, keyport.ErrNotFound) {
			t.Errorf("an id of an unknown module was recorded: %v", err)
		}
		// Eight days after a-1: it is forgotten, the others are not.
		if err := s.RecordSMS(ctx, ms[2].EID, []string{"c-1"}, t0.Add(8*24*time.Hour), week); err != nil {
			t.Fatal(err)
		}
		if _, err := s.ModuleBySMS(ctx, "a-1"); !errors.Is(err, keyport.ErrNotFound) {
			t.Errorf("a-1 after the window: %v, want ErrNotFound", err)
		}
		for id, want := range map[string]keyport.EID{"a-2": ms[1].EID, "b-1": ms[1].EID, "c-1": ms[2].EID} {
			if eid, err := s.ModuleBySMS(ctx, id); err != nil || eid != want {
				t.Errorf("%s: %s %v, want %s", id, eid, err, want)
			}
		}
	})
}

// RaiseOTACounter is a compare-and-set: it moves the counter only from the
// value given, never down, never past the 5-byte maximum.
func TestRaiseOTACounterMovesOnlyFromTheCounterGiven(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		ms := importOTA(t, s)
		n, err := s.NextOTACounter(ctx, ms[0].ID)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range []struct{ from, to uint64 }{{n + 1, n + 100}, {n, n}, {n, n - 1}, {n, gp.MaxCounter + 1}} {
			if moved, err := s.RaiseOTACounter(ctx, ms[0].ID, c.from, c.to); err != nil || moved {
				t.Fatalf("raise %d → %d from %d: %v %v, want no move", c.from, c.to, n, moved, err)
			}
		}
		if moved, err := s.RaiseOTACounter(ctx, ms[0].ID, n, n+1000); err != nil || !moved {
			t.Fatalf("raise from the current counter: %v %v", moved, err)
		}
		if next, err := s.NextOTACounter(ctx, ms[0].ID); err != nil || next != n+1001 {
			t.Fatalf("next counter after the raise: %d %v, want %d", next, err, n+1001)
		}
	})
}
