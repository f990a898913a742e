package keyport

import (
	"context"
	"encoding/hex"
	"fmt"
	"strings"

	"github.com/keyport/keyport/gp"
)

// Bounds on a submitted script.
const (
	MaxScriptAPDUs = 64
	// MaxScriptBytes keeps a whole script response within one TLS record
	// (2^14 bytes, RFC 5246 §6.2.1), as cards need (PROTOCOLS.md §3.5).
	MaxScriptBytes = 12 << 10
)

// Expectation is what the provider declares its PUT KEY will make the card
// answer (GPCS 11.8.3): the new KVN and the KCV of each new key. keyport
// never sees the new keys; the card's answer is compared with this.
type Expectation struct {
	KVN int                 `json:"kvn"`
	KCV map[KeyUsage]string `json:"kcv"`
	// SequenceCounter is the counter the script was built on, as keyport
	// reported it (the card will use the next value). When it is given,
	// keyport refuses a script built on a counter that is no longer the
	// card's (ErrConflict) instead of sending it to fail on the card.
	SequenceCounter *int `json:"sequence_counter,omitempty"`
	// PutKeyRMAC is, for a rotation script, the R-MAC (8 bytes, hex) the
	// card's PUT KEY answer must carry: keyport does not hold a personalized
	// domain's keys, so the provider, who precomputed the session, declares
	// it, and only a card holding the current keys can produce it.
	PutKeyRMAC string `json:"put_key_rmac,omitempty"`
}

// ScriptRequest is a provider's second-key script: C-APDUs in hex, already
// protected by the provider's SCP03 session (PROTOCOLS.md §3.4, "SP keys
// rotated through the ISD's HTTPS session"), and the expected PUT KEY answer.
type ScriptRequest struct {
	APDUs  []string    `json:"apdus"`
	Expect Expectation `json:"expect"`
	// Rotate marks a rotation script for a PERSONALIZED domain (the
	// provider replaces its current keys by the next KVN; RotateScript).
	Rotate bool `json:"rotate,omitempty"`
}

// SecondKeyPayload is the payload of a JobSecondKey job.
type SecondKeyPayload struct {
	EID    EID         `json:"eid"`
	AID    AID         `json:"aid"`
	APDUs  []string    `json:"apdus"` // upper-case hex
	Expect Expectation `json:"expect"`
	// PutKey is the index of the PUT KEY command in APDUs.
	PutKey int `json:"put_key"`
	// InitUpdate is the index of INITIALIZE UPDATE, -1 if none.
	InitUpdate int `json:"init_update"`
	// Rotate marks a rotation of a PERSONALIZED domain's keys
	// (CheckRotateScript); its answer is judged by JudgeRotation.
	Rotate bool `json:"rotate,omitempty"`
	// Verify marks keyport's own proof of a release: a session with the
	// new SSD under its new first keys (releaseVerifyScript, JudgeVerify).
	Verify bool `json:"verify,omitempty"`
	// Assigned marks a rotation submitted while its domain was ASSIGNED:
	// the provider's first key change had an unproven outcome, and the
	// rotation starts from its pending KVN (pendingKeys). Its confirmation
	// moves the domain ASSIGNED → PERSONALIZED, as a confirmed second-key
	// script does.
	Assigned bool `json:"assigned,omitempty"`
	// AnswerDigest is the SHA-256 of the answer a card holding the first
	// keys gives to a second-key script, computed when it was submitted
	// (expectAnswer): an answer with this digest is judged without the
	// HSM. Empty when the answer could not be known in advance.
	AnswerDigest string `json:"answer_digest,omitempty"`
}

// DomainState is the state the payload's domain must be in for the script
// to go out: ASSIGNED for a second-key script and for a rotation that
// recovers one (Assigned), PERSONALIZED for any other rotation.
func (p *SecondKeyPayload) DomainState() DomainState {
	switch {
	case p.Rotate && p.Assigned:
		return Assigned
	case p.Rotate:
		return Personalized
	case p.Verify:
		return Releasing
	}
	return Assigned
}

