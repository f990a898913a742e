package vcard_test

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"github.com/keyport/keyport/cardlink/vcard"
	"github.com/keyport/keyport/gp"
)

func TestSelectISDByAIDAndWithoutDataAnswers9000(t *testing.T) {
	hst := processHost(t, newCard(t, vcard.Config{}))
	if sw := hst.selectAID(vcard.ISDAID); sw != gp.SWOK {
		t.Fatalf("SELECT ISD: %v", sw)
	}
	r := hst.raw(h("00A4040000"))
	if r.SW != gp.SWOK {
		t.Fatalf("SELECT without data: %v", r.SW)
	}
	fci, _, err := gp.ParseTLV(r.Data)
	if err != nil || fci.Tag != 0x6F {
		t.Fatalf("FCI %X: %v", r.Data, err)
	}
	kids, _ := fci.Children()
	if aid, found := gp.Find(kids, 0x84); !found || !bytes.Equal(aid.Value, vcard.ISDAID) {
		t.Fatalf("FCI %X does not name the ISD", r.Data)
	}
}

func TestSelectUnknownAIDAnswers6A82(t *testing.T) {
	hst := processHost(t, newCard(t, vcard.Config{}))
	if sw := hst.selectAID(h("A0000009999999")); sw != gp.SWNotFound {
		t.Fatalf("SELECT unknown AID: %v, want 6A82", sw)
	}
}

func TestGetEIDFromISDRReturnsTheModuleEID(t *testing.T) {
	hst := processHost(t, newCard(t, vcard.Config{}))
	if sw := hst.selectAID(vcard.ISDRAID); sw != gp.SWOK {
		t.Fatalf("SELECT ISD-R: %v", sw)
	}
	r := hst.raw(h("80E2910006BF3E035C015A00"))
	if r.SW != gp.SWOK {
		t.Fatalf("GET EID: %v", r.SW)
	}
	eid, err := gp.ParseEIDResponse(r.Data)
	if err != nil || eid != vcard.DefaultEID {
		t.Fatalf("EID %q (%v), want %s", eid, err, vcard.DefaultEID)
	}
}

func TestGetDataCPLCIs42BytesAndNeedsNoSession(t *testing.T) {
	hst := processHost(t, newCard(t, vcard.Config{}))
	hst.selectAID(vcard.ISDAID)
	r := hst.send(gp.GetData(gp.DataCPLC))
	if r.SW != gp.SWOK {
		t.Fatalf("GET DATA 9F7F: %v", r.SW)
	}
	if !bytes.HasPrefix(r.Data, h("9F7F2A")) || len(r.Data) != 45 {
		t.Fatalf("CPLC %X, want 9F7F 2A + 42 bytes", r.Data)
	}
	if _, err := gp.ParseCPLC(r.Data); err != nil {
		t.Fatalf("gp.ParseCPLC: %v", err)
	}
}

func TestGetDataCardRecognitionAndKeyInformationParse(t *testing.T) {
	hst := processHost(t, newCard(t, vcard.Config{}))
	hst.selectAID(vcard.ISDAID)
	r := hst.send(gp.GetData(gp.DataCardRecognition))
	crd, err := gp.ParseCardRecognition(r.Data)
	if r.SW != gp.SWOK || err != nil {
		t.Fatalf("card recognition data %X %v: %v", r.Data, r.SW, err)
	}
	t.Logf("card recognition: %+v", crd)
	r = hst.send(gp.GetData(gp.DataKeyInformation))
	ki, err := gp.ParseKeyInformation(r.Data)
	if r.SW != gp.SWOK || err != nil || len(ki) != 3 {
		t.Fatalf("key information %X %v: %v", r.Data, r.SW, err)
	}
	if ki[0].KVN != 0x30 || ki[0].KID != 1 {
		t.Fatalf("key information %+v, want KVN 30 KID 1 first", ki[0])
	}
}

