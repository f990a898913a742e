package smpp_test

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keyport/keyport/cardlink/smpp"
)

// packet stands for a secured command packet (built in gp/); here it is
// opaque octets.
func packet(n int, seed byte) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = seed + byte(i*7)
	}
	return p
}

func TestSendIsDecodedBySMSCAsSIMDataDownloadWithCommandPacketHeader(t *testing.T) {
	s := startSMSC(t)
	c := newCollector()
	e := newESME(t, s.url(""), c.handlers())
	pkt := packet(40, 0x10)
	ids, err := e.Send(sendCtx(t), "491701234567", pkt)
	if err != nil {
		t.Fatal(err)
	}
	if len(ids) != 1 {
		t.Fatalf("message ids %v, want one", ids)
	}

	binds := s.eventsWhere("bind_transceiver", nil)
	if len(binds) != 1 || binds[0].SystemID != "keyport" || binds[0].InterfaceVersion != 0x34 || !binds[0].OK {
		t.Fatalf("binds as the SMSC decoded them: %+v", binds)
	}
	subs := s.eventsWhere("submit_sm", nil)
	if len(subs) != 1 {
		t.Fatalf("submits: %+v", subs)
	}
	got := subs[0]
	if got.DataCoding != 0xF6 || got.ProtocolID != 0x7F || got.ESMClass != 0x40 || got.RegisteredDelivery != 1 {
		t.Errorf("SMSC decoded data_coding %#x protocol_id %#x esm_class %#x registered_delivery %d; want F6 7F 40 1",
			got.DataCoding, got.ProtocolID, got.ESMClass, got.RegisteredDelivery)
	}
	if got.DestinationAddr != "491701234567" || got.DestAddrTON != 1 || got.DestAddrNPI != 1 || got.SourceAddr != "1234" {
		t.Errorf("addresses as decoded: %+v", got)
	}
	// UDHL 02, IEI 70 with empty data, then the packet (TS 31.115 §6.2).
	if want := "027000" + hex.EncodeToString(pkt); got.ShortMessage != want {
		t.Errorf("short_message %s, want %s", got.ShortMessage, want)
	}
	if got.MessageID != ids[0] {
		t.Errorf("SMSC assigned %q, Send returned %q", got.MessageID, ids[0])
	}

	hs := s.handsetMessages()
	if len(hs) != 1 || len(hs[0].UDH) != 1 || hs[0].UDH[0].IEI != 0x70 || hs[0].UDH[0].Data != "" ||
		hs[0].Data != hex.EncodeToString(pkt) {
		t.Fatalf("handed on to the handset: %+v", hs)
	}

	r := c.receiptFor(t, ids[0])
	if !r.Delivered() || r.State != "DELIVRD" || r.Handset != "491701234567" || r.Err != "000" {
		t.Errorf("receipt %+v", r)
	}
	s.waitFor("deliver_sm_resp ESME_ROK for the receipt", func(evs []smscEvent) bool {
		for _, d := range evs {
			if d.Event == "deliver_sm" && d.Kind == "receipt" && d.MessageID == ids[0] {
				for _, a := range evs {
					if a.Event == "deliver_sm_resp" && a.Seq == d.Seq && a.Status == 0 && a.PID == d.PID {
						return true
					}
				}
			}
		}
		return false
	})
}

