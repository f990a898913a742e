package main

import (
	"context"
	"encoding/hex"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/cardlink"
	"github.com/keyport/keyport/cardlink/cardlinktest"
	"github.com/keyport/keyport/cardlink/pcsctest"
	"github.com/keyport/keyport/cardlink/smpp"
	"github.com/keyport/keyport/cardlink/smpp/smpptest"
	"github.com/keyport/keyport/cardlink/vcard"
	"github.com/keyport/keyport/gp"
	"github.com/keyport/keyport/internal/fixture"
	"github.com/keyport/keyport/store/storetest"
)

// smsWorld is a cardlinktest.World whose module is reached by SMS only: an
// MSISDN, an OTA key set generated in the HSM and loaded onto the card,
// keyport's ESME bound to the Net::SMPP test SMSC, and the SMS trigger in
// front of the wake-up hub. No agent long-polls.
type smsWorld struct {
	*cardlinktest.World
	SMSC   *smpptest.SMSC
	MSISDN string
	// DSN is the world's database (SQLite).
	DSN   string
	trig  atomic.Pointer[cardlink.SMSTrigger]
	world atomic.Pointer[cardlinktest.World] // for the worker, which starts inside NewWorld
	// OTA is the key set the card holds (blobs under the ISD KEK).
	OTA keyport.KeyBlobs

	// Other plays a second replica: its own SMS trigger on the same
	// database, behind its own ESME (OtherESME, bound by the test before
	// the world starts; nil: none).
	OtherESME *smpp.ESME
	Other     atomic.Pointer[cardlink.SMSTrigger]
	// receipts counts the delivery receipts keyport's own ESME took, and
	// ignoredPoRs the proofs of receipt its trigger did not act on
	// (cardlink.ErrPoRIgnored).
	receipts    atomic.Int32
	ignoredPoRs atomic.Int32
	ignored     atomic.Value // the last one's error text
}

func newSMSWorld(t *testing.T, msisdn string, smscArgs ...string) *smsWorld {
	return newSMSWorldWith(t, msisdn, nil, smscArgs...)
}

