package gp

import "fmt"

// ExpectAnswers plays the card for a precomputed SCP03 script (INITIALIZE
// UPDATE, EXTERNAL AUTHENTICATE, then wrapped commands) from the static
// keys alone, before the script goes out: the answers a security domain
// sdAID holding keys, with SCP03 parameter i, gives when its sequence
// counter is seq after the increment of INITIALIZE UPDATE (AmdD 6.2.2.1)
// and every later command i ≥ 2 succeeds (9000) with plain answer data
// plain[i]. Each command is checked as the card checks it — the host
// cryptogram and C-MAC of EXTERNAL AUTHENTICATE, then every C-MAC — so an
// error says the script would fail on such a card (it was built on
// another counter or other keys). The key diversification data of the
// INITIALIZE UPDATE answer is the card's own and unknown here: its 10
// bytes are zero, and a caller comparing answers leaves them out (the card
// cryptogram does not cover them). The card challenge must be
// pseudo-random (i with b5): a random one cannot be known in advance.
func ExpectAnswers(keys KeySet, sdAID []byte, i byte, seq uint32, cmds []Command, plain [][]byte) ([]Response, error) {
	if i&IPseudoRandom == 0 {
		return nil, fmt.Errorf("gp: expect answers: i=%02X has a random card challenge: %w", i, ErrState)
	}
	if len(cmds) < 2 || cmds[0].INS != INSInitializeUpdate || cmds[1].INS != INSExternalAuthenticate {
		return nil, malformed("the script does not open with INITIALIZE UPDATE and EXTERNAL AUTHENTICATE")
	}
	if len(plain) != len(cmds) {
		return nil, malformed("%d plain answers for %d commands", len(plain), len(cmds))
	}
	cs, err := NewCardSession(CardConfig{Keys: keys, KDD: make([]byte, 10), I: i, AID: sdAID})
	if err != nil {
		return nil, err
	}
	out := make([]Response, 0, len(cmds))
	r, err := cs.InitializeUpdate(cmds[0], seq)
	if err != nil {
		return nil, fmt.Errorf("gp: expect answers: %w", err)
	}
	out = append(out, r)
	if r, err = cs.ExternalAuthenticate(cmds[1]); err != nil {
		return nil, fmt.Errorf("gp: expect answers: %w", err)
	}
	out = append(out, r)
	for n := 2; n < len(cmds); n++ {
		if _, err := cs.Unwrap(cmds[n]); err != nil {
			return nil, fmt.Errorf("gp: expect answers: command %d (%s): %w", n+1, INSName(cmds[n].INS), err)
		}
		if r, err = cs.Wrap(Response{Data: plain[n], SW: SWOK}); err != nil {
			return nil, fmt.Errorf("gp: expect answers: answer %d: %w", n+1, err)
		}
		out = append(out, r)
	}
	return out, nil
}