func TestLongPacketIsConcatenatedWithCommandPacketIdentifierInFirstSegmentOnly(t *testing.T) {
	s := startSMSC(t)
	c := newCollector()
	e := newESME(t, s.url(""), c.handlers())
	pkt := packet(300, 0x33)
	ids, err := e.Send(sendCtx(t), "491701234568", pkt)
	if err != nil {
		t.Fatal(err)
	}
	if len(ids) != 3 {
		t.Fatalf("ids %v: 300 octets are 132+134+34 in three messages", ids)
	}
	for _, sub := range s.eventsWhere("submit_sm", nil) {
		if sub.SMLength > 140 || sub.DataCoding != 0xF6 || sub.ProtocolID != 0x7F || sub.ESMClass != 0x40 {
			t.Errorf("segment as decoded: %+v", sub)
		}
	}
	hs := s.handsetMessages()
	if len(hs) != 3 {
		t.Fatalf("handset got %d messages", len(hs))
	}
	var whole []byte
	var ref string
	for i, m := range hs {
		if m.MessageID != ids[i] {
			t.Errorf("segment %d has id %s, Send returned %s", i+1, m.MessageID, ids[i])
		}
		if len(m.UDH) == 0 || m.UDH[0].IEI != 0 {
			t.Fatalf("segment %d: no concatenation element: %+v", i+1, m.UDH)
		}
		concat, _ := hex.DecodeString(m.UDH[0].Data)
		if len(concat) != 3 || concat[1] != 3 || int(concat[2]) != i+1 {
			t.Errorf("segment %d: concatenation element %x", i+1, concat)
		}
		if i == 0 {
			ref = m.UDH[0].Data[:2]
			if len(m.UDH) != 2 || m.UDH[1].IEI != 0x70 || m.UDH[1].Data != "" {
				t.Errorf("first segment's UDH %+v, want concatenation and IEI 70", m.UDH)
			}
		} else if len(m.UDH) != 1 || m.UDH[0].Data[:2] != ref {
			t.Errorf("segment %d's UDH %+v: concatenation only, reference %s", i+1, m.UDH, ref)
		}
		d, _ := hex.DecodeString(m.Data)
		whole = append(whole, d...)
	}
	if !bytes.Equal(whole, pkt) {
		t.Errorf("reassembled %x, sent %x", whole, pkt)
	}
	for _, id := range ids {
		if r := c.receiptFor(t, id); !r.Delivered() {
			t.Errorf("receipt %+v", r)
		}
	}
}

func TestESMEBindsAgainAfterSMSCIsKilledAndNothingIsLostOrSentTwice(t *testing.T) {
	s := startSMSC(t)
	c := newCollector()
	e := newESME(t, s.url(""), c.handlers())
	ctx := sendCtx(t)
	sent := map[string]string{} // destination -> message id
	for i := range 5 {
		to := fmt.Sprintf("4917100000%02d", i)
		ids, err := e.Send(ctx, to, packet(20, byte(i)))
		if err != nil {
			t.Fatal(err)
		}
		sent[to] = ids[0]
	}
	s.kill()

	// Sent while the SMSC is down: they wait for the next bind.
	var wg sync.WaitGroup
	var mu sync.Mutex
	errs := []error{}
	for i := 5; i < 10; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			to := fmt.Sprintf("4917100000%02d", i)
			ids, err := e.Send(ctx, to, packet(20, byte(i)))
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err)
				return
			}
			sent[to] = ids[0]
		}()
	}
	s.start(s.port)
	wg.Wait()
	if len(errs) > 0 {
		t.Fatal(errs)
	}

	binds := s.eventsWhere("bind_transceiver", nil)
	if len(binds) != 2 || binds[0].PID == binds[1].PID {
		t.Fatalf("binds %+v, want one to each SMSC process", binds)
	}
	accepted := s.eventsWhere("submit_sm", func(e smscEvent) bool { return e.Status == 0 })
	if len(accepted) != 10 {
		t.Fatalf("the SMSCs accepted %d submits, want 10 (none lost, none twice): %+v", len(accepted), accepted)
	}
	seenID := map[string]bool{}
	for _, a := range accepted {
		if sent[a.DestinationAddr] != a.MessageID {
			t.Errorf("%s: SMSC id %s, Send returned %s", a.DestinationAddr, a.MessageID, sent[a.DestinationAddr])
		}
		if seenID[a.MessageID] {
			t.Errorf("message id %s twice", a.MessageID)
		}
		seenID[a.MessageID] = true
		delete(sent, a.DestinationAddr)
	}
	if len(sent) != 0 {
		t.Errorf("never reached the SMSC: %v", sent)
	}
}

