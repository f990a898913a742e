package keyport

import (
	"context"
	"encoding/hex"
	"fmt"
	"strings"

	"github.com/keyport/keyport/gp"
)

// JobData delivers a provider's data script: an SCP03 session at level 33
// under the provider's own keys that stores data objects in its domain or
// reads them (DESIGN.md flow 9; the objects' coding is in gp/dataobj.go).
// keyport holds none of those keys: it checks the script's structure,
// delivers it, and keeps the card's answer as the card sent it, encrypted
// (R-ENC) and MAC'd (R-MAC) for the provider, who alone can read and verify
// it (ReadDataAnswers).
const JobData JobKind = "data"

// DataLevel is the security level a data script must open: C-MAC, C-DEC,
// R-MAC, R-ENC (AmdD Table 7-3), so that the data travels encrypted both
// ways and the card's answers prove themselves to the provider.
const DataLevel = gp.LevelCMAC | gp.LevelCDEC | gp.LevelRMAC | gp.LevelRENC

// DataScriptRequest is the body of POST /api/v1/domains/{eid}/{aid}/data-scripts:
// C-APDUs in hex, already protected by the provider's SCP03 session
// (`keyport sp data put|get` builds it).
type DataScriptRequest struct {
	APDUs []string `json:"apdus"`
}

// DataPayload is the payload of a JobData job.
type DataPayload struct {
	EID   EID      `json:"eid"`
	AID   AID      `json:"aid"`
	APDUs []string `json:"apdus"` // upper-case hex
	// Probe marks keyport's own counter probe (resync.go), queued when
	// the domain was in ProbeState; it is no provider's script.
	Probe      bool        `json:"probe,omitempty"`
	ProbeState DomainState `json:"probe_state,omitempty"`
}

// CheckDataScript validates a data script for a domain whose keys are
// currentKVN and returns the job payload. The script opens an SCP03
// session (INITIALIZE UPDATE on currentKVN, then EXTERNAL AUTHENTICATE with
// P1 = 33) and then holds only STORE DATA of DGIs and GET DATA of data
// objects, each under secure messaging: nothing that manages the card.
func CheckDataScript(eid EID, aid AID, currentKVN int, req DataScriptRequest) (*DataPayload, error) {
	if len(req.APDUs) < 3 {
		return nil, invalid("apdus", "a data script is INITIALIZE UPDATE, EXTERNAL AUTHENTICATE and at least one STORE DATA or GET DATA")
	}
	cmds, apdus, err := parseScriptAPDUs(req.APDUs)
	if err != nil {
		return nil, err
	}
	p := &DataPayload{EID: eid, AID: aid, APDUs: apdus}
	for i, c := range cmds {
		field := fmt.Sprintf("apdus[%d]", i)
		switch {
		case i == 0:
			if c.INS != gp.INSInitializeUpdate {
				return nil, Invalid(field, "a data script starts with INITIALIZE UPDATE (an SCP03 session with your keys)")
			}
			if c.P1 != 0 && int(c.P1) != currentKVN {
				return nil, Invalid(field, "INITIALIZE UPDATE asks for KVN %02X; the domain's keys are KVN %02X", c.P1, currentKVN)
			}
		case i == 1:
			if c.INS != gp.INSExternalAuthenticate {
				return nil, Invalid(field, "EXTERNAL AUTHENTICATE must follow INITIALIZE UPDATE")
			}
			if gp.SecurityLevel(c.P1) != DataLevel {
				return nil, Invalid(field, "EXTERNAL AUTHENTICATE asks for security level %02X: data needs level 33 (C-MAC, C-DEC, R-MAC, R-ENC), so that keyport and the handset see only ciphertext", c.P1)
			}
		default:
			if c.CLA&0x04 == 0 {
				return nil, Invalid(field, "%s without secure messaging", gp.INSName(c.INS))
			}
			switch {
			case c.INS == gp.INSStoreData && c.P1&0x18 == gp.StoreDataDGI && c.P1&gp.StoreDataEncrypted == 0:
			case c.INS == gp.INSGetData && gp.IsDataObject(uint16(c.P1)<<8|uint16(c.P2)):
			default:
				return nil, Invalid(field, "%s (INS %02X P1 %02X P2 %02X) is not allowed: a data script holds STORE DATA of DGIs and GET DATA of data objects %04X..%04X only",
					gp.INSName(c.INS), c.INS, c.P1, c.P2, gp.DataObjectFirst, gp.DataObjectLast)
			}
		}
	}
	return p, nil
}

