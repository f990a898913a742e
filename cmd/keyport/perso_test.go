package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/cardlink/pcsc"
	"github.com/keyport/keyport/cardlink/pcsctest"
	"github.com/keyport/keyport/gp"
	"github.com/keyport/keyport/hsm/hsmtest"
	"github.com/keyport/keyport/internal/fixture"
	"github.com/keyport/keyport/internal/scptest"
	"github.com/keyport/keyport/keywrap"
	"github.com/keyport/keyport/perso"
	"github.com/keyport/keyport/store/storetest"
)

// station is an issuer personalization station: a wired keyport (the same
// open() as the commands) on a fresh SoftHSM token and SQLite store with the
// derived batch "p1", and a private PC/SC stack whose reader takes one
// virtual module at a time.
type station struct {
	env    *pcsctest.Env
	common []string
	app    *app
}

func newStation(t testing.TB) *station {
	t.Helper()
	env := pcsctest.Start(t, pcsctest.Options{})
	dir := t.TempDir()
	tok := hsmtest.NewToken(t)
	st := &station{env: env, common: []string{"--data-dir", filepath.Join(dir, "data"),
		"--db", storetest.SQLitePath(t), "--hsm", tok.URI}}
	var cfg config
	fs, _ := newFlags("test", &cfg)
	if err := parse(fs, &cfg, st.common); err != nil {
		t.Fatal(err)
	}
	a, err := open(context.Background(), cfg, true)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.Close)
	a.svc.Log = nil // quiet: benchmark lines go to the same stream
	if _, err := a.hsm.Init(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, _, err := a.svc.CreateBatch(context.Background(), cli, "p1", "", nil); err != nil {
		t.Fatal(err)
	}
	st.app = a
	return st
}

// insert starts a virtual module process on statePath (a blank module with
// eid when the file does not exist yet) and opens the reader.
func (st *station) insert(t testing.TB, statePath string, eid keyport.EID, maxAuthFailures int) (*pcsctest.CardProcess, *pcsc.Reader) {
	t.Helper()
	proc := st.env.StartCardProcess(t, statePath, string(eid), maxAuthFailures)
	r, err := pcsc.Open(context.Background(), st.env.Reader)
	if err != nil {
		t.Fatalf("%v\nmodule output: %s", err, proc.Output())
	}
	t.Cleanup(func() { r.Close() })
	return proc, r
}

func (st *station) perso(ctx context.Context, card gp.Channel, domains int) (*perso.Report, error) {
	return st.app.station().Personalize(ctx, cli, card, perso.Request{Batch: "p1", Domains: domains})
}

func TestPersoCommandPersonalizesABlankVirtualModuleOverPCSC(t *testing.T) {
	o := capture(t)
	st := newStation(t)
	e := keyport.EID(eid(21))
	_, reader := st.insert(t, filepath.Join(t.TempDir(), "module.json"), e, 0)
	// The command opens its own store, HSM session pool and reader.
	st.app.Close()
	out := kp(t, o, st.common, "perso", "--reader", st.env.Reader, "--batch", "p1", "--domains", "3")
	if !strings.Contains(out, "module "+string(e)+" personalized") || strings.Count(out, "(created, keys loaded)") != 3 {
		t.Fatalf("perso printed:\n%s", out)
	}
	a, err := open(context.Background(), st.app.cfg, false)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	scptest.CheckPersonalized(t, a.store, a.hsm, reader, "p1", e, 3)
	a.Close()

	out = kp(t, o, st.common, "perso", "--reader", st.env.Reader, "--batch", "p1", "--domains", "3")
	if !strings.Contains(out, "personalized already; card and store agree") {
		t.Fatalf("second perso printed:\n%s", out)
	}
}

func TestPersoCommandNamesAMissingReaderOrBatch(t *testing.T) {
	o := capture(t)
	st := newStation(t)
	st.app.Close()
	err := run(context.Background(), append([]string{"perso", "--reader", "No Such Reader", "--batch", "p1"}, st.common...))
	if !errors.Is(err, pcsc.ErrNoReader) {
		t.Errorf("unknown reader: %v, want pcsc.ErrNoReader", err)
	}
	err = run(context.Background(), append([]string{"perso", "--reader", st.env.Reader, "--batch", "p1"}, st.common...))
	if !errors.Is(err, pcsc.ErrNoCard) {
		t.Errorf("empty reader: %v, want pcsc.ErrNoCard", err)
	}
	err = run(context.Background(), append([]string{"perso", "--reader", st.env.Reader}, st.common...))
	var ee exitError
	if !errors.As(err, &ee) || ee.code != 2 {
		t.Errorf("no --batch: %v, want a usage error", err)
	}
	_ = o
}