// ScriptResult is what the module answered to a second-key script.
type ScriptResult struct {
	// ScriptStatus is the card's X-Admin-Script-Status (GP Amd B), or
	// "answer-lost" when the dialog broke before the answer came.
	ScriptStatus string `json:"script_status"`
	// Responses are the R-APDUs (data ‖ SW) in hex, in script order.
	Responses []string `json:"responses,omitempty"`
	// SW is the status word that failed the job, if any.
	SW string `json:"sw,omitempty"`
	// Cause says in words why the job failed.
	Cause string `json:"cause,omitempty"`
	// SequenceCounter is the SCP03 counter the card reported in its
	// INITIALIZE UPDATE answer (AmdD 6.2.2.1), when it did.
	SequenceCounter *int `json:"sequence_counter,omitempty"`
	// CardKVN is, for keyport's counter probe (resync.go), the KVN of the
	// key set that answered its INITIALIZE UPDATE, as the card's answer
	// names it, unauthenticated: after a rotation whose outcome is
	// unproven, the probe asks for whichever key set the card has, and a
	// KVN other than the domain's says the card may be on the pending one.
	// keyport records the counter, never this KVN.
	CardKVN *int `json:"card_kvn,omitempty"`
	// Confirmed is true when the answer proves the key replacement.
	Confirmed bool `json:"confirmed"`
	// Session is the admin session the script went out in (while SENT).
	Session string `json:"session,omitempty"`
	// Issuer is where an issuer job's dialog stands (issuerjob.go).
	Issuer *IssuerProgress `json:"issuer,omitempty"`
}

// CheckScript validates a second-key script for a domain whose current key
// set is currentKVN and returns the job payload. The script must open an
// SCP03 session (INITIALIZE UPDATE on the current KVN, then EXTERNAL
// AUTHENTICATE) and carry exactly one PUT KEY that replaces the current KVN
// (GPCS 11.8.2.1: P1 = KVN replaced). SELECT is refused: the admin server
// targets the SSD with X-Admin-Targeted-Application (GP Amd B).
func CheckScript(eid EID, aid AID, currentKVN int, req ScriptRequest) (*SecondKeyPayload, error) {
	cmds, apdus, err := parseScriptAPDUs(req.APDUs)
	if err != nil {
		return nil, err
	}
	p := &SecondKeyPayload{EID: eid, AID: aid, APDUs: apdus, PutKey: -1, InitUpdate: -1}
	for i, c := range cmds {
		field := fmt.Sprintf("apdus[%d]", i)
		switch c.INS {
		case gp.INSSelect:
			return nil, Invalid(field, "SELECT is not allowed: keyport targets the domain itself (X-Admin-Targeted-Application)")
		case gp.INSInitializeUpdate:
			if i != 0 {
				return nil, Invalid(field, "INITIALIZE UPDATE must be the first command")
			}
			if c.P1 != 0 && int(c.P1) != currentKVN {
				return nil, Invalid(field, "INITIALIZE UPDATE asks for KVN 0x%02X; the domain's keys are KVN 0x%02X", c.P1, currentKVN)
			}
			p.InitUpdate = i
		case gp.INSExternalAuthenticate:
			if i != 1 || p.InitUpdate != 0 {
				return nil, Invalid(field, "EXTERNAL AUTHENTICATE must follow INITIALIZE UPDATE")
			}
			if l := gp.SecurityLevel(c.P1); l&gp.LevelRMAC == 0 || l&gp.LevelCMAC == 0 {
				return nil, Invalid(field, "EXTERNAL AUTHENTICATE asks for security level %02X: keyport needs R-MAC (level 13 or 33) so that the card's answers prove themselves; `keyport sp script` builds level 13", c.P1)
			}
		case gp.INSPutKey:
			if p.PutKey >= 0 {
				return nil, Invalid(field, "only one PUT KEY per script")
			}
			if c.CLA&0x04 == 0 {
				return nil, Invalid(field, "PUT KEY without secure messaging")
			}
			if int(c.P1&0x7F) != currentKVN {
				return nil, Invalid(field, "PUT KEY replaces KVN 0x%02X; the domain's keys are KVN 0x%02X", c.P1&0x7F, currentKVN)
			}
			p.PutKey = i
		}
	}
	if p.InitUpdate != 0 {
		return nil, invalid("apdus", "the script must start with INITIALIZE UPDATE (an SCP03 session with the first keys)")
	}
	if p.PutKey < 0 {
		return nil, invalid("apdus", "the script has no PUT KEY")
	}
	e := req.Expect
	if e.KVN < 1 || e.KVN > 0x7F || e.KVN == currentKVN {
		return nil, Invalid("expect.kvn", "must be a new key version number 1..127, not %d", e.KVN)
	}
	if len(e.KCV) != len(Usages) {
		return nil, invalid("expect.kcv", "give the KCV of enc, mac and dek")
	}
	p.Expect = Expectation{KVN: e.KVN, KCV: map[KeyUsage]string{}}
	if c := e.SequenceCounter; c != nil {
		if *c < 0 || *c >= 0xFFFFFF {
			return nil, invalid("expect.sequence_counter", "the sequence counter is 0..FFFFFE")
		}
		n := *c
		p.Expect.SequenceCounter = &n
	}
	for _, u := range Usages {
		k, ok := e.KCV[u]
		b, err := hex.DecodeString(k)
		if !ok || err != nil || len(b) != 3 {
			return nil, Invalid("expect.kcv."+string(u), "a KCV is 3 bytes in hex (6 digits)")
		}
		p.Expect.KCV[u] = strings.ToUpper(k)
	}
	return p, nil
}

