package keyport

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/keyport/keyport/gp"
)

// SMS reach (GP Amendment B administration session triggering over SCP80,
// PROTOCOLS.md §3.1): a module with an MSISDN is woken by an OTA SMS to its
// ISD, secured under the module's OTA key set (KIc: AES-CBC, KID:
// AES-CMAC), which perso generates in the HSM and keeps wrapped under the
// ISD KEK like the ISD keys. The packet's counter is allocated in the
// database before the SMS is sent, so that no two sends (on any replica)
// reuse one.

// OTAKVN is the key version number of the OTA key set perso loads (GPCS:
// KVN 01-0F are SCP80 key sets); KIc and KID are key IDs 1 and 2 of it.
const OTAKVN = 0x01

// ModuleOTA is what keyport keeps to reach a module by SMS.
type ModuleOTA struct {
	ModuleID int64
	// MSISDN is the module's E.164 number without "+"; "" when it has none.
	MSISDN string
	// KVN and Keys are the module's OTA key set: KIc as UsageENC, KID as
	// UsageMAC (and its DEK), each a KWP blob under the ISD KEK. Keys is
	// nil when perso did not load one.
	KVN  int
	Keys KeyBlobs
	// Counter is the last SCP80 counter allocated (NextOTACounter).
	Counter uint64
	// Shared says that the MSISDN is still other modules' number too:
	// marked msisdn_shared by migration 20 (a database from before keyport
	// refused a shared number) and not yet cleared on all of them but
	// this one. No trigger SMS goes to it (SMSTarget: ErrMSISDNShared).
	Shared bool
}

// MaskedMSISDN is how an MSISDN appears in logs and error texts: "+", a
// "*" for each digit but the last three, and those three, so that
// "4915200000123" reads "+**********123". An MSISDN is personal data (it
// names a customer's line), and log lines and errors travel where the
// number has no business: log collectors, tickets, the failure an import
// reports. What an operator needs of it there is to tell numbers apart
// and to find a line's number again where admins see it in full (the
// console, the admin API, `keyport module shared-msisdns`): the last
// digits, as people quote a number anyway ("the one ending in 123"),
// next to the EID that most of these lines name, are enough for that.
//
// Not a hash: the numbers of one country are a few billion at most, so
// an unkeyed hash of one is undone by hashing them all, minutes on one
// machine: it would be the number in disguise. A keyed hash resists that,
// but every adapter that logs a number (the store, the SMS gateway link)
// would have to hold the key, and an operator could match a hash to a
// number only by asking keyport to hash it. The mask gives away the
// length and the last three digits, which a thousandth of the numbers of
// that length share (millions of lines in any country): no more than a
// printed bill shows, and no way back to the number.
//
// The input may be any string (an SMSC's source address is what the
// sender made it): a leading "+" is dropped, every other character but
// the last three digits becomes "*", so only "+", "*" and digits reach a
// log line, and a string of fewer than 7 characters keeps no digit (three
// would be most of it). "" stays "" (no number).
func MaskedMSISDN(s string) string {
	if s == "" {
		return ""
	}
	r := []rune(strings.TrimPrefix(s, "+"))
	keep := 0
	if len(r) >= 7 {
		keep = 3
	}
	var b strings.Builder
	b.WriteByte('+')
	for i, c := range r {
		if i >= len(r)-keep && c >= '0' && c <= '9' {
			b.WriteRune(c)
		} else {
			b.WriteByte('*')
		}
	}
	return b.String()
}

// NormalizeMSISDN checks an E.164 number ("+" optional; 1 to 15 digits,
// the first not 0) and returns its digits; "" stays "" (no number).
func NormalizeMSISDN(s string) (string, error) {
	d := strings.TrimPrefix(strings.TrimSpace(s), "+")
	if s == "" {
		return "", nil
	}
	if d == "" || len(d) > 15 || d[0] == '0' {
		return "", Invalid("msisdn", "must be an E.164 number: 1 to 15 digits, not starting with 0")
	}
	for i := 0; i < len(d); i++ {
		if d[i] < '0' || d[i] > '9' {
			return "", Invalid("msisdn", "must be an E.164 number: digits only, after an optional +")
		}
	}
	return d, nil
}

