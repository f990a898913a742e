package gp

import (
	"crypto/cipher"
	"crypto/des"
	"crypto/subtle"
	"errors"
	"fmt"
)

// SCP80: the secured packets of ETSI TS 102 225 in the SMS dialect of 3GPP
// TS 31.115 (the "OTA SMS" that triggers an Amendment B session).
//
// Command packet (after the SMS user data header, whose IEI 70 is the CPI):
//
//	CPL(2) CHL(1) SPI(2) KIc(1) KID(1) TAR(3) | CNTR(5) PCNTR(1) CC(0|8) data padding
//
// Everything after TAR is ciphered when the SPI asks for it (CBC, zero IV,
// PCNTR zero bytes of padding). The cryptographic checksum is computed over
// CPL .. PCNTR followed by the data and the padding (the CC field itself
// left out).
//
// Response packet (Proof of Receipt, after the user data header with IEI 71,
// the RPI):
//
//	RPL(2) RHL(1) TAR(3) | CNTR(5) PCNTR(1) status(1) CC(0|8) data padding
//
// Its CC covers the user data header (02 71 00), RPL .. status and the data
// with padding. Both CC inputs are those of the published vectors this file
// is tested against (pySim tests/unittests/test_ota.py, see
// scp80_test.go).

// ISDTAR is the Toolkit Application Reference of the issuer security domain
// (ETSI TS 101 220, "Card Manager": 00 00 00).
var ISDTAR = [3]byte{0, 0, 0}

// Integrity is the kind of redundancy check an SPI asks for (TS 102 225
// 5.1.1, b2-b1 of either SPI byte's integrity field).
type Integrity byte

// Integrity kinds.
const (
	IntegrityNone Integrity = 0 // no RC, CC or DS
	IntegrityRC   Integrity = 1 // redundancy check (CRC)
	IntegrityCC   Integrity = 2 // cryptographic checksum
	IntegrityDS   Integrity = 3 // digital signature
)

// CounterMode is b5-b4 of the first SPI byte (TS 102 225 5.1.1).
type CounterMode byte

// Counter modes.
const (
	CounterNone      CounterMode = 0 // no counter
	CounterAvailable CounterMode = 1 // counter present, no replay or sequence check
	CounterHigher    CounterMode = 2 // process only if CNTR is higher than the stored one
	CounterOneHigher CounterMode = 3 // process only if CNTR is the stored one plus one
)

// PoRMode is b2-b1 of the second SPI byte.
type PoRMode byte

// PoR modes.
const (
	PoRNone    PoRMode = 0 // no proof of receipt
	PoRAlways  PoRMode = 1 // PoR required
	PoROnError PoRMode = 2 // PoR only when there is an error
)

// SPI is the Security Parameter Indicator (TS 102 225 5.1.1, 2 bytes).
type SPI struct {
	Integrity Integrity
	Ciphered  bool
	Counter   CounterMode
	// PoR settings (second byte).
	PoR          PoRMode
	PoRIntegrity Integrity
	PoRCiphered  bool
	// PoRSubmit asks for the PoR in an SMS-SUBMIT rather than in the
	// SMS-DELIVER-REPORT (TS 31.115, b6).
	PoRSubmit bool
}

// Bytes encodes the SPI.
func (s SPI) Bytes() [2]byte {
	var b [2]byte
	b[0] = byte(s.Integrity&3) | byte(s.Counter&3)<<3
	if s.Ciphered {
		b[0] |= 0x04
	}
	b[1] = byte(s.PoR&3) | byte(s.PoRIntegrity&3)<<2
	if s.PoRCiphered {
		b[1] |= 0x10
	}
	if s.PoRSubmit {
		b[1] |= 0x20
	}
	return b
}

