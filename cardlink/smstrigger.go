package cardlink

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/gp"
)

// SMSSender submits a secured command packet to a handset as SIM data
// download SMS (cardlink/smpp's ESME) and returns the SMSC's message ids.
type SMSSender interface {
	Send(ctx context.Context, msisdn string, packet []byte) ([]string, error)
}

// SMSReach is what the SMS trigger needs of keyport (Service.SMSTarget,
// SMSKeys and TriggerFailed, with the HSM's OTA custody bound).
type SMSReach interface {
	// Target allocates a fresh SCP80 counter and returns the module's
	// MSISDN and OTA key handles; keyport.ErrNoSMSReach when it has none.
	Target(ctx context.Context, eid keyport.EID) (*keyport.SMSTarget, error)
	// Keys returns the same without a counter, to open a proof of receipt.
	Keys(ctx context.Context, eid keyport.EID) (*keyport.SMSTarget, error)
	// ModuleByMSISDN finds the module a proof of receipt came from;
	// keyport.ErrConflict when several modules have the number.
	ModuleByMSISDN(ctx context.Context, msisdn string) (keyport.EID, error)
	// Sent notes the SMSC's message ids of a trigger SMS to the module,
	// and ModuleBySMS finds the module again by one of them, in whichever
	// replica the delivery receipt reaches (keyport.ErrNotFound: none).
	Sent(ctx context.Context, eid keyport.EID, ids []string) error
	ModuleBySMS(ctx context.Context, messageID string) (keyport.EID, error)
	// Failed records on the module's waiting jobs why its trigger failed.
	Failed(ctx context.Context, eid keyport.EID, reason string) error
	// CounterLow handles a PoR, authenticated under the module's OTA keys,
	// that refused the packet with this counter as counter low
	// (Service.TriggerCounterLow): it says whether keyport's counter moved.
	CounterLow(ctx context.Context, eid keyport.EID, refused uint64) (bool, error)
}

// SMSTriggerConfig configures an SMSTrigger.
type SMSTriggerConfig struct {
	Sender SMSSender
	Reach  SMSReach
	// Admin is the admin server's address as the module's OPEN CHANNEL
	// names it (an IP address and TCP port the handset reaches).
	Admin netip.AddrPort
	// Host and URI are the HTTP POST parameters (8A, 8C); URI defaults to
	// the agent's first POST, "/server/adminagent?cmd=1".
	Host, URI string
	// SendTimeout bounds one submission (default 20 s): an SMSC that does
	// not take it by then leaves the job to its retry.
	SendTimeout time.Duration
	Log         *slog.Logger
}

// SMSTrigger wakes a module by an SCP80-secured OTA SMS to its ISD's TAR
// holding the GP Amendment B Administration Session Triggering parameters
// (PROTOCOLS.md §3.1, §3.2): the card checks it, answers a proof of
// receipt, and opens a BIP channel and a TLS-PSK session to the admin
// server. It implements keyport.Trigger for modules with an MSISDN and an
// OTA key set; for others Wake returns keyport.ErrNoSMSReach.
type SMSTrigger struct {
	cfg SMSTriggerConfig
	log *slog.Logger

	// The message ids this process sent, for their receipts without a
	// database read; Reach keeps them for every replica.
	mu   sync.Mutex
	sent map[string]keyport.EID // SMSC message id -> module
	ids  []string               // sent's keys, oldest first

	// sharedSkips spaces the lines saying that a module got no SMS for
	// its shared MSISDN: the worker asks again at every wake-up of every
	// such module, and the condition lasts until an admin acts.
	sharedSkips logLimiter
}

var _ keyport.Trigger = (*SMSTrigger)(nil)

// maxTracked bounds the message ids kept for receipts.
const maxTracked = 10000

// Security the trigger asks for (TS 102 225): a checksum, a counter higher
// than the card's, ciphering; a PoR always, checksummed but not ciphered
// (it holds a counter and a status, and keyport's card keys only encrypt:
// the HSM gives none of them decryption).
var triggerSPI = gp.SPI{Integrity: gp.IntegrityCC, Ciphered: true, Counter: gp.CounterHigher,
	PoR: gp.PoRAlways, PoRIntegrity: gp.IntegrityCC}

// PSK key reference named in the trigger (keyport's TLS-PSK: KVN 40, KID 01).
const (
	pskKVN = 0x40
	pskKID = 0x01
)

