package gp

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/subtle"
	"encoding/binary"
	"fmt"
	"io"
	"strings"
)

// StaticKey is a static SCP03 key (Key-ENC or Key-MAC). Only AES-CMAC under
// the key is needed: session keys and the pseudo-random card challenge are
// KDF outputs (AmdD 6.2.1, 6.2.2.1), so the key can stay inside an HSM.
type StaticKey interface {
	// CMAC returns the 16-byte AES-CMAC of data under the key.
	CMAC(data []byte) ([]byte, error)
	// Size is the key length in bytes: 16, 24 or 32. It sets the length of
	// the derived session keys (AmdD 6.2.1).
	Size() int
}

// AESKey is a static key held in memory.
type AESKey []byte

// CMAC implements StaticKey.
func (k AESKey) CMAC(data []byte) ([]byte, error) { return CMAC(k, data) }

// Size implements StaticKey.
func (k AESKey) Size() int { return len(k) }

// KeySet is the static key set an SCP03 session authenticates with. Key-DEK
// is not part of it: SCP03 uses the static DEK only to encrypt keys in PUT
// KEY and STORE DATA (AmdD 7.3), see EncryptKey.
type KeySet struct {
	// KVN is the key version number sent in INITIALIZE UPDATE P1 (00 = any).
	KVN      byte
	ENC, MAC StaticKey
}

// KDF derivation constants (AmdD Table 6-1).
const (
	kdfCardCryptogram byte = 0x00
	kdfHostCryptogram byte = 0x01
	kdfCardChallenge  byte = 0x02
	kdfSENC           byte = 0x04
	kdfSMAC           byte = 0x06
	kdfSRMAC          byte = 0x07
)

// KDF is the AmdD 4.1.5 key derivation: NIST SP 800-108 counter mode with
// AES-CMAC as PRF, the derivation data being 11 zero bytes ‖ label ‖ 00 ‖
// L (2 bytes, in bits) ‖ counter (1 byte) ‖ context. It returns bits/8 bytes.
func KDF(key StaticKey, label byte, context []byte, bits int) ([]byte, error) {
	return kdf(key.CMAC, label, context, bits)
}

func kdf(prf func([]byte) ([]byte, error), label byte, context []byte, bits int) ([]byte, error) {
	if bits <= 0 || bits%8 != 0 || bits > 0xFFFF || bits > 255*128 {
		return nil, malformed("KDF output of %d bits", bits)
	}
	in := make([]byte, 16+len(context))
	in[11] = label
	binary.BigEndian.PutUint16(in[13:15], uint16(bits))
	copy(in[16:], context)
	out := make([]byte, 0, (bits/8+15)/16*16)
	for i := 1; len(out) < bits/8; i++ {
		in[15] = byte(i)
		block, err := prf(in)
		if err != nil {
			return nil, fmt.Errorf("gp: KDF: %w", err)
		}
		if len(block) != 16 {
			return nil, fmt.Errorf("gp: KDF: CMAC returned %d bytes, want 16", len(block))
		}
		out = append(out, block...)
	}
	return out[:bits/8], nil
}

// PseudoRandomChallenge computes the card challenge of i=x1xxxxb (b5 set):
// KDF(Key-ENC, 02, sequence counter (3 bytes) ‖ AID of the invoking SD,
// n×8 bits) (AmdD 6.2.2.1). n is the challenge length, 8 (S8) or 16 (S16).
// With it a host that tracks the counter can compute a session offline.
func PseudoRandomChallenge(enc StaticKey, seq uint32, sdAID []byte, n int) ([]byte, error) {
	if seq > 0xFFFFFF {
		return nil, malformed("sequence counter %d exceeds 3 bytes", seq)
	}
	if n != 8 && n != 16 {
		return nil, malformed("card challenge length %d, want 8 or 16", n)
	}
	ctx := append([]byte{byte(seq >> 16), byte(seq >> 8), byte(seq)}, sdAID...)
	return KDF(enc, kdfCardChallenge, ctx, n*8)
}

// SessionKeys are the SCP03 session keys S-ENC, S-MAC and S-RMAC (AmdD
// 6.2.1). They are plain bytes: they live only as long as the session.
type SessionKeys struct {
	ENC, MAC, RMAC []byte
}