// ParseSPI decodes an SPI. Reserved bits must be zero and the reserved PoR
// mode 11 is refused.
func ParseSPI(b0, b1 byte) (SPI, error) {
	if b0&0xE0 != 0 || b1&0xC0 != 0 {
		return SPI{}, malformed("SPI %02X%02X: reserved bits set", b0, b1)
	}
	if b1&3 == 3 {
		return SPI{}, malformed("SPI %02X%02X: reserved PoR mode", b0, b1)
	}
	return SPI{
		Integrity:    Integrity(b0 & 3),
		Ciphered:     b0&0x04 != 0,
		Counter:      CounterMode(b0 >> 3 & 3),
		PoR:          PoRMode(b1 & 3),
		PoRIntegrity: Integrity(b1 >> 2 & 3),
		PoRCiphered:  b1&0x10 != 0,
		PoRSubmit:    b1&0x20 != 0,
	}, nil
}

// PoRStatus is the response status code of a Proof of Receipt (TS 102 225
// Table 5, TS 31.115 7).
type PoRStatus byte

// PoR status codes.
const (
	PoROK                   PoRStatus = 0x00
	PoRIntegrityFailed      PoRStatus = 0x01 // RC/CC/DS failed
	PoRCounterLow           PoRStatus = 0x02
	PoRCounterHigh          PoRStatus = 0x03
	PoRCounterBlocked       PoRStatus = 0x04
	PoRCipheringError       PoRStatus = 0x05
	PoRSecurityError        PoRStatus = 0x06 // unidentified security error
	PoRInsufficientMemory   PoRStatus = 0x07
	PoRMoreTime             PoRStatus = 0x08
	PoRTARUnknown           PoRStatus = 0x09
	PoRInsufficientSecurity PoRStatus = 0x0A
	PoRResponseInSMSSubmit  PoRStatus = 0x0B
	PoRResponseInUSSD       PoRStatus = 0x0C
)

var porNames = map[PoRStatus]string{
	PoROK:                   "PoR OK",
	PoRIntegrityFailed:      "RC/CC/DS failed",
	PoRCounterLow:           "counter low",
	PoRCounterHigh:          "counter high",
	PoRCounterBlocked:       "counter blocked",
	PoRCipheringError:       "ciphering error",
	PoRSecurityError:        "unidentified security error",
	PoRInsufficientMemory:   "insufficient memory",
	PoRMoreTime:             "more time needed",
	PoRTARUnknown:           "TAR unknown",
	PoRInsufficientSecurity: "insufficient security level",
	PoRResponseInSMSSubmit:  "actual response in SMS-SUBMIT",
	PoRResponseInUSSD:       "actual response in USSD",
}

// String names the status.
func (s PoRStatus) String() string {
	if n, ok := porNames[s]; ok {
		return fmt.Sprintf("%02X %s", byte(s), n)
	}
	return fmt.Sprintf("%02X reserved", byte(s))
}

// PoRError is a secured packet the receiving entity refuses; Status is what
// its Proof of Receipt reports.
type PoRError struct {
	Status PoRStatus
	Reason string
	err    error
}

func (e *PoRError) Error() string {
	return fmt.Sprintf("gp: secured packet refused (%v): %s", e.Status, e.Reason)
}

// Unwrap returns the sentinel (ErrMAC for a failed checksum), if any.
func (e *PoRError) Unwrap() error { return e.err }

func porError(st PoRStatus, err error, format string, args ...any) *PoRError {
	return &PoRError{Status: st, Reason: fmt.Sprintf(format, args...), err: err}
}

// MaxCounter is the largest 5-byte counter; a stored counter at this value
// blocks every further packet that needs a higher one.
const MaxCounter = 1<<40 - 1

// CheckCounter applies an SPI counter mode to a received CNTR against the
// counter the receiving entity holds (TS 102 225 5.1.1). It returns PoROK
// when the packet may be processed, and whether the stored counter is to
// become received (the modes that check it; only once the packet's
// integrity has been verified).
func CheckCounter(mode CounterMode, received, stored uint64) (status PoRStatus, update bool) {
	switch mode {
	case CounterHigher, CounterOneHigher:
		if stored >= MaxCounter {
			return PoRCounterBlocked, false
		}
		if received <= stored {
			return PoRCounterLow, false
		}
		if mode == CounterOneHigher && received != stored+1 {
			return PoRCounterHigh, false
		}
		return PoROK, true
	}
	return PoROK, false
}

