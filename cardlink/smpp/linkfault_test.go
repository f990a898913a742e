package smpp

// Link faults the Net::SMPP test SMSC (smpptest) cannot be made to commit:
// it drops a link only when killed, always answers enquire_link, and writes
// deliver_sm one at a time as it goes. These tests put a small fake SMSC,
// written here on the package's own codec, on the other end instead. They
// count PDUs, binds and the backoffs the ESME chose; their timeouts only
// bound a hang.

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeSMSC accepts connections and hands each, once its bind_transceiver
// is answered, to serve with the connection's number (from 1).
func fakeSMSC(t *testing.T, serve func(c net.Conn, n int32)) (addr string, binds *atomic.Int32) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	binds = new(atomic.Int32)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				bind, err := ReadPDU(c)
				if err != nil || bind.ID != BindTransceiver {
					return
				}
				n := binds.Add(1)
				if _, err := c.Write(PDU{ID: BindTransceiverResp, Seq: bind.Seq, Body: []byte("fake\x00")}.Marshal()); err != nil {
					return
				}
				serve(c, n)
			}()
		}
	}()
	return ln.Addr().String(), binds
}

func faultConfig(addr string) Config {
	return Config{Addr: addr, SystemID: "keyport", Password: "pw", Source: "1234", DestTON: 1, DestNPI: 1,
		Window: 10, EnquireLink: time.Minute, ResponseTimeout: 5 * time.Second,
		MinBackoff: 10 * time.Millisecond, MaxBackoff: 10 * time.Second, MaxAttempts: DefaultMaxAttempts}
}

func startFaultESME(t *testing.T, cfg Config, h Handlers) *ESME {
	t.Helper()
	e, err := New(cfg, h)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

// lossLog keeps the backoff of each "link lost" record.
type lossLog struct {
	mu    sync.Mutex
	waits []time.Duration
	more  chan struct{}
}

func newLossLog() *lossLog { return &lossLog{more: make(chan struct{}, 1)} }

func (l *lossLog) Enabled(context.Context, slog.Level) bool { return true }
func (l *lossLog) WithAttrs([]slog.Attr) slog.Handler       { return l }
func (l *lossLog) WithGroup(string) slog.Handler            { return l }
func (l *lossLog) Handle(_ context.Context, r slog.Record) error {
	if r.Message != "smpp: link lost; binding again" {
		return nil
	}
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "retry_in" {
			l.mu.Lock()
			l.waits = append(l.waits, a.Value.Duration())
			l.mu.Unlock()
			select {
			case l.more <- struct{}{}:
			default:
			}
		}
		return true
	})
	return nil
}

// first waits for n losses and returns their backoffs.
func (l *lossLog) first(t *testing.T, n int) []time.Duration {
	t.Helper()
	deadline := time.After(60 * time.Second)
	for {
		l.mu.Lock()
		if len(l.waits) >= n {
			w := append([]time.Duration(nil), l.waits[:n]...)
			l.mu.Unlock()
			return w
		}
		l.mu.Unlock()
		select {
		case <-l.more:
		case <-deadline:
			t.Fatalf("fewer than %d links lost", n)
		}
	}
}

func TestSubmitUnansweredOnTwoLinksIsNotSentAThirdTime(t *testing.T) {
	// The SMSC reads each submit_sm, may have taken it, and drops the
	// link before its submit_sm_resp (an overloaded SMSC, a flapping load
	// balancer).
	var submits atomic.Int32
	addr, _ := fakeSMSC(t, func(c net.Conn, _ int32) {
		for {
			p, err := ReadPDU(c)
			if err != nil {
				return
			}
			if p.ID == SubmitSM {
				submits.Add(1)
				return
			}
		}
	})
	e := startFaultESME(t, faultConfig(addr), Handlers{})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ids, err := e.Send(ctx, "491701234567", []byte{1, 2, 3, 4})
	if n := submits.Load(); n != 2 {
		t.Errorf("the SMSC read %d submit_sm for one Send; want 2 (one resend of a submit that may be held)", n)
	}
	if !errors.Is(err, ErrUnconfirmed) || ctx.Err() != nil || len(ids) != 0 {
		t.Fatalf("Send: %v %v (context: %v), want ErrUnconfirmed before the context ends", ids, err, ctx.Err())
	}
}

func TestBindBackoffGrowsOverLinksThatDieBeforeAnsweringEnquireLink(t *testing.T) {
	// The SMSC takes every bind and drops the link at once.
	addr, binds := fakeSMSC(t, func(net.Conn, int32) {})
	losses := newLossLog()
	e := startFaultESME(t, faultConfig(addr), Handlers{Log: slog.New(losses)})
	const n = 6
	waits := losses.first(t, n)
	e.Close()
	min := faultConfig(addr).MinBackoff
	for k, w := range waits {
		if least := min << k; w < least {
			t.Errorf("after link %d of %d lost in a row the ESME waited %v; want at least %v (backoff doubling)", k+1, n, w, least)
		}
	}
	if b := binds.Load(); b < n {
		t.Errorf("%d binds for %d lost links", b, n)
	}
}