func TestSCP03SessionWorksAtEveryLevel(t *testing.T) {
	for _, level := range []gp.SecurityLevel{0x00, 0x01, 0x03, 0x11, 0x13, 0x33} {
		t.Run(level.String(), func(t *testing.T) {
			hst := processHost(t, newCard(t, vcard.Config{}))
			hst.selectAID(vcard.ISDAID)
			hst.mustAuthenticate(vcard.DefaultKVN, defaultKeys, level)
			es := hst.registry(gp.StatusISD)
			if len(es) != 1 || !bytes.Equal(es[0].AID, vcard.ISDAID) {
				t.Fatalf("GET STATUS ISD: %+v", es)
			}
			// A STORE DATA with data exercises C-DEC and an answer R-MAC.
			hst.mustSec(gp.StoreData(gp.StoreDataLast|gp.StoreDataBERTLV, 0, h("DF010401020304")))
			got := hst.mustSec(gp.GetData(0xDF01))
			if !bytes.Equal(got, h("DF010401020304")) {
				t.Fatalf("stored object read back as %X", got)
			}
		})
	}
}

func TestManagementCommandsWithoutSessionAnswer6982(t *testing.T) {
	hst := processHost(t, newCard(t, vcard.Config{}))
	hst.selectAID(vcard.ISDAID)
	params := gp.InstallParams{AppSpecific: gp.SCPParam(0x03, 0x70)}.Bytes()
	for name, c := range map[string]gp.Command{
		"INSTALL":    gp.InstallForInstallCmd(ssdELF, ssdModule, ssdAID, gp.PrivSecurityDomain, params, true),
		"GET STATUS": gp.GetStatus(gp.StatusApplications, false, nil),
		"PUT KEY":    {CLA: 0x80, INS: 0xD8, P1: 0x30, P2: 0x81, Data: h("31")},
		"STORE DATA": gp.StoreData(0x90, 0, h("DF0100")),
		"SET STATUS": gp.SetStatus(0x40, 0x80, ssdAID),
		"DELETE":     gp.Delete(ssdAID, false),
	} {
		if sw := hst.send(c).SW; sw != gp.SWSecurityNotSatisfied {
			t.Errorf("%s without a session: %v, want 6982", name, sw)
		}
	}
	// Secure messaging without a session is refused too.
	if sw := hst.raw(h("84F28002024F0000")).SW; sw != gp.SWSecurityNotSatisfied {
		t.Errorf("84 class without a session: %v, want 6982", sw)
	}
}

func TestWrongCMACClosesTheSession(t *testing.T) {
	hst := processHost(t, newCard(t, vcard.Config{}))
	hst.selectAID(vcard.ISDAID)
	hst.mustAuthenticate(vcard.DefaultKVN, defaultKeys, 0x01)
	w, err := hst.sess.Wrap(gp.GetStatus(gp.StatusISD, false, nil))
	if err != nil {
		t.Fatal(err)
	}
	w.Data[len(w.Data)-1] ^= 1
	if sw := hst.raw(w.Bytes()).SW; sw != gp.SWSecurityNotSatisfied {
		t.Fatalf("bad C-MAC: %v, want 6982", sw)
	}
	if sw := hst.send(gp.GetStatus(gp.StatusISD, false, nil)).SW; sw != gp.SWSecurityNotSatisfied {
		t.Fatalf("after a bad C-MAC the session must be closed: %v", sw)
	}
}

func TestSequenceCounterIncrementsPerInitializeUpdateAndMatchesPrecomputedChallenge(t *testing.T) {
	hst := processHost(t, newCard(t, vcard.Config{}))
	hst.selectAID(vcard.ISDAID)
	if n := hst.counter(); n != 0 {
		t.Fatalf("fresh counter %d, want 0", n)
	}
	hst.mustAuthenticate(vcard.DefaultKVN, defaultKeys, 0x03)
	hst.selectAID(vcard.ISDAID)
	hst.mustAuthenticate(vcard.DefaultKVN, defaultKeys, 0x03)
	hst.selectAID(vcard.ISDAID)
	if n := hst.counter(); n != 2 {
		t.Fatalf("counter after two sessions %d, want 2", n)
	}
	// AmdD 6.2.2.1: the host can compute the next challenge offline.
	hs, _ := gp.NewHostSession(gp.KeySet{KVN: 0x30, ENC: gp.AESKey(defaultKeys[0]), MAC: gp.AESKey(defaultKeys[1])}, nil)
	want, err := hs.Precompute(3, vcard.ISDAID, 0x70)
	if err != nil {
		t.Fatal(err)
	}
	r := hst.send(hs.InitializeUpdate())
	if err := hs.OnInitUpdateResponse(r); err != nil {
		t.Fatalf("card answer differs from the precomputed session: %v", err)
	}
	iu, _ := gp.ParseInitUpdateResponse(r.Data)
	if !bytes.Equal(iu.CardChallenge, want) || iu.SequenceCounter != 3 {
		t.Fatalf("challenge %X counter %d, want %X and 3", iu.CardChallenge, iu.SequenceCounter, want)
	}
}