// OTACipher ciphers SCP80 secured data: CBC with a zero IV over whole
// blocks (the caller pads). It may be a handle to a key held in an HSM.
type OTACipher interface {
	BlockSize() int
	EncryptCBC(plain []byte) ([]byte, error)
	DecryptCBC(ciphered []byte) ([]byte, error)
}

// OTAChecksum computes the 8-byte cryptographic checksum of SCP80 data. It
// may be a handle to a key held in an HSM.
type OTAChecksum interface {
	Checksum(data []byte) ([]byte, error)
}

// OTAKeys is what sealing or opening a secured packet needs: the KIc and KID
// coding bytes as sent (key index b8-b5, algorithm b4-b1) and the keys
// behind the two interfaces. Cipher and MAC may be nil when the SPI asks
// for neither.
type OTAKeys struct {
	KIc, KID byte
	Cipher   OTACipher
	MAC      OTAChecksum
}

// KIc/KID algorithm nibbles (TS 102 225 5.1.2, 5.1.3.1).
const (
	OTAAlgDES      byte = 0x1 // single DES (CBC for KIc, CBC-MAC for KID)
	OTAAlgAES      byte = 0x2 // AES-CBC (KIc) / AES-CMAC (KID)
	OTAAlg3DES2Key byte = 0x5 // triple DES, 2 keys, outer CBC
	OTAAlg3DES3Key byte = 0x9 // triple DES, 3 keys, outer CBC
)

// ccLen is the length of the cryptographic checksum: 8 bytes for the DES
// CBC-MAC and for AES-CMAC (whose 16-byte output is truncated to its first
// 8 bytes, as in the published vectors).
const ccLen = 8

// OTAKey is a software KIc/KID key: it implements OTACipher and
// OTAChecksum. Its value is unexported and it prints as its algorithm only.
type OTAKey struct {
	alg   byte
	block cipher.Block
	mac   *cmacKey
}

// NewOTAKey prepares a software key for the algorithm nibble alg (AES:
// 16, 24 or 32 bytes; 3DES 2-key: 16 bytes; 3DES 3-key: 24 bytes).
func NewOTAKey(alg byte, key []byte) (*OTAKey, error) {
	k := &OTAKey{alg: alg}
	var err error
	switch alg {
	case OTAAlgAES:
		if k.mac, err = newCMACKey(key); err != nil {
			return nil, err
		}
		k.block = k.mac.block
	case OTAAlg3DES2Key, OTAAlg3DES3Key:
		want := 16
		if alg == OTAAlg3DES3Key {
			want = 24
		}
		if len(key) != want {
			return nil, malformed("3DES OTA key of %d bytes, want %d", len(key), want)
		}
		k24 := append(append([]byte(nil), key...), key[:8]...)[:24]
		if k.block, err = des.NewTripleDESCipher(k24); err != nil {
			return nil, malformed("3DES OTA key: %v", err)
		}
	default:
		return nil, malformed("OTA key algorithm %X not supported", alg)
	}
	return k, nil
}

// String names the algorithm, never the key.
func (k *OTAKey) String() string {
	switch k.alg {
	case OTAAlgAES:
		return "OTAKey(AES)"
	case OTAAlg3DES2Key:
		return "OTAKey(3DES-2key)"
	}
	return "OTAKey(3DES-3key)"
}

// GoString is String, so that %#v does not print the key either.
func (k *OTAKey) GoString() string { return k.String() }

// BlockSize implements OTACipher.
func (k *OTAKey) BlockSize() int { return k.block.BlockSize() }

// EncryptCBC implements OTACipher.
func (k *OTAKey) EncryptCBC(plain []byte) ([]byte, error) {
	bs := k.block.BlockSize()
	if len(plain)%bs != 0 {
		return nil, malformed("OTA ciphering: %d bytes is not a multiple of %d", len(plain), bs)
	}
	out := make([]byte, len(plain))
	cipher.NewCBCEncrypter(k.block, make([]byte, bs)).CryptBlocks(out, plain)
	return out, nil
}

