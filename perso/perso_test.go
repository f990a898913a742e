package perso_test

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/cardlink/vcard"
	"github.com/keyport/keyport/gp"
	"github.com/keyport/keyport/hsm"
	"github.com/keyport/keyport/hsm/hsmtest"
	"github.com/keyport/keyport/internal/fixture"
	"github.com/keyport/keyport/internal/scptest"
	"github.com/keyport/keyport/keywrap"
	"github.com/keyport/keyport/perso"
	"github.com/keyport/keyport/store"
	"github.com/keyport/keyport/store/storetest"
)

// These tests drive Station.Personalize against the virtual module in process
// (vcard.Card.Process as the card channel), a real SoftHSM token and a real
// store. The same flow over pcscd + vpcd is tested in cmd/keyport.

var persoAdmin = keyport.Principal{Admin: true, Name: "perso-test"}

// errPulled is what the simulated reader answers once the module is gone.
var errPulled = errors.New("test: module pulled from the reader")

// simCard is a virtual module in a reader. With pullAfter > 0 the module is
// pulled right after it processed (and saved) the pullAfter-th command, so
// that its answer is lost; reinsert loads it again from its state file, as
// a restarted module process would.
type simCard struct {
	t         testing.TB
	path      string
	card      *vcard.Card
	pullAfter int
	sent      int
	pulled    bool
}

func newSimCard(t testing.TB, eid keyport.EID) *simCard {
	t.Helper()
	path := filepath.Join(t.TempDir(), "module.json")
	c, err := vcard.New(string(eid), vcard.Config{StatePath: path})
	if err != nil {
		t.Fatal(err)
	}
	return &simCard{t: t, path: path, card: c}
}

func (c *simCard) Transmit(_ context.Context, apdu []byte) ([]byte, error) {
	if c.pulled {
		return nil, errPulled
	}
	c.sent++
	rsp := c.card.Process(apdu)
	if c.pullAfter > 0 && c.sent >= c.pullAfter {
		c.pulled = true
		return nil, errPulled
	}
	return rsp, nil
}

func (c *simCard) reinsert() {
	card, err := vcard.Load(c.path, vcard.Config{})
	if err != nil {
		c.t.Fatal(err)
	}
	c.card, c.pulled, c.pullAfter = card, false, 0
}

// station is the personalization station of svc with the HSM h.
func station(svc *keyport.Service, h *hsm.HSM) *perso.Station {
	return &perso.Station{Service: svc, Keys: h}
}

// persoWorld is a service on a fresh token and s, with the batch "p1".
func persoWorld(t testing.TB, s *store.Store) (*keyport.Service, *hsm.HSM) {
	t.Helper()
	h := hsmtest.Open(t)
	svc := &keyport.Service{Store: s, Custody: h, CheckpointEvery: 4, DualControl: keyport.DualControl{Admins: 1}}
	if _, _, err := svc.CreateBatch(context.Background(), persoAdmin, "p1", "", nil); err != nil {
		t.Fatal(err)
	}
	return svc, h
}

func TestPersoOfABlankModuleCreatesTheDomainsAndRegistersTheirGeneratedKeys(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		ctx := context.Background()
		svc, h := persoWorld(t, s)
		eid := fixture.EID(t, 7)
		card := newSimCard(t, eid)
		rep, err := station(svc, h).Personalize(ctx, persoAdmin, card, perso.Request{Batch: "p1", Domains: 3})
		if err != nil {
			t.Fatal(err)
		}
		if rep.EID != eid || !rep.ISDKeysReplaced || !rep.Registered || len(rep.Domains) != 3 || len(rep.CPLC) == 0 {
			t.Fatalf("report %+v", rep)
		}
		for i, d := range rep.Domains {
			if d.AID != keyport.AID("A000000151535041"+[]string{"01", "02", "03"}[i]) || !d.Created || !d.KeysLoaded {
				t.Errorf("domain %d: %+v", i, d)
			}
		}
		scptest.CheckPersonalized(t, svc.Store, h, card, "p1", eid, 3)
		evs, _ := s.AuditEvents(ctx, 0, 100)
		if last := evs[len(evs)-1]; last.Action != "perso" || last.Object != "module:"+string(eid) {
			t.Errorf("last audit event %+v", last)
		}
		if r, err := svc.VerifyAudit(ctx); err != nil {
			t.Errorf("audit chain: %+v %v", r, err)
		}
	})
}