func TestCreateSSDLoadKeysAndAuthenticateToIt(t *testing.T) {
	hst := processHost(t, newCard(t, vcard.Config{}))
	hst.selectAID(vcard.ISDAID)
	hst.mustAuthenticate(vcard.DefaultKVN, defaultKeys, 0x33)
	hst.createSSD(ssdAID)
	hst.loadKeys(ssdAID, 0x30, vectorKVN30)
	e, found := findEntry(hst.registry(gp.StatusApplications), ssdAID)
	if !found {
		t.Fatal("GET STATUS does not list the new SSD")
	}
	if e.LifeCycle != 0x07 || e.Privileges != gp.PrivSecurityDomain|gp.PrivAuthorizedManagement || !bytes.Equal(e.SecurityDomain, vcard.ISDAID) {
		t.Fatalf("SSD entry %+v", e)
	}
	if sw := hst.selectAID(ssdAID); sw != gp.SWOK {
		t.Fatalf("SELECT SSD: %v", sw)
	}
	if sw := hst.authenticate(0x30, defaultKeys, 0x03); !authRefused(sw) {
		t.Fatalf("the ISD keys must not open the SSD: %v", sw)
	}
	hst.mustAuthenticate(0x30, vectorKVN30, 0x03)
	// The SSD sees itself only.
	if es := hst.registry(gp.StatusApplications); len(es) != 1 || !bytes.Equal(es[0].AID, ssdAID) {
		t.Fatalf("SSD's GET STATUS: %+v", es)
	}
}

func TestPutKeyReplacesKVN30By31AndResetsTheCounter(t *testing.T) {
	hst := processHost(t, newCard(t, vcard.Config{}))
	hst.selectAID(vcard.ISDAID)
	hst.mustAuthenticate(vcard.DefaultKVN, defaultKeys, 0x03)
	hst.createSSD(ssdAID)
	hst.loadKeys(ssdAID, 0x30, vectorKVN30)

	hst.selectAID(ssdAID)
	hst.mustAuthenticate(0x30, vectorKVN30, 0x03)
	hst.selectAID(ssdAID)
	hst.mustAuthenticate(0x30, vectorKVN30, 0x03)
	hst.selectAID(ssdAID)
	if n := hst.counter(); n != 2 {
		t.Fatalf("counter %d, want 2", n)
	}
	hst.mustAuthenticate(0x30, vectorKVN30, 0x03)
	c, want := hst.putKey(0x30, 0x31, vectorKVN31)
	got := hst.mustSec(c)
	if !bytes.Equal(got, want) || !bytes.Equal(got, h("31EE72CB49B6D5FB9292")) {
		t.Fatalf("PUT KEY answered %X, want %X (vector 31EE72CB49B6D5FB9292)", got, want)
	}
	hst.selectAID(ssdAID)
	if n := hst.counter(); n != 0 {
		t.Fatalf("counter after PUT KEY %d, want 0 (AmdD 6.2.2.1)", n)
	}
	if sw := hst.authenticate(0x30, vectorKVN30, 0x03); sw != gp.SWReferencedDataNotFound {
		t.Fatalf("old KVN 30: %v, want 6A88", sw)
	}
	hst.selectAID(ssdAID)
	hst.mustAuthenticate(0x31, vectorKVN31, 0x03)
	hst.mustSec(gp.SetStatus(gp.SetStatusApplication, gp.SetStatusPersonalized, ssdAID))
	hst.selectAID(vcard.ISDAID)
	hst.mustAuthenticate(vcard.DefaultKVN, defaultKeys, 0x03)
	e, _ := findEntry(hst.registry(gp.StatusApplications), ssdAID)
	if e.LifeCycle != 0x0F {
		t.Fatalf("SSD life cycle %v, want PERSONALIZED 0F", e.LifeCycle)
	}
}