// parseScriptAPDUs is the start every script check shares: at least one
// and at most MaxScriptAPDUs commands, MaxScriptBytes in all, each hex and
// a well-formed command APDU. It returns the commands and their canonical
// (upper-case) hex, which is what a job stores.
func parseScriptAPDUs(in []string) ([]gp.Command, []string, error) {
	if len(in) == 0 {
		return nil, nil, invalid("apdus", "the script holds no APDU")
	}
	if len(in) > MaxScriptAPDUs {
		return nil, nil, Invalid("apdus", "at most %d APDUs", MaxScriptAPDUs)
	}
	cmds := make([]gp.Command, 0, len(in))
	out := make([]string, 0, len(in))
	total := 0
	for i, s := range in {
		field := fmt.Sprintf("apdus[%d]", i)
		b, err := hex.DecodeString(strings.TrimSpace(s))
		if err != nil {
			return nil, nil, Invalid(field, "not hex")
		}
		total += len(b)
		if total > MaxScriptBytes {
			return nil, nil, Invalid("apdus", "the script is larger than %d bytes", MaxScriptBytes)
		}
		c, err := gp.ParseCommand(b)
		if err != nil {
			return nil, nil, Invalid(field, "not a command APDU: %v", err)
		}
		cmds = append(cmds, c)
		out = append(out, strings.ToUpper(hex.EncodeToString(b)))
	}
	return cmds, out, nil
}

// Commands decodes the payload's APDUs (validated by CheckScript).
func (p *SecondKeyPayload) Commands() ([]gp.Command, error) { return decodeCommands(p.APDUs) }

// Judge compares a module's answer with the script and decides whether the
// card proved the key replacement: the job is confirmed only if the answer
// is the card's own — the card cryptogram of the INITIALIZE UPDATE answer
// verifies under the domain's current keys (keys), and every later answer
// carries a valid R-MAC (gp.CheckAnswers, AmdD 6.2.2.2 and 6.2.5) — every
// command ran with status 9000, and the PUT KEY answer carries the expected
// KVN and KCVs in key-identifier order (GPCS 11.8.3, PROTOCOLS.md §7.1).
// status is the X-Admin-Script-Status; body the TS 102 226 response script
// (AF/AB), parsed tolerantly. A body that does not parse is an
// *InvalidError and judges nothing. The result keeps the R-APDUs as the
// card sent them, R-MACs included, so that the provider, who holds the
// same keys, can check them too.
func (p *SecondKeyPayload) Judge(status string, body []byte, keys gp.KeySet) (ScriptResult, error) {
	r := ScriptResult{ScriptStatus: status}
	if status != "ok" {
		return notRun(status, body), nil
	}
	a, ok, err := p.provenAnswer(&r, body, keys, "the domain's keys")
	if !ok {
		return r, err
	}
	// The card cryptogram verified: the counter is the card's.
	r.SequenceCounter = LearnCounter(a.cmds, a.answers)
	if !allRan(&r, a.cmds, a.answers) {
		return r, nil
	}
	if r.Cause = p.Expect.refutedBy(a.answers[p.PutKey].Data); r.Cause != "" {
		return r, nil
	}
	r.Confirmed = true
	return r, nil
}

// cardAnswer is a card's answer to a script's commands: resps as the module
// returned them, answers unwrapped and checked (gp.CheckAnswers).
type cardAnswer struct {
	cmds           []gp.Command
	resps, answers []gp.Response
}