// DeriveSessionKeys derives the session keys from the static keys and the
// two challenges: context = host challenge ‖ card challenge (AmdD 6.2.1).
func DeriveSessionKeys(keys KeySet, hostChallenge, cardChallenge []byte) (SessionKeys, error) {
	if keys.ENC == nil || keys.MAC == nil {
		return SessionKeys{}, fmt.Errorf("gp: derive session keys: key set lacks ENC or MAC: %w", ErrState)
	}
	ctx := append(append([]byte{}, hostChallenge...), cardChallenge...)
	var sk SessionKeys
	var err error
	if sk.ENC, err = KDF(keys.ENC, kdfSENC, ctx, keys.ENC.Size()*8); err != nil {
		return SessionKeys{}, err
	}
	if sk.MAC, err = KDF(keys.MAC, kdfSMAC, ctx, keys.MAC.Size()*8); err != nil {
		return SessionKeys{}, err
	}
	if sk.RMAC, err = KDF(keys.MAC, kdfSRMAC, ctx, keys.MAC.Size()*8); err != nil {
		return SessionKeys{}, err
	}
	return sk, nil
}

// SecurityLevel is the P1 of EXTERNAL AUTHENTICATE (AmdD Table 7-3). Its bits
// combine: LevelCMAC|LevelCDEC is 03.
type SecurityLevel byte

// Security level bits (AmdD Table 7-3).
const (
	LevelNone SecurityLevel = 0x00
	LevelCMAC SecurityLevel = 0x01
	LevelCDEC SecurityLevel = 0x02
	LevelRMAC SecurityLevel = 0x10
	LevelRENC SecurityLevel = 0x20
)

// Valid reports whether l is one of the levels AmdD Table 7-3 allows:
// 00, 01, 03, 11, 13, 33.
func (l SecurityLevel) Valid() bool {
	switch l {
	case 0x00, 0x01, 0x03, 0x11, 0x13, 0x33:
		return true
	}
	return false
}

// String names the level's parts, e.g. "C-MAC+C-DEC+R-MAC+R-ENC".
func (l SecurityLevel) String() string {
	if l == LevelNone {
		return "none"
	}
	var parts []string
	for _, p := range []struct {
		b SecurityLevel
		n string
	}{{LevelCMAC, "C-MAC"}, {LevelCDEC, "C-DEC"}, {LevelRMAC, "R-MAC"}, {LevelRENC, "R-ENC"}} {
		if l&p.b != 0 {
			parts = append(parts, p.n)
		}
	}
	if rest := l &^ (LevelCMAC | LevelCDEC | LevelRMAC | LevelRENC); rest != 0 {
		parts = append(parts, fmt.Sprintf("RFU %02X", byte(rest)))
	}
	return strings.Join(parts, "+")
}

// Bits of the SCP03 "i" parameter (AmdD Table 5-1), as the card reports it
// in the INITIALIZE UPDATE response and in install parameter 81.
const (
	// IPseudoRandom (b5): the card challenge is pseudo-random, see
	// PseudoRandomChallenge; the response then carries the sequence counter.
	IPseudoRandom byte = 0x10
	// IRMAC (b6): R-MAC supported.
	IRMAC byte = 0x20
	// IRMACRENC (b7 and b6): R-MAC and R-ENC supported.
	IRMACRENC byte = 0x60
)

func levelAllowed(l SecurityLevel, i byte) bool {
	if !l.Valid() {
		return false
	}
	if l&LevelRENC != 0 && i&IRMACRENC != IRMACRENC {
		return false
	}
	if l&LevelRMAC != 0 && i&IRMAC == 0 {
		return false
	}
	return true
}

// InitUpdateResponse is the data of the INITIALIZE UPDATE response (AmdD
// 7.1.1.3): KDD(10) ‖ KVN ‖ 03 ‖ i ‖ card challenge ‖ card cryptogram ‖
// [sequence counter(3) when i has b5 set]. Challenge and cryptogram are 8
// bytes in S8 mode and 16 in S16 mode.
type InitUpdateResponse struct {
	KDD                []byte
	KVN                byte
	SCP                byte
	I                  byte
	CardChallenge      []byte
	CardCryptogram     []byte
	SequenceCounter    uint32
	HasSequenceCounter bool
}

// ParseInitUpdateResponse decodes the response data (status word removed).
// S8 or S16 is told apart by length; fields alias data.
func ParseInitUpdateResponse(data []byte) (InitUpdateResponse, error) {
	if len(data) < 13 {
		return InitUpdateResponse{}, truncated("INITIALIZE UPDATE response of %d bytes", len(data))
	}
	r := InitUpdateResponse{KDD: data[:10:10], KVN: data[10], SCP: data[11], I: data[12]}
	if r.SCP != 0x03 {
		return InitUpdateResponse{}, malformed("INITIALIZE UPDATE response for SCP %02X, want 03", r.SCP)
	}
	seqLen := 0
	if r.I&IPseudoRandom != 0 {
		seqLen = 3
	}
	var n int
	switch len(data) - 13 - seqLen {
	case 16:
		n = 8
	case 32:
		n = 16
	default:
		return InitUpdateResponse{}, malformed("INITIALIZE UPDATE response of %d bytes for i=%02X, want %d (S8) or %d (S16)", len(data), r.I, 29+seqLen, 45+seqLen)
	}
	r.CardChallenge = data[13 : 13+n : 13+n]
	r.CardCryptogram = data[13+n : 13+2*n : 13+2*n]
	if seqLen > 0 {
		s := data[13+2*n:]
		r.SequenceCounter = uint32(s[0])<<16 | uint32(s[1])<<8 | uint32(s[2])
		r.HasSequenceCounter = true
	}
	return r, nil
}