func TestPutKeyRejectsAWrongKCVAndChangesNothing(t *testing.T) {
	hst := processHost(t, newCard(t, vcard.Config{}))
	hst.selectAID(vcard.ISDAID)
	hst.mustAuthenticate(vcard.DefaultKVN, defaultKeys, 0x03)
	c, _ := hst.putKey(0x30, 0x31, vectorKVN31)
	c.Data[len(c.Data)-1] ^= 0xFF // last KCV byte
	if sw := hst.sec(c).SW; sw != gp.SWSecurityNotSatisfied {
		t.Fatalf("wrong KCV: %v, want 6982", sw)
	}
	hst.selectAID(vcard.ISDAID)
	hst.mustAuthenticate(vcard.DefaultKVN, defaultKeys, 0x03)
}

func TestPutKeyAddsAnAES256KeySet(t *testing.T) {
	hst := processHost(t, newCard(t, vcard.Config{}))
	hst.selectAID(vcard.ISDAID)
	hst.mustAuthenticate(vcard.DefaultKVN, defaultKeys, 0x03)
	k := keyTriple{bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{2}, 32), bytes.Repeat([]byte{3}, 32)}
	c, want := hst.putKey(0x00, 0x32, k)
	if got := hst.mustSec(c); !bytes.Equal(got, want) {
		t.Fatalf("PUT KEY add: %X, want %X", got, want)
	}
	hst.selectAID(vcard.ISDAID)
	hst.mustAuthenticate(0x32, k, 0x33)
	hst.selectAID(vcard.ISDAID)
	hst.mustAuthenticate(0x30, defaultKeys, 0x33)
	c, _ = hst.putKey(0x00, 0x32, k)
	if sw := hst.sec(c).SW; sw != gp.SWIncorrectData {
		t.Fatalf("adding an existing KVN: %v, want 6A80", sw)
	}
}

func TestWrongKeysLockTheKeySetAfterMaxFailures(t *testing.T) {
	hst := processHost(t, newCard(t, vcard.Config{MaxAuthFailures: 3}))
	wrong := keyTriple{bytes.Repeat([]byte{9}, 16), bytes.Repeat([]byte{9}, 16), bytes.Repeat([]byte{9}, 16)}
	hst.selectAID(vcard.ISDAID)
	// Failures are consecutive: a success in between clears them.
	for range 2 {
		if sw := hst.authenticate(0x30, wrong, 0x03); !authRefused(sw) {
			t.Fatalf("wrong keys: %v, want 6300 or 6982", sw)
		}
	}
	hst.mustAuthenticate(0x30, defaultKeys, 0x03)
	for i := range 3 {
		if sw := hst.authenticate(0x30, wrong, 0x03); !authRefused(sw) {
			t.Fatalf("wrong keys, attempt %d: %v, want 6300 or 6982", i+1, sw)
		}
	}
	if sw := hst.authenticate(0x30, defaultKeys, 0x03); sw != gp.SWAuthMethodBlocked {
		t.Fatalf("after 3 failures the right keys get %v, want 6983", sw)
	}
}

func TestSetStatusLockAndUnlockAnSSD(t *testing.T) {
	hst := processHost(t, newCard(t, vcard.Config{}))
	hst.selectAID(vcard.ISDAID)
	hst.mustAuthenticate(vcard.DefaultKVN, defaultKeys, 0x03)
	hst.createSSD(ssdAID)
	hst.mustSec(gp.SetStatus(gp.SetStatusApplication, gp.SetStatusLock, ssdAID))
	e, _ := findEntry(hst.registry(gp.StatusApplications), ssdAID)
	if e.LifeCycle != 0x87 {
		t.Fatalf("locked SSD life cycle %v, want 87", e.LifeCycle)
	}
	if sw := hst.selectAID(ssdAID); sw != gp.SWNotFound {
		t.Fatalf("SELECT of a locked SSD: %v, want 6A82", sw)
	}
	hst.selectAID(vcard.ISDAID)
	hst.mustAuthenticate(vcard.DefaultKVN, defaultKeys, 0x03)
	hst.mustSec(gp.SetStatus(gp.SetStatusApplication, 0x00, ssdAID))
	if sw := hst.selectAID(ssdAID); sw != gp.SWOK {
		t.Fatalf("SELECT of the unlocked SSD: %v", sw)
	}
}

