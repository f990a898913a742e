package cardlink_test

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/cardlink"
	"github.com/keyport/keyport/cardlink/cardlinktest"
	"github.com/keyport/keyport/gp"
	"github.com/keyport/keyport/internal/fixture"
	"github.com/keyport/keyport/store/storetest"
)

// The numbers of otaWorld's modules: module 0 has its own, modules 1 and
// 2 share one, as migration 20 leaves a number two modules had before
// keyport refused a shared one (marked msisdn_shared).
const (
	ownNumber    = "4915200000031"
	sharedNumber = "4915200000032"
)

// otaWorld is a fixture world of three modules, each with an OTA key set
// generated in the HSM, numbered as ownNumber and sharedNumber say, on the
// real store and HSM; reach is keyport's SMS reach over them.
func otaWorld(t *testing.T) (*fixture.World, keyport.SMSReach) {
	t.Helper()
	ctx := context.Background()
	dsn := storetest.SQLitePath(t)
	w := fixture.New(t, storetest.Open(t, dsn), 3, 1)
	w.OTAKeys(t, 3)
	if err := w.Svc.SetMSISDN(ctx, fixture.Admin, fixture.EID(t, 0), ownNumber); err != nil {
		t.Fatal(err)
	}
	for n := 1; n <= 2; n++ {
		storetest.ExecSQL(t, dsn, `UPDATE module_ota SET msisdn = ?, msisdn_shared = TRUE
			WHERE module_id = (SELECT id FROM modules WHERE eid = ?)`, sharedNumber, string(fixture.EID(t, n)))
	}
	return w, keyport.SMSReach{Service: w.Svc, OTA: w.HSM}
}

// sends records what an SMSTrigger submits.
type sends struct {
	mu sync.Mutex
	to []string
}

func (s *sends) Send(_ context.Context, msisdn string, _ []byte) ([]string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.to = append(s.to, msisdn)
	return []string{"m" + msisdn}, nil
}

func (s *sends) numbers() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.to...)
}

