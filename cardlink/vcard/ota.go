package vcard

import (
	"bytes"
	"fmt"

	"github.com/keyport/keyport/gp"
)

// The ISD's OTA side: ENVELOPE (SMS-PP DOWNLOAD) carrying SCP80 secured
// packets for the ISD's TAR (ETSI TS 102 225, 3GPP TS 31.115 / 31.111),
// their Proof of Receipt, and the proactive OPEN CHANNEL an Amendment B
// administration session trigger asks for, handed out by FETCH and closed
// by TERMINAL RESPONSE (ETSI TS 102 223).
//
// Security the ISD requires of a command packet (its minimum security
// level): a cryptographic checksum and a counter that must be higher (or
// one higher) than the one stored with the key set; ciphering is optional.
// Anything less is refused with PoR status 0A. A packet whose checksum,
// ciphering or key reference fails is answered with a PoR without
// ciphering or checksum (the card cannot trust the keys); a refused counter
// is answered with the security the SPI asks for. The PoR is the ENVELOPE's
// response data with SW 9000, or 91xx when a proactive command of xx bytes
// is pending.

// DefaultOTAKVN is the key version number of the ISD's initial OTA key set
// (the key index in KIc/KID b8-b5); it holds AES-128 keys.
const DefaultOTAKVN = 0x01

// Default OTA keys of a new module (test values; replace them for anything
// real).
var (
	DefaultOTAKIc = mustHex("200102030405060708090A0B0C0D0E0F")
	DefaultOTAKID = mustHex("201102030405060708090A0B0C0D0E0F")
)

// Key type codings of OTA keys (GPCS Table 11-16).
const keyTypeDES = 0x80

// otaKeySet is one TS 102 225 key set of the ISD: KIc (ciphering) and KID
// (cryptographic checksum), with the counter of the last accepted packet.
type otaKeySet struct {
	KVN     byte   `json:"kvn"`
	KIc     key    `json:"kic"`
	KID     key    `json:"kid"`
	DEK     *key   `json:"dek,omitempty"`
	Counter uint64 `json:"counter"`
}

func defaultOTAKeySet() *otaKeySet {
	return &otaKeySet{
		KVN: DefaultOTAKVN,
		KIc: key{ID: 1, Type: keyTypeAES, Value: hexBytes(bytes.Clone(DefaultOTAKIc))},
		KID: key{ID: 2, Type: keyTypeAES, Value: hexBytes(bytes.Clone(DefaultOTAKID))},
	}
}

func (a *app) otaKeySet(kvn byte) *otaKeySet {
	for _, ks := range a.OTA {
		if ks.KVN == kvn {
			return ks
		}
	}
	return nil
}

// otaAlg is the KIc/KID algorithm nibble a stored key answers to.
func otaAlg(k key) byte {
	switch {
	case k.Type == keyTypeAES:
		return gp.OTAAlgAES
	case k.Type == keyTypeDES && len(k.Value) == 24:
		return gp.OTAAlg3DES3Key
	case k.Type == keyTypeDES:
		return gp.OTAAlg3DES2Key
	}
	return 0
}

func validOTAKey(k key) bool {
	_, err := gp.NewOTAKey(otaAlg(k), k.Value)
	return err == nil
}

// keysFor returns the keys the KIc and KID coding bytes of a packet refer
// to, or false when the key set is missing or the algorithm differs.
func (ks *otaKeySet) keysFor(kic, kid byte, spi gp.SPI) (gp.OTAKeys, bool) {
	keys := gp.OTAKeys{KIc: kic, KID: kid}
	need := func(coding byte, k key) (*gp.OTAKey, bool) {
		if coding>>4 != ks.KVN || coding&0x0F != otaAlg(k) {
			return nil, false
		}
		ok, err := gp.NewOTAKey(otaAlg(k), k.Value)
		return ok, err == nil
	}
	if spi.Ciphered || spi.PoRCiphered {
		c, ok := need(kic, ks.KIc)
		if !ok {
			return keys, false
		}
		keys.Cipher = c
	}
	m, ok := need(kid, ks.KID)
	if !ok {
		return keys, false
	}
	keys.MAC = m
	return keys, true
}

// catState is the volatile toolkit state of the card: a concatenated SMS
// being collected and the proactive command waiting for FETCH or for its
// TERMINAL RESPONSE.
type catState struct {
	segRef   byte
	segments [][]byte
	pending  []byte // proactive command to FETCH
	fetched  *gp.ProactiveCommand
	number   byte // last proactive command number used
	opened   bool // the last OPEN CHANNEL succeeded
}

func (c *Card) catReset() { c.cat = catState{} }

// endCAT answers a toolkit command: 91xx when a proactive command is
// pending (ETSI TS 102 221 10.2.1.1), else 9000.
func (c *Card) endCAT(data []byte) rsp {
	if n := len(c.cat.pending); n > 0 {
		return rsp{data: data, sw: gp.SW(0x9100 | n&0xFF)}
	}
	return ok(data)
}

