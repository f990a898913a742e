package cardlink

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"testing"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/gp"
)

// porReach is an SMSReach that records what proofs of receipt make keyport
// do: CounterLow moves the module's SCP80 counter, Failed delays its jobs.
type porReach struct {
	keys       gp.OTAKeys
	counterLow []uint64
	failed     []string
}

func (r *porReach) Target(context.Context, keyport.EID) (*keyport.SMSTarget, error) {
	return nil, keyport.ErrNoSMSReach
}
func (r *porReach) Keys(_ context.Context, eid keyport.EID) (*keyport.SMSTarget, error) {
	return &keyport.SMSTarget{EID: eid, MSISDN: "491700000001", Counter: 42, KIc: 0x12, KID: 0x12, Keys: r.keys}, nil
}
func (r *porReach) ModuleByMSISDN(context.Context, string) (keyport.EID, error) {
	return "89049032000001000000000000000008", nil
}
func (r *porReach) Sent(context.Context, keyport.EID, []string) error { return nil }
func (r *porReach) ModuleBySMS(context.Context, string) (keyport.EID, error) {
	return "", keyport.ErrNotFound
}
func (r *porReach) Failed(_ context.Context, _ keyport.EID, why string) error {
	r.failed = append(r.failed, why)
	return nil
}
func (r *porReach) CounterLow(_ context.Context, _ keyport.EID, c uint64) (bool, error) {
	r.counterLow = append(r.counterLow, c)
	return true, nil
}

type nopSender struct{}

func (nopSender) Send(context.Context, string, []byte) ([]string, error) { return nil, nil }

// Only a PoR the module's OTA keys authenticate, for the ISD's TAR and the
// last trigger's counter, moves keyport's counter (CounterLow) or the
// module's jobs (Failed). A forged one (no checksum, a wrong one, or
// another TAR) or an older one sent again, which anyone who can send
// an SMS from the module's number can send, is ErrPoRIgnored and changes
// neither.
func TestSMSTriggerActsOnlyOnAuthenticatedPoRs(t *testing.T) {
	keys, err := gp.NewOTAKey(gp.OTAAlgAES, make([]byte, 16))
	if err != nil {
		t.Fatal(err)
	}
	other, err := gp.NewOTAKey(gp.OTAAlgAES, []byte("0123456789abcdef"))
	if err != nil {
		t.Fatal(err)
	}
	moduleKeys := gp.OTAKeys{KIc: 0x12, KID: 0x12, Cipher: keys, MAC: keys}
	plainSPI := triggerSPI
	plainSPI.PoRCiphered, plainSPI.PoRIntegrity = false, gp.IntegrityNone
	sealAt := func(counter uint64, spi gp.SPI, k gp.OTAKeys, tar [3]byte, st gp.PoRStatus) []byte {
		t.Helper()
		b, err := gp.ResponsePacket{TAR: tar, Counter: counter, Status: st}.SealSMS(spi, k)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	// The last trigger's counter is 42 (porReach.Keys).
	seal := func(spi gp.SPI, k gp.OTAKeys, tar [3]byte, st gp.PoRStatus) []byte {
		return sealAt(42, spi, k, tar, st)
	}
	otherTAR := [3]byte{0xB0, 0x00, 0x11}
	tests := []struct {
		name       string
		ud         []byte
		ignored    bool
		counterLow bool   // CounterLow(42) called
		failed     string // Failed called with a reason containing this; "" none
	}{
		{"forged plain counter low, built by hand", []byte{0x02, 0x71, 0x00, 0x00, 0x0B, 0x0A, 0, 0, 0, 0, 0, 0, 0, 0x2A, 0x00, byte(gp.PoRCounterLow)}, true, false, ""},
		{"forged plain counter low", seal(plainSPI, gp.OTAKeys{}, gp.ISDTAR, gp.PoRCounterLow), true, false, ""},
		{"forged plain error", seal(plainSPI, gp.OTAKeys{}, gp.ISDTAR, gp.PoRIntegrityFailed), true, false, ""},
		{"forged plain PoR OK", seal(plainSPI, gp.OTAKeys{}, gp.ISDTAR, gp.PoROK), true, false, ""},
		{"counter low under other keys", seal(triggerSPI, gp.OTAKeys{MAC: other}, gp.ISDTAR, gp.PoRCounterLow), true, false, ""},
		{"authenticated counter low for another TAR", seal(triggerSPI, moduleKeys, otherTAR, gp.PoRCounterLow), true, false, ""},
		{"authenticated error for another TAR", seal(triggerSPI, moduleKeys, otherTAR, gp.PoRInsufficientMemory), true, false, ""},
		{"authenticated error of an older trigger, sent again", sealAt(41, triggerSPI, moduleKeys, gp.ISDTAR, gp.PoRInsufficientMemory), true, false, ""},
		{"authenticated counter low of an older trigger, sent again", sealAt(41, triggerSPI, moduleKeys, gp.ISDTAR, gp.PoRCounterLow), true, false, ""},
		{"authenticated counter low", seal(triggerSPI, moduleKeys, gp.ISDTAR, gp.PoRCounterLow), false, true, "counter low (02); keyport's counter moved"},
		{"authenticated error", seal(triggerSPI, moduleKeys, gp.ISDTAR, gp.PoRInsufficientMemory), false, false, "insufficient memory (07)"},
		{"authenticated PoR OK", seal(triggerSPI, moduleKeys, gp.ISDTAR, gp.PoROK), false, false, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reach := &porReach{keys: moduleKeys}
			var log bytes.Buffer
			tr, err := NewSMSTrigger(SMSTriggerConfig{Sender: nopSender{}, Reach: reach, Admin: netip.MustParseAddrPort("10.0.0.1:443"),
				Log: slog.New(slog.NewTextHandler(&log, nil))})
			if err != nil {
				t.Fatal(err)
			}
			st, err := tr.ProofOfReceipt(context.Background(), "491700000001", tt.ud)
			if tt.ignored != errors.Is(err, ErrPoRIgnored) || (!tt.ignored && err != nil) {
				t.Fatalf("%X: status %v, err %v; want ignored %v", tt.ud, st, err, tt.ignored)
			}
			if logged := strings.Contains(log.String(), "proof of receipt ignored"); logged != tt.ignored {
				t.Errorf("log %q; want the PoR logged as ignored: %v", log.String(), tt.ignored)
			}
			if got := len(reach.counterLow) > 0; got != tt.counterLow || (got && (len(reach.counterLow) != 1 || reach.counterLow[0] != 42)) {
				t.Errorf("CounterLow calls %v, want one for 42: %v", reach.counterLow, tt.counterLow)
			}
			switch {
			case tt.failed == "" && len(reach.failed) != 0:
				t.Errorf("the module's jobs were failed: %q", reach.failed)
			case tt.failed != "" && (len(reach.failed) != 1 || !strings.Contains(reach.failed[0], tt.failed)):
				t.Errorf("Failed %q, want one with %q", reach.failed, tt.failed)
			}
		})
	}
}