// provenAnswer reads the module's answer to p (status "ok") and checks that
// it came from a card holding keys (whose names them in a cause), under
// R-MAC: where each judgement of a script keyport holds the keys of starts.
// ok is false when r's Cause already says why the answer proves nothing, or
// when err says the body does not parse (*InvalidError).
func (p *SecondKeyPayload) provenAnswer(r *ScriptResult, body []byte, keys gp.KeySet, whose string) (a cardAnswer, ok bool, err error) {
	if a.resps, a.cmds, err = readAnswer(p.APDUs, body, r); err != nil {
		return a, false, err
	}
	answers, level, err := gp.CheckAnswers(keys, p.AID.Bytes(), a.cmds, a.resps)
	if err != nil {
		r.Cause = fmt.Sprintf("the answer did not come from a card holding %s: %v", whose, err)
		return a, false, nil
	}
	if level&gp.LevelRMAC == 0 {
		r.Cause = fmt.Sprintf("the script ran at security level %02X, without R-MAC: the card's answers prove nothing", byte(level))
		return a, false, nil
	}
	a.answers = answers
	return a, true, nil
}

// SecondKeyScript builds a provider's second-key script offline (flow 7;
// PROTOCOLS.md §2.2): the card's SCP03 challenge is pseudo-random (i=70),
// so from the first keys, the SSD's AID and the sequence counter keyport
// reports (the card will use counter+1, AmdD 6.2.2.1) the whole session is
// precomputed: INITIALIZE UPDATE on oldKVN, EXTERNAL AUTHENTICATE at level
// 13 (C-MAC + C-DEC + R-MAC: the card's answers carry MACs that prove them), PUT KEY replacing oldKVN by newKVN with the second keys
// encrypted under the first Key-DEK (GPCS 11.8.2.3, AmdD Table 7-10), and
// SET STATUS PERSONALIZED of the SSD by itself (GPCS 11.10). It returns the
// request body of POST /api/v1/domains/{eid}/{aid}/scripts.
func SecondKeyScript(aid AID, oldKVN, counter, newKVN int, first, second map[KeyUsage][]byte) (ScriptRequest, error) {
	ks, err := newKeyScript(aid, oldKVN, counter, newKVN, first, second)
	if err != nil {
		return ScriptRequest{}, err
	}
	wset, err := ks.hs.Wrap(gp.SetStatus(gp.SetStatusApplication, gp.SetStatusPersonalized, aid.Bytes()))
	if err != nil {
		return ScriptRequest{}, err
	}
	return ScriptRequest{APDUs: apduHex(append(ks.cmds, wset)),
		Expect: Expectation{KVN: newKVN, KCV: ks.kcv, SequenceCounter: &counter}}, nil
}

// keyScript is the part a second-key script and a rotation share, built
// offline: the precomputed SCP03 session on counter+1 (i=70) under the
// keys set oldKVN (current), opened at level 13 (C-MAC + C-DEC + R-MAC),
// and PUT KEY replacing oldKVN by newKVN with next encrypted under the
// current Key-DEK. hs goes on from there, for the commands that follow.
type keyScript struct {
	hs *gp.HostSession
	// cmds: INITIALIZE UPDATE, EXTERNAL AUTHENTICATE, the wrapped PUT KEY.
	cmds []gp.Command
	kcv  map[KeyUsage]string
	// putAnswer is the data the card's PUT KEY answer carries: the new
	// KVN and each key's KCV (GPCS 11.8.3).
	putAnswer []byte
}

func newKeyScript(aid AID, oldKVN, counter, newKVN int, current, next map[KeyUsage][]byte) (*keyScript, error) {
	if err := checkScriptKeys(oldKVN, counter, newKVN, current, next); err != nil {
		return nil, err
	}
	hs, err := gp.NewHostSession(gp.KeySet{KVN: byte(oldKVN), ENC: gp.AESKey(current[UsageENC]), MAC: gp.AESKey(current[UsageMAC])}, nil)
	if err != nil {
		return nil, err
	}
	iu := hs.InitializeUpdate()
	if _, err := hs.Precompute(uint32(counter+1), aid.Bytes(), scp03I); err != nil {
		return nil, err
	}
	ea, err := hs.ExternalAuthenticate(gp.LevelCMAC | gp.LevelCDEC | gp.LevelRMAC)
	if err != nil {
		return nil, err
	}
	ks := &keyScript{hs: hs, kcv: map[KeyUsage]string{}, putAnswer: []byte{byte(newKVN)}}
	pk := gp.PutKey{OldKVN: byte(oldKVN), NewKVN: byte(newKVN), FirstKID: 1}
	for _, u := range Usages {
		kc, err := gp.AESKeyComponent(current[UsageDEK], next[u])
		if err != nil {
			return nil, err
		}
		pk.Keys = append(pk.Keys, kc)
		ks.putAnswer = append(ks.putAnswer, kc.KCV...)
		ks.kcv[u] = strings.ToUpper(hex.EncodeToString(kc.KCV))
	}
	put, err := pk.Command()
	if err != nil {
		return nil, err
	}
	wput, err := hs.Wrap(put)
	if err != nil {
		return nil, err
	}
	ks.cmds = []gp.Command{iu, ea, wput}
	return ks, nil
}