// DecryptCBC implements OTACipher.
func (k *OTAKey) DecryptCBC(ciphered []byte) ([]byte, error) {
	bs := k.block.BlockSize()
	if len(ciphered)%bs != 0 {
		return nil, malformed("OTA deciphering: %d bytes is not a multiple of %d", len(ciphered), bs)
	}
	out := make([]byte, len(ciphered))
	cipher.NewCBCDecrypter(k.block, make([]byte, bs)).CryptBlocks(out, ciphered)
	return out, nil
}

// Checksum implements OTAChecksum: AES-CMAC truncated to 8 bytes, or the
// last block of the 3DES CBC encryption of the data padded with zeros to a
// whole block (TS 102 225 5.1.3.1).
func (k *OTAKey) Checksum(data []byte) ([]byte, error) {
	if k.mac != nil {
		s := k.mac.sum(data)
		return append([]byte(nil), s[:ccLen]...), nil
	}
	bs := k.block.BlockSize()
	p := append([]byte(nil), data...)
	if r := len(p) % bs; r != 0 || len(p) == 0 {
		p = append(p, make([]byte, bs-r)...)
	}
	out := make([]byte, len(p))
	cipher.NewCBCEncrypter(k.block, make([]byte, bs)).CryptBlocks(out, p)
	return out[len(out)-bs:], nil
}

var _ interface {
	OTACipher
	OTAChecksum
} = (*OTAKey)(nil)

// CommandPacket is a secured command packet in the clear.
type CommandPacket struct {
	SPI      SPI
	KIc, KID byte
	TAR      [3]byte
	Counter  uint64 // CNTR, 5 bytes
	Data     []byte // secured data, without padding
}

func integrityLen(i Integrity) (int, error) {
	switch i {
	case IntegrityNone:
		return 0, nil
	case IntegrityCC:
		return ccLen, nil
	}
	return 0, malformed("integrity %d (RC/DS) not supported", i)
}

func put40(b []byte, v uint64) {
	for i := 4; i >= 0; i-- {
		b[i] = byte(v)
		v >>= 8
	}
}

func get40(b []byte) uint64 {
	var v uint64
	for _, x := range b[:5] {
		v = v<<8 | uint64(x)
	}
	return v
}

// Seal encodes the packet from CPL on (what follows the user data header
// 02 70 00), checksummed and ciphered as its SPI says. keys.KIc and
// keys.KID are ignored; the packet's own fields are sent.
func (p CommandPacket) Seal(keys OTAKeys) ([]byte, error) {
	if p.Counter > MaxCounter {
		return nil, malformed("counter %d exceeds 5 bytes", p.Counter)
	}
	sig, err := integrityLen(p.SPI.Integrity)
	if err != nil {
		return nil, err
	}
	if p.SPI.Integrity == IntegrityCC && keys.MAC == nil {
		return nil, malformed("SPI asks for a CC but no KID key is given")
	}
	if p.SPI.Ciphered && keys.Cipher == nil {
		return nil, malformed("SPI asks for ciphering but no KIc key is given")
	}
	pad := 0
	if p.SPI.Ciphered {
		bs := keys.Cipher.BlockSize()
		pad = (bs - (6+sig+len(p.Data))%bs) % bs
	}
	chl := 13 + sig
	cpl := 1 + chl + len(p.Data) + pad
	if cpl > 0xFFFF {
		return nil, malformed("secured data of %d bytes is too long", len(p.Data))
	}
	spi := p.SPI.Bytes()
	out := make([]byte, 0, 2+cpl)
	out = append(out, byte(cpl>>8), byte(cpl), byte(chl), spi[0], spi[1], p.KIc, p.KID)
	out = append(out, p.TAR[:]...)
	var cnt [6]byte
	put40(cnt[:], p.Counter)
	cnt[5] = byte(pad)
	body := append(cnt[:], p.Data...)
	body = append(body, make([]byte, pad)...)
	var cc []byte
	if sig > 0 {
		cc, err = keys.MAC.Checksum(append(append([]byte(nil), out...), body...))
		if err != nil {
			return nil, fmt.Errorf("gp: command packet checksum: %w", err)
		}
		if len(cc) != ccLen {
			return nil, malformed("checksum of %d bytes", len(cc))
		}
	}
	secured := make([]byte, 0, len(body)+sig)
	secured = append(secured, body[:6]...)
	secured = append(secured, cc...)
	secured = append(secured, body[6:]...)
	if p.SPI.Ciphered {
		if secured, err = keys.Cipher.EncryptCBC(secured); err != nil {
			return nil, fmt.Errorf("gp: command packet ciphering: %w", err)
		}
	}
	return append(out, secured...), nil
}