// Bytes encodes the response data.
func (r InitUpdateResponse) Bytes() []byte {
	out := make([]byte, 0, 48)
	out = append(out, r.KDD...)
	out = append(out, r.KVN, r.SCP, r.I)
	out = append(out, r.CardChallenge...)
	out = append(out, r.CardCryptogram...)
	if r.HasSequenceCounter {
		out = append(out, byte(r.SequenceCounter>>16), byte(r.SequenceCounter>>8), byte(r.SequenceCounter))
	}
	return out
}

// channel is the secure messaging state both ends keep after EXTERNAL
// AUTHENTICATE: session keys, MAC chaining value and encryption counter.
type channel struct {
	level  SecurityLevel
	keys   SessionKeys
	enc    cipher.Block
	mac    *cmacKey
	rmac   *cmacKey
	chain  [16]byte
	ctr    uint64
	macLen int // 8 in S8 mode, 16 in S16 mode
}

func newChannel(sk SessionKeys, macLen int) (*channel, error) {
	enc, err := aes.NewCipher(sk.ENC)
	if err != nil {
		return nil, malformed("S-ENC of %d bytes", len(sk.ENC))
	}
	mac, err := newCMACKey(sk.MAC)
	if err != nil {
		return nil, err
	}
	rmac, err := newCMACKey(sk.RMAC)
	if err != nil {
		return nil, err
	}
	return &channel{keys: sk, enc: enc, mac: mac, rmac: rmac, macLen: macLen}, nil
}

// cryptogram is KDF(S-MAC, label, host challenge ‖ card challenge, n×8).
func (ch *channel) cryptogram(label byte, ctx []byte) []byte {
	out, _ := kdf(func(b []byte) ([]byte, error) { s := ch.mac.sum(b); return s[:], nil }, label, ctx, ch.macLen*8)
	return out
}

// smCLA returns the class byte as MAC'd and as sent (AmdD 6.2.4): the SM
// indication set and, for the MAC, the logical channel number cleared. For
// the further interindustry classes (b7 set, channels 4-19, ISO 7816-4
// 5.4.1) the SM indication is b6; that variant has no public vector.
func smCLA(cla byte) (macCLA, wireCLA byte) {
	if cla&0x40 == 0 {
		return cla&0xF0 | 0x04, cla | 0x04
	}
	return cla&0xF0 | 0x20, cla | 0x20
}

func hasSM(cla byte) bool {
	if cla&0x40 == 0 {
		return cla&0x04 != 0
	}
	return cla&0x20 != 0
}

func plainCLA(cla byte) byte {
	if cla&0x40 == 0 {
		return cla &^ 0x04
	}
	return cla &^ 0x20
}

// commandMAC computes the full C-MAC over chain ‖ header' ‖ Lc' ‖ data'
// (AmdD 6.2.4). Lc' counts the MAC and is encoded the way Command.Bytes
// encodes the wrapped command; Le is not MAC'd.
func (ch *channel) commandMAC(macCLA byte, c Command, data []byte) [16]byte {
	lc := len(data) + ch.macLen
	var hdr [7]byte
	hdr[0], hdr[1], hdr[2], hdr[3] = macCLA, c.INS, c.P1, c.P2
	n := 5
	if lc > 255 || c.Ne > MaxShortNe {
		hdr[4], hdr[5], hdr[6] = 0, byte(lc>>8), byte(lc)
		n = 7
	} else {
		hdr[4] = byte(lc)
	}
	return ch.mac.sum(ch.chain[:], hdr[:n], data)
}

// icv returns the encryption ICV for the current counter (AmdD 6.2.6,
// 6.2.7): AES(S-ENC, counter as 16 bytes), with the top byte 80 for
// responses.
func (ch *channel) icv(response bool) []byte {
	var b [16]byte
	binary.BigEndian.PutUint64(b[8:], ch.ctr)
	if response {
		b[0] = 0x80
	}
	ch.enc.Encrypt(b[:], b[:])
	return b[:]
}

func (ch *channel) encrypt(data []byte, response bool) []byte {
	p := pad80(data)
	cipher.NewCBCEncrypter(ch.enc, ch.icv(response)).CryptBlocks(p, p)
	return p
}

func (ch *channel) decrypt(data []byte, response bool) ([]byte, error) {
	if len(data) == 0 || len(data)%16 != 0 {
		return nil, malformed("encrypted data of %d bytes is not whole AES blocks", len(data))
	}
	p := make([]byte, len(data))
	cipher.NewCBCDecrypter(ch.enc, ch.icv(response)).CryptBlocks(p, data)
	return unpad80(p)
}

