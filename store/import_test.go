package store_test

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/store"
	"github.com/keyport/keyport/store/storetest"
)

func countRows(t *testing.T, s *store.Store, table string) string {
	t.Helper()
	n, err := store.QueryStringsForTest(s, `SELECT COUNT(*) FROM `+table)
	if err != nil {
		t.Fatal(err)
	}
	return n[0]
}

// TestImportWithADuplicateEIDInTheMiddleNamesTheLineAndImportsNothing puts
// the duplicate in the third chunk, after two chunks were written.
func TestImportWithADuplicateEIDInTheMiddleNamesTheLineAndImportsNothing(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		b := createBatch(t, s, "b")
		var ms []*keyport.ModuleImport
		for i := 1; i <= 1300; i++ {
			ms = append(ms, testModule(i, i, 2))
		}
		ms[1100].EID = ms[299].EID // line 1101 repeats line 300, two chunks back
		n, err := s.ImportModules(ctx, b.ID, fromSlice(ms))
		var lineErr *keyport.LineError
		if !errors.As(err, &lineErr) || lineErr.Line != 1101 || !errors.Is(err, keyport.ErrConflict) {
			t.Fatalf("ImportModules = %d, %v; want a LineError at line 1101 wrapping ErrConflict", n, err)
		}
		if !strings.Contains(err.Error(), string(ms[299].EID)) {
			t.Errorf("error %q does not name the EID", err)
		}
		if c := countRows(t, s, "modules"); c != "0" {
			t.Errorf("%s modules stored after a failed import", c)
		}
		if c := countRows(t, s, "domains"); c != "0" {
			t.Errorf("%s domains stored after a failed import", c)
		}

		// Within one chunk.
		ms = ms[:10]
		ms[7].EID = ms[2].EID
		_, err = s.ImportModules(ctx, b.ID, fromSlice(ms))
		if !errors.As(err, &lineErr) || lineErr.Line != 8 || !errors.Is(err, keyport.ErrConflict) {
			t.Fatalf("duplicate within a chunk: %v; want line 8", err)
		}
	})
}

func TestImportOfAnEIDAlreadyStoredNamesItsLine(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		b := createBatch(t, s, "b")
		importModules(t, s, b.ID, 1, 5, 2)
		// Lines 1..4 are modules 100..103, line 5 is module 3 (stored).
		ms := []*keyport.ModuleImport{testModule(1, 100, 2), testModule(2, 101, 2), testModule(3, 102, 2),
			testModule(4, 103, 2), testModule(5, 3, 2), testModule(6, 104, 2)}
		_, err := s.ImportModules(ctx, b.ID, fromSlice(ms))
		var lineErr *keyport.LineError
		if !errors.As(err, &lineErr) || lineErr.Line != 5 || !errors.Is(err, keyport.ErrConflict) {
			t.Fatalf("ImportModules: %v; want a LineError at line 5 wrapping ErrConflict", err)
		}
		if c := countRows(t, s, "modules"); c != "5" {
			t.Errorf("%s modules stored, want the 5 of the first import", c)
		}
	})
}

func TestImportRejectsAModuleListingAnAIDTwice(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		b := createBatch(t, s, "b")
		m := testModule(7, 1, 3)
		m.Domains[2].AID = m.Domains[0].AID
		_, err := s.ImportModules(ctx, b.ID, fromSlice([]*keyport.ModuleImport{testModule(6, 2, 1), m}))
		var lineErr *keyport.LineError
		if !errors.As(err, &lineErr) || lineErr.Line != 7 || !errors.Is(err, keyport.ErrConflict) {
			t.Fatalf("ImportModules: %v; want line 7, ErrConflict", err)
		}
	})
}

func TestImportIntoAnUnknownBatchIsNotFound(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		if _, err := s.ImportModules(ctx, 777, modules(1, 1, 1)); !errors.Is(err, keyport.ErrNotFound) {
			t.Fatalf("ImportModules: %v, want ErrNotFound", err)
		}
	})
}

func TestImportStopsOnTheReadersErrorAndKeepsNothing(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		b := createBatch(t, s, "b")
		bad := &keyport.LineError{Line: 812, Err: keyport.Invalid("eid", "EID check digits are wrong")}
		i := 0
		_, err := s.ImportModules(ctx, b.ID, func() (*keyport.ModuleImport, error) {
			i++
			if i == 812 {
				return nil, bad
			}
			return testModule(i, i, 1), nil
		})
		if !errors.Is(err, bad) || !errors.Is(err, keyport.ErrInvalid) {
			t.Fatalf("ImportModules: %v, want the reader's error", err)
		}
		if c := countRows(t, s, "modules"); c != "0" {
			t.Errorf("%s modules kept", c)
		}
	})
}