// newSMSWorldWith is newSMSWorld, with before run once the SMSC and
// keyport's ESME are up, before the world starts.
func newSMSWorldWith(t *testing.T, msisdn string, before func(*smsWorld), smscArgs ...string) *smsWorld {
	t.Helper()
	ctx := context.Background()
	sw := &smsWorld{MSISDN: msisdn, SMSC: smpptest.Start(t, smscArgs...), DSN: storetest.SQLitePath(t)}
	cfg, err := smpp.ParseURL(sw.SMSC.URL(""))
	if err != nil {
		t.Fatal(err)
	}
	esme, err := smpp.New(cfg, smpp.Handlers{
		Receipt: func(r smpp.Receipt) error {
			sw.receipts.Add(1)
			if tr := sw.trig.Load(); tr != nil {
				return tr.Receipt(ctx, r.MessageID, r.State, r.Err)
			}
			return nil
		},
		MO: func(m smpp.MO) error {
			if tr := sw.trig.Load(); tr != nil {
				if st, err := tr.ProofOfReceipt(ctx, m.From, m.UserData); err != nil {
					t.Logf("PoR from %s: %X: %v (%v)", m.From, m.UserData, err, st)
					if errors.Is(err, cardlink.ErrPoRIgnored) {
						sw.ignored.Store(err.Error())
						sw.ignoredPoRs.Add(1)
					}
				}
			}
			return nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { esme.Close() })
	if before != nil {
		before(sw)
	}
	w := cardlinktest.NewWorldOn(t, sw.DSN, cardlinktest.LinkOptions{Trigger: func(hub *cardlink.WakeHub, addr string) keyport.Trigger {
		tr, err := cardlink.NewSMSTrigger(cardlink.SMSTriggerConfig{Sender: esme,
			Reach: lazyReach{&sw.world}, Admin: netip.MustParseAddrPort(addr), SendTimeout: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		sw.trig.Store(tr)
		if sw.OtherESME != nil {
			other, err := cardlink.NewSMSTrigger(cardlink.SMSTriggerConfig{Sender: sw.OtherESME,
				Reach: lazyReach{&sw.world}, Admin: netip.MustParseAddrPort(addr), SendTimeout: time.Second})
			if err != nil {
				t.Fatal(err)
			}
			sw.Other.Store(other)
		}
		return cardlink.Triggers{SMS: tr, Fallback: hub}
	}})
	sw.World = w
	sw.world.Store(w)

	// The OTA key set: generated in the HSM (under the ISD KEK), loaded
	// onto the ISD with PUT KEY as perso does, recorded with the MSISDN.
	gen, err := w.HSM.GenerateKeys(ctx, "", keyport.GPTestKey)
	if err != nil {
		t.Fatal(err)
	}
	host := cardlinktest.NewHost(t, cardlinktest.ProcessTx(w.Card.Card))
	if sw := host.Authenticate(vcard.ISDAID, vcard.DefaultKVN, [3][]byte{vcard.DefaultKey, vcard.DefaultKey, vcard.DefaultKey}); sw != gp.SWOK {
		t.Fatalf("ISD: %v", sw)
	}
	pk := gp.PutKey{NewKVN: keyport.OTAKVN, FirstKID: 1}
	sw.OTA = keyport.KeyBlobs{}
	for _, g := range gen {
		kcv, _ := hex.DecodeString(g.KCV)
		pk.Keys = append(pk.Keys, gp.KeyComponent{Type: gp.KeyTypeAES, Length: 16, Encrypted: g.UnderDEK, KCV: kcv})
		sw.OTA[g.Usage] = g.Wrapped
	}
	cmd, err := pk.Command()
	if err != nil {
		t.Fatal(err)
	}
	host.Sec(cmd)
	sw.setOTAKeys(t, sw.OTA)
	if err := w.Svc.SetMSISDN(ctx, fixture.Admin, w.EID, msisdn); err != nil {
		t.Fatal(err)
	}
	return sw
}

// lazyReach is keyport's SMS reach once the world exists; before, no
// module has any.
type lazyReach struct {
	w *atomic.Pointer[cardlinktest.World]
}

func (l lazyReach) reach() (keyport.SMSReach, error) {
	w := l.w.Load()
	if w == nil {
		return keyport.SMSReach{}, keyport.ErrNoSMSReach
	}
	return keyport.SMSReach{Service: w.Svc, OTA: w.HSM}, nil
}

func (l lazyReach) Target(ctx context.Context, eid keyport.EID) (*keyport.SMSTarget, error) {
	r, err := l.reach()
	if err != nil {
		return nil, err
	}
	return r.Target(ctx, eid)
}

func (l lazyReach) Keys(ctx context.Context, eid keyport.EID) (*keyport.SMSTarget, error) {
	r, err := l.reach()
	if err != nil {
		return nil, err
	}
	return r.Keys(ctx, eid)
}

func (l lazyReach) Sent(ctx context.Context, eid keyport.EID, ids []string) error {
	r, err := l.reach()
	if err != nil {
		return err
	}
	return r.Sent(ctx, eid, ids)
}

func (l lazyReach) ModuleBySMS(ctx context.Context, id string) (keyport.EID, error) {
	r, err := l.reach()
	if err != nil {
		return "", err
	}
	return r.ModuleBySMS(ctx, id)
}

func (l lazyReach) ModuleByMSISDN(ctx context.Context, msisdn string) (keyport.EID, error) {
	r, err := l.reach()
	if err != nil {
		return "", err
	}
	return r.ModuleByMSISDN(ctx, msisdn)
}

func (l lazyReach) Failed(ctx context.Context, eid keyport.EID, reason string) error {
	r, err := l.reach()
	if err != nil {
		return err
	}
	return r.Failed(ctx, eid, reason)
}

func (l lazyReach) CounterLow(ctx context.Context, eid keyport.EID, refused uint64) (bool, error) {
	r, err := l.reach()
	if err != nil {
		return false, err
	}
	return r.CounterLow(ctx, eid, refused)
}

func (sw *smsWorld) setOTAKeys(t *testing.T, keys keyport.KeyBlobs) {
	t.Helper()
	m, err := sw.Svc.Store.GetModule(context.Background(), sw.EID)
	if err != nil {
		t.Fatal(err)
	}
	if err := sw.Svc.Store.SetModuleOTAKeys(context.Background(), m.ID, keyport.OTAKVN, keys); err != nil {
		t.Fatal(err)
	}
}

// startAgent runs `keyport agent --sms-from` on the pcscd reader holding
// the module, until the test ends.
func (sw *smsWorld) startAgent(t *testing.T, env *pcsctest.Env) {
	t.Helper()
	pskFile := filepath.Join(t.TempDir(), "module.psk")
	if err := os.WriteFile(pskFile, []byte(hex.EncodeToString(sw.PSK)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"agent", "--reader", env.Reader, "--psk-identity", string(sw.EID), "--psk-file", pskFile,
			"--sms-from", sw.SMSC.HandsetPath, "--sms-mo", sw.SMSC.MOSpoolPath, "--msisdn", "+" + sw.MSISDN})
	}()
	t.Cleanup(func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("keyport agent: %v", err)
		}
	})
}

// The second key reaches a module that never long-polls: keyport submits
// the SCP80 trigger over SMPP, the Net::SMPP SMSC hands it to the handset,
// `keyport agent` delivers it to the module in pcscd (SMS-PP DOWNLOAD), the
// card verifies it, opens the channel, and the TLS-PSK admin session runs
// the script: PERSONALIZED.
func TestSecondKeyOverSMSWithNoLongPoll(t *testing.T) {
	capture(t)
	env := pcsctest.Start(t, pcsctest.Options{})
	sw := newSMSWorld(t, "4915200000017")
	env.StartCard(t, sw.Card.Card)
	sw.startAgent(t, env)

	j := cardlinktest.WaitJob(t, sw.Svc, sw.Prov, sw.Job.Ref, func(j *keyport.Job) bool { return j.State.Final() })
	if j.State != keyport.JobDone || j.Result == nil || !j.Result.Confirmed {
		t.Fatalf("job %s (%s), result %+v", j.State, j.LastError, j.Result)
	}
	d, err := sw.Svc.Store.GetDomain(context.Background(), sw.EID, sw.AID)
	if err != nil || d.State != keyport.Personalized || d.KVN != 0x31 {
		t.Fatalf("domain %+v, %v", d, err)
	}
	if n := sw.Link.Hub.Waiting(sw.EID); n != 0 {
		t.Fatalf("%d agents long-poll", n)
	}

	// What the SMSC decoded: SIM data download to the MSISDN (UDHI, PID
	// 7F, DCS F6) with the command packet identifier (IEI 70).
	subs := sw.SMSC.EventsWhere("submit_sm", func(e smpptest.Event) bool { return e.Status == 0 })
	if len(subs) == 0 {
		t.Fatal("the SMSC accepted no submit")
	}
	for _, s := range subs {
		if s.DestinationAddr != sw.MSISDN || s.ProtocolID != 0x7F || s.DataCoding != 0xF6 || s.ESMClass&0x40 == 0 {
			t.Fatalf("submit_sm %+v", s)
		}
	}
	// The packet takes two concatenated messages (IEI 00); the first
	// carries the command packet identifier.
	hs := sw.SMSC.HandsetMessages()
	cpi := false
	for _, ie := range hs[0].UDH {
		cpi = cpi || (ie.IEI == 0x70 && ie.Data == "")
	}
	if len(hs) < 2 || !cpi || hs[0].ProtocolID != 0x7F || hs[0].DataCoding != 0xF6 || hs[0].To != sw.MSISDN {
		t.Fatalf("handset side %+v", hs)
	}
	// The card's proof of receipt went back as an MO message.
	// (The SMSC delivers the spool when its link is idle: possibly after
	// the session.)
	sw.SMSC.WaitFor("the proof of receipt going to keyport", func(evs []smpptest.Event) bool {
		for _, e := range evs {
			if e.Event == "deliver_sm" && e.Kind == "mo" && e.From == sw.MSISDN {
				return true
			}
		}
		return false
	})
	// Every packet had its own counter, from the database.
	m, _ := sw.Svc.Store.GetModule(context.Background(), sw.EID)
	o, err := sw.Svc.Store.GetModuleOTA(context.Background(), m.ID)
	packets := 0
	for _, h := range hs {
		for _, ie := range h.UDH {
			if ie.IEI == 0x70 {
				packets++
			}
		}
	}
	if err != nil || packets == 0 || o.Counter < uint64(packets) {
		t.Fatalf("counter %d after %d packets (%v)", o.Counter, packets, err)
	}
}

// A packet under a wrong KID is refused by the card (PoR status 01, RC/CC/DS
// failed) in a plain PoR, since it cannot trust the keys: keyport does not
// act on a PoR its keys do not authenticate (anyone could send it), so the
// job is neither failed nor delayed by it and is retried; with the right
// keys the next trigger gets through.
func TestSMSTriggerWithAWrongKIDIsRefusedAndRetried(t *testing.T) {
	capture(t)
	env := pcsctest.Start(t, pcsctest.Options{})
	sw := newSMSWorld(t, "4915200000018")
	other, err := sw.HSM.GenerateKeys(context.Background(), "", nil)
	if err != nil {
		t.Fatal(err)
	}
	wrong := keyport.KeyBlobs{keyport.UsageENC: sw.OTA[keyport.UsageENC], keyport.UsageMAC: other[1].Wrapped, keyport.UsageDEK: sw.OTA[keyport.UsageDEK]}
	sw.setOTAKeys(t, wrong)
	env.StartCard(t, sw.Card.Card)
	sw.startAgent(t, env)

	for deadline := time.Now().Add(20 * time.Second); sw.ignoredPoRs.Load() == 0; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no proof of receipt of the refused trigger")
		}
	}
	// The card refused it with the status a wrong KID gets; only the log,
	// not the job, says so.
	if said, _ := sw.ignored.Load().(string); !strings.Contains(said, "RC/CC/DS failed") {
		t.Errorf("the ignored PoR: %q, want the card's RC/CC/DS failed", said)
	}
	j := cardlinktest.WaitJob(t, sw.Svc, sw.Prov, sw.Job.Ref, func(*keyport.Job) bool { return true })
	if j.State != keyport.JobQueued || strings.Contains(j.LastError, "proof of receipt") {
		t.Fatalf("job %s (%q) after a refused trigger's plain PoR", j.State, j.LastError)
	}
	sw.setOTAKeys(t, sw.OTA)
	j = cardlinktest.WaitJob(t, sw.Svc, sw.Prov, sw.Job.Ref, func(j *keyport.Job) bool { return j.State.Final() })
	if j.State != keyport.JobDone {
		t.Fatalf("job %s (%s) with the right keys", j.State, j.LastError)
	}
}