// apduHex is cmds as the upper-case hex strings of a ScriptRequest.
func apduHex(cmds []gp.Command) []string {
	out := make([]string, len(cmds))
	for i, c := range cmds {
		out[i] = strings.ToUpper(hex.EncodeToString(c.Bytes()))
	}
	return out
}

// scriptFits says whether a checked script fits its domain as it is now:
// a second-key script an ASSIGNED domain, a rotation a PERSONALIZED one,
// each on the domain's current KVN (a rotation also on one of its pending
// key sets) and, when the script names the counter it was built on, on
// the counter keyport last learned from the card. A rotation of an
// ASSIGNED domain (p.Assigned) fits only from one of its pending key sets:
// the card may hold the provider's keys although the second-key script's
// answer did not prove it, and only the card's answer to that rotation can
// tell. A rotation from the first keys (KVN 30) is not accepted: the
// first key change is the second-key script, whose SET STATUS also makes
// the SSD PERSONALIZED on the card (GPCS 11.10).
func scriptFits(d *Domain, p *SecondKeyPayload, pending []PendingKeys) error {
	switch want := p.DomainState(); {
	case d.is(want):
		// LOCKED from it too, queued all the same: the card, which
		// refuses a locked SSD, says so in the job's result (its SW).
	case d.State == Personalized:
		return fmt.Errorf("%w: domain is PERSONALIZED: its keys are replaced by a rotation script (`keyport sp script --rotate`, \"rotate\": true)", ErrConflict)
	case p.Rotate:
		return fmt.Errorf("%w: domain is %s; a rotation script needs a PERSONALIZED domain (or an ASSIGNED one with a pending key set)", ErrConflict, d.State)
	default:
		return fmt.Errorf("%w: domain is %s; a second-key script needs an ASSIGNED domain", ErrConflict, d.State)
	}
	if p.Rotate && p.Assigned && !hasPendingKVN(pending, p.Expect.KVN-1) {
		return fmt.Errorf("%w: domain is ASSIGNED: a rotation is accepted for it only from a pending key set (the KVN of a second-key script whose outcome is unproven)%s; the rotation was built for KVN %02X; nothing was stored",
			ErrConflict, pendingList(pending), p.Expect.KVN-1)
	}
	if p.Rotate && !p.Assigned && p.Expect.KVN != d.KVN+1 && !hasPendingKVN(pending, p.Expect.KVN-1) {
		return fmt.Errorf("%w: the domain's keys are KVN %02X now; the rotation was built for KVN %02X", ErrConflict, d.KVN, p.Expect.KVN-1)
	}
	if d.SeqUnverified {
		return ErrCounterResync
	}
	if c := p.Expect.SequenceCounter; c != nil && *c != d.SeqCounter {
		return fmt.Errorf("%w: the script was built on sequence counter %d, but the card's counter is %d (GET /api/v1/domains/{eid}/{aid}): build it again on %d", ErrConflict, *c, d.SeqCounter, d.SeqCounter)
	}
	return nil
}