// A module whose MSISDN other modules also have gets no trigger SMS (the
// number may be another customer's line, and its PoR would be attributed
// to no module): Triggers wakes it through the wake-up channel instead,
// and a warning names the module and the remedy, never the number. With
// no agent waiting, the wake-up's error (the job's last error) says why
// no SMS went either.
func TestATriggerForAModuleWithASharedMSISDNGoesThroughTheWakeUpChannelAndIsLoggedWithoutTheNumber(t *testing.T) {
	ctx := context.Background()
	w, reach := otaWorld(t)
	logs := &cardlinktest.LogBuffer{}
	sender := &sends{}
	sms, err := cardlink.NewSMSTrigger(cardlink.SMSTriggerConfig{Sender: sender, Reach: reach,
		Admin: netip.MustParseAddrPort("10.0.0.1:443"), Log: slog.New(slog.NewTextHandler(logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	hub := cardlink.NewWakeHub()
	trig := cardlink.Triggers{SMS: sms, Fallback: hub}
	eid := fixture.EID(t, 1)

	woken := make(chan bool, 1)
	waitCtx, stop := context.WithCancel(ctx)
	defer stop()
	go func() { woken <- hub.Wait(waitCtx, eid, time.Hour, nil) }()
	for hub.Waiting(eid) == 0 {
		time.Sleep(time.Millisecond)
	}
	if err := trig.Wake(ctx, eid); err != nil {
		t.Fatalf("wake of a module with a shared MSISDN and an agent waiting: %v", err)
	}
	if got := sender.numbers(); len(got) != 0 {
		t.Fatalf("trigger SMS submitted to %q for a shared MSISDN", got)
	}
	if !<-woken {
		t.Fatal("the agent waiting on the wake-up channel was not woken")
	}
	m, err := w.Store.GetModule(ctx, eid)
	if err != nil {
		t.Fatal(err)
	}
	if o, err := w.Store.GetModuleOTA(ctx, m.ID); err != nil || o.Counter != 0 {
		t.Fatalf("SCP80 counter %d (%v) after a trigger that was not sent; want none used", o.Counter, err)
	}
	log := string(logs.Bytes())
	if !strings.Contains(log, "trigger SMS not sent") || !strings.Contains(log, "eid="+string(eid)) ||
		!strings.Contains(log, "keyport module shared-msisdns") || strings.Contains(log, sharedNumber) {
		t.Fatalf("log %q; want the skipped trigger logged with the module and the remedy, without the number", log)
	}

	err = trig.Wake(ctx, eid)
	if !errors.Is(err, keyport.ErrUnreachable) || !strings.Contains(err.Error(), "other modules' number") ||
		!strings.Contains(err.Error(), "no handset agent waiting") || strings.Contains(err.Error(), sharedNumber) {
		t.Fatalf("wake with no agent waiting: %v; want ErrUnreachable saying why no SMS went, without the number", err)
	}
	if got := sender.numbers(); len(got) != 0 {
		t.Fatalf("trigger SMS submitted to %q for a shared MSISDN", got)
	}
}

// Every proof of receipt keyport ignores is logged, and answered with an
// error, naming the number it came from only masked
// (keyport.MaskedMSISDN): one from a number several modules have, one the
// module's OTA keys do not authenticate, one for another TAR and one for
// an older trigger; and one from a number no module has is an error
// without it.
func TestIgnoredProofsOfReceiptLogNoFullMSISDN(t *testing.T) {
	ctx := context.Background()
	_, reach := otaWorld(t)
	logs := &cardlinktest.LogBuffer{}
	tr, err := cardlink.NewSMSTrigger(cardlink.SMSTriggerConfig{Sender: &sends{}, Reach: reach,
		Admin: netip.MustParseAddrPort("10.0.0.1:443"), Log: slog.New(slog.NewTextHandler(logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	// Module 0's last trigger had counter 1.
	if _, err := reach.Target(ctx, fixture.EID(t, 0)); err != nil {
		t.Fatal(err)
	}
	keys, err := reach.Keys(ctx, fixture.EID(t, 0))
	if err != nil {
		t.Fatal(err)
	}
	spi := gp.SPI{Integrity: gp.IntegrityCC, Ciphered: true, Counter: gp.CounterHigher, PoR: gp.PoRAlways, PoRIntegrity: gp.IntegrityCC}
	plain := spi
	plain.PoRCiphered, plain.PoRIntegrity = false, gp.IntegrityNone
	seal := func(spi gp.SPI, k gp.OTAKeys, tar [3]byte, counter uint64, st gp.PoRStatus) []byte {
		t.Helper()
		b, err := gp.ResponsePacket{TAR: tar, Counter: counter, Status: st}.SealSMS(spi, k)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	const unknownNumber = "4915200000099"
	cases := []struct {
		name, from string
		ud         []byte
		ignored    bool
	}{
		{"from a shared number", "+" + sharedNumber, seal(plain, gp.OTAKeys{}, gp.ISDTAR, 1, gp.PoRCounterLow), true},
		{"not authenticated", ownNumber, seal(plain, gp.OTAKeys{}, gp.ISDTAR, 1, gp.PoRCounterLow), true},
		{"for another TAR", ownNumber, seal(spi, keys.Keys, [3]byte{0xB0, 0x00, 0x11}, 1, gp.PoRCounterLow), true},
		{"for an older trigger", ownNumber, seal(spi, keys.Keys, gp.ISDTAR, 0, gp.PoRInsufficientMemory), true},
		{"from a number no module has", unknownNumber, seal(plain, gp.OTAKeys{}, gp.ISDTAR, 1, gp.PoRCounterLow), false},
	}
	for _, c := range cases {
		_, err := tr.ProofOfReceipt(ctx, c.from, c.ud)
		if err == nil || errors.Is(err, cardlink.ErrPoRIgnored) != c.ignored {
			t.Fatalf("%s: %v; want an error, ignored %v", c.name, err, c.ignored)
		}
		for _, n := range []string{ownNumber, sharedNumber, unknownNumber} {
			if strings.Contains(err.Error(), n) {
				t.Errorf("%s: the error names the full MSISDN: %v", c.name, err)
			}
		}
	}
	log := string(logs.Bytes())
	if n := strings.Count(log, "proof of receipt ignored"); n != 4 {
		t.Fatalf("%d PoRs logged as ignored, want 4:\n%s", n, log)
	}
	for _, n := range []string{ownNumber, sharedNumber, unknownNumber} {
		if strings.Contains(log, n) {
			t.Errorf("the log names the full MSISDN %s:\n%s", n, log)
		}
	}
	for _, masked := range []string{"msisdn=+**********031", "msisdn=+**********032"} {
		if !strings.Contains(log, masked) {
			t.Errorf("the log does not name the sender as %s, for an operator to correlate:\n%s", masked, log)
		}
	}
}