// pad80 appends 80 and zeros up to a multiple of 16 (ISO 9797-1 method 2),
// always adding at least one byte (AmdD 6.2.6).
func pad80(data []byte) []byte {
	n := (len(data)/16 + 1) * 16
	p := make([]byte, n)
	copy(p, data)
	p[len(data)] = 0x80
	return p
}

func unpad80(p []byte) ([]byte, error) {
	i := len(p) - 1
	for i >= 0 && p[i] == 0 {
		i--
	}
	if i < 0 || p[i] != 0x80 || len(p)-i > 16 {
		return nil, malformed("decrypted data lacks 80 00.. padding")
	}
	return p[:i], nil
}

// rmacApplies reports whether a response with this status carries an R-MAC:
// 9000 and the warnings 62xx/63xx do, errors do not (AmdD 6.2.5;
// PROTOCOLS.md §7.4).
func rmacApplies(sw SW) bool { return sw == SWOK || sw.Warning() }

func (ch *channel) responseMAC(data []byte, sw SW) [16]byte {
	return ch.rmac.sum(ch.chain[:], data, []byte{byte(sw >> 8), byte(sw)})
}

type sessionState int

const (
	stateIdle      sessionState = iota // no INITIALIZE UPDATE yet, or closed
	stateChallenge                     // INITIALIZE UPDATE done
	stateOpen                          // EXTERNAL AUTHENTICATE done
)

// HostSession is the off-card side of one SCP03 session (AmdD 7.1). It is
// not safe for concurrent use. Flow: InitializeUpdate, then either
// OnInitUpdateResponse with the card's answer or Precompute (pseudo-random
// mode, offline), then ExternalAuthenticate, then Wrap/Unwrap per command.
type HostSession struct {
	keys          KeySet
	hostChallenge []byte
	card          InitUpdateResponse
	precomputed   bool
	verified      bool
	state         sessionState
	ch            *channel
}

// NewHostSession starts a session with the static keys and an 8-byte (S8)
// or 16-byte (S16) host challenge; nil picks 8 random bytes.
func NewHostSession(keys KeySet, hostChallenge []byte) (*HostSession, error) {
	if keys.ENC == nil || keys.MAC == nil {
		return nil, fmt.Errorf("gp: new host session: key set lacks ENC or MAC: %w", ErrState)
	}
	if hostChallenge == nil {
		hostChallenge = make([]byte, 8)
		if _, err := rand.Read(hostChallenge); err != nil {
			return nil, fmt.Errorf("gp: host challenge: %w", err)
		}
	}
	if len(hostChallenge) != 8 && len(hostChallenge) != 16 {
		return nil, malformed("host challenge of %d bytes, want 8 (S8) or 16 (S16)", len(hostChallenge))
	}
	return &HostSession{keys: keys, hostChallenge: append([]byte(nil), hostChallenge...)}, nil
}

// HostChallenge returns the session's host challenge.
func (h *HostSession) HostChallenge() []byte { return append([]byte(nil), h.hostChallenge...) }

// InitializeUpdate returns the INITIALIZE UPDATE command for the key set's
// KVN and the session's host challenge (AmdD 7.1.1).
func (h *HostSession) InitializeUpdate() Command {
	return InitializeUpdate(h.keys.KVN, h.hostChallenge)
}

// Precompute prepares the session without the card's answer, for a card in
// pseudo-random mode (i with b5 set) whose sequence counter is known: seq is
// the value the card will use, i.e. the last value it reported plus one
// (AmdD 6.2.2.1), and sdAID the AID of the security domain addressed. The
// card cryptogram is checked later, when OnInitUpdateResponse receives the
// real answer. It returns the expected card challenge.
func (h *HostSession) Precompute(seq uint32, sdAID []byte, i byte) ([]byte, error) {
	if i&IPseudoRandom == 0 {
		return nil, fmt.Errorf("gp: precompute needs a pseudo-random card challenge, i=%02X: %w", i, ErrState)
	}
	cc, err := PseudoRandomChallenge(h.keys.ENC, seq, sdAID, len(h.hostChallenge))
	if err != nil {
		return nil, err
	}
	if err := h.open(cc); err != nil {
		return nil, err
	}
	h.card = InitUpdateResponse{KVN: h.keys.KVN, SCP: 0x03, I: i, CardChallenge: cc,
		CardCryptogram: h.ch.cryptogram(kdfCardCryptogram, h.context()), SequenceCounter: seq, HasSequenceCounter: true}
	h.precomputed = true
	return append([]byte(nil), cc...), nil
}

