package agent_test

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/cardlink/agent"
	"github.com/keyport/keyport/cardlink/cardlinktest"
	"github.com/keyport/keyport/cardlink/tlspsk"
	"github.com/keyport/keyport/gp"
	"github.com/keyport/keyport/internal/fixture"
	"github.com/keyport/keyport/store/storetest"
)

func TestMain(m *testing.M) { storetest.Main(m) }

var ctx = context.Background()

type world struct{ *cardlinktest.World }

func newWorld(t *testing.T, opts cardlinktest.LinkOptions) *world {
	return &world{cardlinktest.NewWorld(t, opts)}
}

func (w *world) agent(cfg agent.Config) *agent.Agent {
	cfg.Server, cfg.Identity, cfg.PSK = w.Link.Addr, string(w.EID), w.PSK
	if cfg.Retry == 0 {
		cfg.Retry = 20 * time.Millisecond
	}
	return agent.New(cfg, w.Card)
}

func (w *world) domain(t *testing.T) *keyport.Domain {
	t.Helper()
	d, err := w.Store.GetDomain(ctx, w.EID, w.AID)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func (w *world) keysOpen(t *testing.T, kvn byte, keys map[keyport.KeyUsage][]byte) gp.SW {
	t.Helper()
	return cardlinktest.NewHost(t, cardlinktest.ProcessTx(w.Card.Card)).Authenticate(w.AID.Bytes(), kvn, cardlinktest.Triple(keys))
}

func TestAgentSessionInstallsTheProvidersKeysAndTheDomainBecomesPersonalized(t *testing.T) {
	storetest.EachDSN(t, func(t *testing.T, dsn string) {
		agentSessionInstallsTheProvidersKeys(t, &world{cardlinktest.NewWorldOn(t, dsn, cardlinktest.LinkOptions{NoWorker: true})})
	})
}

func agentSessionInstallsTheProvidersKeys(t *testing.T, w *world) {
	rep, err := w.agent(agent.Config{}).Session(ctx)
	if err != nil || rep.Scripts != 1 {
		t.Fatalf("session: %+v %v", rep, err)
	}
	j, _ := w.Svc.GetJob(ctx, w.Prov, w.Job.Ref)
	v := j.View()
	if j.State != keyport.JobDone || v.Result == nil || !v.Result.Confirmed || len(v.Result.Responses) != 4 {
		t.Fatalf("job %s: %+v", j.State, v.Result)
	}
	d := w.domain(t)
	if d.State != keyport.Personalized || d.KVN != 0x31 || d.SeqCounter != 0 || d.KCV[keyport.UsageENC] != w.Request.Expect.KCV[keyport.UsageENC] {
		t.Fatalf("domain %s KVN %02X counter %d KCV %v", d.State, d.KVN, d.SeqCounter, d.KCV)
	}
	if sw := w.keysOpen(t, 0x31, w.Second); sw != gp.SWOK {
		t.Fatalf("provider's keys: %v", sw)
	}
	if sw := w.keysOpen(t, 0x30, w.Keys[w.EID][w.AID]); sw != gp.SWReferencedDataNotFound {
		t.Fatalf("first keys after the session: %v, want 6A88", sw)
	}
	if n := w.CountAudit(t, "second-key.confirmed"); n != 1 {
		t.Fatalf("%d second-key.confirmed audit events", n)
	}
	if _, err := w.Svc.VerifyAudit(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestWakeUpChannelBringsTheWaitingAgentToRunTheQueuedScript(t *testing.T) {
	w := newWorld(t, cardlinktest.LinkOptions{})
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan struct{})
	go func() { defer close(done); w.agent(agent.Config{}).Run(ctx) }()
	cardlinktest.WaitJob(t, w.Svc, w.Prov, w.Job.Ref, func(j *keyport.Job) bool { return j.State == keyport.JobDone })
	cancel()
	<-done
}

// dropConn breaks the connection on the n-th request write (1-based):
// before writing it (the answer is lost on the way) or after (the server
// gets the answer, the card never hears back).
type dropConn struct {
	net.Conn
	writes *atomic.Int32
	at     int32
	after  bool
}

func (c *dropConn) Write(p []byte) (int, error) {
	n := c.writes.Add(1)
	if n == c.at && !c.after {
		c.Conn.Close()
		return 0, net.ErrClosed
	}
	k, err := c.Conn.Write(p)
	if n == c.at && c.after {
		time.Sleep(200 * time.Millisecond) // let the server process it
		c.Conn.Close()
	}
	return k, err
}

func droppingAgent(w *world, at int32, after bool) (*agent.Agent, *atomic.Int32) {
	var writes atomic.Int32
	a := w.agent(agent.Config{Dial: func(ctx context.Context) (net.Conn, error) {
		c, err := dialTLS(ctx, w)
		if err != nil {
			return nil, err
		}
		return &dropConn{Conn: c, writes: &writes, at: at, after: after}, nil
	}})
	return a, &writes
}

func dialTLS(ctx context.Context, w *world) (net.Conn, error) {
	return tlspsk.Dial(ctx, "tcp", w.Link.Addr, &tlspsk.ClientConfig{Identity: string(w.EID), PSK: w.PSK})
}

func TestConnectionDroppedBeforeTheAnswerResumesAndCompletesTheJobExactlyOnce(t *testing.T) {
	w := newWorld(t, cardlinktest.LinkOptions{NoWorker: true})
	a, _ := droppingAgent(w, 2, false) // write 2 is the POST with the answer
	rep, err := a.Session(ctx)
	if err != nil || rep.Resumed != 1 || rep.Scripts != 1 {
		t.Fatalf("session: %+v %v", rep, err)
	}
	if j := cardlinktest.WaitJob(t, w.Svc, w.Prov, w.Job.Ref, func(j *keyport.Job) bool { return j.State.Final() }); j.State != keyport.JobDone {
		t.Fatalf("job %s: %s", j.State, j.LastError)
	}
	if n := w.CountAudit(t, "second-key.confirmed"); n != 1 {
		t.Fatalf("%d confirmations, want exactly 1", n)
	}
}

func TestConnectionDroppedAfterTheAnswerWasPostedResumesWithoutCompletingTwice(t *testing.T) {
	w := newWorld(t, cardlinktest.LinkOptions{NoWorker: true})
	a, _ := droppingAgent(w, 2, true) // the server gets the answer; the card never hears back
	rep, err := a.Session(ctx)
	if err != nil || rep.Resumed != 1 || rep.Scripts != 1 {
		t.Fatalf("session: %+v %v", rep, err)
	}
	if j, _ := w.Svc.GetJob(ctx, w.Prov, w.Job.Ref); j.State != keyport.JobDone {
		t.Fatalf("job %s", j.State)
	}
	if n := w.CountAudit(t, "second-key.confirmed"); n != 1 {
		t.Fatalf("%d confirmations, want exactly 1", n)
	}
	if d := w.domain(t); d.State != keyport.Personalized {
		t.Fatalf("domain %s", d.State)
	}
}

func TestConnectionDroppedBeforeTheScriptArrivedResendsItAndTheModuleRunsItOnce(t *testing.T) {
	w := newWorld(t, cardlinktest.LinkOptions{NoWorker: true})
	var puts atomic.Int32
	w.Card.SetFault(func(apdu []byte) []byte {
		if len(apdu) > 1 && apdu[1] == gp.INSPutKey {
			puts.Add(1)
		}
		return nil
	})
	// Write 1 is the first POST: it reaches the server, which marks the
	// job SENT, but the agent never reads the script.
	a, _ := droppingAgent(w, 1, true)
	rep, err := a.Session(ctx)
	if err != nil || rep.Scripts != 1 {
		t.Fatalf("session: %+v %v", rep, err)
	}
	if j, _ := w.Svc.GetJob(ctx, w.Prov, w.Job.Ref); j.State != keyport.JobDone || puts.Load() != 1 {
		t.Fatalf("job %s after %d PUT KEYs", j.State, puts.Load())
	}
}

func TestModuleAnsweringAnErrorStatusFailsTheJobWithTheSWAndLeavesTheDomainAssigned(t *testing.T) {
	w := newWorld(t, cardlinktest.LinkOptions{NoWorker: true})
	w.Card.SetFault(func(apdu []byte) []byte {
		if len(apdu) > 1 && apdu[1] == gp.INSPutKey {
			return []byte{0x69, 0x82}
		}
		return nil
	})
	if _, err := w.agent(agent.Config{}).Session(ctx); err != nil {
		t.Fatal(err)
	}
	j, _ := w.Svc.GetJob(ctx, w.Prov, w.Job.Ref)
	v := j.View()
	if j.State != keyport.JobFailed || v.Result == nil || v.Result.SW != "6982" || len(v.Result.Responses) != 3 {
		t.Fatalf("job %s: %+v", j.State, v.Result)
	}
	d := w.domain(t)
	if d.State != keyport.Assigned || d.KVN != 0x30 || d.SeqCounter != 1 {
		t.Fatalf("domain %s KVN %02X counter %d: want ASSIGNED, 30, the card's counter 1", d.State, d.KVN, d.SeqCounter)
	}
	if sw := w.keysOpen(t, 0x30, w.Keys[w.EID][w.AID]); sw != gp.SWOK {
		t.Fatalf("first keys still open the SSD: %v", sw)
	}
	// The test's own check above opened a session keyport did not see:
	// the card is one ahead, and keyport is told so (a script built on
	// the counter it reports would be refused by the card; one built on
	// another counter is refused by keyport).
	w.Card.SetFault(nil)
	d = w.domain(t)
	if err := w.Store.SetDomainKeys(ctx, d.ID, d.KVN, nil, d.SeqCounter+1); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Svc.SubmitScript(ctx, w.Prov, w.EID, w.AID, w.Script(t, d.SeqCounter)); !errors.Is(err, keyport.ErrConflict) {
		t.Fatalf("a script on a stale counter: %v", err)
	}
	j2, err := w.Svc.SubmitScript(ctx, w.Prov, w.EID, w.AID, w.Script(t, d.SeqCounter+1))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.agent(agent.Config{}).Session(ctx); err != nil {
		t.Fatal(err)
	}
	if j, _ := w.Svc.GetJob(ctx, w.Prov, j2.Ref); j.State != keyport.JobDone {
		t.Fatalf("second script: %s %s", j.State, j.LastError)
	}
}

func TestTwoAgentsForOneModuleGetOneSessionAtATime(t *testing.T) {
	storetest.EachDSN(t, func(t *testing.T, dsn string) {
		twoAgentsOneSession(t, &world{cardlinktest.NewWorldOn(t, dsn, cardlinktest.LinkOptions{NoWorker: true})})
	})
}

func twoAgentsOneSession(t *testing.T, w *world) {
	var inScript, overlap atomic.Int32
	w.Card.SetFault(func(apdu []byte) []byte {
		if inScript.Add(1) > 1 {
			overlap.Add(1)
		}
		time.Sleep(5 * time.Millisecond)
		inScript.Add(-1)
		return nil
	})
	var wg sync.WaitGroup
	reps := make([]agent.Report, 2)
	errs := make([]error, 2)
	for i := range 2 {
		wg.Add(1)
		go func() { defer wg.Done(); reps[i], errs[i] = w.agent(agent.Config{}).Session(ctx) }()
	}
	wg.Wait()
	if errs[0] != nil || errs[1] != nil || reps[0].Scripts+reps[1].Scripts != 1 || overlap.Load() != 0 {
		t.Fatalf("reports %+v errors %v overlap %d", reps, errs, overlap.Load())
	}
	if j, _ := w.Svc.GetJob(ctx, w.Prov, w.Job.Ref); j.State != keyport.JobDone {
		t.Fatalf("job %s", j.State)
	}
}

func TestOfflineModuleWaitsWhileWakeUpsBackOffThenTheJobRunsWhenItComes(t *testing.T) {
	w := newWorld(t, cardlinktest.LinkOptions{Tick: 20 * time.Millisecond})
	j := cardlinktest.WaitJob(t, w.Svc, w.Prov, w.Job.Ref, func(j *keyport.Job) bool { return j.Attempts >= 3 })
	if j.State != keyport.JobQueued || !bytes.Contains([]byte(j.LastError), []byte("not reachable")) {
		t.Fatalf("offline job: %s %q", j.State, j.LastError)
	}
	// Delays double: the third wake-up waits about 4× the first backoff.
	if gap := j.NextRunAt.Sub(j.UpdatedAt); gap < 300*time.Millisecond {
		t.Fatalf("next wake-up %v after the third: no backoff", gap)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go w.agent(agent.Config{}).Run(ctx)
	cardlinktest.WaitJob(t, w.Svc, w.Prov, w.Job.Ref, func(j *keyport.Job) bool { return j.State == keyport.JobDone })
}

func TestWrongPSKIsRefusedAtTheHandshakeAndChangesNothing(t *testing.T) {
	w := newWorld(t, cardlinktest.LinkOptions{NoWorker: true})
	w.PSK = bytes.Repeat([]byte{0x42}, 16)
	_, err := w.agent(agent.Config{Retries: 1}).Session(ctx)
	if err == nil {
		t.Fatal("session with a wrong PSK succeeded")
	}
	if j, _ := w.Svc.GetJob(ctx, w.Prov, w.Job.Ref); j.State != keyport.JobQueued {
		t.Fatalf("job %s after a refused handshake", j.State)
	}
	if m, _ := w.Store.GetModule(ctx, w.EID); m.LastSeen != nil {
		t.Fatal("a refused handshake touched the module")
	}
}

func TestUnknownIdentityIsRefusedAtTheHandshake(t *testing.T) {
	w := newWorld(t, cardlinktest.LinkOptions{NoWorker: true})
	a := agent.New(agent.Config{Server: w.Link.Addr, Identity: string(fixture.EID(t, 99)), PSK: w.PSK, Retries: 1, Retry: time.Millisecond}, w.Card)
	if _, err := a.Session(ctx); err == nil {
		t.Fatal("unknown identity got a session")
	}
}

func TestCancelledJobIsNeverSent(t *testing.T) {
	w := newWorld(t, cardlinktest.LinkOptions{NoWorker: true})
	if _, err := w.Svc.CancelJob(ctx, w.Prov, w.Job.Ref); err != nil {
		t.Fatal(err)
	}
	rep, err := w.agent(agent.Config{}).Session(ctx)
	if err != nil || rep.Scripts != 0 {
		t.Fatalf("session after cancel: %+v %v", rep, err)
	}
	if d := w.domain(t); d.State != keyport.Assigned {
		t.Fatalf("domain %s", d.State)
	}
}

func TestExpiredJobIsNeverSent(t *testing.T) {
	w := newWorld(t, cardlinktest.LinkOptions{NoWorker: true})
	w.Svc.Now = func() time.Time { return time.Now().Add(8 * 24 * time.Hour) }
	rep, err := w.agent(agent.Config{}).Session(ctx)
	w.Svc.Now = nil
	if err != nil || rep.Scripts != 0 {
		t.Fatalf("session: %+v %v", rep, err)
	}
	if j, _ := w.Svc.GetJob(ctx, w.Prov, w.Job.Ref); j.State != keyport.JobExpired {
		t.Fatalf("job %s", j.State)
	}
}

func TestJobsOfOneModuleRunInSubmissionOrderWithinOneSession(t *testing.T) {
	w := newWorld(t, cardlinktest.LinkOptions{NoWorker: true})
	// A second domain of the same module, claimed and scripted after the first.
	aid2 := fixture.AID(2)
	wks, err := w.Svc.RegisterWrappingKey(ctx, w.Prov, fixture.PublicPEM(fixture.RSAKeys()[0]))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := w.Svc.Claim(ctx, w.Prov, keyport.ClaimRequest{EID: w.EID, AID: aid2, WrappingKeyID: wks.ID}); err != nil {
		t.Fatal(err)
	}
	req2, err := keyport.SecondKeyScript(aid2, 0x30, 0, 0x31, w.Keys[w.EID][aid2], w.Second)
	if err != nil {
		t.Fatal(err)
	}
	j2, err := w.Svc.SubmitScript(ctx, w.Prov, w.EID, aid2, req2)
	if err != nil {
		t.Fatal(err)
	}
	var selected []string
	w.Card.SetFault(func(apdu []byte) []byte {
		if len(apdu) > 5 && apdu[1] == gp.INSSelect {
			selected = append(selected, fmt.Sprintf("%X", apdu[5:5+int(apdu[4])]))
		}
		return nil
	})
	rep, err := w.agent(agent.Config{}).Session(ctx)
	if err != nil || rep.Scripts != 2 {
		t.Fatalf("session: %+v %v", rep, err)
	}
	if len(selected) != 2 || selected[0] != string(w.AID) || selected[1] != string(aid2) {
		t.Fatalf("scripts ran for %v, want %s then %s", selected, w.AID, aid2)
	}
	// Domain 2 is not on this module's card: the second job fails on its own.
	if j, _ := w.Svc.GetJob(ctx, w.Prov, w.Job.Ref); j.State != keyport.JobDone {
		t.Fatalf("first job %s", j.State)
	}
	if j, _ := w.Svc.GetJob(ctx, w.Prov, j2.Ref); j.State != keyport.JobFailed {
		t.Fatalf("second job %s", j.State)
	}
}

// forgedModule holds the module's PSK (its agent opens the admin session)
// but not the domain's keys: it answers the provider's script as declared —
// 9000 to everything, the expected KVN ‖ KCVs to PUT KEY — with an
// INITIALIZE UPDATE answer of its own making and no R-MACs.
type forgedModule struct{ putKey []byte }

func (f forgedModule) Transmit(_ context.Context, apdu []byte) ([]byte, error) {
	c, err := gp.ParseCommand(apdu)
	if err != nil {
		return []byte{0x6F, 0x00}, nil
	}
	switch c.INS {
	case gp.INSInitializeUpdate:
		iu := gp.InitUpdateResponse{KDD: make([]byte, 10), KVN: c.P1, SCP: 0x03, I: 0x70, CardChallenge: make([]byte, 8),
			CardCryptogram: make([]byte, 8), SequenceCounter: 1, HasSequenceCounter: true}
		return append(iu.Bytes(), 0x90, 0x00), nil
	case gp.INSPutKey:
		return append(append([]byte(nil), f.putKey...), 0x90, 0x00), nil
	}
	return []byte{0x90, 0x00}, nil
}

func TestAModuleAnsweringAsDeclaredWithoutTheCardsProofFailsTheJobAndTheDomainStaysAssigned(t *testing.T) {
	w := newWorld(t, cardlinktest.LinkOptions{NoWorker: true, DevLoopbackWebhooks: true})
	if _, err := w.Svc.SetWebhook(ctx, w.Prov, "http://127.0.0.1:9/events"); err != nil {
		t.Fatal(err)
	}
	e := w.Request.Expect
	putKey := []byte{byte(e.KVN)}
	for _, u := range keyport.Usages {
		kcv, _ := hex.DecodeString(e.KCV[u])
		putKey = append(putKey, kcv...)
	}
	a := agent.New(agent.Config{Server: w.Link.Addr, Identity: string(w.EID), PSK: w.PSK, Retry: 20 * time.Millisecond}, forgedModule{putKey})
	// Two scripts: the provider's, and keyport's counter probe. The
	// answer proves nothing, yet its PUT KEY answered 9000, so the key
	// change is unproven (KVN 31 pending) and the counter read again.
	if rep, err := a.Session(ctx); err != nil || rep.Scripts != 2 {
		t.Fatalf("session: %+v %v", rep, err)
	}
	if d, err := w.Svc.GetDomain(ctx, w.Prov, w.EID, w.AID); err != nil || len(d.Pending) != 1 || d.Pending[0].KVN != 0x31 {
		t.Fatalf("pending after the forged answer: %+v %v", d, err)
	}
	j, _ := w.Svc.GetJob(ctx, w.Prov, w.Job.Ref)
	v := j.View()
	if j.State != keyport.JobFailed || v.Result == nil || v.Result.Confirmed || !strings.Contains(v.Result.Cause, "card holding the domain's keys") {
		t.Fatalf("job %s: %+v", j.State, v.Result)
	}
	if d := w.domain(t); d.State != keyport.Assigned || d.KVN != 0x30 || d.SeqCounter != 0 {
		t.Fatalf("domain %s KVN %02X counter %d", d.State, d.KVN, d.SeqCounter)
	}
	if n, m := w.CountAudit(t, "second-key.confirmed"), w.CountAudit(t, "second-key.failed"); n != 0 || m != 1 {
		t.Fatalf("%d confirmed, %d failed audit events", n, m)
	}
	hooks, err := w.Store.ListJobs(ctx, keyport.JobFilter{Kind: keyport.JobWebhook, ProviderID: w.Prov.ProviderID})
	if err != nil {
		t.Fatal(err)
	}
	told := false
	for _, h := range hooks {
		var ev keyport.WebhookEvent
		if json.Unmarshal(h.Event, &ev) == nil && ev.Type == "job.failed" && ev.Job.ID == w.Job.Ref && ev.DomainState == keyport.Assigned {
			told = true
		}
	}
	if !told {
		t.Fatalf("no job.failed event for the provider among %d webhooks", len(hooks))
	}
	// The genuine module still takes the provider's keys afterwards.
	w.Job, err = w.Svc.SubmitScript(ctx, w.Prov, w.EID, w.AID, w.Request)
	if err != nil {
		t.Fatal(err)
	}
	agentSessionInstallsTheProvidersKeys(t, w)
}