func TestPersoRunAgainOnAFinishedModuleChangesNothing(t *testing.T) {
	ctx := context.Background()
	svc, h := persoWorld(t, storetest.Open(t, storetest.SQLitePath(t)))
	eid := fixture.EID(t, 8)
	card := newSimCard(t, eid)
	req := perso.Request{Batch: "p1", Domains: 2}
	if _, err := station(svc, h).Personalize(ctx, persoAdmin, card, req); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(card.path)
	rep, err := station(svc, h).Personalize(ctx, persoAdmin, card, req)
	if err != nil {
		t.Fatal(err)
	}
	if !rep.AlreadyRegistered || rep.Registered || rep.ISDKeysReplaced || len(rep.Domains) != 2 {
		t.Fatalf("second run: %+v", rep)
	}
	after, _ := os.ReadFile(card.path)
	if !sameSSDState(t, before, after) {
		t.Error("the second run changed an SSD on the card")
	}
	rep, err = station(svc, h).Personalize(ctx, persoAdmin, card, perso.Request{Batch: "p1", Domains: 3})
	if !errors.Is(err, keyport.ErrConflict) {
		t.Fatalf("perso of a registered module with another domain count: %v, want ErrConflict", err)
	}
	scptest.CheckPersonalized(t, svc.Store, h, card, "p1", eid, 2)
}

// sameSSDState compares the SSD entries (keys, counters, life cycles) of
// two state files; the ISD's counter moves with every session.
func sameSSDState(t testing.TB, a, b []byte) bool {
	t.Helper()
	type st struct {
		Apps []json.RawMessage `json:"apps"`
	}
	var x, y st
	if err := json.Unmarshal(a, &x); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &y); err != nil {
		t.Fatal(err)
	}
	if len(x.Apps) != len(y.Apps) {
		return false
	}
	for i := 1; i < len(x.Apps); i++ {
		if !bytes.Equal(x.Apps[i], y.Apps[i]) {
			return false
		}
	}
	return true
}

func TestPersoInterruptedAfterAnyCommandIsFinishedByTheNextRun(t *testing.T) {
	ctx := context.Background()
	svc, h := persoWorld(t, storetest.Open(t, storetest.SQLitePath(t)))
	req := perso.Request{Batch: "p1", Domains: 2}
	// How many commands does an uninterrupted run send?
	probe := newSimCard(t, fixture.EID(t, 100))
	rep, err := station(svc, h).Personalize(ctx, persoAdmin, probe, req)
	if err != nil {
		t.Fatal(err)
	}
	total := rep.APDUs
	if total < 20 {
		t.Fatalf("a run sent only %d commands", total)
	}
	t.Logf("an uninterrupted run sends %d commands; pulling the module after each", total)
	for k := 1; k <= total; k++ {
		eid := fixture.EID(t, 100+k)
		card := newSimCard(t, eid)
		card.pullAfter = k
		if _, err := station(svc, h).Personalize(ctx, persoAdmin, card, req); !errors.Is(err, errPulled) {
			t.Fatalf("pulled after command %d: %v", k, err)
		}
		if _, err := svc.Store.GetModule(ctx, eid); !errors.Is(err, keyport.ErrNotFound) {
			t.Fatalf("pulled after command %d: the module is in the store (%v)", k, err)
		}
		card.reinsert()
		rep, err := station(svc, h).Personalize(ctx, persoAdmin, card, req)
		if err != nil {
			t.Fatalf("pulled after command %d, next run: %v", k, err)
		}
		if !rep.Registered {
			t.Fatalf("pulled after command %d: next run did not register: %+v", k, rep)
		}
		scptest.CheckPersonalized(t, svc.Store, h, card, "p1", eid, 2)
	}
}

func TestPersoRefusesAnImportedBatchAndNonAdmins(t *testing.T) {
	ctx := context.Background()
	s := storetest.Open(t, storetest.SQLitePath(t))
	svc, h := persoWorld(t, s)
	card := newSimCard(t, fixture.EID(t, 9))
	if _, _, err := svc.CreateBatch(ctx, persoAdmin, "imp", "", &fixture.RSAKeys()[1].PublicKey); err != nil {
		t.Fatal(err)
	}
	if _, err := station(svc, h).Personalize(ctx, persoAdmin, card, perso.Request{Batch: "imp", Domains: 1}); !errors.Is(err, keyport.ErrInvalid) {
		t.Errorf("imported batch: %v, want ErrInvalid", err)
	}
	if _, err := station(svc, h).Personalize(ctx, keyport.Principal{ProviderID: "prv_x"}, card, perso.Request{Batch: "p1", Domains: 1}); !errors.Is(err, keyport.ErrForbidden) {
		t.Errorf("provider: %v, want ErrForbidden", err)
	}
	if _, err := station(svc, h).Personalize(ctx, persoAdmin, card, perso.Request{Batch: "p1", Domains: 0}); !errors.Is(err, keyport.ErrInvalid) {
		t.Errorf("0 domains: %v, want ErrInvalid", err)
	}
	if card.sent != 0 {
		t.Errorf("%d commands sent for refused requests", card.sent)
	}
}