// catCommand handles ENVELOPE, FETCH and TERMINAL RESPONSE (CLA 80 on the
// basic channel, whatever application is selected).
func (c *Card) catCommand(cmd gp.Command) rsp {
	switch cmd.INS {
	case 0xC2:
		return c.envelope(cmd)
	case 0x12:
		return c.fetch(cmd)
	}
	return c.terminalResponse(cmd)
}

func (c *Card) envelope(cmd gp.Command) rsp {
	if cmd.P1 != 0 || cmd.P2 != 0 {
		return status(gp.SWIncorrectP1P2)
	}
	e, err := gp.ParseSMSPPDownload(cmd.Data)
	if err != nil {
		return status(gp.SWIncorrectData)
	}
	d, err := gp.ParseSMSDeliver(e.TPDU)
	if err != nil || d.PID != gp.SMSPIDDataDownload || !d.UDHI {
		return status(gp.SWIncorrectData)
	}
	u, err := gp.ParseUserData(d.UserData)
	if err != nil {
		return status(gp.SWIncorrectData)
	}
	segs := [][]byte{d.UserData}
	if ref, total, _, concat := u.Concat(); concat {
		if ref != c.cat.segRef || c.cat.segments == nil {
			c.cat.segRef, c.cat.segments = ref, nil
		}
		c.cat.segments = append(c.cat.segments, bytes.Clone(d.UserData))
		if len(c.cat.segments) < int(total) {
			return c.endCAT(nil) // acknowledged; the PoR follows the last segment
		}
		segs, c.cat.segments = c.cat.segments, nil
	}
	packet, err := gp.JoinSMSPP(segs)
	if err != nil {
		return status(gp.SWIncorrectData)
	}
	por, sw := c.securedPacket(packet)
	if sw != gp.SWOK {
		return status(sw)
	}
	return c.endCAT(por)
}

// securedPacket verifies a command packet for the ISD, acts on it and
// returns the PoR user data (nil when the SPI asks for none).
func (c *Card) securedPacket(packet []byte) ([]byte, gp.SW) {
	sp, err := gp.ParseCommandPacket(packet)
	if err != nil {
		return nil, gp.SWIncorrectData
	}
	plain := func(st gp.PoRStatus) ([]byte, gp.SW) {
		cntr, _ := sp.Counter()
		return c.por(sp.SPI, gp.OTAKeys{}, gp.ResponsePacket{TAR: sp.TAR, Counter: cntr, Status: st}, false)
	}
	if sp.TAR != gp.ISDTAR {
		return plain(gp.PoRTARUnknown)
	}
	if sp.SPI.Integrity != gp.IntegrityCC || (sp.SPI.Counter != gp.CounterHigher && sp.SPI.Counter != gp.CounterOneHigher) {
		return plain(gp.PoRInsufficientSecurity)
	}
	ks := c.st.isd().otaKeySet(sp.KID >> 4)
	if ks == nil {
		return plain(gp.PoRSecurityError)
	}
	keys, found := ks.keysFor(sp.KIc, sp.KID, sp.SPI)
	if !found {
		return plain(gp.PoRSecurityError)
	}
	p, err := sp.Open(keys)
	if err != nil {
		st, isPoR := gp.PoRStatusOf(err)
		if !isPoR {
			st = gp.PoRSecurityError
		}
		return plain(st)
	}
	resp := gp.ResponsePacket{TAR: sp.TAR, Counter: p.Counter}
	st, update := gp.CheckCounter(sp.SPI.Counter, p.Counter, ks.Counter)
	if st != gp.PoROK {
		resp.Status = st
		return c.por(sp.SPI, keys, resp, true)
	}
	if update {
		ks.Counter = p.Counter
		c.dirty = true
	}
	if trig, err := gp.ParseAdminTrigger(p.Data); err == nil {
		c.cat.number++
		oc, err := gp.OpenChannel(c.cat.number, trig.Connection)
		if err != nil {
			resp.Data = []byte{0x01, 0x6A, 0x80}
		} else {
			c.cat.pending, c.cat.fetched = oc.Bytes(), nil
		}
	} else {
		// Only the session trigger is acted on; anything else is reported
		// as one command not executed (TS 102 226 compact response).
		resp.Data = []byte{0x01, 0x6D, 0x00}
	}
	return c.por(sp.SPI, keys, resp, true)
}

// por encodes the PoR the SPI asks for; secured says whether the keys were
// verified and the SPI's PoR security is applied.
func (c *Card) por(spi gp.SPI, keys gp.OTAKeys, r gp.ResponsePacket, secured bool) ([]byte, gp.SW) {
	switch spi.PoR {
	case gp.PoRNone:
		return nil, gp.SWOK
	case gp.PoROnError:
		if r.Status == gp.PoROK {
			return nil, gp.SWOK
		}
	}
	if !secured {
		spi.PoRCiphered, spi.PoRIntegrity = false, gp.IntegrityNone
	}
	b, err := r.SealSMS(spi, keys)
	if err != nil {
		return nil, gp.SWNoPreciseDiagnosis
	}
	return b, gp.SWOK
}