// SecuredPacket is a command packet whose header is decoded and whose
// body (CNTR on) is still as received: possibly ciphered, not verified.
type SecuredPacket struct {
	SPI      SPI
	KIc, KID byte
	TAR      [3]byte
	header   []byte // CPL .. TAR as received
	body     []byte
}

// ParseCommandPacket decodes the header of a command packet (from CPL on)
// and checks its lengths. It does not decipher or verify anything: see
// Open.
func ParseCommandPacket(b []byte) (SecuredPacket, error) {
	if len(b) < 3 {
		return SecuredPacket{}, truncated("command packet of %d bytes", len(b))
	}
	cpl := int(b[0])<<8 | int(b[1])
	if len(b) != 2+cpl {
		if len(b) < 2+cpl {
			return SecuredPacket{}, truncated("command packet: CPL %d, %d bytes follow", cpl, len(b)-2)
		}
		return SecuredPacket{}, malformed("command packet: CPL %d, %d bytes follow", cpl, len(b)-2)
	}
	chl := int(b[2])
	if chl < 13 || 1+chl > cpl {
		return SecuredPacket{}, malformed("command packet: CHL %d with CPL %d", chl, cpl)
	}
	spi, err := ParseSPI(b[3], b[4])
	if err != nil {
		return SecuredPacket{}, err
	}
	s := SecuredPacket{SPI: spi, KIc: b[5], KID: b[6], header: b[:10:10], body: b[10:]}
	copy(s.TAR[:], b[7:10])
	sig, err := integrityLen(spi.Integrity)
	if err != nil {
		return SecuredPacket{}, err
	}
	if chl != 13+sig {
		return SecuredPacket{}, malformed("command packet: CHL %d does not match the SPI's %d-byte checksum", chl, sig)
	}
	return s, nil
}

// Counter returns the CNTR of an unciphered packet; a ciphered packet's
// counter is known only after Open.
func (s SecuredPacket) Counter() (uint64, bool) {
	if s.SPI.Ciphered {
		return 0, false
	}
	return get40(s.body), true
}

// Open deciphers and verifies the packet. Failures are *PoRError values:
// PoRCipheringError for a body that does not decipher into a consistent
// packet, PoRIntegrityFailed (wrapping ErrMAC) for a wrong checksum. The
// counter is not checked here (see CheckCounter): the caller holds it.
func (s SecuredPacket) Open(keys OTAKeys) (CommandPacket, error) {
	sig, _ := integrityLen(s.SPI.Integrity) // checked by ParseCommandPacket
	body := s.body
	if s.SPI.Ciphered {
		if keys.Cipher == nil {
			return CommandPacket{}, porError(PoRCipheringError, nil, "no KIc key for KIc %02X", s.KIc)
		}
		var err error
		if body, err = keys.Cipher.DecryptCBC(body); err != nil {
			return CommandPacket{}, porError(PoRCipheringError, nil, "deciphering failed")
		}
	}
	if sig > 0 && keys.MAC == nil {
		return CommandPacket{}, porError(PoRIntegrityFailed, ErrMAC, "no KID key for KID %02X", s.KID)
	}
	pcntr := int(body[5])
	if len(body) < 6+sig+pcntr {
		return CommandPacket{}, porError(PoRCipheringError, nil, "padding counter %d exceeds the data", pcntr)
	}
	if !s.SPI.Ciphered && pcntr != 0 {
		return CommandPacket{}, porError(PoRSecurityError, nil, "padding counter %d in an unciphered packet", pcntr)
	}
	p := CommandPacket{SPI: s.SPI, KIc: s.KIc, KID: s.KID, TAR: s.TAR, Counter: get40(body)}
	data := body[6+sig:]
	if sig > 0 {
		in := make([]byte, 0, len(s.header)+6+len(data))
		in = append(append(append(in, s.header...), body[:6]...), data...)
		want, err := keys.MAC.Checksum(in)
		if err != nil {
			return CommandPacket{}, fmt.Errorf("gp: command packet checksum: %w", err)
		}
		if subtle.ConstantTimeCompare(want, body[6:6+sig]) != 1 {
			return CommandPacket{}, porError(PoRIntegrityFailed, ErrMAC, "cryptographic checksum does not verify")
		}
	}
	p.Data = append([]byte(nil), data[:len(data)-pcntr]...)
	return p, nil
}