func TestGetStatusPagesWith6310(t *testing.T) {
	hst := processHost(t, newCard(t, vcard.Config{}))
	hst.selectAID(vcard.ISDAID)
	hst.mustAuthenticate(vcard.DefaultKVN, defaultKeys, 0x33)
	for i := range 12 {
		hst.createSSD(append(bytes.Clone(ssdAID[:6]), byte(0x10+i)))
	}
	first := hst.sec(gp.GetStatus(gp.StatusApplications, false, nil))
	if first.SW != gp.SWMoreData {
		t.Fatalf("first page: %v, want 6310", first.SW)
	}
	es := hst.registry(gp.StatusApplications)
	if len(es) != 14 { // ARA-M, ISD-R and 12 SSDs
		t.Fatalf("%d entries, want 14", len(es))
	}
	es = hst.registry(gp.StatusLoadFilesModules)
	if _, found := findEntry(es, ssdELF); !found {
		t.Fatalf("ELFs %+v lack the SSD package", es)
	}
}

func TestDeleteSSDRemovesItFromTheRegistry(t *testing.T) {
	hst := processHost(t, newCard(t, vcard.Config{}))
	hst.selectAID(vcard.ISDAID)
	hst.mustAuthenticate(vcard.DefaultKVN, defaultKeys, 0x03)
	hst.createSSD(ssdAID)
	hst.mustSec(gp.Delete(ssdAID, false))
	if _, found := findEntry(hst.registry(gp.StatusApplications), ssdAID); found {
		t.Fatal("deleted SSD still listed")
	}
	if sw := hst.sec(gp.Delete(ssdAID, false)).SW; sw != gp.SWReferencedDataNotFound {
		t.Fatalf("deleting again: %v, want 6A88", sw)
	}
	if sw := hst.sec(gp.Delete(vcard.ISDAID, false)).SW; sw != gp.SWConditionsNotSatisfied {
		t.Fatalf("deleting the ISD: %v, want 6985", sw)
	}
}

func TestARAMStoreGetAllAndDelete(t *testing.T) {
	hst := processHost(t, newCard(t, vcard.Config{}))
	if sw := hst.selectAID(vcard.ARAMAID); sw != gp.SWOK {
		t.Fatalf("SELECT ARA-M: %v", sw)
	}
	if r := hst.send(gp.GetData(gp.DataAccessRulesAll)); r.SW != gp.SWOK || !bytes.Equal(r.Data, h("FF4000")) {
		t.Fatalf("empty ARA-M: %X %v, want FF4000", r.Data, r.SW)
	}
	public := h("80E2900033F031E22FE11E4F06FFFFFFFFFFFFC114E46872F28B350B7E1F140DE535C2A8D5804F0BE3E30DD00101DB080000000000000001")
	if sw := hst.raw(public).SW; sw != gp.SWSecurityNotSatisfied {
		t.Fatalf("storing a rule without a session: %v, want 6982", sw)
	}
	hst.mustAuthenticate(vcard.DefaultKVN, defaultKeys, 0x03)
	cmd, _ := gp.ParseCommand(public)
	hst.mustSec(cmd)
	sp := gp.AccessRule{AID: ssdAID, DeviceAppID: bytes.Repeat([]byte{0xAB}, 32), APDU: []byte{0x01}}
	hst.mustSec(gp.StoreAccessRule(sp))
	hst.mustSec(gp.StoreAccessRule(sp)) // re-delivery replaces, never duplicates
	rules, err := gp.ParseAccessRules(hst.mustSec(gp.GetData(gp.DataAccessRulesAll)))
	if err != nil || len(rules) != 2 {
		t.Fatalf("rules %+v: %v, want 2", rules, err)
	}
	if !bytes.Equal(rules[1].DeviceAppID, sp.DeviceAppID) || !bytes.Equal(rules[1].AID, ssdAID) {
		t.Fatalf("stored rule %+v, want %+v", rules[1], sp)
	}
	hst.mustSec(gp.DeleteAllAccessRules())
	if got := hst.mustSec(gp.GetData(gp.DataAccessRulesAll)); !bytes.Equal(got, h("FF4000")) {
		t.Fatalf("after delete all: %X", got)
	}
}

func TestARAMGetAllPagesWithGetNext(t *testing.T) {
	hst := processHost(t, newCard(t, vcard.Config{}))
	hst.selectAID(vcard.ARAMAID)
	hst.mustAuthenticate(vcard.DefaultKVN, defaultKeys, 0x03)
	for i := range 8 {
		hst.mustSec(gp.StoreAccessRule(gp.AccessRule{AID: append(bytes.Clone(ssdAID), byte(i)), DeviceAppID: bytes.Repeat([]byte{byte(i)}, 32), APDU: []byte{1}}))
	}
	all := hst.mustSec(gp.GetData(gp.DataAccessRulesAll))
	for {
		t, _, err := gp.ParseTLV(all)
		if err == nil && len(t.Bytes()) == len(all) {
			break
		}
		all = append(all, hst.mustSec(gp.GetData(0xFF60))...)
	}
	rules, err := gp.ParseAccessRules(all)
	if err != nil || len(rules) != 8 {
		t.Fatalf("%d rules: %v", len(rules), err)
	}
}

