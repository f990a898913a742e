package store_test

import (
	"bytes"
	"errors"
	"testing"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/store"
	"github.com/keyport/keyport/store/storetest"
)

func blobs(b byte) keyport.KeyBlobs {
	return keyport.KeyBlobs{keyport.UsageENC: bytes.Repeat([]byte{b}, 24), keyport.UsageMAC: bytes.Repeat([]byte{b + 1}, 24),
		keyport.UsageDEK: bytes.Repeat([]byte{b + 2}, 32)}
}

func TestPersoKeysAreStoredReplacedAndDeleted(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		b := &keyport.Batch{Name: "p1", KeySource: keyport.KeyGenerated}
		if err := s.CreateBatch(ctx, b); err != nil {
			t.Fatal(err)
		}
		eid := testEID(7)
		if _, err := s.GetPersoKeys(ctx, eid); !errors.Is(err, keyport.ErrNotFound) {
			t.Fatalf("before: %v, want ErrNotFound", err)
		}
		k := &keyport.PersoKeys{EID: eid, BatchID: b.ID, ISDAID: "A000000151000000", ISD: blobs(1), PSK: []byte{9, 8, 7},
			SSD: map[keyport.AID]keyport.KeyBlobs{testAID(1): blobs(4)}}
		if err := s.PutPersoKeys(ctx, k); err != nil {
			t.Fatal(err)
		}
		k.SSD[testAID(2)] = blobs(7)
		if err := s.PutPersoKeys(ctx, k); err != nil {
			t.Fatal(err)
		}
		got, err := s.GetPersoKeys(ctx, eid)
		if err != nil {
			t.Fatal(err)
		}
		if got.BatchID != b.ID || got.ISDAID != k.ISDAID || !bytes.Equal(got.PSK, k.PSK) || len(got.SSD) != 2 ||
			!bytes.Equal(got.SSD[testAID(2)][keyport.UsageDEK], blobs(7)[keyport.UsageDEK]) || !bytes.Equal(got.ISD[keyport.UsageMAC], blobs(1)[keyport.UsageMAC]) {
			t.Fatalf("read back %+v", got)
		}
		if err := s.DeletePersoKeys(ctx, eid); err != nil {
			t.Fatal(err)
		}
		if _, err := s.GetPersoKeys(ctx, eid); !errors.Is(err, keyport.ErrNotFound) {
			t.Fatalf("after delete: %v, want ErrNotFound", err)
		}
		if err := s.DeletePersoKeys(ctx, eid); err != nil {
			t.Fatalf("deleting nothing: %v", err)
		}
	})
}

func TestTheMigrationWritesReachTheModuleAndItsDomains(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		b := &keyport.Batch{Name: "old", KeySource: keyport.KeyDerived}
		if err := s.CreateBatch(ctx, b); err != nil {
			t.Fatal(err)
		}
		var mods []*keyport.ModuleImport
		for i := range 3 {
			mods = append(mods, &keyport.ModuleImport{Line: i + 1, EID: testEID(100 + i), ISDAID: "A000000151000000",
				Domains: []keyport.Domain{{AID: testAID(1), KVN: 0x30, State: keyport.Unassigned, KeySource: keyport.KeyDerived}}})
		}
		i := 0
		if _, err := s.ImportModules(ctx, b.ID, func() (*keyport.ModuleImport, error) {
			if i == len(mods) {
				return nil, nil
			}
			i++
			return mods[i-1], nil
		}); err != nil {
			t.Fatal(err)
		}
		page, err := s.ModulesAfter(ctx, 0, 2)
		if err != nil || len(page) != 2 {
			t.Fatalf("first page: %d modules, %v", len(page), err)
		}
		rest, err := s.ModulesAfter(ctx, page[1].ID, 2)
		if err != nil || len(rest) != 1 || rest[0].EID != testEID(102) || len(rest[0].Domains) != 1 {
			t.Fatalf("second page: %+v, %v", rest, err)
		}
		m := page[0]
		if m.PSK != nil || m.ISDKeys != nil || m.Domains[0].Wrapped != nil {
			t.Fatalf("an old module has keys: %+v", m)
		}
		if err := s.SetModuleKeys(ctx, m.ID, blobs(1), []byte{1, 2, 3}); err != nil {
			t.Fatal(err)
		}
		if err := s.SetDomainWrapped(ctx, m.Domains[0].ID, keyport.KeyGenerated, blobs(4)); err != nil {
			t.Fatal(err)
		}
		if err := s.SetBatchKeySource(ctx, b.ID, keyport.KeyGenerated); err != nil {
			t.Fatal(err)
		}
		got, err := s.GetModule(ctx, m.EID)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got.PSK, []byte{1, 2, 3}) || !bytes.Equal(got.ISDKeys[keyport.UsageDEK], blobs(1)[keyport.UsageDEK]) ||
			got.Domains[0].KeySource != keyport.KeyGenerated || !bytes.Equal(got.Domains[0].Wrapped[keyport.UsageENC], blobs(4)[keyport.UsageENC]) {
			t.Fatalf("read back %+v", got)
		}
		// nil leaves a column as it is.
		if err := s.SetModuleKeys(ctx, m.ID, nil, []byte{4}); err != nil {
			t.Fatal(err)
		}
		if got, _ := s.GetModule(ctx, m.EID); !bytes.Equal(got.PSK, []byte{4}) || !got.ISDKeys.Complete() {
			t.Fatalf("after a PSK-only update: %+v", got)
		}
		if nb, _ := s.GetBatch(ctx, "old"); nb.KeySource != keyport.KeyGenerated {
			t.Fatalf("batch key source %s", nb.KeySource)
		}
		if err := s.SetModuleKeys(ctx, 99999, nil, []byte{1}); !errors.Is(err, keyport.ErrNotFound) {
			t.Fatalf("unknown module: %v", err)
		}
	})
}

func TestImportStoresEachModulesSealedPSKAndISDKeys(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		b := &keyport.Batch{Name: "imp", KeySource: keyport.KeyImported}
		if err := s.CreateBatch(ctx, b); err != nil {
			t.Fatal(err)
		}
		// PSKs of different lengths, one module without: the SQLite record
		// layout must keep each exact, and NULL for none.
		psks := [][]byte{bytes.Repeat([]byte{0xAB}, 45), {0x00, 0x20, 0xFF}, nil}
		i := 0
		if _, err := s.ImportModules(ctx, b.ID, func() (*keyport.ModuleImport, error) {
			if i == len(psks) {
				return nil, nil
			}
			i++
			m := &keyport.ModuleImport{Line: i, EID: testEID(200 + i), ISDAID: "A000000151000000", PSK: psks[i-1],
				Domains: []keyport.Domain{{AID: testAID(1), KVN: 0x30, State: keyport.Unassigned, KeySource: keyport.KeyImported, Wrapped: blobs(3)}}}
			if i == 2 {
				m.ISDKeys = blobs(9)
			}
			return m, nil
		}); err != nil {
			t.Fatal(err)
		}
		for j, want := range psks {
			m, err := s.GetModule(ctx, testEID(201+j))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(m.PSK, want) || (want == nil) != (m.PSK == nil) {
				t.Errorf("module %d: PSK %x, want %x", j, m.PSK, want)
			}
			if (j == 1) != m.ISDKeys.Complete() {
				t.Errorf("module %d: ISD keys %v", j, m.ISDKeys)
			}
		}
	})
}