// ResponsePacket is a Proof of Receipt in the clear.
type ResponsePacket struct {
	TAR     [3]byte
	Counter uint64
	Status  PoRStatus
	Data    []byte // additional response data, without padding
}

// porUDH is the SMS user data header of a response packet: UDHL 02, IEI 71
// (response packet identifier), length 00.
var porUDH = []byte{0x02, 0x71, 0x00}

// SealSMS encodes the PoR as SMS user data (02 71 00 RPL RHL TAR ...),
// checksummed and ciphered as the PoR bits of spi say.
func (r ResponsePacket) SealSMS(spi SPI, keys OTAKeys) ([]byte, error) {
	if r.Counter > MaxCounter {
		return nil, malformed("counter %d exceeds 5 bytes", r.Counter)
	}
	sig, err := integrityLen(spi.PoRIntegrity)
	if err != nil {
		return nil, err
	}
	if sig > 0 && keys.MAC == nil {
		return nil, malformed("PoR with a CC but no KID key is given")
	}
	if spi.PoRCiphered && keys.Cipher == nil {
		return nil, malformed("ciphered PoR but no KIc key is given")
	}
	pad := 0
	if spi.PoRCiphered {
		bs := keys.Cipher.BlockSize()
		pad = (bs - (7+sig+len(r.Data))%bs) % bs
	}
	rhl := 10 + sig
	rpl := 1 + rhl + len(r.Data) + pad
	if rpl > 0xFFFF {
		return nil, malformed("PoR data of %d bytes is too long", len(r.Data))
	}
	out := append([]byte(nil), porUDH...)
	out = append(out, byte(rpl>>8), byte(rpl), byte(rhl))
	out = append(out, r.TAR[:]...)
	var cnt [7]byte
	put40(cnt[:], r.Counter)
	cnt[5] = byte(pad)
	cnt[6] = byte(r.Status)
	data := append(append([]byte(nil), r.Data...), make([]byte, pad)...)
	var cc []byte
	if sig > 0 {
		in := append(append(append([]byte(nil), out...), cnt[:]...), data...)
		if cc, err = keys.MAC.Checksum(in); err != nil {
			return nil, fmt.Errorf("gp: PoR checksum: %w", err)
		}
	}
	secured := append(append(append([]byte(nil), cnt[:]...), cc...), data...)
	if spi.PoRCiphered {
		if secured, err = keys.Cipher.EncryptCBC(secured); err != nil {
			return nil, fmt.Errorf("gp: PoR ciphering: %w", err)
		}
	}
	return append(out, secured...), nil
}

// ErrPoRIntegrity is a PoR whose checksum does not verify; it wraps ErrMAC.
var ErrPoRIntegrity = fmt.Errorf("gp: PoR checksum mismatch: %w", ErrMAC)

// ErrPoRUnauthenticated is a PoR without the cryptographic checksum the
// SPI asks for. A card that could not verify a packet may answer so (it
// could not trust the keys), but so can anyone who sends an SMS: what such
// a PoR says is unauthenticated. To read it all the same, open it under
// the SPI with PoRIntegrity IntegrityNone and PoRCiphered false.
var ErrPoRUnauthenticated = errors.New("gp: PoR without the checksum the SPI asks for")

