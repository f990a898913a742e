package keyport

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"encoding/hex"
	"strings"

	"github.com/keyport/keyport/gp"
)

// scp03I is the SCP03 i parameter keyport's precomputed sessions assume
// (AmdD Table 5-1): pseudo-random card challenge, R-MAC and R-ENC
// supported. The card's own i is in its INITIALIZE UPDATE answer; a card
// with another one answers otherwise, and its answer is judged the long
// way.
const scp03I = gp.IPseudoRandom | 0x60

// The expected answer of a second-key script. A second-key script is
// judged under the domain's first keys, which the HSM holds: unwrapping
// them and deriving the session costs most of an admin session's CPU. Yet
// the whole session is fixed when the script is submitted — the provider
// precomputed it on the counter keyport reported (i=70: the card
// challenge follows from the counter) — and so is the answer of a card
// that runs it: its card cryptogram, and every R-MAC over the answer data
// the expectation declares (the PUT KEY's KVN and KCVs, nothing for SET
// STATUS). SubmitScript therefore plays the card once, in the HSM
// (gp.ExpectAnswers), and keeps only the SHA-256 of those answers in the
// job (SecondKeyPayload.AnswerDigest). An answer whose digest is that one
// is, byte for byte, what only a holder of the first keys could make for
// this session: it is judged without the HSM. Any other answer — a
// refusal, a card on another counter or another i, a script that would
// fail — is judged the long way (SecondKeyPayload.Judge), as before.
//
// The digest, unlike the MACs it covers, gives a reader of the database
// nothing to forge an answer with (a preimage of SHA-256 over 64-bit MACs
// under keys it does not have). The answers' first 10 bytes, the card's
// key diversification data, are unknown at submission and not covered by
// the card cryptogram: they are left out, as the long way leaves them
// unchecked.

// expectAnswer sets p.AnswerDigest for a second-key script p of ASSIGNED
// domain d, when its answer can be known: the script is INITIALIZE UPDATE,
// EXTERNAL AUTHENTICATE, then PUT KEY and SET STATUS only (answers whose
// data the expectation declares), built on the counter keyport knows (or
// the one it declares), and a card holding the first keys would run it
// (gp.ExpectAnswers checks its cryptograms and C-MACs). Otherwise, or if
// the HSM fails, p is left without one: the answer is then judged the long
// way, so nothing is lost but time.
func (s *Service) expectAnswer(ctx context.Context, d *Domain, p *SecondKeyPayload) {
	if p.Rotate || p.Verify || scriptFits(d, p, nil) != nil {
		return // the transaction refuses it anyway: no HSM work for it
	}
	cmds, err := p.Commands()
	if err != nil || len(cmds) < 3 {
		return
	}
	plain := make([][]byte, len(cmds))
	for i, c := range cmds[2:] {
		switch c.INS {
		case gp.INSPutKey:
			plain[i+2] = p.Expect.putKeyAnswer()
		case gp.INSSetStatus:
		default:
			return // an answer whose data keyport cannot know
		}
	}
	counter := d.SeqCounter
	if c := p.Expect.SequenceCounter; c != nil {
		counter = *c
	}
	var rs []gp.Response
	err = s.withDomainKeys(ctx, d, func(keys gp.KeySet) error {
		var err error
		rs, err = gp.ExpectAnswers(keys, p.AID.Bytes(), scp03I, uint32(counter+1), cmds, plain)
		return err
	})
	if err != nil {
		s.log().Info("second-key script: its answer is not known in advance; it will be judged in full", "domain", d.ID, "reason", err)
		return
	}
	p.AnswerDigest = answerDigest(rs)
}

// putKeyAnswer is the data of the PUT KEY answer e declares: the new KVN,
// then each key's KCV in key-identifier order (GPCS 11.8.3).
func (e Expectation) putKeyAnswer() []byte {
	out := []byte{byte(e.KVN)}
	for _, u := range Usages {
		kcv, _ := hex.DecodeString(e.KCV[u])
		out = append(out, kcv...)
	}
	return out
}

// answerDigest is the SHA-256, in upper-case hex, of a script's answers,
// each length-prefixed, the INITIALIZE UPDATE answer without its key
// diversification data.
func answerDigest(rs []gp.Response) string {
	h := sha256.New()
	for i, r := range rs {
		b := r.Bytes()
		if i == 0 && len(b) >= 10 {
			b = b[10:]
		}
		h.Write(binary.BigEndian.AppendUint32(nil, uint32(len(b))))
		h.Write(b)
	}
	return strings.ToUpper(hex.EncodeToString(h.Sum(nil)))
}

// judgeExpected judges the module's answer to p by its digest alone: ok
// when the answer is the one expectAnswer computed, which proves the key
// replacement as Judge would (the card cryptogram and every R-MAC are
// those of a card holding the first keys, every command ran with 9000,
// and the PUT KEY answer carries the declared KVN and KCVs). ok is false
// when p has no digest or the answer is another: the caller judges it the
// long way. A body that does not parse is an *InvalidError.
func (p *SecondKeyPayload) judgeExpected(status string, body []byte) (r ScriptResult, ok bool, err error) {
	if p.AnswerDigest == "" || status != "ok" {
		return r, false, nil
	}
	r.ScriptStatus = status
	resps, cmds, err := readAnswer(p.APDUs, body, &r)
	if err != nil {
		return r, false, err
	}
	if len(resps) != len(cmds) || subtle.ConstantTimeCompare([]byte(answerDigest(resps)), []byte(p.AnswerDigest)) != 1 {
		return ScriptResult{}, false, nil
	}
	r.SequenceCounter = LearnCounter(cmds, resps)
	r.Confirmed = true
	return r, true, nil
}
