package store_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/store"
	"github.com/keyport/keyport/store/storetest"
)

func TestMain(m *testing.M) { storetest.Main(m) }

var ctx = context.Background()

// testEID returns the n-th valid EID of a made-up manufacturer range.
func testEID(n int) keyport.EID {
	first30 := fmt.Sprintf("890490320000000000%012d", n)
	cd, err := keyport.EIDCheckDigits(first30)
	if err != nil {
		panic(err)
	}
	eid, err := keyport.ParseEID(first30 + cd)
	if err != nil {
		panic(err)
	}
	return eid
}

const aidPrefix = "A000000151535041"

// testAID returns SSD n's AID.
func testAID(n int) keyport.AID { return keyport.AID(fmt.Sprintf("%s%02X", aidPrefix, n)) }

// testModule returns module n with `domains` unassigned derived SSDs, listed
// in descending AID order so that tests see the store sort them.
func testModule(line, n, domains int) *keyport.ModuleImport {
	m := &keyport.ModuleImport{Line: line, EID: testEID(n), ISDAID: "A000000151000000"}
	for i := domains; i >= 1; i-- {
		m.Domains = append(m.Domains, keyport.Domain{AID: testAID(i), KVN: 0x30, State: keyport.Unassigned,
			KeySource: keyport.KeyDerived, KCV: map[keyport.KeyUsage]string{
				keyport.UsageENC: "EE72CB", keyport.UsageMAC: "0A1B2C", keyport.UsageDEK: "FFEE00"}})
	}
	return m
}

// modules yields count modules numbered from first, line numbers from 1.
func modules(first, count, domains int) func() (*keyport.ModuleImport, error) {
	i := 0
	return func() (*keyport.ModuleImport, error) {
		if i == count {
			return nil, nil
		}
		i++
		return testModule(i, first+i-1, domains), nil
	}
}

// fromSlice yields ms in order.
func fromSlice(ms []*keyport.ModuleImport) func() (*keyport.ModuleImport, error) {
	i := 0
	return func() (*keyport.ModuleImport, error) {
		if i == len(ms) {
			return nil, nil
		}
		i++
		return ms[i-1], nil
	}
}

func createBatch(t testing.TB, s *store.Store, name string) *keyport.Batch {
	t.Helper()
	b := &keyport.Batch{Name: name, KeySource: keyport.KeyDerived, AIDPrefix: aidPrefix}
	if err := s.CreateBatch(ctx, b); err != nil {
		t.Fatalf("CreateBatch: %v", err)
	}
	return b
}

func importModules(t testing.TB, s *store.Store, batchID int64, first, count, domains int) {
	t.Helper()
	n, err := s.ImportModules(ctx, batchID, modules(first, count, domains))
	if err != nil {
		t.Fatalf("ImportModules: %v", err)
	}
	if n != count {
		t.Fatalf("ImportModules = %d, want %d", n, count)
	}
}

func createProvider(t testing.TB, r keyport.Repo, email string) *keyport.Provider {
	t.Helper()
	p := &keyport.Provider{Name: "Bank " + email, Kind: keyport.KindBank, Email: email,
		Status: keyport.ProviderApproved}
	if err := r.CreateProvider(ctx, p); err != nil {
		t.Fatalf("CreateProvider: %v", err)
	}
	return p
}

func createWrappingKey(t testing.TB, r keyport.Repo, providerID string) *keyport.WrappingKey {
	t.Helper()
	k := &keyport.WrappingKey{ProviderID: providerID, PublicKeyDER: []byte{0x30, 0x82, 0x01, 0xa2},
		SHA256: "ab12", Bits: 3072}
	if err := r.CreateWrappingKey(ctx, k); err != nil {
		t.Fatalf("CreateWrappingKey: %v", err)
	}
	return k
}