func TestBindBackoffStartsOverAfterALinkAnsweredEnquireLink(t *testing.T) {
	// Each link answers the ESME's first enquire_link and is dropped at
	// its second, unanswered.
	addr, _ := fakeSMSC(t, func(c net.Conn, _ int32) {
		probes := 0
		for {
			p, err := ReadPDU(c)
			if err != nil {
				return
			}
			if p.ID == EnquireLink {
				if probes++; probes > 1 {
					return
				}
				if _, err := c.Write(PDU{ID: EnquireLinkResp, Seq: p.Seq}.Marshal()); err != nil {
					return
				}
			}
		}
	})
	losses := newLossLog()
	cfg := faultConfig(addr)
	cfg.EnquireLink = 20 * time.Millisecond
	startFaultESME(t, cfg, Handlers{Log: slog.New(losses)})
	for k, w := range losses.first(t, 4) {
		// backoff(0): MinBackoff plus at most a quarter.
		if w > cfg.MinBackoff+cfg.MinBackoff/4 {
			t.Errorf("after proven link %d was lost the ESME waited %v; want MinBackoff (%v) and jitter", k+1, w, cfg.MinBackoff)
		}
	}
}

func TestDeliverSMBeyondTheInboxIsThrottledAndNeverHoldsUpResponses(t *testing.T) {
	// The SMSC answers the first submit_sm only after a burst of 200
	// deliver_sm (proofs of receipt after a campaign) and an
	// enquire_link, all in the stream before the submit_sm_resp, while
	// the MO handler (a database lookup and an HSM check per message in
	// keyport) is held until the test lets it go.
	const burst = 200
	var (
		submits, probeAnswered atomic.Int32
		mu                     sync.Mutex
		answers                = map[Status]int{}
		answered               = make(chan struct{}, 1)
	)
	addr, binds := fakeSMSC(t, func(c net.Conn, _ int32) {
		var wmu sync.Mutex
		write := func(ps ...PDU) {
			wmu.Lock()
			defer wmu.Unlock()
			for _, p := range ps {
				if _, err := c.Write(p.Marshal()); err != nil {
					return
				}
			}
		}
		mo, err := ShortMessage{Source: "491700000001", Dest: "1234", ESMClass: ESMClassUDHI, ProtocolID: PIDSIMDataDownload,
			DataCoding: DCSSIMData, ShortMessage: []byte{0x02, 0x71, 0x00, 0x90, 0x00}}.Encode()
		if err != nil {
			t.Error(err)
			return
		}
		for {
			p, err := ReadPDU(c)
			if err != nil {
				return
			}
			switch p.ID {
			case SubmitSM:
				k := submits.Add(1)
				resp := PDU{ID: SubmitSMResp, Seq: p.Seq, Body: encodeMessageID("msg-" + string(rune('0'+k)))}
				if k > 1 {
					go write(resp)
					continue
				}
				go func() {
					flood := make([]PDU, 0, burst+2)
					for i := range burst {
						flood = append(flood, PDU{ID: DeliverSM, Seq: uint32(1000 + i), Body: mo})
					}
					write(append(flood, PDU{ID: EnquireLink, Seq: 5000}, resp)...)
				}()
			case EnquireLink:
				go write(PDU{ID: EnquireLinkResp, Seq: p.Seq})
			case EnquireLinkResp:
				if p.Seq == 5000 {
					probeAnswered.Add(1)
				}
			case DeliverSMResp:
				mu.Lock()
				answers[p.Status]++
				mu.Unlock()
				select {
				case answered <- struct{}{}:
				default:
				}
			case Unbind:
				write(PDU{ID: UnbindResp, Seq: p.Seq})
				return
			}
		}
	})
	release := make(chan struct{})
	var releaseOnce sync.Once
	let := func() { releaseOnce.Do(func() { close(release) }) }
	defer let()
	e := startFaultESME(t, faultConfig(addr), Handlers{MO: func(MO) error { <-release; return nil }})

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ids, err := e.Send(ctx, "491701234567", []byte{1, 2, 3, 4})
	if err != nil || len(ids) != 1 {
		t.Fatalf("Send with the handler held: %v %v", ids, err)
	}
	if n, b := submits.Load(), binds.Load(); n != 1 || b != 1 {
		t.Fatalf("one Send: the SMSC read %d submit_sm over %d binds; want 1 over 1", n, b)
	}

	let()
	deadline := time.After(60 * time.Second)
	for {
		mu.Lock()
		total := 0
		for _, n := range answers {
			total += n
		}
		mu.Unlock()
		if total >= burst {
			break
		}
		select {
		case <-answered:
		case <-deadline:
			t.Fatalf("%d of %d deliver_sm answered", total, burst)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	// The handler held one or none when the inbox filled.
	ok, throttled := answers[StatusOK], answers[StatusThrottled]
	if ok < inboxLen || ok > inboxLen+1 || ok+throttled != burst {
		t.Errorf("deliver_sm answered %v; want %d or %d ESME_ROK and the rest ESME_RTHROTTLED", answers, inboxLen, inboxLen+1)
	}
	if probeAnswered.Load() != 1 {
		t.Errorf("the SMSC's enquire_link behind the burst was answered %d times, want once", probeAnswered.Load())
	}
}