func TestSubmitsInFlightWhenSMSCIsKilledAreSentOnTheNextLinkAndAcceptedOnce(t *testing.T) {
	// This SMSC reads the submits to 333… and answers none; it is killed
	// with three unanswered, and the next one answers everything.
	s := startSMSC(t, "--hold-count", "100", "--hold-idle", "600")
	e := newESME(t, s.url(""), smpp.Handlers{})
	ctx := sendCtx(t)
	var wg sync.WaitGroup
	var mu sync.Mutex
	sent := map[string]string{}
	for i := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			to := fmt.Sprintf("33310%02d", i)
			ids, err := e.Send(ctx, to, packet(30, byte(i)))
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			sent[to] = ids[0]
			mu.Unlock()
		}()
	}
	s.waitFor("three held submits", func(evs []smscEvent) bool {
		n := 0
		for _, ev := range evs {
			if ev.Event == "held" {
				n++
			}
		}
		return n == 3
	})
	port := s.port
	s.kill()
	s.startWith(port, "--hold-prefix", "")
	wg.Wait()

	accepted := s.eventsWhere("submit_sm", func(e smscEvent) bool { return e.Status == 0 && e.MessageID != "" })
	if len(accepted) != 3 {
		t.Fatalf("accepted %+v, want the three once each", accepted)
	}
	for _, a := range accepted {
		if sent[a.DestinationAddr] != a.MessageID || a.PID == s.eventsWhere("held", nil)[0].PID {
			t.Errorf("%s: accepted as %s by pid %d; Send returned %s", a.DestinationAddr, a.MessageID, a.PID, sent[a.DestinationAddr])
		}
	}
}

func TestSubmitRefusedForNowIsSentAgainWithBackoff(t *testing.T) {
	s := startSMSC(t, "--fail-times", "2", "--fail-status", "0x58")
	e := newESME(t, s.url(""), smpp.Handlers{})
	ids, err := e.Send(sendCtx(t), "9990001", packet(10, 1))
	if err != nil {
		t.Fatal(err)
	}
	tries := s.eventsWhere("submit_sm", func(e smscEvent) bool { return e.DestinationAddr == "9990001" })
	if len(tries) != 3 || tries[0].Status != 0x58 || tries[1].Status != 0x58 || tries[2].Status != 0 ||
		tries[2].MessageID != ids[0] {
		t.Fatalf("submits as the SMSC answered them: %+v (Send returned %v)", tries, ids)
	}
	// min_backoff=50ms, doubling: the second wait is at least 100 ms. The
	// SMSC stamps each submit as it reads it.
	gap1 := tries[1].Seconds(t) - tries[0].Seconds(t)
	gap2 := tries[2].Seconds(t) - tries[1].Seconds(t)
	if gap1 < 0.050 || gap2 < 0.100 {
		t.Errorf("sent again after %.3fs and %.3fs; want at least 0.050 and 0.100 (backoff)", gap1, gap2)
	}
}

func TestSubmitRefusedForGoodIsNotSentAgain(t *testing.T) {
	s := startSMSC(t)
	e := newESME(t, s.url(""), smpp.Handlers{})
	_, err := e.Send(sendCtx(t), "5550001", packet(10, 1))
	var se *smpp.StatusError
	if !errors.As(err, &se) || se.Status != smpp.StatusInvDstAdr || se.Command != smpp.SubmitSMResp {
		t.Fatalf("Send: %v, want ESME_RINVDSTADR", err)
	}
	if tries := s.eventsWhere("submit_sm", func(e smscEvent) bool { return e.DestinationAddr == "5550001" }); len(tries) != 1 {
		t.Fatalf("a permanent refusal was sent %d times", len(tries))
	}
}

func TestSubmitAnsweredWithGenericNackIsSentAgain(t *testing.T) {
	s := startSMSC(t)
	e := newESME(t, s.url(""), smpp.Handlers{})
	ids, err := e.Send(sendCtx(t), "6660001", packet(10, 1))
	if err != nil {
		t.Fatal(err)
	}
	tries := s.eventsWhere("submit_sm", func(e smscEvent) bool { return e.DestinationAddr == "6660001" })
	if len(tries) != 2 || tries[0].Answer != "generic_nack" || tries[1].MessageID != ids[0] {
		t.Fatalf("submits: %+v", tries)
	}
}

func TestFailureDeliveryReceiptReachesTheCallback(t *testing.T) {
	s := startSMSC(t)
	c := newCollector()
	e := newESME(t, s.url(""), c.handlers())
	ids, err := e.Send(sendCtx(t), "8880001", packet(10, 1))
	if err != nil {
		t.Fatal(err)
	}
	r := c.receiptFor(t, ids[0])
	if r.Delivered() || r.State != "UNDELIV" || r.Err != "001" || r.Handset != "8880001" {
		t.Fatalf("receipt %+v, want UNDELIV err 001 from 8880001", r)
	}
}