// OpenSMSPoR decodes and verifies a PoR received as SMS user data (with its
// 02 71 00 header) under the PoR bits of the SPI the command was sent
// with. A nil error means the PoR has every security those bits ask for:
// under an SPI asking for a CC, its checksum verified under keys.MAC; under
// one asking for none, nothing was verified. A wrong checksum is
// ErrPoRIntegrity; a PoR without the checksum the SPI asks for (whatever
// its status) is ErrPoRUnauthenticated. The TAR is returned as received,
// for the caller to compare with the one it sent.
func OpenSMSPoR(ud []byte, spi SPI, keys OTAKeys) (ResponsePacket, error) {
	if len(ud) < 3 {
		return ResponsePacket{}, truncated("PoR of %d bytes", len(ud))
	}
	if ud[0] != 0x02 || ud[1] != 0x71 || ud[2] != 0x00 {
		return ResponsePacket{}, malformed("PoR user data header %X, want 027100", ud[:3])
	}
	b := ud[3:]
	if len(b) < 3 {
		return ResponsePacket{}, truncated("PoR of %d bytes", len(b))
	}
	rpl := int(b[0])<<8 | int(b[1])
	if len(b) != 2+rpl {
		if len(b) < 2+rpl {
			return ResponsePacket{}, truncated("PoR: RPL %d, %d bytes follow", rpl, len(b)-2)
		}
		return ResponsePacket{}, malformed("PoR: RPL %d, %d bytes follow", rpl, len(b)-2)
	}
	rhl := int(b[2])
	if rhl < 10 || 1+rhl > rpl {
		return ResponsePacket{}, malformed("PoR: RHL %d with RPL %d", rhl, rpl)
	}
	sig := rhl - 10
	want, err := integrityLen(spi.PoRIntegrity)
	if err != nil {
		return ResponsePacket{}, err
	}
	if sig != want && sig != 0 {
		return ResponsePacket{}, malformed("PoR: RHL %d does not match the SPI's %d-byte checksum", rhl, want)
	}
	secured := b[6:]
	if len(secured) < 7+sig {
		return ResponsePacket{}, truncated("PoR of %d bytes after TAR", len(secured))
	}
	if sig != want {
		return ResponsePacket{}, ErrPoRUnauthenticated
	}
	if spi.PoRCiphered {
		if keys.Cipher == nil {
			return ResponsePacket{}, malformed("ciphered PoR but no KIc key is given")
		}
		if secured, err = keys.Cipher.DecryptCBC(secured); err != nil {
			return ResponsePacket{}, err
		}
	}
	r := ResponsePacket{Counter: get40(secured), Status: PoRStatus(secured[6])}
	copy(r.TAR[:], b[3:6])
	pcntr := int(secured[5])
	data := secured[7+sig:]
	if pcntr > len(data) {
		return ResponsePacket{}, malformed("PoR: padding counter %d exceeds the data", pcntr)
	}
	if sig > 0 {
		if keys.MAC == nil {
			return ResponsePacket{}, malformed("PoR with a CC but no KID key is given")
		}
		in := append(append(append([]byte(nil), ud[:9]...), secured[:7]...), data...)
		want, err := keys.MAC.Checksum(in)
		if err != nil {
			return ResponsePacket{}, fmt.Errorf("gp: PoR checksum: %w", err)
		}
		if subtle.ConstantTimeCompare(want, secured[7:7+sig]) != 1 {
			return ResponsePacket{}, ErrPoRIntegrity
		}
	}
	r.Data = append([]byte(nil), data[:len(data)-pcntr]...)
	return r, nil
}

// PoRStatusOf returns the status of a *PoRError in err's chain.
func PoRStatusOf(err error) (PoRStatus, bool) {
	var pe *PoRError
	if errors.As(err, &pe) {
		return pe.Status, true
	}
	return 0, false
}