// NewSMSTrigger returns the trigger.
func NewSMSTrigger(cfg SMSTriggerConfig) (*SMSTrigger, error) {
	if cfg.Sender == nil || cfg.Reach == nil {
		return nil, errors.New("cardlink: SMS trigger needs a sender and keyport's SMS reach")
	}
	if _, err := gp.TCPConnection(cfg.Admin); err != nil {
		return nil, fmt.Errorf("cardlink: SMS trigger: %w", err)
	}
	if cfg.URI == "" {
		cfg.URI = "/server/adminagent?cmd=1"
	}
	if cfg.SendTimeout <= 0 {
		cfg.SendTimeout = 20 * time.Second
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	return &SMSTrigger{cfg: cfg, log: cfg.Log, sent: map[string]keyport.EID{}, sharedSkips: logLimiter{every: sharedSkipLogEvery}}, nil
}

// Packet builds the secured command packet that triggers module eid's
// admin session, under a freshly allocated counter.
func (t *SMSTrigger) Packet(ctx context.Context, eid keyport.EID) (*keyport.SMSTarget, []byte, error) {
	target, err := t.cfg.Reach.Target(ctx, eid)
	if err != nil {
		return nil, nil, err
	}
	conn, err := gp.TCPConnection(t.cfg.Admin)
	if err != nil {
		return nil, nil, err
	}
	sec, err := gp.PSKSecurity(string(eid), pskKVN, pskKID)
	if err != nil {
		return nil, nil, err
	}
	trig := gp.AdminTrigger{Connection: conn, Security: sec, Host: []byte(t.cfg.Host),
		AgentID: []byte(eid), URI: []byte(t.cfg.URI)}
	p := gp.CommandPacket{SPI: triggerSPI, KIc: target.KIc, KID: target.KID, TAR: gp.ISDTAR,
		Counter: target.Counter, Data: trig.Bytes()}
	b, err := p.Seal(target.Keys)
	if err != nil {
		return nil, nil, fmt.Errorf("cardlink: seal the trigger of %s: %w", eid, err)
	}
	return target, b, nil
}

// sharedSkipLogEvery is how often at most Wake logs that modules got no
// SMS for their shared MSISDN.
const sharedSkipLogEvery = time.Minute

// Wake sends module eid its trigger SMS. An SMSC that does not accept it
// within SendTimeout makes it keyport.ErrUnreachable (retried with
// backoff); the counter it used is not used again. A module whose MSISDN
// is also other modules' number gets none (keyport.ErrMSISDNShared, which
// is keyport.ErrNoSMSReach: Triggers wakes it through the wake-up channel
// instead), and a warning says so, at most once per sharedSkipLogEvery
// for all modules: it names the module at hand (never the number) and how
// many such wake-ups there were since the last line.
func (t *SMSTrigger) Wake(ctx context.Context, eid keyport.EID) error {
	target, packet, err := t.Packet(ctx, eid)
	if err != nil {
		if errors.Is(err, keyport.ErrMSISDNShared) {
			if n, ok := t.sharedSkips.note(); ok {
				t.log.Warn("trigger SMS not sent: the module's MSISDN is also other modules' number (it may reach another customer's handset, "+
					"and its proofs of receipt are attributed to no module); woken through the agents' wake-up channel instead: "+
					"clear the number on every module but the one it reaches (keyport module shared-msisdns)",
					"eid", eid, "skipped", n)
			}
		}
		if errors.Is(err, keyport.ErrNoSMSReach) {
			return err
		}
		return fmt.Errorf("cardlink: SMS trigger for %s: %v: %w", eid, err, keyport.ErrUnreachable)
	}
	sctx, cancel := context.WithTimeout(ctx, t.cfg.SendTimeout)
	defer cancel()
	ids, err := t.cfg.Sender.Send(sctx, target.MSISDN, packet)
	t.track(ids, eid)
	if rerr := t.cfg.Reach.Sent(ctx, eid, ids); rerr != nil {
		// The SMS is out: a receipt reaching another replica will not
		// find its module, one reaching this one will.
		t.log.Warn("trigger SMS: message ids not recorded", "eid", eid, "message_ids", ids, "error", rerr)
	}
	if err != nil {
		return fmt.Errorf("cardlink: SMS trigger for %s: %v: %w", eid, err, keyport.ErrUnreachable)
	}
	t.log.Info("trigger SMS submitted", "eid", eid, "counter", target.Counter, "message_ids", ids)
	return nil
}

func (t *SMSTrigger) track(ids []string, eid keyport.EID) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, id := range ids {
		if _, dup := t.sent[id]; !dup {
			t.ids = append(t.ids, id)
		}
		t.sent[id] = eid
	}
	for len(t.ids) > maxTracked {
		delete(t.sent, t.ids[0])
		t.ids = t.ids[1:]
	}
}