func TestPersoWithDerivedISDKeysLeavesABlankModuleAlone(t *testing.T) {
	ctx := context.Background()
	svc, h := persoWorld(t, storetest.Open(t, storetest.SQLitePath(t)))
	card := newSimCard(t, fixture.EID(t, 10))
	before, _ := os.ReadFile(card.path)
	_, err := station(svc, h).Personalize(ctx, persoAdmin, card, perso.Request{Batch: "p1", Domains: 1, ISDKeys: perso.ISDKeysDerived})
	if !errors.Is(err, keyport.ErrConflict) {
		t.Fatalf("derived ISD keys on a blank module: %v, want ErrConflict", err)
	}
	if after, _ := os.ReadFile(card.path); !bytes.Equal(before, after) {
		t.Error("the card changed")
	}
}

func TestPersoNeverOverwritesAnSSDThatHoldsOtherKeysNorAddsToItsLock(t *testing.T) {
	ctx := context.Background()
	svc, h := persoWorld(t, storetest.Open(t, storetest.SQLitePath(t)))
	eid := fixture.EID(t, 11)
	card := newSimCard(t, eid)
	// Someone made SSD …4101 with keys of their own (all 11…11).
	_, sw, isd := scptest.Authenticate(t, card, vcard.ISDAID, scptest.TestKeys(0x30))
	if sw != gp.SWOK {
		t.Fatal(sw)
	}
	aid := keyport.AID("A00000015153504101").Bytes()
	params := gp.InstallParams{AppSpecific: gp.SCPParam(0x03, 0x70)}.Bytes()
	if r := isd.Do(gp.InstallForInstallCmd([]byte{0xA0, 0, 0, 1, 0x51, 0x53, 0x50}, []byte{0xA0, 0, 0, 1, 0x51, 0x53, 0x50, 0x41},
		aid, 0x804000, params, true)); r.SW != gp.SWOK {
		t.Fatal(r.SW)
	}
	other := bytes.Repeat([]byte{0x11}, 16)
	var loads []gp.KeyLoad
	for kid := byte(1); kid <= 3; kid++ {
		c, _ := gp.AESKeyComponent(keyport.GPTestKey, other)
		loads = append(loads, gp.KeyLoad{Usage: 0x38, Type: gp.KeyTypeAES, Length: 16, KID: kid, KVN: 0x30, KCV: c.KCV, Encrypted: c.Encrypted})
	}
	if r := isd.Do(gp.InstallForPersonalizationCmd(aid)); r.SW != gp.SWOK {
		t.Fatal(r.SW)
	}
	if r := isd.Do(gp.StoreData(0x88, 0, gp.KeyLoadDGIs(loads))); r.SW != gp.SWOK {
		t.Fatal(r.SW)
	}
	_, err := station(svc, h).Personalize(ctx, persoAdmin, card, perso.Request{Batch: "p1", Domains: 2})
	if !errors.Is(err, keyport.ErrConflict) {
		t.Fatalf("perso over foreign keys: %v, want ErrConflict", err)
	}
	if _, err := svc.Store.GetModule(ctx, eid); !errors.Is(err, keyport.ErrNotFound) {
		t.Errorf("module registered despite the conflict: %v", err)
	}
	// The foreign keys are intact and their failure count is zero: three
	// authentications in a row still succeed.
	for i := 0; i < 3; i++ {
		if _, sw, _ := scptest.Authenticate(t, card, aid, gp.KeySet{KVN: 0x30, ENC: gp.AESKey(other), MAC: gp.AESKey(other)}); sw != gp.SWOK {
			t.Fatalf("foreign keys after perso, attempt %d: %s", i+1, sw)
		}
	}
	var st struct {
		Apps []struct {
			KeySets []struct {
				Failures int `json:"failures"`
			} `json:"key_sets"`
		} `json:"apps"`
	}
	b, _ := os.ReadFile(card.path)
	json.Unmarshal(b, &st)
	for _, a := range st.Apps {
		for _, ks := range a.KeySets {
			if ks.Failures != 0 {
				t.Errorf("a key set has %d failed authentications", ks.Failures)
			}
		}
	}
}