// Commands decodes the payload's APDUs (validated by CheckDataScript).
func (p *DataPayload) Commands() ([]gp.Command, error) { return decodeCommands(p.APDUs) }

func decodeCommands(apdus []string) ([]gp.Command, error) {
	out := make([]gp.Command, 0, len(apdus))
	for i, s := range apdus {
		b, err := hex.DecodeString(s)
		if err != nil {
			return nil, fmt.Errorf("keyport: stored APDU %d: %w", i, err)
		}
		c, err := gp.ParseCommand(b)
		if err != nil {
			return nil, fmt.Errorf("keyport: stored APDU %d: %w", i, err)
		}
		out = append(out, c)
	}
	return out, nil
}

// JudgeData records a module's answer to a data script. keyport has no key
// to check it with: the job is confirmed when the module ran every command
// and each answered 9000 (status words travel in clear); the R-APDUs are
// kept as the card sent them, for the provider to decrypt and verify. The
// sequence counter of the INITIALIZE UPDATE answer (in clear, AmdD
// 6.2.2.1) is reported unverified: it only tells the provider where its
// next script starts, and a wrong one only fails that script. A counter
// probe's result also names the key set that answered (CardKVN).
func (p *DataPayload) JudgeData(status string, body []byte) (ScriptResult, error) {
	r := ScriptResult{ScriptStatus: status}
	if status != "ok" {
		r.Cause = fmt.Sprintf("the module reported script status %q", status)
		return r, nil
	}
	resps, cmds, err := readAnswer(p.APDUs, body, &r)
	if err != nil {
		return r, err
	}
	r.SequenceCounter = LearnCounter(cmds, resps)
	if iu, ok := initUpdateAnswer(cmds, resps); p.Probe && ok {
		kvn := int(iu.KVN)
		r.CardKVN = &kvn
	}
	if !allRan(&r, cmds, resps) {
		return r, nil
	}
	r.Confirmed = true
	return r, nil
}

// DataScript builds a provider's data script offline: the SSD's challenge
// is pseudo-random (i=70), so from its keys (KVN kvn), its AID and the
// sequence counter keyport reports (the card uses counter+1, AmdD 6.2.2.1)
// the whole session is precomputed: INITIALIZE UPDATE, EXTERNAL
// AUTHENTICATE at level 33, then cmds wrapped (C-MAC, C-DEC). It returns
// the body of POST /api/v1/domains/{eid}/{aid}/data-scripts. Keep it: its
// INITIALIZE UPDATE holds the host challenge ReadDataAnswers needs.
func DataScript(aid AID, kvn, counter int, keys map[KeyUsage][]byte, cmds []gp.Command) (DataScriptRequest, error) {
	for _, u := range []KeyUsage{UsageENC, UsageMAC} {
		if n := len(keys[u]); n != 16 && n != 24 && n != 32 {
			return DataScriptRequest{}, Invalid("keys."+string(u), "an AES key of 16, 24 or 32 bytes")
		}
	}
	if kvn < 1 || kvn > 0x7F {
		return DataScriptRequest{}, Invalid("kvn", "KVN %d is not in 1..127", kvn)
	}
	if counter < 0 || counter >= 0xFFFFFF {
		return DataScriptRequest{}, Invalid("counter", "the sequence counter is 0..FFFFFE")
	}
	if len(cmds) == 0 || len(cmds)+2 > MaxScriptAPDUs {
		return DataScriptRequest{}, Invalid("commands", "1 to %d commands", MaxScriptAPDUs-2)
	}
	hs, err := gp.NewHostSession(gp.KeySet{KVN: byte(kvn), ENC: gp.AESKey(keys[UsageENC]), MAC: gp.AESKey(keys[UsageMAC])}, nil)
	if err != nil {
		return DataScriptRequest{}, err
	}
	out := []gp.Command{hs.InitializeUpdate()}
	if _, err := hs.Precompute(uint32(counter+1), aid.Bytes(), scp03I); err != nil {
		return DataScriptRequest{}, err
	}
	ea, err := hs.ExternalAuthenticate(DataLevel)
	if err != nil {
		return DataScriptRequest{}, err
	}
	out = append(out, ea)
	for _, c := range cmds {
		w, err := hs.Wrap(c)
		if err != nil {
			return DataScriptRequest{}, err
		}
		out = append(out, w)
	}
	return DataScriptRequest{APDUs: apduHex(out)}, nil
}