// ExpectedCardCryptogram returns the card cryptogram the session expects
// (after Precompute or OnInitUpdateResponse).
func (h *HostSession) ExpectedCardCryptogram() []byte {
	return append([]byte(nil), h.card.CardCryptogram...)
}

func (h *HostSession) context() []byte {
	return append(append([]byte{}, h.hostChallenge...), h.card.CardChallenge...)
}

func (h *HostSession) open(cardChallenge []byte) error {
	sk, err := DeriveSessionKeys(h.keys, h.hostChallenge, cardChallenge)
	if err != nil {
		return err
	}
	ch, err := newChannel(sk, len(h.hostChallenge))
	if err != nil {
		return err
	}
	h.ch = ch
	h.card.CardChallenge = cardChallenge
	h.state = stateChallenge
	return nil
}

// OnInitUpdateResponse takes the card's INITIALIZE UPDATE response, derives
// the session keys and verifies the card cryptogram (AmdD 6.2.2.2). After
// Precompute it only checks that the card answered what was predicted; the
// session state is left alone, so it may be called after the script ran.
func (h *HostSession) OnInitUpdateResponse(resp Response) error {
	if resp.SW != SWOK {
		return &SWError{SW: resp.SW, Op: "INITIALIZE UPDATE"}
	}
	r, err := ParseInitUpdateResponse(resp.Data)
	if err != nil {
		return err
	}
	if len(r.CardChallenge) != len(h.hostChallenge) {
		return malformed("card answered with a %d-byte challenge to a %d-byte host challenge", len(r.CardChallenge), len(h.hostChallenge))
	}
	if h.keys.KVN != 0 && r.KVN != h.keys.KVN {
		return malformed("card answered for KVN %02X, asked %02X", r.KVN, h.keys.KVN)
	}
	if h.precomputed {
		if !bytes.Equal(r.CardChallenge, h.card.CardChallenge) {
			return fmt.Errorf("gp: card challenge %X differs from the precomputed %X (sequence counter %06X): %w", r.CardChallenge, h.card.CardChallenge, r.SequenceCounter, ErrCryptogram)
		}
		if subtle.ConstantTimeCompare(r.CardCryptogram, h.card.CardCryptogram) != 1 {
			return fmt.Errorf("gp: card cryptogram: %w", ErrCryptogram)
		}
		h.card.KDD = r.KDD
		h.verified = true
		return nil
	}
	if h.state != stateIdle {
		return fmt.Errorf("gp: INITIALIZE UPDATE response received twice: %w", ErrState)
	}
	if err := h.open(append([]byte(nil), r.CardChallenge...)); err != nil {
		return err
	}
	want := h.ch.cryptogram(kdfCardCryptogram, h.context())
	if subtle.ConstantTimeCompare(r.CardCryptogram, want) != 1 {
		h.state, h.ch = stateIdle, nil
		return fmt.Errorf("gp: card cryptogram: %w", ErrCryptogram)
	}
	h.card = r
	h.card.KDD = append([]byte(nil), r.KDD...)
	h.card.CardChallenge = append([]byte(nil), r.CardChallenge...)
	h.card.CardCryptogram = want
	h.verified = true
	return nil
}

// Card returns the card's INITIALIZE UPDATE data as received (or as
// predicted by Precompute, KDD empty).
func (h *HostSession) Card() InitUpdateResponse { return h.card }

// SessionKeys returns the derived session keys (nil before the card
// challenge is known). For diagnostics and tests.
func (h *HostSession) SessionKeys() SessionKeys {
	if h.ch == nil {
		return SessionKeys{}
	}
	return h.ch.keys
}

// HostCryptogram returns KDF(S-MAC, 01, host ‖ card challenge) (AmdD 6.2.2.3).
func (h *HostSession) HostCryptogram() ([]byte, error) {
	if h.ch == nil {
		return nil, fmt.Errorf("gp: host cryptogram before the card challenge is known: %w", ErrState)
	}
	return h.ch.cryptogram(kdfHostCryptogram, h.context()), nil
}

// ExternalAuthenticate returns the EXTERNAL AUTHENTICATE command for the
// level (AmdD 7.1.2): 84 82 level 00 ‖ host cryptogram ‖ C-MAC, MAC'd over
// a zero chaining value and never encrypted. The session is open after it.
func (h *HostSession) ExternalAuthenticate(level SecurityLevel) (Command, error) {
	if h.state != stateChallenge {
		return Command{}, fmt.Errorf("gp: EXTERNAL AUTHENTICATE before INITIALIZE UPDATE: %w", ErrState)
	}
	if !levelAllowed(level, h.card.I) {
		return Command{}, malformed("security level %02X (%s) with i=%02X", byte(level), level, h.card.I)
	}
	hc := h.ch.cryptogram(kdfHostCryptogram, h.context())
	cmd := Command{CLA: 0x80, INS: 0x82, P1: byte(level), P2: 0x00}
	macCLA, wireCLA := smCLA(cmd.CLA)
	h.ch.chain = [16]byte{}
	m := h.ch.commandMAC(macCLA, cmd, hc)
	h.ch.chain = m
	h.ch.level = level
	h.ch.ctr = 0
	h.state = stateOpen
	cmd.CLA = wireCLA
	cmd.Data = append(hc, m[:h.ch.macLen]...)
	return cmd, nil
}