// A counter the card has seen is refused (PoR status 02, counter low, in a
// PoR secured under the OTA keys, which keyport opens in the HSM), as after
// a restore of a database older than the card's last trigger: the status is
// recorded on the job, keyport's counter moves OTACounterJump past the
// refused one (audited), and the job's retry gets through to DONE.
func TestSMSTriggerWithAReplayedCounterIsRefusedThenKeyportsCounterCatchesUp(t *testing.T) {
	capture(t)
	env := pcsctest.Start(t, pcsctest.Options{})
	sw := newSMSWorld(t, "4915200000019")
	// The card has accepted counter 1000 already (an earlier packet).
	m, _ := sw.Svc.Store.GetModule(context.Background(), sw.EID)
	for i := 0; i < 3; i++ { // counters 1..3: below what the card holds once 1000 is in
		if _, err := sw.Svc.Store.NextOTACounter(context.Background(), m.ID); err != nil {
			t.Fatal(err)
		}
	}
	target, err := sw.Svc.SMSKeys(context.Background(), sw.EID, sw.HSM)
	if err != nil {
		t.Fatal(err)
	}
	p := gp.CommandPacket{SPI: gp.SPI{Integrity: gp.IntegrityCC, Ciphered: true, Counter: gp.CounterHigher},
		KIc: target.KIc, KID: target.KID, TAR: gp.ISDTAR, Counter: 1000, Data: []byte{0x01}}
	sealed, err := p.Seal(target.Keys)
	if err != nil {
		t.Fatal(err)
	}
	agentCard := cardlinktest.ProcessTx(sw.Card.Card)
	uds, _ := gp.SMSPPSegments(sealed, 1)
	tpdu, _ := gp.OTADeliver(gp.Address{TOA: 0x91, Digits: "1234"}, [7]byte{}, uds[0]).Bytes()
	if r, err := agentCard.Transmit(context.Background(), gp.SMSPPDownload{TPDU: tpdu}.Envelope().Bytes()); err != nil || len(r) < 2 {
		t.Fatalf("ENVELOPE: %X %v", r, err)
	}
	if _, err := sw.Svc.Store.GetModuleOTA(context.Background(), m.ID); err != nil {
		t.Fatal(err)
	}
	env.StartCard(t, sw.Card.Card)
	sw.startAgent(t, env)
	j := cardlinktest.WaitJob(t, sw.Svc, sw.Prov, sw.Job.Ref, func(j *keyport.Job) bool { return j.State.Final() })
	// DONE clears the job's last error: the audit event below is what
	// shows the refusal (only an authenticated counter-low PoR raises).
	if j.State != keyport.JobDone {
		t.Fatalf("job %s (%q): want DONE after a trigger refused as counter low", j.State, j.LastError)
	}
	o, err := sw.Svc.Store.GetModuleOTA(context.Background(), m.ID)
	if err != nil || o.Counter <= 4+keyport.OTACounterJump {
		t.Fatalf("keyport's counter after the catch-up: %d %v, want past %d", o.Counter, err, 4+keyport.OTACounterJump)
	}
	events, err := sw.Svc.Store.AuditEvents(context.Background(), 0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	raised := 0
	for _, e := range events {
		if e.Action == keyport.ActionOTACounterRaise && e.Object == string(sw.EID) {
			raised++
		}
	}
	if raised != 1 {
		t.Fatalf("%d %s events, want 1", raised, keyport.ActionOTACounterRaise)
	}
}

// A delivery receipt of failure (UNDELIV) is recorded on the job, which
// stays queued for its retry.
func TestSMSDeliveryReceiptOfFailureIsRecordedOnTheJob(t *testing.T) {
	capture(t)
	sw := newSMSWorld(t, "8885550100") // the test SMSC's --undeliv-prefix 888
	j := cardlinktest.WaitJob(t, sw.Svc, sw.Prov, sw.Job.Ref, func(j *keyport.Job) bool {
		return strings.Contains(j.LastError, "delivery receipt UNDELIV")
	})
	if j.State != keyport.JobQueued {
		t.Fatalf("job %s after an undelivered trigger", j.State)
	}
}

// A delivery receipt the SMSC hands to another bind of keyport's system_id
// (another replica's ESME; the test SMSC's --receipt-spool) finds the
// module through the database and is recorded on the job. The replica
// here is a second SMS trigger with its own memory, on the same database.
func TestADeliveryReceiptReachingAnotherReplicaIsRecordedOnTheJob(t *testing.T) {
	capture(t)
	ctx := context.Background()
	spool := filepath.Join(t.TempDir(), "receipts.jsonl")
	var otherReceipts atomic.Int32
	sw := newSMSWorldWith(t, "8885550101", func(sw *smsWorld) {
		cfg, err := smpp.ParseURL(sw.SMSC.URL(""))
		if err != nil {
			t.Fatal(err)
		}
		e, err := smpp.New(cfg, smpp.Handlers{Receipt: func(r smpp.Receipt) error {
			otherReceipts.Add(1)
			if tr := sw.Other.Load(); tr != nil {
				return tr.Receipt(ctx, r.MessageID, r.State, r.Err)
			}
			return nil
		}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { e.Close() })
		sw.OtherESME = e
		// Both bound before anything is submitted: the SMSC reads the
		// receipt spool from its end at each bind.
		sw.SMSC.WaitFor("two binds", func(evs []smpptest.Event) bool {
			n := 0
			for _, e := range evs {
				if e.Event == "bind_transceiver" && e.OK {
					n++
				}
			}
			return n == 2
		})
	}, "--receipt-spool", spool)
	j := cardlinktest.WaitJob(t, sw.Svc, sw.Prov, sw.Job.Ref, func(j *keyport.Job) bool {
		return strings.Contains(j.LastError, "delivery receipt UNDELIV")
	})
	if j.State != keyport.JobQueued {
		t.Fatalf("job %s after an undelivered trigger", j.State)
	}
	if n := sw.receipts.Load(); n != 0 {
		t.Fatalf("the sending replica took %d receipts: the other one's recording is not shown", n)
	}
	receipts := sw.SMSC.EventsWhere("deliver_sm", func(e smpptest.Event) bool { return e.Kind == "receipt" })
	if len(receipts) == 0 || otherReceipts.Load() == 0 {
		t.Fatalf("no receipt reached the other replica: SMSC %+v, ESME %d", receipts, otherReceipts.Load())
	}
	for _, r := range receipts {
		if r.SubmittedBy == 0 || r.SubmittedBy == r.PID {
			t.Errorf("receipt %s delivered on the connection that submitted it (%d): the test proves nothing", r.MessageID, r.PID)
		}
	}
	// Receipts for messages keyport never sent are ignored there too.
	if err := sw.Other.Load().Receipt(ctx, "no-such-message", "UNDELIV", "001"); err != nil {
		t.Errorf("receipt of an unknown message: %v", err)
	}
}

// With the SMSC down the job waits (the trigger is unreachable, retried with
// backoff); once the SMSC is back the ESME rebinds and the job is done.
func TestSMSCDownJobsWaitAndTheESMERebinds(t *testing.T) {
	capture(t)
	env := pcsctest.Start(t, pcsctest.Options{})
	sw := newSMSWorld(t, "4915200000020")
	port := sw.SMSC.Port
	sw.SMSC.Kill()
	env.StartCard(t, sw.Card.Card)
	sw.startAgent(t, env)
	j := cardlinktest.WaitJob(t, sw.Svc, sw.Prov, sw.Job.Ref, func(j *keyport.Job) bool {
		return strings.Contains(j.LastError, "SMS trigger") && strings.Contains(j.LastError, keyport.ErrUnreachable.Error())
	})
	if j.State != keyport.JobQueued {
		t.Fatalf("job %s with the SMSC down", j.State)
	}
	sw.SMSC.Restart(port)
	j = cardlinktest.WaitJob(t, sw.Svc, sw.Prov, sw.Job.Ref, func(j *keyport.Job) bool { return j.State.Final() })
	if j.State != keyport.JobDone {
		t.Fatalf("job %s (%s) after the SMSC came back", j.State, j.LastError)
	}
}

// A module whose MSISDN another module also has (a database from before
// keyport refused a shared number: migration 20 marks both msisdn_shared)
// gets no trigger SMS, since the number may reach another customer's
// handset and its proof of receipt would be attributed to neither: the
// worker wakes it through the agents' wake-up channel, as a module without
// an MSISDN, and its job says why while no agent waits there. Once an
// admin clears the number on the other module, the module gets the SMS
// again, and its job is done by it.
func TestAModuleWithASharedMSISDNIsWokenThroughTheWakeUpChannelNotBySMSUntilTheNumberIsUnshared(t *testing.T) {
	capture(t)
	ctx := context.Background()
	env := pcsctest.Start(t, pcsctest.Options{})
	const number = "4915200000021"
	sw := newSMSWorld(t, "") // no number until both modules have it, marked
	other := fixture.EID(t, 1)
	if n, err := sw.Svc.ImportModules(ctx, fixture.Admin, "b1", strings.NewReader(sw.ImportLine(t, other, 1, "")), keyport.VerifyNone); err != nil || n != 1 {
		t.Fatalf("import of the other module: %d, %v", n, err)
	}
	storetest.ExecSQL(t, sw.DSN, `INSERT INTO module_ota (module_id, msisdn, msisdn_shared)
		SELECT id, ?, TRUE FROM modules WHERE eid = ?`, number, string(other))
	storetest.ExecSQL(t, sw.DSN, `UPDATE module_ota SET msisdn = ?, msisdn_shared = TRUE
		WHERE module_id = (SELECT id FROM modules WHERE eid = ?)`, number, string(sw.EID))
	sw.MSISDN = number
	noSMS := func(when string) {
		t.Helper()
		if subs := sw.SMSC.EventsWhere("submit_sm", nil); len(subs) != 0 {
			t.Fatalf("%s: the SMSC received %d submits (to %s): want none", when, len(subs), subs[0].DestinationAddr)
		}
		m, err := sw.Svc.Store.GetModule(ctx, sw.EID)
		if err != nil {
			t.Fatal(err)
		}
		if o, err := sw.Svc.Store.GetModuleOTA(ctx, m.ID); err != nil || o.Counter != 0 {
			t.Fatalf("%s: SCP80 counter %d (%v): a trigger was sealed", when, o.Counter, err)
		}
	}

	// No agent waits: the wake-up channel cannot reach the module, and
	// the job says that no SMS went, and why.
	j := cardlinktest.WaitJob(t, sw.Svc, sw.Prov, sw.Job.Ref, func(j *keyport.Job) bool {
		return strings.Contains(j.LastError, "other modules' number") && strings.Contains(j.LastError, "no handset agent waiting")
	})
	if j.State != keyport.JobQueued || strings.Contains(j.LastError, number) {
		t.Fatalf("job %s (%q) of a module with a shared MSISDN", j.State, j.LastError)
	}
	noSMS("with the number shared")

	// An agent waiting on the wake-up channel is woken.
	wctx, stop := context.WithCancel(ctx)
	defer stop()
	woken := make(chan bool, 1)
	go func() { woken <- sw.Link.Hub.Wait(wctx, sw.EID, time.Hour, nil) }()
	select {
	case ok := <-woken:
		if !ok {
			t.Fatal("the wake-up channel's waiter ended unwoken")
		}
	case <-time.After(20 * time.Second): // as cardlinktest.WaitJob's bound
		t.Fatal("the wake-up channel's waiter was not woken")
	}
	noSMS("with the number shared and an agent woken")

	// The admin clears the number on the other module: it is the
	// module's alone, which gets the trigger SMS again.
	if err := sw.Svc.SetMSISDN(ctx, fixture.Admin, other, ""); err != nil {
		t.Fatal(err)
	}
	env.StartCard(t, sw.Card.Card)
	sw.startAgent(t, env)
	j = cardlinktest.WaitJob(t, sw.Svc, sw.Prov, sw.Job.Ref, func(j *keyport.Job) bool { return j.State.Final() })
	if j.State != keyport.JobDone {
		t.Fatalf("job %s (%s) once the number is unshared", j.State, j.LastError)
	}
	subs := sw.SMSC.EventsWhere("submit_sm", func(e smpptest.Event) bool { return e.Status == 0 })
	if len(subs) == 0 || subs[0].DestinationAddr != number {
		t.Fatalf("the SMSC accepted %+v once the number is unshared; want the trigger to %s", subs, number)
	}
}
