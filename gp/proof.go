package gp

import (
	"bytes"
	"crypto/subtle"
	"fmt"
)

// Follow moves the session on by a command another host wrapped for it, as
// Wrap would have: a precomputed script's command, whose plaintext the
// caller need not know. It checks the command's C-MAC against the session
// (ErrMAC when the command was not made for this session) and takes the
// full MAC as the chaining value, so that Unwrap can then check the card's
// R-MAC on its answer (AmdD 6.2.4, 6.2.5). Encrypted data stays encrypted.
func (h *HostSession) Follow(c Command) error {
	if h.state != stateOpen {
		return fmt.Errorf("gp: follow before EXTERNAL AUTHENTICATE: %w", ErrState)
	}
	ch := h.ch
	ch.ctr++
	if ch.level&LevelCMAC == 0 {
		return nil
	}
	if !hasSM(c.CLA) || len(c.Data) < ch.macLen {
		return fmt.Errorf("gp: %s at level %s carries no C-MAC: %w", INSName(c.INS), ch.level, ErrMAC)
	}
	n := len(c.Data) - ch.macLen
	macCLA, _ := smCLA(c.CLA)
	m := ch.commandMAC(macCLA, Command{CLA: c.CLA, INS: c.INS, P1: c.P1, P2: c.P2, Ne: c.Ne}, c.Data[:n])
	if subtle.ConstantTimeCompare(m[:ch.macLen], c.Data[n:]) != 1 {
		return fmt.Errorf("gp: %s: C-MAC is not this session's: %w", INSName(c.INS), ErrMAC)
	}
	ch.chain = m
	return nil
}

// CheckAnswers checks, from the static keys alone, that a card holding
// them gave the answers resps to the precomputed SCP03 script cmds
// (INITIALIZE UPDATE, EXTERNAL AUTHENTICATE, then wrapped commands; resps
// may be shorter when the card stopped early). It verifies the card
// cryptogram of the INITIALIZE UPDATE answer (ErrCryptogram; AmdD
// 6.2.2.2) and, in pseudo-random mode, that the card challenge is the one
// Key-ENC gives for the card's sequence counter and the SD sdAID (AmdD
// 6.2.2.1), so that both static keys are proven; that the script's
// EXTERNAL AUTHENTICATE is the one these keys
// make for the card's challenge, and the R-MAC of every later answer that
// carries one at the script's level (ErrMAC; AmdD 6.2.5). It returns the
// answers with R-MACs removed and R-ENC data decrypted, and the level.
// Error statuses carry no R-MAC: from the first one on, answers are
// returned as they are and prove nothing. At a level without R-MAC the
// later answers are returned unproven; callers that need proof demand
// LevelRMAC.
func CheckAnswers(keys KeySet, sdAID []byte, cmds []Command, resps []Response) ([]Response, SecurityLevel, error) {
	if len(resps) > len(cmds) {
		return nil, 0, malformed("%d answers to %d commands", len(resps), len(cmds))
	}
	out := append([]Response(nil), resps...)
	if len(cmds) < 2 || cmds[0].INS != INSInitializeUpdate || cmds[1].INS != INSExternalAuthenticate {
		return nil, 0, malformed("the script does not open with INITIALIZE UPDATE and EXTERNAL AUTHENTICATE")
	}
	level := SecurityLevel(cmds[1].P1)
	if len(resps) == 0 || resps[0].SW != SWOK {
		return out, level, nil
	}
	hs, err := NewHostSession(KeySet{KVN: cmds[0].P1, ENC: keys.ENC, MAC: keys.MAC}, cmds[0].Data)
	if err != nil {
		return nil, level, err
	}
	if err := hs.OnInitUpdateResponse(resps[0]); err != nil {
		return nil, level, fmt.Errorf("gp: INITIALIZE UPDATE answer: %w", err)
	}
	if c := hs.Card(); c.I&IPseudoRandom != 0 {
		want, err := PseudoRandomChallenge(keys.ENC, c.SequenceCounter, sdAID, len(c.CardChallenge))
		if err != nil {
			return nil, level, err
		}
		if subtle.ConstantTimeCompare(want, c.CardChallenge) != 1 {
			return nil, level, fmt.Errorf("gp: INITIALIZE UPDATE answer: the card challenge is not Key-ENC's for counter %06X: %w", c.SequenceCounter, ErrCryptogram)
		}
	}
	ea, err := hs.ExternalAuthenticate(level)
	if err != nil {
		return nil, level, err
	}
	if !bytes.Equal(ea.Bytes(), cmds[1].Bytes()) {
		return nil, level, fmt.Errorf("gp: the script's EXTERNAL AUTHENTICATE is not the one the keys give for the card's challenge: %w", ErrCryptogram)
	}
	if len(resps) < 2 || resps[1].SW != SWOK {
		return out, level, nil
	}
	for i := 2; i < len(resps); i++ {
		if err := hs.Follow(cmds[i]); err != nil {
			return nil, level, fmt.Errorf("gp: command %d: %w", i+1, err)
		}
		r, err := hs.Unwrap(resps[i])
		if err != nil {
			return nil, level, fmt.Errorf("gp: answer to command %d (%s): %w", i+1, INSName(cmds[i].INS), err)
		}
		out[i] = r
		if !rmacApplies(r.SW) {
			break
		}
	}
	return out, level, nil
}