// Level returns the security level of the open session.
func (h *HostSession) Level() SecurityLevel {
	if h.ch == nil {
		return LevelNone
	}
	return h.ch.level
}

// Wrap protects a command at the session's level (AmdD 6.2.4, 6.2.6): the
// counter is incremented for every command; the data, if any, is padded and
// encrypted (C-DEC), then the C-MAC is appended (C-MAC). Le is kept.
func (h *HostSession) Wrap(c Command) (Command, error) {
	if h.state != stateOpen {
		return Command{}, fmt.Errorf("gp: wrap before EXTERNAL AUTHENTICATE: %w", ErrState)
	}
	ch := h.ch
	if len(c.Data)+16+ch.macLen > 65535 {
		return Command{}, malformed("command data of %d bytes too long to wrap", len(c.Data))
	}
	ch.ctr++
	if ch.level&LevelCMAC == 0 {
		return c, nil
	}
	data := c.Data
	if ch.level&LevelCDEC != 0 && len(data) > 0 {
		data = ch.encrypt(data, false)
	}
	macCLA, wireCLA := smCLA(c.CLA)
	m := ch.commandMAC(macCLA, c, data)
	ch.chain = m
	out := make([]byte, 0, len(data)+ch.macLen)
	out = append(append(out, data...), m[:ch.macLen]...)
	return Command{CLA: wireCLA, INS: c.INS, P1: c.P1, P2: c.P2, Data: out, Ne: c.Ne}, nil
}

// ExpectedRMAC returns the R-MAC (macLen bytes) a card holding the
// session's keys puts on its clear answer data ‖ sw to the command wrapped
// last (AmdD 6.2.5): what a host that precomputed a script can declare in
// advance, so that a party without the keys can tell the card's answer by
// comparing. nil when sw carries no R-MAC (an error status, PROTOCOLS.md
// §7.4). The session must be open at a level with R-MAC and without R-ENC
// (whose ciphertext the host could predict too, but need not).
func (h *HostSession) ExpectedRMAC(data []byte, sw SW) ([]byte, error) {
	if h.state != stateOpen {
		return nil, fmt.Errorf("gp: expected R-MAC before EXTERNAL AUTHENTICATE: %w", ErrState)
	}
	ch := h.ch
	if ch.level&LevelRMAC == 0 || ch.level&LevelRENC != 0 {
		return nil, malformed("expected R-MAC at level %02X: needs R-MAC without R-ENC", byte(ch.level))
	}
	if !rmacApplies(sw) {
		return nil, nil
	}
	m := ch.responseMAC(data, sw)
	return append([]byte(nil), m[:ch.macLen]...), nil
}

// Unwrap checks and removes the R-MAC and decrypts R-ENC data (AmdD 6.2.5,
// 6.2.7). Responses with an error status carry no R-MAC and are returned as
// they are. A failed R-MAC closes the session.
func (h *HostSession) Unwrap(r Response) (Response, error) {
	if h.state != stateOpen {
		return Response{}, fmt.Errorf("gp: unwrap before EXTERNAL AUTHENTICATE: %w", ErrState)
	}
	ch := h.ch
	if ch.level&LevelRMAC == 0 || !rmacApplies(r.SW) {
		return r, nil
	}
	if len(r.Data) < ch.macLen {
		h.state = stateIdle
		return Response{}, fmt.Errorf("gp: response of %d bytes has no R-MAC: %w", len(r.Data), ErrMAC)
	}
	n := len(r.Data) - ch.macLen
	data := r.Data[:n]
	m := ch.responseMAC(data, r.SW)
	if subtle.ConstantTimeCompare(m[:ch.macLen], r.Data[n:]) != 1 {
		h.state = stateIdle
		return Response{}, fmt.Errorf("gp: R-MAC: %w", ErrMAC)
	}
	if ch.level&LevelRENC != 0 && len(data) > 0 {
		p, err := ch.decrypt(data, true)
		if err != nil {
			h.state = stateIdle
			return Response{}, fmt.Errorf("gp: R-ENC: %w", err)
		}
		data = p
	}
	return Response{Data: append([]byte(nil), data...), SW: r.SW}, nil
}

