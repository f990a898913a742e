package smpp_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/keyport/keyport/cardlink/smpp"
	"github.com/keyport/keyport/cardlink/smpp/smpptest"
)

// testSMSC is smpptest's SMSC with the names these tests use.
type testSMSC struct {
	*smpptest.SMSC
	t    testing.TB
	port int
}

type (
	smscEvent      = smpptest.Event
	handsetMessage = smpptest.HandsetMessage
)

func needPerlSMPP(t testing.TB) { smpptest.NeedPerlSMPP(t) }

func startSMSC(t testing.TB, args ...string) *testSMSC {
	t.Helper()
	s := &testSMSC{SMSC: smpptest.Start(t, args...), t: t}
	s.port = s.Port
	return s
}

func (s *testSMSC) start(port int) {
	s.t.Helper()
	s.Restart(port)
	s.port = s.Port
}

func (s *testSMSC) startWith(port int, extra ...string) {
	s.t.Helper()
	s.StartWith(port, extra...)
	s.port = s.Port
}

func (s *testSMSC) kill()                             { s.Kill() }
func (s *testSMSC) url(extra string) string           { return s.URL(extra) }
func (s *testSMSC) allEvents() []smscEvent            { return s.Events() }
func (s *testSMSC) handsetMessages() []handsetMessage { return s.HandsetMessages() }

func (s *testSMSC) eventsWhere(ev string, keep func(smscEvent) bool) []smscEvent {
	return s.EventsWhere(ev, keep)
}

func (s *testSMSC) waitFor(what string, cond func([]smscEvent) bool) []smscEvent {
	s.t.Helper()
	return s.WaitFor(what, cond)
}

// collector keeps what the ESME's handlers received.
type collector struct {
	mu       sync.Mutex
	receipts []smpp.Receipt
	mos      []smpp.MO
	changed  chan struct{}
}

func newCollector() *collector { return &collector{changed: make(chan struct{}, 1)} }

func (c *collector) handlers() smpp.Handlers {
	return smpp.Handlers{
		Receipt: func(r smpp.Receipt) error {
			c.mu.Lock()
			c.receipts = append(c.receipts, r)
			c.mu.Unlock()
			c.poke()
			return nil
		},
		MO: func(m smpp.MO) error {
			c.mu.Lock()
			c.mos = append(c.mos, m)
			c.mu.Unlock()
			c.poke()
			return nil
		},
	}
}

func (c *collector) poke() {
	select {
	case c.changed <- struct{}{}:
	default:
	}
}

// receiptFor waits for the receipt of message id.
func (c *collector) receiptFor(t testing.TB, id string) smpp.Receipt {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		c.mu.Lock()
		for _, r := range c.receipts {
			if r.MessageID == id {
				c.mu.Unlock()
				return r
			}
		}
		c.mu.Unlock()
		select {
		case <-c.changed:
		case <-ctx.Done():
			t.Fatalf("no delivery receipt for %s", id)
		}
	}
}

func (c *collector) moFrom(t testing.TB, msisdn string) smpp.MO {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		c.mu.Lock()
		for _, m := range c.mos {
			if m.From == msisdn {
				c.mu.Unlock()
				return m
			}
		}
		c.mu.Unlock()
		select {
		case <-c.changed:
		case <-ctx.Done():
			t.Fatalf("no mobile-originated message from %s", msisdn)
		}
	}
}

func newESME(t testing.TB, rawURL string, h smpp.Handlers) *smpp.ESME {
	t.Helper()
	cfg, err := smpp.ParseURL(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	e, err := smpp.New(cfg, h)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

func sendCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}