func TestStatePersistsAcrossLoad(t *testing.T) {
	path := filepath.Join(t.TempDir(), "module.json")
	card := newCard(t, vcard.Config{StatePath: path})
	hst := processHost(t, card)
	hst.selectAID(vcard.ISDAID)
	hst.mustAuthenticate(vcard.DefaultKVN, defaultKeys, 0x03)
	hst.createSSD(ssdAID)
	hst.loadKeys(ssdAID, 0x30, vectorKVN30)

	again, err := vcard.Load(path, vcard.Config{})
	if err != nil {
		t.Fatal(err)
	}
	h2 := processHost(t, again)
	h2.selectAID(ssdAID)
	h2.mustAuthenticate(0x30, vectorKVN30, 0x03)
	h2.selectAID(vcard.ISDAID)
	if n := h2.counter(); n != 1 {
		t.Fatalf("ISD counter after reload %d, want 1", n)
	}
	if _, err := vcard.New(vcard.DefaultEID, vcard.Config{StatePath: path}); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("New over an existing module: %v, want ErrExist", err)
	}
	if _, err := vcard.Load(filepath.Join(t.TempDir(), "none.json"), vcard.Config{}); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Load of a missing file: %v, want ErrNotExist", err)
	}
}

func TestFailedSaveAnswers6581AndUndoesTheChange(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "d")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	card := newCard(t, vcard.Config{StatePath: filepath.Join(dir, "module.json")})
	hst := processHost(t, card)
	hst.selectAID(vcard.ISDAID)
	hst.mustAuthenticate(vcard.DefaultKVN, defaultKeys, 0x03)
	if err := os.RemoveAll(dir); err != nil { // the next save cannot create its temporary file
		t.Fatal(err)
	}
	params := gp.InstallParams{AppSpecific: gp.SCPParam(0x03, 0x70)}.Bytes()
	w, _ := hst.sess.Wrap(gp.InstallForInstallCmd(ssdELF, ssdModule, ssdAID, gp.PrivSecurityDomain, params, true))
	if sw := hst.raw(w.Bytes()).SW; sw != gp.SWMemoryFailure {
		t.Fatalf("INSTALL with a failing save: %v, want 6581", sw)
	}
	if sw := hst.selectAID(ssdAID); sw != gp.SWNotFound {
		t.Fatalf("the undone SSD is selectable: %v", sw)
	}
}

func TestNewRejectsAnEIDWithWrongCheckDigits(t *testing.T) {
	if _, err := vcard.New("89049032123451234512345678901234", vcard.Config{}); err == nil {
		t.Fatal("EID with wrong check digits accepted")
	}
}

func TestATRIsAValidT0ATR(t *testing.T) {
	a := newCard(t, vcard.Config{}).ATR()
	var x byte
	for _, b := range a[1:] {
		x ^= b
	}
	if a[0] != 0x3B || x != 0 {
		t.Fatalf("ATR %X: TS or TCK wrong", a)
	}
}

// authRefused: EXTERNAL AUTHENTICATE with wrong keys fails on its C-MAC
// (6982) or, with a right MAC, on the host cryptogram (6300, AmdD 7.1.2).
func authRefused(sw gp.SW) bool { return sw == gp.SWAuthFailed || sw == gp.SWSecurityNotSatisfied }

