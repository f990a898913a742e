package agent_test

import (
	"crypto/rand"
	"errors"
	"testing"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/cardlink/agent"
	"github.com/keyport/keyport/cardlink/cardlinktest"
	"github.com/keyport/keyport/gp"
	"github.com/keyport/keyport/internal/fixture"
	"github.com/keyport/keyport/internal/scptest"
)

func keySet(kvn byte, keys map[keyport.KeyUsage][]byte) gp.KeySet {
	return gp.KeySet{KVN: kvn, ENC: gp.AESKey(keys[keyport.UsageENC]), MAC: gp.AESKey(keys[keyport.UsageMAC])}
}

func newKeys() map[keyport.KeyUsage][]byte {
	out := map[keyport.KeyUsage][]byte{}
	for _, u := range keyport.Usages {
		out[u] = make([]byte, 16)
		rand.Read(out[u])
	}
	return out
}

// personalized runs the world's second-key job: the domain is PERSONALIZED
// under w.Second at KVN 31.
func personalized(t *testing.T, w *world) {
	t.Helper()
	if _, err := w.agent(agent.Config{}).Session(ctx); err != nil {
		t.Fatal(err)
	}
	if d := w.domain(t); d.State != keyport.Personalized || d.KVN != 0x31 {
		t.Fatalf("domain %s KVN %02X", d.State, d.KVN)
	}
}