// ReadDataAnswers is the provider's side of a data job's result: it checks,
// under the provider's keys, that the answers res holds came from the card
// for the script req (card cryptogram, pseudo-random challenge, R-MAC of
// every answer; gp.CheckAnswers) at level 33, and returns the answers to
// the commands after EXTERNAL AUTHENTICATE, R-ENC decrypted, one per
// command. An answer that does not verify is an error: it was not the
// card's.
func ReadDataAnswers(aid AID, keys gp.KeySet, req DataScriptRequest, res ScriptResult) ([]gp.Response, error) {
	cmds, err := decodeCommands(req.APDUs)
	if err != nil {
		return nil, err
	}
	var resps []gp.Response
	for i, s := range res.Responses {
		b, err := hex.DecodeString(s)
		if err != nil {
			return nil, fmt.Errorf("keyport: answer %d is not hex", i+1)
		}
		r, err := gp.ParseResponse(b)
		if err != nil {
			return nil, fmt.Errorf("keyport: answer %d: %w", i+1, err)
		}
		resps = append(resps, r)
	}
	if len(resps) != len(cmds) {
		return nil, fmt.Errorf("keyport: %d answers to %d commands (%s)", len(resps), len(cmds), res.Cause)
	}
	answers, level, err := gp.CheckAnswers(keys, aid.Bytes(), cmds, resps)
	if err != nil {
		return nil, fmt.Errorf("keyport: the answers did not come from a card holding your keys: %w", err)
	}
	if level != DataLevel {
		return nil, fmt.Errorf("keyport: the script ran at level %02X, not 33", byte(level))
	}
	for i, a := range answers {
		if a.SW != gp.SWOK {
			return nil, fmt.Errorf("keyport: command %d (%s) answered %s", i+1, gp.INSName(cmds[i].INS), a.SW)
		}
	}
	return answers[2:], nil
}

// SubmitDataScript queues a provider's data script for one of its
// PERSONALIZED domains: the job, its audit event and the provider's
// "job.queued" webhook in one transaction. One data script per domain at a
// time (each is computed from the sequence counter the previous one
// leaves): ErrConflict while another is not final.
func (s *Service) SubmitDataScript(ctx context.Context, p Principal, eid EID, aid AID, req DataScriptRequest) (*Job, error) {
	d, err := s.providerDomain(ctx, p, eid, aid, "data scripts")
	if err != nil {
		return nil, err
	}
	payload, err := CheckDataScript(eid, aid, d.KVN, req)
	if err != nil {
		return nil, s.pendingDataKVN(ctx, d, req, err)
	}
	return s.queueProviderScript(ctx, p, d, providerScript{
		kind: JobData, what: "data script", action: "data.submit",
		fits: func(_ context.Context, _ Repo, d *Domain) error {
			if d.State != Personalized {
				return fmt.Errorf("%w: domain is %s; a data script needs a PERSONALIZED domain (your own keys on it)", ErrConflict, d.State)
			}
			if d.SeqUnverified {
				return ErrCounterResync
			}
			return nil
		},
		attach: func(j *Job) { j.Data = payload },
		audit:  map[string]any{"apdus": len(payload.APDUs)},
	})
}

// pendingDataKVN is the error of a data script CheckDataScript refused
// with err: err itself, unless the script opens its session on a pending
// key set of domain d (pendingKeys), which it then names. A data script is
// not accepted on a pending KVN: keyport holds none of its keys and
// judges a data script by its status words alone (JudgeData), which are
// not authenticated, so its answer could never prove which key set the
// card holds, and the domain would stay recorded on a KVN the card may no
// longer have. A rotation from the pending KVN is what the card's own
// proof confirms.
func (s *Service) pendingDataKVN(ctx context.Context, d *Domain, req DataScriptRequest, err error) error {
	if len(req.APDUs) == 0 {
		return err
	}
	b, herr := hex.DecodeString(strings.TrimSpace(req.APDUs[0]))
	if herr != nil {
		return err
	}
	c, perr := gp.ParseCommand(b)
	if perr != nil || c.INS != gp.INSInitializeUpdate || int(c.P1) == d.KVN || c.P1 == 0 {
		return err
	}
	pending, perr := pendingKeys(ctx, s.Store, d)
	if perr != nil {
		return perr
	}
	if !hasPendingKVN(pending, int(c.P1)) {
		return err
	}
	return Invalid("apdus[0]", "INITIALIZE UPDATE asks for KVN %02X, which is pending: a key change to it is unproven, so the card may hold it or still KVN %02X. "+
		"keyport takes no data script on a pending key set (a data script's answer proves no key set to keyport); submit a rotation from KVN %02X "+
		"(`keyport sp script --rotate --current-keys` with its keys file): the card's answer to it confirms the key set and moves the domain on", c.P1, d.KVN, c.P1)
}