// checkScriptKeys validates what a precomputed script is built from.
func checkScriptKeys(oldKVN, counter, newKVN int, first, second map[KeyUsage][]byte) error {
	for _, u := range Usages {
		if len(first[u]) != 16 && len(first[u]) != 24 && len(first[u]) != 32 {
			return Invalid("first."+string(u), "an AES key of 16, 24 or 32 bytes")
		}
		if len(second[u]) != 16 && len(second[u]) != 24 && len(second[u]) != 32 {
			return Invalid("second."+string(u), "an AES key of 16, 24 or 32 bytes")
		}
	}
	if oldKVN < 1 || oldKVN > 0x7F || newKVN < 1 || newKVN > 0x7F || newKVN == oldKVN {
		return Invalid("kvn", "old KVN 0x%02X and new KVN 0x%02X must differ and lie in 0x01..0x7F", oldKVN, newKVN)
	}
	if counter < 0 || counter >= 0xFFFFFF {
		return Invalid("counter", "the sequence counter is 0..FFFFFE")
	}
	return nil
}

// SubmitScript queues a provider's second-key script for one of its
// ASSIGNED domains (flow 7): the job, its audit event and the provider's
// "job.queued" webhook are written in one transaction. One script per
// domain at a time: ErrConflict while another is not final.
func (s *Service) SubmitScript(ctx context.Context, p Principal, eid EID, aid AID, req ScriptRequest) (*Job, error) {
	d, err := s.providerDomain(ctx, p, eid, aid, "scripts")
	if err != nil {
		return nil, err
	}
	var payload *SecondKeyPayload
	switch {
	case req.Rotate && d.is(Assigned):
		// Which KVN it may start from is scriptFits' to say (409 naming
		// the pending key sets): here only the structure.
		payload, err = CheckRotateScript(eid, aid, req.Expect.KVN-1, req)
	case req.Rotate:
		pending, perr := rotationPending(ctx, s.Store, d, req.Expect.KVN)
		if perr != nil {
			return nil, perr
		}
		payload, err = CheckRotateScript(eid, aid, d.KVN, req, pending...)
	default:
		payload, err = CheckScript(eid, aid, d.KVN, req)
	}
	if err != nil {
		return nil, err
	}
	s.expectAnswer(ctx, d, payload)
	action := "script.submit"
	if payload.Rotate {
		action = "rotation.submit"
	}
	return s.queueProviderScript(ctx, p, d, providerScript{
		kind: JobSecondKey, what: "script", action: action,
		fits: func(ctx context.Context, tx Repo, d *Domain) error {
			var pending []PendingKeys
			if payload.Rotate {
				// The domain as this transaction reads it says what the
				// rotation's confirmation moves (adminsession.go).
				payload.Assigned = d.is(Assigned)
				var err error
				if pending, err = rotationPending(ctx, tx, d, payload.Expect.KVN); err != nil {
					return err
				}
			}
			return scriptFits(d, payload, pending)
		},
		attach: func(j *Job) { j.SecondKey = payload },
		audit:  map[string]any{"apdus": len(payload.APDUs), "kvn": payload.Expect.KVN, "kcv": payload.Expect.KCV},
	})
}

// providerDomain is the domain a provider's script is for: its own (another
// provider's is ErrNotFound); what names the scripts for the error when p
// is no provider.
func (s *Service) providerDomain(ctx context.Context, p Principal, eid EID, aid AID, what string) (*Domain, error) {
	if p.ProviderID == "" {
		return nil, fmt.Errorf("%w: only the domain's provider submits its %s", ErrForbidden, what)
	}
	d, err := s.Store.GetDomain(ctx, eid, aid)
	if err != nil {
		return nil, err
	}
	if d.OwnerID != p.ProviderID {
		return nil, ErrNotFound
	}
	return d, nil
}

// providerScript is a checked provider script that queueProviderScript
// queues as a job of its kind.
type providerScript struct {
	kind         JobKind
	what, action string         // "script" for messages and logs; the audit action
	attach       func(*Job)     // sets the job's payload
	audit        map[string]any // the audit event's details besides the job
	// fits says whether the domain, re-read in transaction tx, can take it.
	fits func(ctx context.Context, tx Repo, d *Domain) error
}