// Receipt takes a delivery receipt: a final state other than DELIVRD is
// recorded on the module's waiting jobs (retried with backoff), whichever
// replica sent the message. A receipt for a message keyport did not send
// (or sent longer ago than keyport.SMSReceiptWindow) is ignored.
func (t *SMSTrigger) Receipt(ctx context.Context, messageID, state, errCode string) error {
	if state == "DELIVRD" || state == "ACCEPTD" || state == "ENROUTE" {
		return nil
	}
	t.mu.Lock()
	eid, ok := t.sent[messageID]
	t.mu.Unlock()
	if !ok {
		var err error
		if eid, err = t.cfg.Reach.ModuleBySMS(ctx, messageID); errors.Is(err, keyport.ErrNotFound) {
			t.log.Info("delivery receipt for a message keyport did not send", "message_id", messageID, "state", state)
			return nil
		} else if err != nil {
			return err
		}
	}
	return t.cfg.Reach.Failed(ctx, eid, fmt.Sprintf("trigger SMS %s: delivery receipt %s (error %s)", messageID, state, errCode))
}

// ErrPoRIgnored is a proof of receipt SMSTrigger does not act on: the
// module's OTA keys do not authenticate it (it has no checksum, or a wrong
// one), it answers another TAR than the trigger's (the ISD's), or it is an
// error for an older trigger than the last (a genuine one sent again).
// Anyone who can send an SMS that appears to come from the module's number
// can send such a PoR, so it neither moves keyport's counter nor touches
// the module's jobs; SMSTrigger only logs it.
var ErrPoRIgnored = errors.New("proof of receipt ignored")

// ProofOfReceipt takes a mobile-originated response packet (user data
// with its header) from msisdn and opens it under the module's OTA keys.
// Only a PoR they authenticate, for the ISD's TAR the trigger went to and
// for the last trigger's counter, is acted on: an error status is
// recorded on the module's waiting jobs, and a "counter low" also moves
// keyport's counter past the card's (Reach.CounterLow), so that the retry
// gets through. Any other PoR (also
// a card's plain one when it could not verify the packet) is logged as
// ignored, with what it claims, and is ErrPoRIgnored (wrapped); so is one
// from a number several modules have (Reach.ModuleByMSISDN's
// keyport.ErrConflict), which is attributed to none of them.
func (t *SMSTrigger) ProofOfReceipt(ctx context.Context, msisdn string, ud []byte) (gp.PoRStatus, error) {
	eid, err := t.cfg.Reach.ModuleByMSISDN(ctx, msisdn)
	if errors.Is(err, keyport.ErrConflict) {
		// Several modules have the number (set before keyport refused
		// it): opening the PoR under one's keys would fail for the
		// others' and hide their answers, so it is for none of them.
		return 0, t.ignore(err, keyport.MaskedMSISDN(msisdn), "its number is the MSISDN of several modules; clear it on all but the one it reaches (keyport module shared-msisdns)",
			"msisdn", keyport.MaskedMSISDN(msisdn))
	}
	if err != nil {
		return 0, err
	}
	keys, err := t.cfg.Reach.Keys(ctx, eid)
	if err != nil {
		return 0, err
	}
	r, err := gp.OpenSMSPoR(ud, triggerSPI, keys.Keys)
	if errors.Is(err, gp.ErrPoRUnauthenticated) || errors.Is(err, gp.ErrPoRIntegrity) {
		return 0, t.unauthenticated(eid, msisdn, ud, err)
	}
	if err != nil {
		return 0, fmt.Errorf("cardlink: proof of receipt from %s: %w", eid, err)
	}
	if r.TAR != gp.ISDTAR {
		return 0, t.ignore(nil, string(eid), fmt.Sprintf("for TAR %X, not the trigger's %X", r.TAR, gp.ISDTAR), "eid", eid,
			"msisdn", keyport.MaskedMSISDN(msisdn), "counter", r.Counter, "status", r.Status)
	}
	if r.Status != gp.PoROK && r.Counter != keys.Counter {
		// Authenticated, but for an older trigger than the last one
		// (keys.Counter): a PoR captured and sent again must not delay
		// the module's jobs over and over.
		return 0, t.ignore(nil, string(eid), fmt.Sprintf("for an older trigger: counter %d, not the last trigger's %d", r.Counter, keys.Counter),
			"eid", eid, "msisdn", keyport.MaskedMSISDN(msisdn), "status", r.Status)
	}
	if r.Status != gp.PoROK {
		t.log.Warn("trigger refused by the card", "eid", eid, "counter", r.Counter, "status", r.Status)
		reason := fmt.Sprintf("proof of receipt for counter %d: %v (%02X)", r.Counter, r.Status, byte(r.Status))
		if r.Status == gp.PoRCounterLow {
			raised, err := t.cfg.Reach.CounterLow(ctx, eid, r.Counter)
			if err != nil {
				return r.Status, err
			}
			if raised {
				reason += fmt.Sprintf("; keyport's counter moved %d past it for the retry", keyport.OTACounterJump)
			}
		}
		if err := t.cfg.Reach.Failed(ctx, eid, reason); err != nil {
			return r.Status, err
		}
	}
	return r.Status, nil
}