func TestSSDWithRandomChallengeHasNoCounterAndRefusesRMAC(t *testing.T) {
	hst := processHost(t, newCard(t, vcard.Config{}))
	hst.selectAID(vcard.ISDAID)
	hst.mustAuthenticate(vcard.DefaultKVN, defaultKeys, 0x03)
	params := gp.InstallParams{AppSpecific: gp.SCPParam(0x03, 0x00)}.Bytes()
	hst.mustSec(gp.InstallForInstallCmd(ssdELF, ssdModule, ssdAID, gp.PrivSecurityDomain, params, true))
	hst.loadKeys(ssdAID, 0x30, vectorKVN30)
	hst.selectAID(ssdAID)
	hs, _ := gp.NewHostSession(gp.KeySet{KVN: 0x30, ENC: gp.AESKey(vectorKVN30[0]), MAC: gp.AESKey(vectorKVN30[1])}, nil)
	r := hst.send(hs.InitializeUpdate())
	iu, err := gp.ParseInitUpdateResponse(r.Data)
	if err != nil || iu.I != 0x00 || iu.HasSequenceCounter {
		t.Fatalf("INITIALIZE UPDATE %X: %+v %v", r.Data, iu, err)
	}
	hst.selectAID(ssdAID)
	hst.mustAuthenticate(0x30, vectorKVN30, 0x03)
	hst.selectAID(ssdAID)
	if sw := hst.authenticate(0x30, vectorKVN30, 0x00); sw != gp.SWOK {
		t.Fatalf("level 00: %v", sw)
	}
}

func TestKeyLoadingMaySplitTemplateAndKeyOverTwoBlocks(t *testing.T) {
	hst := processHost(t, newCard(t, vcard.Config{}))
	hst.selectAID(vcard.ISDAID)
	hst.mustAuthenticate(vcard.DefaultKVN, defaultKeys, 0x03)
	hst.createSSD(ssdAID)
	hst.mustSec(gp.InstallForPersonalizationCmd(ssdAID))
	dgis, err := gp.ParseDGIs(hst.keyLoadDGIs(0x30, vectorKVN30))
	if err != nil || len(dgis) != 6 {
		t.Fatalf("DGIs: %v", err)
	}
	var first, second []byte
	for i, d := range dgis {
		if i < 3 { // ENC key, then MAC template: its 8113 goes in block 1
			first = append(first, d.Bytes()...)
		} else {
			second = append(second, d.Bytes()...)
		}
	}
	hst.mustSec(gp.StoreData(gp.StoreDataDGI, 0, first))
	if sw := hst.sec(gp.StoreData(gp.StoreDataLast|gp.StoreDataDGI, 0, second)).SW; sw != gp.SWIncorrectP1P2 {
		t.Fatalf("block 00 twice: %v, want 6A86", sw)
	}
	hst.mustSec(gp.InstallForPersonalizationCmd(ssdAID))
	hst.mustSec(gp.StoreData(gp.StoreDataDGI, 0, first))
	hst.mustSec(gp.StoreData(gp.StoreDataLast|gp.StoreDataDGI, 1, second))
	hst.selectAID(ssdAID)
	hst.mustAuthenticate(0x30, vectorKVN30, 0x03)
}

func TestStoredDataObjectsNeedASessionToBeRead(t *testing.T) {
	hst := processHost(t, newCard(t, vcard.Config{}))
	hst.selectAID(vcard.ISDAID)
	hst.mustAuthenticate(vcard.DefaultKVN, defaultKeys, 0x03)
	hst.mustSec(gp.StoreData(gp.StoreDataLast|gp.StoreDataBERTLV, 0, h("DF0102CAFE")))
	hst.selectAID(vcard.ISDAID)
	if sw := hst.send(gp.GetData(0xDF01)).SW; sw != gp.SWSecurityNotSatisfied {
		t.Fatalf("reading a stored object without a session: %v, want 6982", sw)
	}
	if sw := hst.send(gp.GetData(0xDF02)).SW; sw != gp.SWReferencedDataNotFound {
		t.Fatalf("unknown object: %v, want 6A88", sw)
	}
}

// SELECT is interindustry: INS A4 in a proprietary class goes to the
// selected applet, as a Java Card runtime routes it, and never selects
// another (an app's channel to its applet would otherwise reach the ISD).
func TestAProprietaryClassA4SelectsNothing(t *testing.T) {
	hst := processHost(t, newCard(t, vcard.Config{}))
	if sw := hst.selectAID(vcard.ISDRAID); sw != gp.SWOK {
		t.Fatalf("SELECT ISD-R: %v", sw)
	}
	for _, cla := range []byte{0x80, 0x84, 0xC0} {
		sel := append([]byte{cla, 0xA4, 0x04, 0x00, byte(len(vcard.ISDAID))}, vcard.ISDAID...)
		if r := hst.raw(sel); r.SW == gp.SWOK {
			t.Errorf("%02X A4 04 00 ISD answered 9000 %X", cla, r.Data)
		}
	}
}