// fetch hands out the pending proactive command (ETSI TS 102 221 10.1.x,
// TS 102 223 6.2). Le must be its length when given.
func (c *Card) fetch(cmd gp.Command) rsp {
	if cmd.P1 != 0 || cmd.P2 != 0 {
		return status(gp.SWIncorrectP1P2)
	}
	if len(c.cat.pending) == 0 {
		return status(gp.SWConditionsNotSatisfied)
	}
	if cmd.Ne != 0 && cmd.Ne != len(c.cat.pending) && !(cmd.Ne == 256 && len(c.cat.pending) < 256) {
		return status(gp.SW(0x6C00 | len(c.cat.pending)&0xFF))
	}
	pc, err := gp.ParseProactiveCommand(c.cat.pending)
	if err != nil {
		c.cat.pending = nil
		return status(gp.SWNoPreciseDiagnosis)
	}
	out := c.cat.pending
	c.cat.pending, c.cat.fetched = nil, &pc
	return ok(out)
}

// terminalResponse accepts the terminal's answer to the fetched command: it
// must name that command (number, type, qualifier).
func (c *Card) terminalResponse(cmd gp.Command) rsp {
	if cmd.P1 != 0 || cmd.P2 != 0 {
		return status(gp.SWIncorrectP1P2)
	}
	if c.cat.fetched == nil {
		return status(gp.SWConditionsNotSatisfied)
	}
	tr, err := gp.ParseTerminalResponse(cmd.Data)
	if err != nil {
		return status(gp.SWIncorrectData)
	}
	f := c.cat.fetched
	if tr.Number != f.Number || tr.Type != f.Type || tr.Qualifier != f.Qualifier {
		return status(gp.SWIncorrectData)
	}
	c.cat.fetched = nil
	c.cat.opened = f.Type == gp.CATTypeOpenChannel && tr.Result[0] < 0x10
	return c.endCAT(nil)
}

// ChannelOpened reports whether the last OPEN CHANNEL the card issued was
// answered with a successful TERMINAL RESPONSE (result 0x).
func (c *Card) ChannelOpened() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cat.opened
}

func validOTAKeySets(a *app) error {
	seen := map[byte]bool{}
	for _, ks := range a.OTA {
		if ks.KVN == 0 || ks.KVN > 0x0F || seen[ks.KVN] {
			return fmt.Errorf("bad OTA key set %d", ks.KVN)
		}
		seen[ks.KVN] = true
		if !validOTAKey(ks.KIc) || !validOTAKey(ks.KID) || ks.Counter > gp.MaxCounter {
			return fmt.Errorf("bad OTA key set %d", ks.KVN)
		}
	}
	return nil
}

func (ks *otaKeySet) keys() []key {
	out := []key{ks.KIc, ks.KID}
	if ks.DEK != nil {
		out = append(out, *ks.DEK)
	}
	return out
}

// putOTAKey loads an SCP80 key set into the ISD with PUT KEY (GPCS 11.8;
// KVN 01-0F are OTA key sets): key ID 1 is KIc, 2 KID, 3 the DEK, AES,
// encrypted under the session's Key-DEK. P1 0 adds a key set (the KVN must
// be new; KIc and KID at least); P1 = P2's KVN replaces it. A new or
// replaced key set starts with counter 0.
func (c *Card) putOTAKey(sd *app, pk gp.PutKey) rsp {
	if pk.FirstKID != 1 || len(pk.Keys) < 2 || len(pk.Keys) > 3 {
		return status(gp.SWIncorrectData)
	}
	existing := sd.otaKeySet(pk.NewKVN)
	switch {
	case pk.OldKVN == 0 && existing != nil:
		return status(gp.SWIncorrectData)
	case pk.OldKVN != 0 && pk.OldKVN != pk.NewKVN:
		return status(gp.SWIncorrectP1P2)
	case pk.OldKVN != 0 && existing == nil:
		return status(gp.SWReferencedDataNotFound)
	}
	ks := &otaKeySet{KVN: pk.NewKVN}
	resp := []byte{pk.NewKVN}
	for i, kc := range pk.Keys {
		n := kc.Length
		if n == 0 {
			n = len(kc.Encrypted)
		}
		v, sw := c.decryptKey(kc.Type, n, kc.Encrypted, kc.KCV)
		if sw != gp.SWOK {
			return status(sw)
		}
		kcv, _ := gp.KCV(v)
		resp = append(resp, kcv...)
		k := key{ID: byte(i + 1), Type: keyTypeAES, Value: hexBytes(v)}
		switch i {
		case 0:
			ks.KIc = k
		case 1:
			ks.KID = k
		default:
			ks.DEK = &k
		}
	}
	if existing != nil {
		*existing = *ks
	} else {
		sd.OTA = append(sd.OTA, ks)
	}
	c.dirty = true
	return ok(resp)
}