func TestRotationByTheProviderReplacesItsKeysWithTheNextKVNAndTheOldOnesAreRefused(t *testing.T) {
	w := newWorld(t, cardlinktest.LinkOptions{NoWorker: true})
	personalized(t, w)
	keys, kvn := w.Second, 0x31
	for round := range 2 { // 31 → 32 → 33: any KVN to the next
		next := newKeys()
		req, err := keyport.RotateScript(w.AID, kvn, w.domain(t).SeqCounter, keys, next)
		if err != nil {
			t.Fatal(err)
		}
		j, err := w.Svc.SubmitScript(ctx, w.Prov, w.EID, w.AID, req)
		if err != nil {
			t.Fatalf("round %d: submit: %v", round, err)
		}
		if _, err := w.agent(agent.Config{}).Session(ctx); err != nil {
			t.Fatal(err)
		}
		j, _ = w.Svc.GetJob(ctx, w.Prov, j.Ref)
		if j.State != keyport.JobDone || j.Result == nil || !j.Result.Confirmed {
			t.Fatalf("round %d: job %s: %s %+v", round, j.State, j.LastError, j.Result)
		}
		d := w.domain(t)
		if d.State != keyport.Personalized || d.KVN != kvn+1 || d.SeqCounter != 0 || d.KCV[keyport.UsageMAC] != req.Expect.KCV[keyport.UsageMAC] {
			t.Fatalf("round %d: domain %s KVN %02X counter %d KCV %v", round, d.State, d.KVN, d.SeqCounter, d.KCV)
		}
		// An independent SCP03 host: the old keys are refused, the new
		// ones open the domain.
		if _, sw, _ := scptest.Authenticate(t, w.Card, w.AID.Bytes(), keySet(byte(kvn), keys)); sw != gp.SWReferencedDataNotFound {
			t.Fatalf("round %d: old keys: %s, want 6A88", round, sw)
		}
		if _, sw, _ := scptest.Authenticate(t, w.Card, w.AID.Bytes(), keySet(byte(kvn+1), next)); sw != gp.SWOK {
			t.Fatalf("round %d: new keys: %s", round, sw)
		}
		w.Card.Card.Reset()
		// The checks above ran one session keyport did not see; the
		// provider learns that from its own session, as a real one
		// would not: keyport's counter is 0, the card's 1.
		keys, kvn = next, kvn+1
		if err := w.Store.SetDomainKeys(ctx, d.ID, d.KVN, nil, 1); err != nil {
			t.Fatal(err)
		}
	}
	if n := w.CountAudit(t, "rotation.confirmed"); n != 2 {
		t.Fatalf("%d rotation.confirmed events", n)
	}
	if _, err := w.Svc.VerifyAudit(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestRotationScriptsThatDoNotFitTheDomainAreRefusedAndNothingIsStored(t *testing.T) {
	w := newWorld(t, cardlinktest.LinkOptions{NoWorker: true})
	// While ASSIGNED: no rotation.
	req, _ := keyport.RotateScript(w.AID, 0x30, 0, w.Keys[w.EID][w.AID], newKeys())
	if _, err := w.Svc.SubmitScript(ctx, w.Prov, w.EID, w.AID, req); !errors.Is(err, keyport.ErrConflict) {
		t.Fatalf("rotation of an ASSIGNED domain: %v", err)
	}
	personalized(t, w)
	before := w.CountAudit(t, "rotation.submit")
	bad := map[string]keyport.ScriptRequest{}
	bad["wrong KVN"], _ = keyport.RotateScript(w.AID, 0x35, 0, w.Second, newKeys())
	bad["stale counter"], _ = keyport.RotateScript(w.AID, 0x31, 7, w.Second, newKeys())
	bad["second-key script"], _ = keyport.SecondKeyScript(w.AID, 0x31, 0, 0x32, w.Second, newKeys())
	noRMAC, _ := keyport.RotateScript(w.AID, 0x31, 0, w.Second, newKeys())
	noRMAC.Expect.PutKeyRMAC = ""
	bad["no R-MAC"] = noRMAC
	for name, r := range bad {
		if _, err := w.Svc.SubmitScript(ctx, w.Prov, w.EID, w.AID, r); !errors.Is(err, keyport.ErrInvalid) && !errors.Is(err, keyport.ErrConflict) {
			t.Errorf("%s: %v, want invalid or conflict", name, err)
		}
	}
	other, _, _ := w.Provider(t, "Other", fixture.RSAKeys()[0])
	good, _ := keyport.RotateScript(w.AID, 0x31, 0, w.Second, newKeys())
	if _, err := w.Svc.SubmitScript(ctx, other, w.EID, w.AID, good); !errors.Is(err, keyport.ErrNotFound) {
		t.Errorf("another provider's rotation: %v, want not found", err)
	}
	jobs, _ := w.Store.ListJobs(ctx, keyport.JobFilter{DomainID: w.domain(t).ID, Kind: keyport.JobSecondKey, States: []keyport.JobState{keyport.JobQueued}})
	if len(jobs) != 0 || w.CountAudit(t, "rotation.submit") != before {
		t.Fatalf("refused scripts left %d queued jobs", len(jobs))
	}
}

func TestRotationAnsweredWithAnErrorFailsWithTheSWKeepsTheKeysAndLearnsTheCounter(t *testing.T) {
	w := newWorld(t, cardlinktest.LinkOptions{NoWorker: true})
	personalized(t, w)
	req, _ := keyport.RotateScript(w.AID, 0x31, 0, w.Second, newKeys())
	j, err := w.Svc.SubmitScript(ctx, w.Prov, w.EID, w.AID, req)
	if err != nil {
		t.Fatal(err)
	}
	w.Card.SetFault(func(apdu []byte) []byte {
		if len(apdu) > 1 && apdu[1] == gp.INSPutKey {
			return []byte{0x6A, 0x80}
		}
		return nil
	})
	if _, err := w.agent(agent.Config{}).Session(ctx); err != nil {
		t.Fatal(err)
	}
	j, _ = w.Svc.GetJob(ctx, w.Prov, j.Ref)
	if j.State != keyport.JobFailed || j.Result == nil || j.Result.SW != "6A80" {
		t.Fatalf("job %s %+v", j.State, j.Result)
	}
	if d := w.domain(t); d.State != keyport.Personalized || d.KVN != 0x31 || d.SeqCounter != 1 {
		t.Fatalf("domain %s KVN %02X counter %d; want PERSONALIZED, 31, the card's counter 1", d.State, d.KVN, d.SeqCounter)
	}
	if _, sw, _ := scptest.Authenticate(t, w.Card, w.AID.Bytes(), keySet(0x31, w.Second)); sw != gp.SWOK {
		t.Fatalf("current keys after the failed rotation: %s", sw)
	}
}