// sharedReach is porReach for a PoR from a number several modules have.
type sharedReach struct{ porReach }

func (r *sharedReach) ModuleByMSISDN(context.Context, string) (keyport.EID, error) {
	return "", fmt.Errorf("store: module by MSISDN: +*********001 is the MSISDN of several modules: %w", keyport.ErrConflict)
}

// A PoR from a number several modules have (set before keyport refused
// it) is attributed to none of them: even one their keys would
// authenticate is ignored and logged, and touches neither counter nor
// jobs.
func TestSMSTriggerIgnoresAPoRFromANumberSeveralModulesHave(t *testing.T) {
	keys, err := gp.NewOTAKey(gp.OTAAlgAES, make([]byte, 16))
	if err != nil {
		t.Fatal(err)
	}
	moduleKeys := gp.OTAKeys{KIc: 0x12, KID: 0x12, Cipher: keys, MAC: keys}
	ud, err := gp.ResponsePacket{TAR: gp.ISDTAR, Counter: 42, Status: gp.PoRCounterLow}.SealSMS(triggerSPI, moduleKeys)
	if err != nil {
		t.Fatal(err)
	}
	reach := &sharedReach{porReach{keys: moduleKeys}}
	var log bytes.Buffer
	tr, err := NewSMSTrigger(SMSTriggerConfig{Sender: nopSender{}, Reach: reach, Admin: netip.MustParseAddrPort("10.0.0.1:443"),
		Log: slog.New(slog.NewTextHandler(&log, nil))})
	if err != nil {
		t.Fatal(err)
	}
	st, err := tr.ProofOfReceipt(context.Background(), "491700000001", ud)
	if !errors.Is(err, ErrPoRIgnored) || !errors.Is(err, keyport.ErrConflict) {
		t.Fatalf("status %v, err %v; want ErrPoRIgnored wrapping ErrConflict", st, err)
	}
	if !strings.Contains(log.String(), "proof of receipt ignored") || !strings.Contains(log.String(), "several modules") {
		t.Errorf("log %q; want the PoR logged as ignored for a shared number", log.String())
	}
	if len(reach.counterLow) != 0 || len(reach.failed) != 0 {
		t.Errorf("CounterLow %v, Failed %q; want neither", reach.counterLow, reach.failed)
	}
}