// queueProviderScript queues ps for p's domain d in one transaction with
// its audit event and the provider's "job.queued" webhook: the domain
// re-read there must still be p's and fit ps, and no other job of ps's kind
// may be pending for it (ErrConflict; nothing is stored then).
func (s *Service) queueProviderScript(ctx context.Context, p Principal, d *Domain, ps providerScript) (*Job, error) {
	now := s.now().UTC()
	exp := now.Add(s.Delivery.expiry())
	j := &Job{Ref: NewID("job"), Kind: ps.kind, DomainID: d.ID, ModuleID: d.ModuleID, ProviderID: p.ProviderID,
		State: JobQueued, NextRunAt: now, ExpiresAt: &exp}
	ps.attach(j)
	hook, err := s.webhookURL(ctx, p.ProviderID)
	if err != nil {
		return nil, err
	}
	eid, aid := d.EID, d.AID
	err = s.Store.Tx(ctx, func(tx Repo) error {
		d, err := tx.GetDomain(ctx, eid, aid) // re-read inside the transaction
		if err != nil {
			return err
		}
		if d.OwnerID != p.ProviderID {
			return ErrNotFound
		}
		if err := ps.fits(ctx, tx, d); err != nil {
			return err
		}
		active, err := tx.ListJobs(ctx, JobFilter{DomainID: d.ID, Kind: ps.kind, States: []JobState{JobQueued, JobSent}, Limit: 1})
		if err != nil {
			return err
		}
		if len(active) > 0 {
			return fmt.Errorf("%w: %s job %s for this domain is still %s", ErrConflict, ps.what, active[0].Ref, active[0].State)
		}
		if err := tx.CreateJob(ctx, j); err != nil {
			return err
		}
		if err := runQueueHook(ctx, tx, j); err != nil { // a campaign's target (campaignrun.go)
			return err
		}
		details := map[string]any{"job": j.Ref}
		for k, v := range ps.audit {
			details[k] = v
		}
		if err := s.audit(ctx, tx, p.Actor(), ps.action, domainObject(eid, aid), details); err != nil {
			return err
		}
		return s.notify(ctx, tx, j, d.State, hook)
	})
	if err != nil {
		return nil, err
	}
	s.log().Info(ps.what+" queued", "job", j.Ref, "eid", eid, "aid", aid)
	return j, nil
}

// readAnswer reads a module's answer to a script of apdus: body is the TS
// 102 226 response script, whose R-APDUs go into r.Responses in hex as the
// card sent them (R-MACs included, for the provider to check too); it
// returns them with the script's commands. A body that does not parse, or
// holds more R-APDUs than the script has commands, is an *InvalidError.
func readAnswer(apdus []string, body []byte, r *ScriptResult) ([]gp.Response, []gp.Command, error) {
	rs, err := gp.ParseResponseScript(body)
	if err != nil {
		return nil, nil, Invalid("body", "not a TS 102 226 response script: %v", err)
	}
	if len(rs.Responses) > len(apdus) {
		return nil, nil, Invalid("body", "%d R-APDUs answer %d C-APDUs", len(rs.Responses), len(apdus))
	}
	cmds, err := decodeCommands(apdus)
	if err != nil {
		return nil, nil, err
	}
	for _, x := range rs.Responses {
		r.Responses = append(r.Responses, strings.ToUpper(hex.EncodeToString(x.Bytes())))
	}
	return rs.Responses, cmds, nil
}

// allRan reports whether the card answered every one of the script's
// commands with 9000; if not, it sets r's SW and cause: the first other
// status, or how many of the commands ran.
func allRan(r *ScriptResult, cmds []gp.Command, answers []gp.Response) bool {
	for i, x := range answers {
		if x.SW != gp.SWOK {
			r.SW = fmt.Sprintf("%04X", uint16(x.SW))
			r.Cause = fmt.Sprintf("command %d (%s) answered %s", i+1, gp.INSName(cmds[i].INS), x.SW)
			return false
		}
	}
	if len(answers) < len(cmds) {
		r.Cause = fmt.Sprintf("the module ran %d of %d commands", len(answers), len(cmds))
		return false
	}
	return true
}

// refutedBy returns why a PUT KEY answer (KVN ‖ KCVs, GPCS 11.8.3) does not
// carry the KVN and KCVs e declares, "" when it does.
func (e Expectation) refutedBy(data []byte) string {
	pk, err := gp.ParsePutKeyResponse(data)
	if err != nil {
		return fmt.Sprintf("PUT KEY answer is not KVN ‖ KCVs: %v", err)
	}
	want := gp.PutKey{NewKVN: byte(e.KVN)}
	for _, u := range Usages {
		kcv, _ := hex.DecodeString(e.KCV[u])
		want.Keys = append(want.Keys, gp.KeyComponent{KCV: kcv})
	}
	if err := pk.Confirms(want); err != nil {
		return fmt.Sprintf("PUT KEY answer %X does not carry the declared KVN and KCVs: %v", pk.Bytes(), err)
	}
	return ""
}