// SetMSISDN sets (or, with "", clears) a module's MSISDN (admins only).
// A number reaches one module: one that another module has is refused
// with ErrConflict naming that module (an admin sees every module), also
// when two requests give it to two modules at once (the store's unique
// index decides); the admin clears it there first.
func (s *Service) SetMSISDN(ctx context.Context, p Principal, eid EID, msisdn string) error {
	if !p.Admin {
		return ErrForbidden
	}
	n, err := NormalizeMSISDN(msisdn)
	if err != nil {
		return err
	}
	m, err := s.Store.GetModule(ctx, eid)
	if err != nil {
		return err
	}
	return s.Store.Tx(ctx, func(tx Repo) error {
		if err := tx.SetModuleMSISDN(ctx, m.ID, n); err != nil {
			return err
		}
		action := "module.msisdn.set"
		if n == "" {
			action = "module.msisdn.clear"
		}
		return s.audit(ctx, tx, p.Actor(), action, string(eid), map[string]any{})
	})
}

// ModuleMSISDN returns a module's MSISDN ("" when none; admins only).
func (s *Service) ModuleMSISDN(ctx context.Context, p Principal, eid EID) (string, error) {
	if !p.Admin {
		return "", ErrForbidden
	}
	m, err := s.Store.GetModule(ctx, eid)
	if err != nil {
		return "", err
	}
	o, err := s.Store.GetModuleOTA(ctx, m.ID)
	if err != nil {
		return "", err
	}
	return o.MSISDN, nil
}

// ErrNoSMSReach: the module has no MSISDN or no OTA key set.
var ErrNoSMSReach = errors.New("module has no MSISDN or OTA keys")

// ErrMSISDNShared: the module's MSISDN is also other modules' number
// (ModuleOTA.Shared), so keyport sends it no trigger SMS. The number may
// be another customer's line, and the card's proof of receipt from it
// would be attributed to none of the modules (ModuleByMSISDN). It matches
// ErrNoSMSReach with errors.Is: the module is woken as one without an
// MSISDN is, through the agents' wake-up channel, until an admin clears
// the number on all but the module it reaches (SharedMSISDNs).
var ErrMSISDNShared error = sharedMSISDNError{}

type sharedMSISDNError struct{}

func (sharedMSISDNError) Error() string {
	return "its MSISDN is also other modules' number (keyport module shared-msisdns)"
}

// Is makes errors.Is(ErrMSISDNShared, ErrNoSMSReach) true.
func (sharedMSISDNError) Is(target error) bool { return target == ErrNoSMSReach }

// SMSTarget is what an SMS trigger needs to secure and address one packet.
type SMSTarget struct {
	EID    EID
	MSISDN string
	// Counter is freshly allocated for this packet.
	Counter uint64
	// KIc and KID are the key coding bytes (KVN b8-b5, AES b4-b1).
	KIc, KID byte
	Keys     gp.OTAKeys
}

// SMSTarget allocates the next SCP80 counter of module eid and returns the
// HSM handles of its OTA keys. ErrNoSMSReach (wrapped) when the module has
// no MSISDN or no OTA keys, and ErrMSISDNShared (which matches it) when
// its MSISDN is also other modules' number; then no counter is used.
func (s *Service) SMSTarget(ctx context.Context, eid EID, custody OTACustody) (*SMSTarget, error) {
	return s.smsTarget(ctx, eid, custody, true)
}

// SMSKeys is SMSTarget without a counter: to open a module's proofs of
// receipt. A shared MSISDN does not stop it: ModuleByMSISDN attributes no
// PoR from one to any module, and a PoR of a trigger sent before is still
// the module's.
func (s *Service) SMSKeys(ctx context.Context, eid EID, custody OTACustody) (*SMSTarget, error) {
	return s.smsTarget(ctx, eid, custody, false)
}