// TestImportedWrappedKeysAreStoredExactlyAsGiven checks that what the
// manufacturer delivered (KWP-wrapped keys) is what the database holds, as
// base64 of the same bytes, and what GetDomain returns.
func TestImportedWrappedKeysAreStoredExactlyAsGiven(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		b := &keyport.Batch{Name: "imp", KeySource: keyport.KeyImported}
		if err := s.CreateBatch(ctx, b); err != nil {
			t.Fatal(err)
		}
		wrapped := map[keyport.KeyUsage][]byte{
			keyport.UsageENC: append(bytes.Repeat([]byte{0xE1}, 23), 0x00),
			keyport.UsageMAC: append([]byte("WRAPPED-MAC-KWP:"), 0xff, 0x00, 0x80, 0x7f, 0x01, 0x02, 0x03, 0x04),
			keyport.UsageDEK: bytes.Repeat([]byte{0xDE, 0xC0}, 12),
		}
		kcv := map[keyport.KeyUsage]string{keyport.UsageENC: "111111", keyport.UsageMAC: "222222", keyport.UsageDEK: "333333"}
		m := &keyport.ModuleImport{Line: 1, EID: testEID(1), ISDAID: "A000000151000000", Domains: []keyport.Domain{{
			AID: testAID(1), KVN: 0x30, State: keyport.Unassigned, KeySource: keyport.KeyImported,
			Wrapped: wrapped, KCV: kcv}}}
		if _, err := s.ImportModules(ctx, b.ID, fromSlice([]*keyport.ModuleImport{m})); err != nil {
			t.Fatal(err)
		}
		d, err := s.GetDomain(ctx, testEID(1), testAID(1))
		if err != nil {
			t.Fatal(err)
		}
		for u, w := range wrapped {
			if !bytes.Equal(d.Wrapped[u], w) {
				t.Errorf("%s: got %x, want %x", u, d.Wrapped[u], w)
			}
			if d.KCV[u] != kcv[u] {
				t.Errorf("%s KCV %s, want %s", u, d.KCV[u], kcv[u])
			}
		}
		stored, err := store.QueryStringsForTest(s, `SELECT wrapped FROM domains`)
		if err != nil {
			t.Fatal(err)
		}
		want := `{"dek":"3sDewN7A3sDewN7A3sDewN7A3sDewN7A","enc":"4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eEA","mac":"V1JBUFBFRC1NQUMtS1dQOv8AgH8BAgME"}`
		if len(stored) != 1 || stored[0] != want {
			t.Errorf("stored column %q, want %q", stored, want)
		}
	})
}

// TestImportRoundTripsMixedDomains imports modules whose domains differ in
// everything a statement lays out (AID lengths, wrapped-key sizes, keys or
// KCVs absent, text that needs JSON escaping) and in the columns bound once
// per statement (KVN, state, key source, sequence counter), over more than
// one chunk and more than one statement's worth of domains, and reads every
// module back unchanged. It sits beside BenchmarkImport because it guards
// the row layout that the benchmark measures.
func TestImportRoundTripsMixedDomains(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		b := &keyport.Batch{Name: "mixed", KeySource: keyport.KeyImported}
		if err := s.CreateBatch(ctx, b); err != nil {
			t.Fatal(err)
		}
		rng := rand.New(rand.NewPCG(7, 8))
		bytesOf := func(n int) []byte {
			w := make([]byte, n)
			for i := range w {
				w[i] = byte(rng.Uint32())
			}
			return w
		}
		var ms []*keyport.ModuleImport
		for i := 1; i <= 700; i++ {
			m := &keyport.ModuleImport{Line: i, EID: testEID(i), ISDAID: "A000000151000000"}
			for d := 1; d <= 1+i%4; d++ {
				aid := keyport.AID(fmt.Sprintf("%s%0*X", aidPrefix[:10], 2*(d+(i%3)), d))
				dom := keyport.Domain{AID: aid, EID: m.EID, KVN: 0x30 + i%100/90, State: keyport.Unassigned,
					KeySource: keyport.KeyImported, SeqCounter: i % 250 / 240}
				switch (i + d) % 5 {
				case 0: // derived-style: KCVs only
					dom.KeySource = keyport.KeyDerived
					dom.KCV = map[keyport.KeyUsage]string{keyport.UsageENC: "EE72CB"}
				case 1: // neither
				case 2: // text that JSON escapes
					dom.Wrapped = map[keyport.KeyUsage][]byte{keyport.UsageENC: bytesOf(40)}
					dom.KCV = map[keyport.KeyUsage]string{"x\"\\<é": "0A1B2C", keyport.UsageENC: "ü\n\"</"}
				default:
					dom.Wrapped, dom.KCV = map[keyport.KeyUsage][]byte{}, map[keyport.KeyUsage]string{}
					for _, u := range keyport.Usages {
						dom.Wrapped[u] = bytesOf([]int{24, 32, 40}[rng.IntN(3)])
						dom.KCV[u] = strings.ToUpper(hex.EncodeToString(bytesOf(3)))
					}
				}
				m.Domains = append(m.Domains, dom)
			}
			ms = append(ms, m)
		}
		if n, err := s.ImportModules(ctx, b.ID, fromSlice(ms)); err != nil || n != len(ms) {
			t.Fatalf("ImportModules = %d, %v", n, err)
		}
		for _, want := range ms {
			got, err := s.GetModule(ctx, want.EID)
			if err != nil {
				t.Fatal(err)
			}
			if got.ISDAID != want.ISDAID || got.BatchID != b.ID || len(got.Domains) != len(want.Domains) {
				t.Fatalf("module %s: %+v", want.EID, got)
			}
			for _, w := range want.Domains {
				i := slices.IndexFunc(got.Domains, func(d keyport.Domain) bool { return d.AID == w.AID })
				if i < 0 {
					t.Fatalf("module %s: domain %s missing", want.EID, w.AID)
				}
				g := got.Domains[i]
				if g.ModuleID != got.ID || g.EID != w.EID || g.KVN != w.KVN || g.State != w.State ||
					g.KeySource != w.KeySource || g.SeqCounter != w.SeqCounter || g.OwnerID != "" || g.PriorState != "" ||
					!maps.EqualFunc(g.Wrapped, w.Wrapped, bytes.Equal) || !maps.Equal(g.KCV, w.KCV) ||
					(g.Wrapped == nil) != (len(w.Wrapped) == 0) || (g.KCV == nil) != (len(w.KCV) == 0) {
					t.Fatalf("module %s domain %s:\n got %+v\nwant %+v", want.EID, w.AID, g, w)
				}
			}
		}
	})
}