func TestReceiptTheCallbackCouldNotRecordIsAnsweredTemporaryError(t *testing.T) {
	s := startSMSC(t)
	e := newESME(t, s.url(""), smpp.Handlers{Receipt: func(smpp.Receipt) error { return errors.New("database down") }})
	if _, err := e.Send(sendCtx(t), "491700000001", packet(10, 1)); err != nil {
		t.Fatal(err)
	}
	s.waitFor("deliver_sm_resp ESME_RX_T_APPN", func(evs []smscEvent) bool {
		for _, ev := range evs {
			if ev.Event == "deliver_sm_resp" && ev.Status == uint32(smpp.StatusTempAppErr) {
				return true
			}
		}
		return false
	})
}

func TestProofOfReceiptFromTheHandsetReachesTheCallback(t *testing.T) {
	const por = "0012b0000101020304000000000000009000"
	s := startSMSC(t, "--por", por)
	c := newCollector()
	e := newESME(t, s.url(""), c.handlers())
	if _, err := e.Send(sendCtx(t), "7770001", packet(10, 1)); err != nil {
		t.Fatal(err)
	}
	m := c.moFrom(t, "7770001")
	rp, ok := m.ResponsePacket()
	if !ok || hex.EncodeToString(rp) != por || m.ProtocolID != 0x7F || m.DataCoding != 0xF6 || m.To != "1234" {
		t.Fatalf("MO %+v: response packet %x (%v)", m, rp, ok)
	}
}

func TestUnknownCommandFromTheSMSCIsAnsweredWithGenericNack(t *testing.T) {
	s := startSMSC(t)
	e := newESME(t, s.url(""), smpp.Handlers{})
	if _, err := e.Send(sendCtx(t), "4440001", packet(10, 1)); err != nil {
		t.Fatal(err)
	}
	s.waitFor("generic_nack ESME_RINVCMDID for the unknown command", func(evs []smscEvent) bool {
		for _, u := range evs {
			if u.Event == "unknown_command" {
				for _, n := range evs {
					if n.Event == "generic_nack" && n.Seq == u.Seq && n.Status == uint32(smpp.StatusInvCmdID) {
						return true
					}
				}
			}
		}
		return false
	})
}

func TestOutstandingSubmitsNeverExceedTheWindow(t *testing.T) {
	// The SMSC withholds its answers to 333… until 4 submits wait or none
	// comes for a second; with a window of 3 no release may see 4.
	s := startSMSC(t, "--hold-count", "4")
	e := newESME(t, s.url("window=3"), smpp.Handlers{})
	ctx := sendCtx(t)
	var wg sync.WaitGroup
	for i := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := e.Send(ctx, fmt.Sprintf("33300%02d", i), packet(10, byte(i))); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	rel := s.eventsWhere("release", nil)
	total := 0
	for _, r := range rel {
		n := int(r.HeldCount.(float64))
		if n > 3 {
			t.Errorf("the SMSC held %d submits at once; the window is 3", n)
		}
		total += n
	}
	if total != 6 || len(rel) < 2 {
		t.Fatalf("releases %+v, want 6 submits in at least two", rel)
	}
}

func TestRateLimitSpacesSubmits(t *testing.T) {
	s := startSMSC(t)
	e := newESME(t, s.url("rate=20"), smpp.Handlers{})
	ctx := sendCtx(t)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var done []time.Duration
	start := time.Now()
	for i := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := e.Send(ctx, fmt.Sprintf("49172000%02d", i), packet(10, byte(i))); err != nil {
				t.Error(err)
			}
			mu.Lock()
			done = append(done, time.Since(start))
			mu.Unlock()
		}()
	}
	wg.Wait()
	if subs := s.eventsWhere("submit_sm", nil); len(subs) != 6 {
		t.Fatalf("%d submits", len(subs))
	}
	// 20 a second: the k-th submit leaves no sooner than (k-1) × 50 ms
	// after the first could, so the k-th Send to return cannot be sooner.
	slices.Sort(done)
	for k, d := range done {
		if least := time.Duration(k) * 50 * time.Millisecond; d < least {
			t.Errorf("Send %d of 6 returned after %v; at 20/s not before %v", k+1, d, least)
		}
	}
}