func (s *Service) smsTarget(ctx context.Context, eid EID, custody OTACustody, allocate bool) (*SMSTarget, error) {
	m, err := s.Store.GetModule(ctx, eid)
	if err != nil {
		return nil, err
	}
	o, err := s.Store.GetModuleOTA(ctx, m.ID)
	if err != nil {
		return nil, err
	}
	if o.MSISDN == "" || o.Keys[UsageENC] == nil || o.Keys[UsageMAC] == nil || o.KVN < 1 || o.KVN > 0x0F || custody == nil {
		return nil, fmt.Errorf("keyport: module %s: %w", eid, ErrNoSMSReach)
	}
	if allocate && o.Shared {
		return nil, fmt.Errorf("keyport: module %s: no trigger SMS: %w", eid, ErrMSISDNShared)
	}
	coding := byte(o.KVN<<4) | gp.OTAAlgAES
	t := &SMSTarget{EID: eid, MSISDN: o.MSISDN, Counter: o.Counter, KIc: coding, KID: coding}
	if allocate {
		// Its own transaction, committed before the packet is sealed: a
		// counter is used at most once, whatever happens to the send.
		if err := s.Store.Tx(ctx, func(tx Repo) error {
			c, err := tx.NextOTACounter(ctx, m.ID)
			t.Counter = c
			return err
		}); err != nil {
			return nil, err
		}
	}
	t.Keys = gp.OTAKeys{KIc: coding, KID: coding,
		Cipher: custody.OTAKey(ctx, ISDKey(eid, m.ISDAID, UsageENC, o.Keys[UsageENC])),
		MAC:    custody.OTAKey(ctx, ISDKey(eid, m.ISDAID, UsageMAC, o.Keys[UsageMAC]))}
	return t, nil
}

// ModuleByMSISDN returns the EID of the module with the MSISDN, in any
// form NormalizeMSISDN takes (an SMSC may put a "+" before the source
// address): ErrNotFound for none, or for a sender that is not an E.164
// number; ErrConflict when several modules have it (SharedMSISDN): a
// proof of receipt from it is attributed to none of them.
func (s *Service) ModuleByMSISDN(ctx context.Context, msisdn string) (EID, error) {
	n, err := NormalizeMSISDN(msisdn)
	if err != nil || n == "" {
		return "", fmt.Errorf("keyport: module by MSISDN %s: not an E.164 number: %w", MaskedMSISDN(msisdn), ErrNotFound)
	}
	return s.Store.ModuleByMSISDN(ctx, n)
}

// SharedMSISDN is a number several modules have. keyport refuses to give
// a module a number another one has (SetMSISDN, an import, perso), so
// only a database from before that holds one; a proof of receipt from it
// is attributed to none of the modules, and none of them gets a trigger
// SMS (ErrMSISDNShared: they are woken through the agents' wake-up
// channel), until an admin clears the number on all of them but the one
// it reaches.
type SharedMSISDN struct {
	MSISDN string
	// EIDs are its modules (the first ten by id); More counts the others.
	EIDs []EID
	More int
}

// SharedMSISDNs lists the numbers several modules have (admins only).
func (s *Service) SharedMSISDNs(ctx context.Context, p Principal) ([]SharedMSISDN, error) {
	if !p.Admin {
		return nil, ErrForbidden
	}
	return s.Store.SharedMSISDNs(ctx)
}

// SMSReceiptWindow is how long a trigger SMS's message ids are kept for
// its delivery receipt: an SMSC gives up on a message well before (its
// validity period is days at most).
const SMSReceiptWindow = 7 * 24 * time.Hour

// SMSSent notes that a trigger SMS to module eid was given these message
// ids by the SMSC, so that its delivery receipt finds the module on any
// replica (ModuleBySMS).
func (s *Service) SMSSent(ctx context.Context, eid EID, ids []string) error {
	return s.Store.RecordSMS(ctx, eid, ids, s.now().UTC(), SMSReceiptWindow)
}

// ModuleBySMS returns the module a trigger SMS with this message id went
// to (ErrNotFound: not one keyport sent in the receipt window).
func (s *Service) ModuleBySMS(ctx context.Context, messageID string) (EID, error) {
	return s.Store.ModuleBySMS(ctx, messageID)
}

// TriggerErrorPrefix starts a job's last error that TriggerFailed wrote: a
// later wake-up that is sent does not clear it (only the card's answer, or
// the job's end, tells more).
const TriggerErrorPrefix = "trigger: "

// TriggerFailed records why a module's trigger did not get through (a
// delivery receipt of failure, a PoR with an error status) on each of its
// QUEUED second-key jobs, and schedules each for a retry with backoff.
func (s *Service) TriggerFailed(ctx context.Context, eid EID, reason string) error {
	m, err := s.Store.GetModule(ctx, eid)
	if err != nil {
		return err
	}
	now := s.now().UTC()
	jobs, err := s.Store.PendingModuleJobs(ctx, m.ID, 50)
	if err != nil {
		return err
	}
	if len(reason) > 500 {
		reason = reason[:500]
	}
	for _, pj := range jobs {
		j := pj.Job
		// Recorded even when the wake-up that sent the trigger counts
		// itself on the job meanwhile (read again).
		err := s.whileQueued(ctx, &j, func(j *Job) error {
			from, attempts := j.State, j.Attempts
			j.LastError = TriggerErrorPrefix + reason
			if next := now.Add(s.Delivery.BackoffAfter(j.Attempts, rand.Float64())); next.After(j.NextRunAt) {
				j.NextRunAt = next
			}
			return s.Store.UpdateJob(ctx, j, from, attempts)
		})
		if err != nil && !errors.Is(err, ErrConflict) {
			return err
		}
	}
	return nil
}