// CardConfig describes the security domain a CardSession plays.
type CardConfig struct {
	// Keys are the SD's static keys; Keys.KVN is the version it answers for.
	Keys KeySet
	// KDD is the 10-byte key diversification data returned first in the
	// INITIALIZE UPDATE response.
	KDD []byte
	// I is the SCP03 i parameter, e.g. 0x70 or 0x00 (AmdD Table 5-1).
	I byte
	// AID is the SD's own AID, the context of the pseudo-random challenge.
	AID []byte
	// Rand supplies random card challenges when I lacks b5; nil means
	// crypto/rand.
	Rand io.Reader
}

// CardSession is the card side of SCP03: what a security domain does with
// INITIALIZE UPDATE, EXTERNAL AUTHENTICATE and the commands after them. It is
// not safe for concurrent use. Failures are *SWError values naming the
// status word to answer; a security failure also closes the session, as
// GPCS 10.2.3 requires.
type CardSession struct {
	cfg   CardConfig
	state sessionState
	hc    []byte
	cc    []byte
	ch    *channel
}

// NewCardSession checks cfg and returns an idle session.
func NewCardSession(cfg CardConfig) (*CardSession, error) {
	if cfg.Keys.ENC == nil || cfg.Keys.MAC == nil {
		return nil, fmt.Errorf("gp: new card session: key set lacks ENC or MAC: %w", ErrState)
	}
	if len(cfg.KDD) != 10 {
		return nil, malformed("key diversification data of %d bytes, want 10", len(cfg.KDD))
	}
	if cfg.I&IPseudoRandom != 0 && len(cfg.AID) == 0 {
		return nil, malformed("pseudo-random card challenge needs the SD AID")
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.Reader
	}
	return &CardSession{cfg: cfg}, nil
}

// Reset closes the session, as selecting another application does.
func (c *CardSession) Reset() { c.state, c.ch, c.hc, c.cc = stateIdle, nil, nil, nil }

// Authenticated reports whether EXTERNAL AUTHENTICATE succeeded and the
// session is still open.
func (c *CardSession) Authenticated() bool { return c.state == stateOpen }

// Level returns the security level of the open session.
func (c *CardSession) Level() SecurityLevel {
	if c.state != stateOpen {
		return LevelNone
	}
	return c.ch.level
}

func (c *CardSession) fail(sw SW, op string) (Response, error) {
	c.Reset()
	return Response{SW: sw}, statusError(sw, op)
}

// InitializeUpdate answers INITIALIZE UPDATE (AmdD 7.1.1). seq is the
// sequence counter for this session: in pseudo-random mode the caller
// increments its stored counter before each INITIALIZE UPDATE and stores the
// new value (AmdD 6.2.2.1); it is ignored in random mode. On failure the
// returned Response holds the status word of the *SWError.
func (c *CardSession) InitializeUpdate(cmd Command, seq uint32) (Response, error) {
	const op = "INITIALIZE UPDATE"
	c.Reset()
	if cmd.INS != 0x50 {
		return c.fail(SWINSNotSupported, op)
	}
	if cmd.P2 != 0x00 {
		return c.fail(SWIncorrectP1P2, op)
	}
	if cmd.P1 != 0x00 && cmd.P1 != c.cfg.Keys.KVN {
		return c.fail(SWReferencedDataNotFound, op)
	}
	if len(cmd.Data) != 8 && len(cmd.Data) != 16 {
		return c.fail(SWWrongLength, op)
	}
	n := len(cmd.Data)
	r := InitUpdateResponse{KDD: c.cfg.KDD, KVN: c.cfg.Keys.KVN, SCP: 0x03, I: c.cfg.I}
	if c.cfg.I&IPseudoRandom != 0 {
		if seq > 0xFFFFFF {
			return c.fail(SWConditionsNotSatisfied, op)
		}
		cc, err := PseudoRandomChallenge(c.cfg.Keys.ENC, seq, c.cfg.AID, n)
		if err != nil {
			return c.fail(SWNoPreciseDiagnosis, op)
		}
		r.CardChallenge, r.SequenceCounter, r.HasSequenceCounter = cc, seq, true
	} else {
		r.CardChallenge = make([]byte, n)
		if _, err := io.ReadFull(c.cfg.Rand, r.CardChallenge); err != nil {
			return c.fail(SWNoPreciseDiagnosis, op)
		}
	}
	hc := append([]byte(nil), cmd.Data...)
	sk, err := DeriveSessionKeys(c.cfg.Keys, hc, r.CardChallenge)
	if err != nil {
		return c.fail(SWNoPreciseDiagnosis, op)
	}
	ch, err := newChannel(sk, n)
	if err != nil {
		return c.fail(SWNoPreciseDiagnosis, op)
	}
	ctx := append(append([]byte{}, hc...), r.CardChallenge...)
	r.CardCryptogram = ch.cryptogram(kdfCardCryptogram, ctx)
	c.ch, c.hc, c.cc, c.state = ch, hc, r.CardChallenge, stateChallenge
	return Response{Data: r.Bytes(), SW: SWOK}, nil
}