func TestWrongPasswordNeverBindsAndNothingShowsThePassword(t *testing.T) {
	s := startSMSC(t)
	var logs bytes.Buffer
	var mu sync.Mutex
	log := slog.New(slog.NewTextHandler(lockedWriter{&mu, &logs}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	u := strings.Replace(s.url(""), "keyport:secret@", "keyport:Hunter2x@", 1)
	cfg, err := smpp.ParseURL(u)
	if err != nil {
		t.Fatal(err)
	}
	e, err := smpp.New(cfg, smpp.Handlers{Log: log})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	s.waitFor("two refused binds", func(evs []smscEvent) bool {
		n := 0
		for _, ev := range evs {
			if ev.Event == "bind_transceiver" && !ev.OK {
				n++
			}
		}
		return n >= 2
	})
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, err = e.Send(ctx, "491700000009", packet(10, 1))
	if err == nil || !strings.Contains(err.Error(), "ESME_RINVPASWD") {
		t.Fatalf("Send: %v, want the bind refusal named", err)
	}
	mu.Lock()
	all := logs.String() + err.Error() + cfg.String() + fmt.Sprintf("%v %+v %#v", cfg, cfg, cfg)
	mu.Unlock()
	if strings.Contains(all, "Hunter2x") {
		t.Fatalf("the password shows:\n%s", all)
	}
	if !strings.Contains(logs.String(), "ESME_RINVPASWD") {
		t.Errorf("the log does not say why the bind failed:\n%s", logs.String())
	}
	if len(s.eventsWhere("submit_sm", nil)) != 0 {
		t.Error("a submit reached the SMSC without a bind")
	}
}

// A handset's MSISDN is personal data: the ESME names it only masked
// (keyport.MaskedMSISDN) in the log line of a mobile-originated message
// its handler could not take, in the error of a submit the SMSC refused,
// and in the error of a destination that is not all digits.
func TestTheESMENamesAHandsetsMSISDNOnlyMasked(t *testing.T) {
	s := startSMSC(t)
	var logs bytes.Buffer
	var mu sync.Mutex
	log := slog.New(slog.NewTextHandler(lockedWriter{&mu, &logs}, nil))
	e := newESME(t, s.url(""), smpp.Handlers{Log: log, MO: func(smpp.MO) error { return errors.New("database down") }})
	if _, err := e.Send(sendCtx(t), "7770001234", packet(10, 1)); err != nil {
		t.Fatal(err)
	}
	s.waitFor("deliver_sm_resp ESME_RX_T_APPN", func(evs []smscEvent) bool {
		for _, ev := range evs {
			if ev.Event == "deliver_sm_resp" && ev.Status == uint32(smpp.StatusTempAppErr) {
				return true
			}
		}
		return false
	})
	_, refused := e.Send(sendCtx(t), "5550001234", packet(10, 1))
	_, notDigits := e.Send(sendCtx(t), "+4915200000001", packet(10, 1))
	mu.Lock()
	logged := logs.String()
	mu.Unlock()
	if !strings.Contains(logged, "from=+*******234") || strings.Contains(logged, "7770001234") {
		t.Errorf("log of the MO message not taken: want its sender masked only:\n%s", logged)
	}
	if refused == nil || !strings.Contains(refused.Error(), "+*******234") || strings.Contains(refused.Error(), "5550001234") {
		t.Errorf("refused submit: %v; want the destination masked only", refused)
	}
	if notDigits == nil || !strings.Contains(notDigits.Error(), "+**********001") || strings.Contains(notDigits.Error(), "4915200000001") {
		t.Errorf("destination with a +: %v; want it masked only", notDigits)
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  *bytes.Buffer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func TestCloseUnbindsAndEndsWaitingSends(t *testing.T) {
	s := startSMSC(t)
	e := newESME(t, s.url(""), smpp.Handlers{})
	if _, err := e.Send(sendCtx(t), "491700000010", packet(10, 1)); err != nil {
		t.Fatal(err)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	if len(s.eventsWhere("unbind", nil)) != 1 {
		t.Fatalf("no unbind: %+v", s.allEvents())
	}
	if _, err := e.Send(sendCtx(t), "491700000011", packet(10, 1)); !errors.Is(err, smpp.ErrClosed) {
		t.Fatalf("Send after Close: %v", err)
	}
}