// OTACounterJump is how far past a refused packet's counter keyport moves a
// module's SCP80 counter when the card refused it as "counter low": the
// card holds a higher counter than keyport (the database was restored from
// a backup older than the last trigger), and its PoR does not say how much
// higher (it carries the packet's counter). 65,536 covers that many
// triggers sent since the backup in one step; a larger gap takes one step
// per refused trigger, and the 5-byte counter has room for 16 million
// steps.
const OTACounterJump = 1 << 16

// ActionOTACounterRaise is the audit action of TriggerCounterLow's raise.
const ActionOTACounterRaise = "module.ota-counter.raise"

// TriggerCounterLow handles a proof of receipt, authenticated under module
// eid's OTA keys, in which the card refused the packet with this counter as
// "counter low". When that counter is still the last keyport allocated
// (no newer packet went out, whose own PoR then decides), the module's
// counter moves OTACounterJump past it, with an audit event, in one
// transaction, so that the job's next trigger gets through; it says whether
// it did. A card refusing an older counter (a replayed SMS) moves nothing:
// only the latest packet's refusal shows that the card is ahead of
// keyport.
func (s *Service) TriggerCounterLow(ctx context.Context, eid EID, refused uint64) (bool, error) {
	m, err := s.Store.GetModule(ctx, eid)
	if err != nil {
		return false, err
	}
	to := min(refused+OTACounterJump, gp.MaxCounter-1)
	var raised bool
	err = s.Store.Tx(ctx, func(tx Repo) error {
		var err error
		if raised, err = tx.RaiseOTACounter(ctx, m.ID, refused, to); err != nil || !raised {
			return err
		}
		return s.audit(ctx, tx, "system", ActionOTACounterRaise, string(eid), map[string]any{
			"refused_counter": refused, "counter": to,
			"cause": "the card refused the last trigger as counter low (its counter is ahead of keyport's)"})
	})
	if err != nil {
		return false, err
	}
	if raised {
		s.log().Warn("SCP80 counter raised: the card is ahead of keyport's counter", "eid", eid, "refused", refused, "counter", to)
	}
	return raised, nil
}

// SMSReach binds the service's SMS-reach use cases to the HSM's OTA
// custody, for an SMS trigger adapter.
type SMSReach struct {
	Service *Service
	OTA     OTACustody
}

// Target allocates a counter and returns the module's SMS target.
func (r SMSReach) Target(ctx context.Context, eid EID) (*SMSTarget, error) {
	return r.Service.SMSTarget(ctx, eid, r.OTA)
}

// Keys returns the module's SMS target without allocating a counter.
func (r SMSReach) Keys(ctx context.Context, eid EID) (*SMSTarget, error) {
	return r.Service.SMSKeys(ctx, eid, r.OTA)
}

// ModuleByMSISDN finds a module by its MSISDN.
func (r SMSReach) ModuleByMSISDN(ctx context.Context, msisdn string) (EID, error) {
	return r.Service.ModuleByMSISDN(ctx, msisdn)
}

// Sent notes a trigger SMS's message ids for its delivery receipt.
func (r SMSReach) Sent(ctx context.Context, eid EID, ids []string) error {
	return r.Service.SMSSent(ctx, eid, ids)
}

// ModuleBySMS finds the module a trigger SMS went to by its message id.
func (r SMSReach) ModuleBySMS(ctx context.Context, messageID string) (EID, error) {
	return r.Service.ModuleBySMS(ctx, messageID)
}

// CounterLow handles an authenticated "counter low" PoR for the counter.
func (r SMSReach) CounterLow(ctx context.Context, eid EID, refused uint64) (bool, error) {
	return r.Service.TriggerCounterLow(ctx, eid, refused)
}

// Failed records a trigger failure on the module's waiting jobs.
func (r SMSReach) Failed(ctx context.Context, eid EID, reason string) error {
	return r.Service.TriggerFailed(ctx, eid, reason)
}