func TestWrongKeysFailAndCountTowardTheLockUntilEvenTheRightKeysAreRefused(t *testing.T) {
	ctx := context.Background()
	st := newStation(t)
	e := keyport.EID(eid(22))
	_, reader := st.insert(t, filepath.Join(t.TempDir(), "module.json"), e, 3)
	rep, err := st.perso(ctx, reader, 1)
	if err != nil {
		t.Fatal(err)
	}
	aid := rep.Domains[0].AID.Bytes()
	right := scptest.StoredFirstKeys(t, st.app.store, st.app.hsm, "p1", e, rep.Domains[0].AID)
	wrong := gp.KeySet{KVN: 0x30, ENC: gp.AESKey(bytes.Repeat([]byte{1}, 16)), MAC: gp.AESKey(bytes.Repeat([]byte{2}, 16))}
	for i := 1; i <= 3; i++ {
		if _, sw, _ := scptest.Authenticate(t, reader, aid, wrong); sw != gp.SWSecurityNotSatisfied && sw != gp.SWAuthFailed {
			t.Fatalf("wrong keys, attempt %d: %s, want 6982 or 6300", i, sw)
		}
	}
	if _, sw, _ := scptest.Authenticate(t, reader, aid, right); sw != gp.SWAuthMethodBlocked {
		t.Fatalf("the stored keys after 3 failures: %s, want 6983 (locked)", sw)
	}
}

func TestAWrongAttemptBetweenRightOnesDoesNotLock(t *testing.T) {
	ctx := context.Background()
	st := newStation(t)
	e := keyport.EID(eid(23))
	_, reader := st.insert(t, filepath.Join(t.TempDir(), "module.json"), e, 3)
	rep, err := st.perso(ctx, reader, 1)
	if err != nil {
		t.Fatal(err)
	}
	aid := rep.Domains[0].AID
	right := scptest.StoredFirstKeys(t, st.app.store, st.app.hsm, "p1", e, aid)
	wrong := gp.KeySet{KVN: 0x30, ENC: gp.AESKey(bytes.Repeat([]byte{1}, 16)), MAC: gp.AESKey(bytes.Repeat([]byte{2}, 16))}
	for i := 0; i < 4; i++ {
		scptest.Authenticate(t, reader, aid.Bytes(), wrong)
		scptest.Authenticate(t, reader, aid.Bytes(), wrong)
		if _, sw, _ := scptest.Authenticate(t, reader, aid.Bytes(), right); sw != gp.SWOK {
			t.Fatalf("round %d: the right keys after 2 failures: %s (a success must reset the count)", i, sw)
		}
	}
}

// claimClearKeys claims domain aid for a new provider and returns its first
// keys as the provider unwraps them from the key package, and the package.
func claimClearKeys(t testing.TB, st *station, e keyport.EID, aid keyport.AID) (map[keyport.KeyUsage][]byte, *keyport.KeyPackage) {
	t.Helper()
	ctx := context.Background()
	w := &fixture.World{Svc: st.app.svc, Store: st.app.store, HSM: st.app.hsm}
	sp := fixture.RSAKeys()[0]
	p, _, wk := w.Provider(t, "Bank "+string(aid), sp)
	c, _, err := st.app.svc.Claim(ctx, p, keyport.ClaimRequest{EID: e, AID: aid, WrappingKeyID: wk})
	if err != nil {
		t.Fatal(err)
	}
	set, _ := st.app.svc.JWKS(ctx)
	pkg, err := keyport.VerifyKeyPackage(c.Package, set)
	if err != nil {
		t.Fatal(err)
	}
	keys := map[keyport.KeyUsage][]byte{}
	for _, k := range pkg.Keys {
		if keys[k.Usage], err = keywrap.UnwrapRSAAES(sp, k.Wrapped, fixture.OAEPHash(t, pkg.Wrapping.OAEPHash)); err != nil {
			t.Fatal(err)
		}
	}
	return keys, pkg
}