func TestAClaimOfAPersonalizedDomainHandsOutTheKeysOnTheCard(t *testing.T) {
	ctx := context.Background()
	s := storetest.Open(t, storetest.SQLitePath(t))
	svc, h := persoWorld(t, s)
	eid := fixture.EID(t, 12)
	card := newSimCard(t, eid)
	if _, err := station(svc, h).Personalize(ctx, persoAdmin, card, perso.Request{Batch: "p1", Domains: 2}); err != nil {
		t.Fatal(err)
	}
	w := &fixture.World{Svc: svc, Store: s, HSM: h}
	sp := fixture.RSAKeys()[0]
	p, _, wk := w.Provider(t, "Bank P", sp)
	c, _, err := svc.Claim(ctx, p, keyport.ClaimRequest{EID: eid, WrappingKeyID: wk})
	if err != nil {
		t.Fatal(err)
	}
	set, _ := svc.JWKS(ctx)
	pkg, err := keyport.VerifyKeyPackage(c.Package, set)
	if err != nil {
		t.Fatal(err)
	}
	clear := map[keyport.KeyUsage][]byte{}
	for _, k := range pkg.Keys {
		if clear[k.Usage], err = keywrap.UnwrapRSAAES(sp, k.Wrapped, fixture.OAEPHash(t, pkg.Wrapping.OAEPHash)); err != nil {
			t.Fatal(err)
		}
	}
	ks := gp.KeySet{KVN: byte(pkg.KVN), ENC: gp.AESKey(clear[keyport.UsageENC]), MAC: gp.AESKey(clear[keyport.UsageMAC])}
	// The package's counter lets the provider predict the card challenge.
	hs, _ := gp.NewHostSession(ks, nil)
	want, err := hs.Precompute(uint32(pkg.SequenceCounter)+1, pkg.AID.Bytes(), 0x70)
	if err != nil {
		t.Fatal(err)
	}
	iu, sw, _ := scptest.Authenticate(t, card, pkg.AID.Bytes(), ks)
	if sw != gp.SWOK {
		t.Fatalf("the provider's unwrapped keys: %s", sw)
	}
	if !bytes.Equal(iu.CardChallenge, want) {
		t.Errorf("card challenge %X, precomputed from the package counter %d: %X", iu.CardChallenge, pkg.SequenceCounter, want)
	}
}

// Keys are generated, not derived: a key the card took must be in the
// store before it was sent. A run that finds the card holding keyport's
// ISD key set, or an SSD's first keys, with no record of them stops with a
// conflict and sends nothing that would change the card.
func TestPersoKeepsWhatItGeneratedBeforeSendingItAndStopsWhenTheRecordIsLost(t *testing.T) {
	ctx := context.Background()
	s := storetest.Open(t, storetest.SQLitePath(t))
	svc, h := persoWorld(t, s)
	req := perso.Request{Batch: "p1", Domains: 2}
	eid := fixture.EID(t, 300)
	card := newSimCard(t, eid)
	card.pullAfter = 22 // after the ISD's PUT KEY and the first keys, before the end (27)
	if _, err := station(svc, h).Personalize(ctx, persoAdmin, card, req); !errors.Is(err, errPulled) {
		t.Fatalf("pulled: %v", err)
	}
	rec, err := s.GetPersoKeys(ctx, eid)
	if err != nil || !rec.ISD.Complete() || len(rec.PSK) == 0 {
		t.Fatalf("after the interrupted run the record is %+v, %v", rec, err)
	}
	evs, _ := s.AuditEvents(ctx, 0, 100)
	generated := 0
	for _, e := range evs {
		if e.Action == "perso.keys-generated" && e.Object == "module:"+string(eid) {
			generated++
			if strings.Contains(e.Detail, hex.EncodeToString(rec.ISD[keyport.UsageENC])) {
				t.Fatal("the audit event holds a key blob")
			}
		}
	}
	if generated == 0 {
		t.Fatal("no perso.keys-generated audit event")
	}
	if err := s.DeletePersoKeys(ctx, eid); err != nil {
		t.Fatal(err)
	}
	card.reinsert()
	before := card.sent
	_, err = station(svc, h).Personalize(ctx, persoAdmin, card, req)
	if !errors.Is(err, keyport.ErrConflict) || !strings.Contains(err.Error(), "no record") {
		t.Fatalf("a run without the record: %v, want ErrConflict naming the lost record", err)
	}
	if _, err := s.GetModule(ctx, eid); !errors.Is(err, keyport.ErrNotFound) {
		t.Fatalf("the module was registered without its keys: %v", err)
	}
	t.Logf("the run without a record stopped after %d commands", card.sent-before)
}