// ExternalAuthenticate verifies EXTERNAL AUTHENTICATE (AmdD 7.1.2): its
// C-MAC over a zero chaining value, then the host cryptogram. Success opens
// the session at the level in P1 and answers 9000.
func (c *CardSession) ExternalAuthenticate(cmd Command) (Response, error) {
	const op = "EXTERNAL AUTHENTICATE"
	if c.state != stateChallenge {
		return c.fail(SWConditionsNotSatisfied, op)
	}
	if cmd.INS != 0x82 {
		return c.fail(SWINSNotSupported, op)
	}
	if !hasSM(cmd.CLA) {
		return c.fail(SWSecurityNotSatisfied, op)
	}
	level := SecurityLevel(cmd.P1)
	if cmd.P2 != 0x00 || !levelAllowed(level, c.cfg.I) {
		return c.fail(SWIncorrectP1P2, op)
	}
	ch := c.ch
	if len(cmd.Data) != 2*ch.macLen {
		return c.fail(SWWrongLength, op)
	}
	hcrypt := cmd.Data[:ch.macLen]
	macCLA, _ := smCLA(plainCLA(cmd.CLA))
	ch.chain = [16]byte{}
	m := ch.commandMAC(macCLA, cmd, hcrypt)
	if subtle.ConstantTimeCompare(m[:ch.macLen], cmd.Data[ch.macLen:]) != 1 {
		return c.fail(SWSecurityNotSatisfied, op)
	}
	ctx := append(append([]byte{}, c.hc...), c.cc...)
	if subtle.ConstantTimeCompare(hcrypt, ch.cryptogram(kdfHostCryptogram, ctx)) != 1 {
		return c.fail(SWAuthFailed, op)
	}
	ch.chain, ch.level, ch.ctr = m, level, 0
	c.state = stateOpen
	return Response{SW: SWOK}, nil
}

// Unwrap verifies and removes the C-MAC and decrypts C-DEC data of a command
// in the open session (AmdD 6.2.4, 6.2.6). Outside a session a command
// without secure messaging is returned as is. A command without secure
// messaging inside a session at C-MAC level, or one that fails verification,
// closes the session with 6982.
func (c *CardSession) Unwrap(cmd Command) (Command, error) {
	const op = "secure messaging"
	if c.state != stateOpen {
		if hasSM(cmd.CLA) {
			c.Reset()
			return Command{}, statusError(SWSecurityNotSatisfied, op)
		}
		return cmd, nil
	}
	ch := c.ch
	ch.ctr++
	if ch.level&LevelCMAC == 0 {
		return cmd, nil
	}
	if !hasSM(cmd.CLA) || len(cmd.Data) < ch.macLen {
		c.Reset()
		return Command{}, statusError(SWSecurityNotSatisfied, op)
	}
	n := len(cmd.Data) - ch.macLen
	data := cmd.Data[:n]
	macCLA, _ := smCLA(plainCLA(cmd.CLA))
	m := ch.commandMAC(macCLA, cmd, data)
	if subtle.ConstantTimeCompare(m[:ch.macLen], cmd.Data[n:]) != 1 {
		c.Reset()
		return Command{}, statusError(SWSecurityNotSatisfied, op)
	}
	ch.chain = m
	if ch.level&LevelCDEC != 0 && len(data) > 0 {
		p, err := ch.decrypt(data, false)
		if err != nil {
			c.Reset()
			return Command{}, statusError(SWSecurityNotSatisfied, op)
		}
		data = p
	} else {
		data = append([]byte(nil), data...)
	}
	if len(data) == 0 {
		data = nil
	}
	return Command{CLA: plainCLA(cmd.CLA), INS: cmd.INS, P1: cmd.P1, P2: cmd.P2, Data: data, Ne: cmd.Ne}, nil
}

// Wrap protects a response of the open session: R-ENC encrypts its data
// with the command's counter, R-MAC appends the MAC over chain ‖ data ‖ SW
// (AmdD 6.2.5, 6.2.7). Error statuses (not 9000, 62xx or 63xx) go out
// unchanged. Outside a session r is returned unchanged.
func (c *CardSession) Wrap(r Response) (Response, error) {
	if c.state != stateOpen {
		return r, nil
	}
	ch := c.ch
	if ch.level&LevelRMAC == 0 || !rmacApplies(r.SW) {
		return r, nil
	}
	data := r.Data
	if ch.level&LevelRENC != 0 && len(data) > 0 {
		data = ch.encrypt(data, true)
	}
	m := ch.responseMAC(data, r.SW)
	out := make([]byte, 0, len(data)+ch.macLen)
	out = append(append(out, data...), m[:ch.macLen]...)
	return Response{Data: out, SW: r.SW}, nil
}