func TestAClaimOfAPersonalizedDomainGivesKeysThatAuthenticateOverPCSC(t *testing.T) {
	ctx := context.Background()
	st := newStation(t)
	e := keyport.EID(eid(24))
	_, reader := st.insert(t, filepath.Join(t.TempDir(), "module.json"), e, 0)
	if _, err := st.perso(ctx, reader, 2); err != nil {
		t.Fatal(err)
	}
	aid := keyport.AID("A00000015153504102")
	keys, pkg := claimClearKeys(t, st, e, aid)
	ks := gp.KeySet{KVN: byte(pkg.KVN), ENC: gp.AESKey(keys[keyport.UsageENC]), MAC: gp.AESKey(keys[keyport.UsageMAC])}
	hs, _ := gp.NewHostSession(ks, nil)
	want, err := hs.Precompute(uint32(pkg.SequenceCounter)+1, aid.Bytes(), 0x70)
	if err != nil {
		t.Fatal(err)
	}
	iu, sw, _ := scptest.Authenticate(t, reader, aid.Bytes(), ks)
	if sw != gp.SWOK {
		t.Fatalf("the unwrapped package keys: %s", sw)
	}
	if !bytes.Equal(iu.CardChallenge, want) {
		t.Errorf("card challenge %X, precomputed from the package's counter %d: %X", iu.CardChallenge, pkg.SequenceCounter, want)
	}
}

func TestAfterPutKeyTheOldKVNNoLongerAuthenticatesAndTheCounterHasReset(t *testing.T) {
	ctx := context.Background()
	st := newStation(t)
	e := keyport.EID(eid(25))
	_, reader := st.insert(t, filepath.Join(t.TempDir(), "module.json"), e, 0)
	if _, err := st.perso(ctx, reader, 1); err != nil {
		t.Fatal(err)
	}
	aid := keyport.AID("A00000015153504101")
	first, _ := claimClearKeys(t, st, e, aid)
	old := gp.KeySet{KVN: 0x30, ENC: gp.AESKey(first[keyport.UsageENC]), MAC: gp.AESKey(first[keyport.UsageMAC])}
	// Spend a few counter values, so that a reset shows.
	for i := 0; i < 3; i++ {
		scptest.Authenticate(t, reader, aid.Bytes(), old)
	}
	iu, sw, sess := scptest.Authenticate(t, reader, aid.Bytes(), old)
	if sw != gp.SWOK || iu.SequenceCounter < 4 {
		t.Fatalf("first keys: %s, counter %d", sw, iu.SequenceCounter)
	}
	// The provider's second keys replace KVN 30 by 31 (PUT KEY P1=30).
	second := map[keyport.KeyUsage][]byte{}
	pk := gp.PutKey{OldKVN: 0x30, NewKVN: 0x31, FirstKID: 1}
	for _, u := range keyport.Usages {
		second[u] = make([]byte, 16)
		rand.Read(second[u])
		kc, err := gp.AESKeyComponent(first[keyport.UsageDEK], second[u])
		if err != nil {
			t.Fatal(err)
		}
		pk.Keys = append(pk.Keys, kc)
	}
	cmd, _ := pk.Command()
	r := sess.Do(cmd)
	if r.SW != gp.SWOK {
		t.Fatalf("PUT KEY: %s", r.SW)
	}
	pr, err := gp.ParsePutKeyResponse(r.Data)
	if err != nil || pr.Confirms(pk) != nil {
		t.Fatalf("PUT KEY response %X: %v %v", r.Data, err, pr.Confirms(pk))
	}
	if _, sw, _ := scptest.Authenticate(t, reader, aid.Bytes(), old); sw != gp.SWReferencedDataNotFound {
		t.Errorf("old KVN 30 after PUT KEY: %s, want 6A88", sw)
	}
	// The old keys under the new KVN do not authenticate either.
	oldAs31 := old
	oldAs31.KVN = 0x31
	if _, sw, _ := scptest.Authenticate(t, reader, aid.Bytes(), oldAs31); sw == gp.SWOK {
		t.Errorf("old keys at KVN 31 authenticate")
	}
	next := gp.KeySet{KVN: 0x31, ENC: gp.AESKey(second[keyport.UsageENC]), MAC: gp.AESKey(second[keyport.UsageMAC])}
	iu, sw, _ = scptest.Authenticate(t, reader, aid.Bytes(), next)
	if sw != gp.SWOK {
		t.Fatalf("second keys at KVN 31: %s", sw)
	}
	// One failed attempt (the old keys above) and this one since the reset
	// at 0: AmdD 6.2.2.1 increments before each INITIALIZE UPDATE.
	if iu.SequenceCounter != 2 {
		t.Errorf("counter after PUT KEY and two INITIALIZE UPDATEs: %d, want 2 (reset to 0)", iu.SequenceCounter)
	}
}