// unauthenticated logs a proof of receipt from module eid that its OTA keys
// do not authenticate (open's error), with what it claims when it can be
// read without them, and returns ProofOfReceipt's error for it.
func (t *SMSTrigger) unauthenticated(eid keyport.EID, msisdn string, ud []byte, open error) error {
	attrs := []any{"eid", eid, "msisdn", keyport.MaskedMSISDN(msisdn)}
	plain := triggerSPI
	plain.PoRCiphered, plain.PoRIntegrity = false, gp.IntegrityNone
	claims := ""
	if r, err := gp.OpenSMSPoR(ud, plain, gp.OTAKeys{}); err == nil {
		attrs = append(attrs, "claimed_tar", fmt.Sprintf("%X", r.TAR), "claimed_counter", r.Counter, "claimed_status", r.Status)
		claims = fmt.Sprintf(" (it says: %v, counter %d)", r.Status, r.Counter)
	}
	return t.ignore(open, string(eid), "not authenticated under the module's OTA keys"+claims, attrs...)
}

// ignore logs a proof of receipt from sender (a module's EID, or a number
// as keyport.MaskedMSISDN shows it) that keyport does not act on, saying
// why, with attrs (what it claims; a number in them masked too), and
// returns ErrPoRIgnored with the same reason, wrapping cause when there is
// one.
func (t *SMSTrigger) ignore(cause error, sender, why string, attrs ...any) error {
	if cause != nil {
		attrs = append(attrs, "error", cause)
	}
	t.log.Warn("proof of receipt ignored: "+why, attrs...)
	err := fmt.Errorf("cardlink: %w: from %s: %s", ErrPoRIgnored, sender, why)
	if cause != nil {
		err = fmt.Errorf("%w: %w", err, cause)
	}
	return err
}

// Triggers wakes a module over SMS when it has SMS reach, and through
// Fallback (the agents' wake-up channel) otherwise, also when its MSISDN
// is also other modules' number (keyport.ErrMSISDNShared).
type Triggers struct {
	SMS      keyport.Trigger
	Fallback keyport.Trigger
}

var _ keyport.Trigger = Triggers{}

// Wake implements keyport.Trigger. When the fallback fails for a module
// that got no SMS for its shared MSISDN, the error says both, so that the
// job waiting for it (its last error) tells an operator what to mend.
func (t Triggers) Wake(ctx context.Context, eid keyport.EID) error {
	var shared error
	if t.SMS != nil {
		err := t.SMS.Wake(ctx, eid)
		if !errors.Is(err, keyport.ErrNoSMSReach) {
			return err
		}
		if errors.Is(err, keyport.ErrMSISDNShared) {
			shared = err
		}
	}
	err := fmt.Errorf("cardlink: wake %s: %w", eid, keyport.ErrUnreachable)
	if t.Fallback != nil {
		err = t.Fallback.Wake(ctx, eid)
	}
	if err != nil && shared != nil {
		return fmt.Errorf("%v; %w", shared, err)
	}
	return err
}
