package keyport_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/aes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"strings"
	"testing"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/gp"
	"github.com/keyport/keyport/hsm"
	"github.com/keyport/keyport/hsm/hsmtest"
	"github.com/keyport/keyport/internal/fixture"
	"github.com/keyport/keyport/keywrap"
	"github.com/keyport/keyport/store/storetest"
)

func kcvHex(key []byte) string {
	k, _ := gp.KCV(key)
	return strings.ToUpper(hex.EncodeToString(k))
}

// oldDerived is the old derivation (hsm.DerivationData) recomputed in Go.
func oldDerived(master []byte, eid keyport.EID, aid keyport.AID, u keyport.KeyUsage) []byte {
	b, _ := aes.NewCipher(master)
	sum := sha256.Sum256([]byte("keyport/v1" + string(eid) + string(aid) + string(u)))
	out := make([]byte, 16)
	b.Encrypt(out, sum[:16])
	return out
}

func TestMigrateKeysMovesAnOldTokenAndItsDatabaseOnceAndTheKeysStayTheCardsKeys(t *testing.T) {
	ctx := context.Background()
	s := storetest.Open(t, storetest.SQLitePath(t))
	w := fixture.New(t, s, 1, 1) // a current imported batch "b1": left alone
	master, isdMaster, oldTransport := bytes.Repeat([]byte{0x11}, 32), bytes.Repeat([]byte{0x22}, 32), bytes.Repeat([]byte{0x33}, 32)
	hsmtest.OldKey(t, w.Token, hsm.BatchMasterLabel("old"), master, true)
	hsmtest.OldKey(t, w.Token, hsm.LabelISDMaster, isdMaster, true)
	hsmtest.OldKey(t, w.Token, hsm.TransportLabel("oldimp"), oldTransport, false)

	// The database as the old keyport left it: a derived batch whose
	// modules have no PSK, ISD keys or first-key blobs, and an imported batch
	// under the old transport key.
	derived := &keyport.Batch{Name: "old", KeySource: keyport.KeyDerived}
	imported := &keyport.Batch{Name: "oldimp", KeySource: keyport.KeyImported}
	for _, b := range []*keyport.Batch{derived, imported} {
		if err := s.CreateBatch(ctx, b); err != nil {
			t.Fatal(err)
		}
	}
	const isd = keyport.AID("A000000151000000")
	eidD, eidI := fixture.EID(t, 40), fixture.EID(t, 41)
	aid := fixture.AID(1)
	kcvs := map[keyport.KeyUsage]string{}
	importedKey := map[keyport.KeyUsage][]byte{}
	importedBlobs := keyport.KeyBlobs{}
	importedKCV := map[keyport.KeyUsage]string{}
	for i, u := range keyport.Usages {
		kcvs[u] = kcvHex(oldDerived(master, eidD, aid, u))
		importedKey[u] = bytes.Repeat([]byte{byte(0x40 + i)}, 16)
		importedBlobs[u], _ = keywrap.WrapKWP(oldTransport, importedKey[u])
		importedKCV[u] = kcvHex(importedKey[u])
	}
	put := func(b *keyport.Batch, m *keyport.ModuleImport) {
		done := false
		if _, err := s.ImportModules(ctx, b.ID, func() (*keyport.ModuleImport, error) {
			if done {
				return nil, nil
			}
			done = true
			return m, nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	put(derived, &keyport.ModuleImport{Line: 1, EID: eidD, ISDAID: isd, Domains: []keyport.Domain{{AID: aid, KVN: 0x30,
		State: keyport.Unassigned, KeySource: keyport.KeyDerived, KCV: kcvs}}})
	put(imported, &keyport.ModuleImport{Line: 1, EID: eidI, ISDAID: isd, Domains: []keyport.Domain{{AID: aid, KVN: 0x30,
		State: keyport.Unassigned, KeySource: keyport.KeyImported, Wrapped: importedBlobs, KCV: importedKCV}}})
	current, _ := s.GetModule(ctx, fixture.EID(t, 0))

	if _, err := w.Svc.MigrateKeys(ctx, keyport.Principal{ProviderID: "prv_x"}, w.HSM); !errors.Is(err, keyport.ErrForbidden) {
		t.Fatalf("a provider migrates: %v", err)
	}
	// An import still loading holds modules the migration cannot see
	// (hidden until published): it waits for it.
	loading, err := s.BeginImport(ctx, imported.ID)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Svc.MigrateKeys(ctx, fixture.Admin, w.HSM); !errors.Is(err, keyport.ErrConflict) || !strings.Contains(err.Error(), "import") {
		t.Fatalf("migration beside an unfinished import: %v; want ErrConflict naming it", err)
	}
	if l, err := w.HSM.LegacyKeys(ctx); err != nil || l.Empty() {
		t.Fatalf("old keys after the refused migration: %+v %v", l, err)
	}
	if err := s.DropImport(ctx, loading.ID); err != nil {
		t.Fatal(err)
	}
	mig, err := w.Svc.MigrateKeys(ctx, fixture.Admin, w.HSM)
	if err != nil {
		t.Fatal(err)
	}
	if mig.Modules != 2 || mig.PSKs != 2 || mig.ISDKeySets != 1 || mig.Domains != 2 ||
		strings.Join(mig.Batches, ",") != "old,oldimp" || len(mig.Destroyed) != 3 {
		t.Fatalf("migration %+v", mig)
	}
	if l, err := w.HSM.LegacyKeys(ctx); err != nil || !l.Empty() {
		t.Fatalf("old keys left on the token: %+v %v", l, err)
	}

	// The derived module: its PSK is the one the old token derived, its
	// ISD keys and first keys are the old ones, now as blobs.
	m, err := s.GetModule(ctx, eidD)
	if err != nil {
		t.Fatal(err)
	}
	psk, err := w.Svc.AdminModulePSK(ctx, &keyport.AdminModule{EID: m.EID, ISDAID: m.ISDAID, PSK: m.PSK})
	if err != nil || !bytes.Equal(psk, oldDerived(isdMaster, eidD, isd, hsm.UsagePSK)) {
		t.Fatalf("migrated PSK %x (%v)", psk, err)
	}
	for _, u := range keyport.Usages {
		kcv, err := w.HSM.KeyKCV(ctx, keyport.ISDKey(m.EID, m.ISDAID, u, m.ISDKeys[u]))
		if want := kcvHex(oldDerived(isdMaster, eidD, isd, u)); err != nil || kcv != want {
			t.Fatalf("ISD %s key: KCV %s (%v), the old one %s", u, kcv, err, want)
		}
	}
	d := m.Domains[0]
	if d.KeySource != keyport.KeyGenerated || !d.Wrapped.Complete() {
		t.Fatalf("migrated domain %+v", d)
	}
	if b, _ := s.GetBatch(ctx, "old"); b.KeySource != keyport.KeyGenerated {
		t.Fatalf("batch old: %s", b.KeySource)
	}
	// A claim hands out exactly the old first keys, from either batch.
	sp := fixture.RSAKeys()[0]
	for _, c := range []struct {
		batch string
		eid   keyport.EID
		want  func(u keyport.KeyUsage) []byte
	}{
		{"old", eidD, func(u keyport.KeyUsage) []byte { return oldDerived(master, eidD, aid, u) }},
		{"oldimp", eidI, func(u keyport.KeyUsage) []byte { return importedKey[u] }},
	} {
		dm, _ := s.GetDomain(ctx, c.eid, aid)
		ks, err := w.HSM.WrapFirstKeys(ctx, keyport.FirstKeysRequest{Batch: c.batch, Source: dm.KeySource, EID: c.eid, AID: aid,
			Wrapped: dm.Wrapped, Recipient: &sp.PublicKey})
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range ks {
			got, err := keywrap.UnwrapRSAAES(sp, k.Wrapped, crypto.SHA1)
			if err != nil || !bytes.Equal(got, c.want(k.Usage)) {
				t.Fatalf("%s %s key after the migration: %x (%v), want the old %x", c.batch, k.Usage, got, err, c.want(k.Usage))
			}
		}
	}
	// The current module was not touched.
	if after, _ := s.GetModule(ctx, fixture.EID(t, 0)); !bytes.Equal(after.PSK, current.PSK) ||
		!bytes.Equal(after.Domains[0].Wrapped[keyport.UsageENC], current.Domains[0].Wrapped[keyport.UsageENC]) {
		t.Fatal("the migration rewrote a current module")
	}
	// Once is enough: a second run finds nothing to do.
	if again, err := w.Svc.MigrateKeys(ctx, fixture.Admin, w.HSM); err != nil || again.Modules != 0 || len(again.Destroyed) != 0 {
		t.Fatalf("second migration %+v, %v", again, err)
	}
	if n := w.CountAudit(t, "hsm.migrate"); n != 1 {
		t.Fatalf("%d hsm.migrate audit events, want 1", n)
	}
}

func TestMigrateKeysStopsOnAKCVThatDiffersAndKeepsTheOldKeys(t *testing.T) {
	ctx := context.Background()
	s := storetest.Open(t, storetest.SQLitePath(t))
	w := fixture.New(t, s, 1, 1)
	master := bytes.Repeat([]byte{0x11}, 32)
	hsmtest.OldKey(t, w.Token, hsm.BatchMasterLabel("old"), master, true)
	hsmtest.OldKey(t, w.Token, hsm.LabelISDMaster, bytes.Repeat([]byte{0x22}, 32), true)
	b := &keyport.Batch{Name: "old", KeySource: keyport.KeyDerived}
	if err := s.CreateBatch(ctx, b); err != nil {
		t.Fatal(err)
	}
	eid := fixture.EID(t, 50)
	done := false
	if _, err := s.ImportModules(ctx, b.ID, func() (*keyport.ModuleImport, error) {
		if done {
			return nil, nil
		}
		done = true
		return &keyport.ModuleImport{Line: 1, EID: eid, ISDAID: "A000000151000000", Domains: []keyport.Domain{{AID: fixture.AID(1),
			KVN: 0x30, State: keyport.Unassigned, KeySource: keyport.KeyDerived,
			KCV: map[keyport.KeyUsage]string{keyport.UsageENC: "000000"}}}}, nil
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Svc.MigrateKeys(ctx, fixture.Admin, w.HSM); !errors.Is(err, keyport.ErrConflict) {
		t.Fatalf("a KCV that differs: %v, want ErrConflict", err)
	}
	if l, _ := w.HSM.LegacyKeys(ctx); !l.ISDMaster || len(l.Masters) != 1 {
		t.Fatalf("the old keys were destroyed after a failed migration: %+v", l)
	}
	if m, _ := s.GetModule(ctx, eid); m.Domains[0].KeySource != keyport.KeyDerived || m.PSK != nil {
		t.Fatalf("the module was half migrated: %+v", m)
	}
}