// killAfter passes commands to the reader and kills the module's process
// right after the card answered the n-th one, as a module pulled from the
// reader would be: the commands after it meet a reader without a card.
type killAfter struct {
	r    *pcsc.Reader
	proc *pcsctest.CardProcess
	n    int
	sent int
}

func (k *killAfter) Transmit(ctx context.Context, apdu []byte) ([]byte, error) {
	rsp, err := k.r.Transmit(ctx, apdu)
	k.sent++
	if k.sent == k.n {
		k.proc.Kill()
	}
	return rsp, err
}

func TestPersoFinishesAfterTheModuleProcessIsKilledMidway(t *testing.T) {
	ctx := context.Background()
	st := newStation(t)
	// How many commands does a whole run send?
	proc, reader := st.insert(t, filepath.Join(t.TempDir(), "probe.json"), keyport.EID(eid(30)), 0)
	rep, err := st.perso(ctx, reader, 4)
	if err != nil {
		t.Fatal(err)
	}
	total := rep.APDUs
	reader.Close()
	proc.Kill()
	st.env.WaitCard(t, false)
	for i, at := range []int{3, total / 4, total / 2, 3 * total / 4, total - 1} {
		t.Run(fmt.Sprintf("killed after command %d of %d", at, total), func(t *testing.T) {
			e := keyport.EID(eid(31 + i))
			state := filepath.Join(t.TempDir(), "module.json")
			proc, reader := st.insert(t, state, e, 0)
			_, err := st.perso(ctx, &killAfter{r: reader, proc: proc, n: at}, 4)
			if err == nil {
				t.Fatal("perso succeeded without its module")
			}
			t.Logf("first run: %v", err)
			if _, err := st.app.store.GetModule(ctx, e); !errors.Is(err, keyport.ErrNotFound) {
				t.Fatalf("the store has the module of an unfinished run: %v", err)
			}
			st.env.WaitCard(t, false)
			// The module comes back from its state file.
			st.env.StartCardProcess(t, state, string(e), 0)
			rep, err := st.perso(ctx, reader, 4)
			if err != nil {
				t.Fatalf("second run: %v", err)
			}
			created := 0
			for _, d := range rep.Domains {
				if d.Created {
					created++
				}
			}
			t.Logf("second run: %d commands, %d SSDs created, ISD keys replaced %v", rep.APDUs, created, rep.ISDKeysReplaced)
			if !rep.Registered {
				t.Fatalf("second run did not register: %+v", rep)
			}
			scptest.CheckPersonalized(t, st.app.store, st.app.hsm, reader, "p1", e, 4)
			m, _ := st.app.store.GetModule(ctx, e)
			if len(m.Domains) != 4 {
				t.Fatalf("store: %d domains", len(m.Domains))
			}
			reader.Close()
		})
		// The subtest's cleanup killed the module: let pcscd see the reader
		// empty before the next module goes in.
		st.env.WaitCard(t, false)
	}
}

// BenchmarkPersoModule8Domains times one module's perso with 8 domains
// through pcscd + vpcd, SoftHSM and SQLite; a fresh blank module process is
// inserted (outside the timing) for every iteration.
func BenchmarkPersoModule8Domains(b *testing.B) {
	ctx := context.Background()
	st := newStation(b)
	dir := b.TempDir()
	apdus := 0
	b.StopTimer()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		proc, reader := st.insert(b, filepath.Join(dir, fmt.Sprintf("module-%d.json", i)), keyport.EID(eid(1000+i)), 0)
		b.StartTimer()
		rep, err := st.perso(ctx, reader, 8)
		b.StopTimer()
		if err != nil {
			b.Fatal(err)
		}
		apdus = rep.APDUs
		reader.Close()
		proc.Kill()
		st.env.WaitCard(b, false)
	}
	b.ReportMetric(float64(apdus), "APDUs/module")
}
