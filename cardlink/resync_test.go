package cardlink_test

import (
	"context"
	"errors"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/cardlink/agent"
	"github.com/keyport/keyport/cardlink/cardlinktest"
	"github.com/keyport/keyport/cardlink/tlspsk"
	"github.com/keyport/keyport/gp"
)

func resyncDomain(t *testing.T, w *cardlinktest.World) *keyport.Domain {
	t.Helper()
	d, err := w.Store.GetDomain(ctx, w.EID, w.AID)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func resyncJob(t *testing.T, w *cardlinktest.World, ref string) *keyport.Job {
	t.Helper()
	j, err := w.Svc.GetJob(ctx, w.Prov, ref)
	if err != nil {
		t.Fatal(err)
	}
	return j
}

// lostAnswerSession runs an admin session whose connection breaks when
// the agent posts the card's answer to the first script (request 2): the
// card ran the script, keyport never hears of it. The broken session's
// lease is then released, as its expiry would.
func lostAnswerSession(t *testing.T, w *cardlinktest.World) {
	t.Helper()
	var writes atomic.Int32
	dials := 0
	a := agent.New(agent.Config{Server: w.Link.Addr, Identity: string(w.EID), PSK: w.PSK, Retries: 1, Retry: time.Millisecond,
		Dial: func(ctx2 context.Context) (net.Conn, error) {
			if dials++; dials > 1 {
				return nil, errors.New("test: no network")
			}
			c, err := tlspsk.Dial(ctx2, "tcp", w.Link.Addr, &tlspsk.ClientConfig{Identity: string(w.EID), PSK: w.PSK})
			if err != nil {
				return nil, err
			}
			return dropConn{Conn: c, writes: &writes, at: 2}, nil
		}}, w.Card)
	if _, err := a.Session(ctx); err == nil {
		t.Fatal("the broken session succeeded")
	}
	m, err := w.Svc.Store.GetModule(ctx, w.EID)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Svc.Store.ReleaseLease(ctx, m.ID, ""); err != nil {
		t.Fatal(err)
	}
}

func resyncSession(t *testing.T, w *cardlinktest.World) {
	t.Helper()
	if _, err := agent.New(agent.Config{Server: w.Link.Addr, Identity: string(w.EID), PSK: w.PSK}, w.Card).Session(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestALostAnswerMakesKeyportReReadTheCounterSoTheProvidersNextScriptSucceeds(t *testing.T) {
	w := cardlinktest.NewWorld(t, cardlinktest.LinkOptions{NoWorker: true})
	// The provider's second-key script: its keys (KVN 31) on the card.
	resyncSession(t, w)
	if j := resyncJob(t, w, w.Job.Ref); j.State != keyport.JobDone {
		t.Fatalf("second-key job %s: %s", j.State, j.LastError)
	}
	d := resyncDomain(t, w)
	stale := d.SeqCounter
	cmds, err := gp.StoreDataObjects([]gp.DGI{{Tag: 0x0101, Data: []byte("balance 12.34")}})
	if err != nil {
		t.Fatal(err)
	}
	put, err := keyport.DataScript(w.AID, d.KVN, stale, w.Second, cmds)
	if err != nil {
		t.Fatal(err)
	}
	lost, err := w.Svc.SubmitDataScript(ctx, w.Prov, w.EID, w.AID, put)
	if err != nil {
		t.Fatal(err)
	}
	// The card runs the data script (its counter moves), the answer is lost.
	lostAnswerSession(t, w)
	if j := resyncJob(t, w, lost.Ref); j.State != keyport.JobSent {
		t.Fatalf("data job %s after the lost answer", j.State)
	}
	// The next session finds the answer lost and sends keyport's probe,
	// whose answer is lost too: the counter stays unverified.
	lostAnswerSession(t, w)
	if j := resyncJob(t, w, lost.Ref); j.State != keyport.JobFailed || j.LastError != "answer lost" {
		t.Fatalf("data job %s %q", j.State, j.LastError)
	}
	d = resyncDomain(t, w)
	if !d.SeqUnverified || d.CounterState() != "resynchronizing" {
		t.Fatalf("domain counter %d unverified=%v after a lost answer", d.SeqCounter, d.SeqUnverified)
	}
	if has, err := w.Svc.ModuleHasWork(ctx, w.EID); err != nil || !has {
		t.Fatalf("module has work: %v %v", has, err)
	}
	// Scripts built meanwhile are refused, and nothing is stored.
	before, err := w.Store.ListJobs(ctx, keyport.JobFilter{DomainID: d.ID})
	if err != nil {
		t.Fatal(err)
	}
	get, err := keyport.DataScript(w.AID, d.KVN, d.SeqCounter, w.Second, []gp.Command{gp.GetDataObject(0x0101)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Svc.SubmitDataScript(ctx, w.Prov, w.EID, w.AID, get); !errors.Is(err, keyport.ErrCounterResync) || !errors.Is(err, keyport.ErrConflict) {
		t.Fatalf("data script while resynchronizing: %v", err)
	}
	next := map[keyport.KeyUsage][]byte{}
	for i, u := range keyport.Usages {
		next[u] = make([]byte, 16)
		next[u][0] = byte(0x50 + i)
	}
	rot, err := keyport.RotateScript(w.AID, d.KVN, d.SeqCounter, w.Second, next)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Svc.SubmitScript(ctx, w.Prov, w.EID, w.AID, rot); !errors.Is(err, keyport.ErrCounterResync) {
		t.Fatalf("rotation while resynchronizing: %v", err)
	}
	after, err := w.Store.ListJobs(ctx, keyport.JobFilter{DomainID: d.ID})
	if err != nil {
		t.Fatal(err)
	}
	if len(after) != len(before) {
		t.Fatalf("%d jobs before the refused scripts, %d after", len(before), len(after))
	}
	// The module's next session reads the counter.
	resyncSession(t, w)
	d = resyncDomain(t, w)
	if d.SeqUnverified || d.CounterState() != "known" {
		t.Fatalf("counter still unverified after the probe")
	}
	// The lost data script, the lost probe and the probe each ran one
	// INITIALIZE UPDATE on the card.
	if d.SeqCounter != stale+3 {
		t.Fatalf("counter %d after the probe, want %d", d.SeqCounter, stale+3)
	}
	if n := w.CountAudit(t, keyport.ActionCounterResync); n != 1 {
		t.Fatalf("%d %s events", n, keyport.ActionCounterResync)
	}
	if n := w.CountAudit(t, "counter.unverified"); n != 2 {
		t.Fatalf("%d counter.unverified events", n)
	}
	// The provider's next script, built on the counter keyport reports, runs.
	get, err = keyport.DataScript(w.AID, d.KVN, d.SeqCounter, w.Second, []gp.Command{gp.GetDataObject(0x0101)})
	if err != nil {
		t.Fatal(err)
	}
	j, err := w.Svc.SubmitDataScript(ctx, w.Prov, w.EID, w.AID, get)
	if err != nil {
		t.Fatal(err)
	}
	resyncSession(t, w)
	if j = resyncJob(t, w, j.Ref); j.State != keyport.JobDone {
		t.Fatalf("provider's next script %s: %s", j.State, j.LastError)
	}
	secondSet := gp.KeySet{KVN: byte(d.KVN), ENC: gp.AESKey(w.Second[keyport.UsageENC]), MAC: gp.AESKey(w.Second[keyport.UsageMAC])}
	got, err := keyport.ReadDataAnswers(w.AID, secondSet, get, *j.Result)
	if err != nil {
		t.Fatal(err)
	}
	if v, err := gp.ParseDataObject(0x0101, got[0].Data); err != nil || string(v) != "balance 12.34" {
		t.Fatalf("read %q %v", v, err)
	}
}
