package gp

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/subtle"
	"fmt"
)

// Key types (GPCS Table 11-16).
const (
	KeyTypeDES    byte = 0x80
	KeyTypeTLSPSK byte = 0x85
	KeyTypeAES    byte = 0x88
)

// KCV returns the GP key check value of an AES key: the first 3 bytes of
// AES-ECB(key, 01×16) (GPCS B.6, AmdD 7.2.1).
func KCV(key []byte) ([]byte, error) {
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, malformed("AES key of %d bytes", len(key))
	}
	var x [16]byte
	for i := range x {
		x[i] = 0x01
	}
	b.Encrypt(x[:], x[:])
	return x[:3:3], nil
}

// EncryptKey encrypts an AES key for PUT KEY or STORE DATA under the static
// Key-DEK: AES-CBC with a zero IV (AmdD 7.2.1). An AES-192 key is padded to
// 32 bytes with 8 zero bytes (AmdD allows any padding bytes there).
func EncryptKey(dek, key []byte) ([]byte, error) {
	switch len(key) {
	case 16, 24, 32:
	default:
		return nil, malformed("AES key of %d bytes to encrypt", len(key))
	}
	b, err := aes.NewCipher(dek)
	if err != nil {
		return nil, malformed("Key-DEK of %d bytes", len(dek))
	}
	p := make([]byte, (len(key)+15)/16*16)
	copy(p, key)
	cipher.NewCBCEncrypter(b, make([]byte, 16)).CryptBlocks(p, p)
	return p, nil
}

// DecryptKey reverses EncryptKey for a key of keyLen bytes, as a card does.
func DecryptKey(dek, block []byte, keyLen int) ([]byte, error) {
	if len(block) == 0 || len(block)%16 != 0 || keyLen <= 0 || keyLen > len(block) {
		return nil, malformed("encrypted key block of %d bytes for a %d-byte key", len(block), keyLen)
	}
	b, err := aes.NewCipher(dek)
	if err != nil {
		return nil, malformed("Key-DEK of %d bytes", len(dek))
	}
	p := make([]byte, len(block))
	cipher.NewCBCDecrypter(b, make([]byte, 16)).CryptBlocks(p, block)
	return p[:keyLen:keyLen], nil
}

// KeyComponent is one key in PUT KEY data (GPCS 11.8.2.3).
type KeyComponent struct {
	Type byte
	// Length is the clear key length. When non-zero the component is
	// encoded in the AmdD Table 7-10 form, 88 L keyLen ciphertext, which
	// GPPro sends; zero gives the GPCS Table 11-71 form, 88 L ciphertext,
	// which pySim sends (PROTOCOLS.md §1.4 recommends Table 7-10).
	Length int
	// Encrypted is the key block, e.g. from EncryptKey.
	Encrypted []byte
	KCV       []byte
}

// AESKeyComponent encrypts key under the static Key-DEK and computes its KCV,
// in the AmdD Table 7-10 form.
func AESKeyComponent(dek, key []byte) (KeyComponent, error) {
	ct, err := EncryptKey(dek, key)
	if err != nil {
		return KeyComponent{}, err
	}
	kcv, err := KCV(key)
	if err != nil {
		return KeyComponent{}, err
	}
	return KeyComponent{Type: KeyTypeAES, Length: len(key), Encrypted: ct, KCV: kcv}, nil
}

// PutKey is a PUT KEY command (GPCS 11.8): 80 D8 P1 P2 Lc newKVN keydata… 00.
type PutKey struct {
	// OldKVN is the key set replaced (P1 b7..b1); 0 adds a new key set.
	OldKVN byte
	// More sets P1 b8: more PUT KEY commands follow.
	More   bool
	NewKVN byte
	// FirstKID is the key identifier of the first key (P2 b7..b1), usually 1.
	FirstKID byte
	Keys     []KeyComponent
}

// Command encodes the PUT KEY command. P2 b8 is set when there are several
// keys (GPCS Table 11-69).
func (p PutKey) Command() (Command, error) {
	if p.OldKVN > 0x7F || p.FirstKID > 0x7F || len(p.Keys) == 0 {
		return Command{}, malformed("PUT KEY with old KVN %02X, first KID %02X, %d keys", p.OldKVN, p.FirstKID, len(p.Keys))
	}
	d := []byte{p.NewKVN}
	for i, k := range p.Keys {
		v := k.Encrypted
		if k.Length > 0 {
			v = append([]byte{byte(k.Length)}, k.Encrypted...)
		}
		if len(v) > 0xFF || len(k.KCV) > 0xFF || k.Length > 0xFF {
			return Command{}, malformed("PUT KEY key %d too long", i+1)
		}
		d = append(d, k.Type, byte(len(v)))
		d = append(d, v...)
		d = append(d, byte(len(k.KCV)))
		d = append(d, k.KCV...)
	}
	c := Command{CLA: CLAGP, INS: INSPutKey, P1: p.OldKVN, P2: p.FirstKID, Data: d, Ne: MaxShortNe}
	if p.More {
		c.P1 |= 0x80
	}
	if len(p.Keys) > 1 {
		c.P2 |= 0x80
	}
	return c, nil
}

// ParsePutKey decodes a PUT KEY command in either key data form. An AES
// component whose value is 1 byte longer than whole AES blocks is read as
// the Table 7-10 form (its first byte is the key length); otherwise as the
// Table 11-71 form. Fields alias c.Data.
func ParsePutKey(c Command) (PutKey, error) {
	if c.INS != INSPutKey {
		return PutKey{}, malformed("INS %02X is not PUT KEY", c.INS)
	}
	if len(c.Data) < 1 {
		return PutKey{}, truncated("PUT KEY without data")
	}
	p := PutKey{OldKVN: c.P1 & 0x7F, More: c.P1&0x80 != 0, FirstKID: c.P2 & 0x7F, NewKVN: c.Data[0]}
	b := c.Data[1:]
	for len(b) > 0 {
		i := len(p.Keys) + 1
		if len(b) < 2 || len(b) < 2+int(b[1]) {
			return PutKey{}, truncated("PUT KEY key %d", i)
		}
		k := KeyComponent{Type: b[0]}
		v := b[2 : 2+int(b[1]) : 2+int(b[1])]
		b = b[2+int(b[1]):]
		if k.Type == 0xFF {
			return PutKey{}, malformed("PUT KEY key %d: extended key type format not supported", i)
		}
		if k.Type == KeyTypeAES && len(v)%16 == 1 && int(v[0]) <= len(v)-1 && v[0] > 0 {
			k.Length, v = int(v[0]), v[1:]
		}
		k.Encrypted = v
		if len(b) < 1 || len(b) < 1+int(b[0]) {
			return PutKey{}, truncated("PUT KEY key %d check value", i)
		}
		k.KCV = b[1 : 1+int(b[0]) : 1+int(b[0])]
		b = b[1+int(b[0]):]
		p.Keys = append(p.Keys, k)
	}
	if len(p.Keys) == 0 {
		return PutKey{}, malformed("PUT KEY without key data")
	}
	if (len(p.Keys) > 1) != (c.P2&0x80 != 0) {
		return PutKey{}, malformed("PUT KEY P2 %02X does not match %d keys", c.P2, len(p.Keys))
	}
	return p, nil
}

// PutKeyResponse is the data of the PUT KEY response: the new KVN and the
// KCV of each key, in clear (GPCS 11.8.3).
type PutKeyResponse struct {
	KVN  byte
	KCVs [][]byte
}

// ParsePutKeyResponse decodes KVN ‖ KCV(3)…, the form of AES and DES keys.
func ParsePutKeyResponse(data []byte) (PutKeyResponse, error) {
	if len(data) < 1 {
		return PutKeyResponse{}, truncated("PUT KEY response is empty")
	}
	if (len(data)-1)%3 != 0 {
		return PutKeyResponse{}, malformed("PUT KEY response of %d bytes is not KVN + 3-byte KCVs", len(data))
	}
	r := PutKeyResponse{KVN: data[0]}
	for b := data[1:]; len(b) > 0; b = b[3:] {
		r.KCVs = append(r.KCVs, b[:3:3])
	}
	return r, nil
}

// Bytes encodes the response data.
func (r PutKeyResponse) Bytes() []byte {
	out := []byte{r.KVN}
	for _, k := range r.KCVs {
		out = append(out, k...)
	}
	return out
}

// Confirms reports whether the card's response carries the KVN and the KCVs
// of p, in order: the check that a key replacement took effect (PROTOCOLS.md
// §7.1).
func (r PutKeyResponse) Confirms(p PutKey) error {
	if r.KVN != p.NewKVN {
		return fmt.Errorf("gp: PUT KEY response KVN %02X, want %02X: %w", r.KVN, p.NewKVN, ErrMalformed)
	}
	if len(r.KCVs) != len(p.Keys) {
		return fmt.Errorf("gp: PUT KEY response has %d KCVs, want %d: %w", len(r.KCVs), len(p.Keys), ErrMalformed)
	}
	for i, k := range p.Keys {
		if subtle.ConstantTimeCompare(r.KCVs[i], k.KCV) != 1 {
			return fmt.Errorf("gp: PUT KEY response KCV %d is %X, want %X: %w", i+1, r.KCVs[i], k.KCV, ErrMalformed)
		}
	}
	return nil
}

// Key usage qualifiers for the key control reference template (GPCS Table
// 11-17; values as commonly used for SCP03 keys, not checked against a card).
const (
	KeyUsageENC byte = 0x38 // C-ENC + R-ENC (secure messaging)
	KeyUsageMAC byte = 0x34 // C-MAC + R-MAC
	KeyUsageDEK byte = 0x48 // sensitive data confidentiality
)

// KeyLoad describes one key loaded with STORE DATA (GPCS 11.11.4): its
// control reference template in DGI 00B9 and its encrypted value in DGI 8113.
type KeyLoad struct {
	Usage     byte   // 95 key usage qualifier
	Access    []byte // 96 key access, omitted when nil
	Type      byte   // 80 key type, 88 = AES
	Length    int    // 81 key length in bytes
	KID, KVN  byte   // 82, 83
	KCV       []byte // 84
	Encrypted []byte // DGI 8113: the key under the static Key-DEK (AmdD 7.3)
}

// KeyLoadDGIs encodes key loading DGIs, one 00B9 { B9 {95 [96] 80 81 82 83 84} }
// followed by its 8113 for each key (GPCS 11.11.4, Tables 11-91..11-93).
// Send them with StoreData(StoreDataLast|StoreDataDGI, …), or split them
// over several blocks.
func KeyLoadDGIs(keys []KeyLoad) []byte {
	var out []byte
	for _, k := range keys {
		var crt []byte
		crt = append(crt, Encode(0x95, []byte{k.Usage})...)
		if k.Access != nil {
			crt = append(crt, Encode(0x96, k.Access)...)
		}
		crt = append(crt, Encode(0x80, []byte{k.Type})...)
		crt = append(crt, Encode(0x81, []byte{byte(k.Length)})...)
		crt = append(crt, Encode(0x82, []byte{k.KID})...)
		crt = append(crt, Encode(0x83, []byte{k.KVN})...)
		crt = append(crt, Encode(0x84, k.KCV)...)
		out = append(out, DGI{Tag: 0x00B9, Data: Encode(0xB9, crt)}.Bytes()...)
		out = append(out, DGI{Tag: 0x8113, Data: k.Encrypted}.Bytes()...)
	}
	return out
}

// ParseKeyLoadDGIs decodes what KeyLoadDGIs encodes: each 00B9 template is
// paired with the next 8113 block.
func ParseKeyLoadDGIs(b []byte) ([]KeyLoad, error) {
	dgis, err := ParseDGIs(b)
	if err != nil {
		return nil, err
	}
	var out []KeyLoad
	var pending *KeyLoad
	for _, d := range dgis {
		switch d.Tag {
		case 0x00B9:
			if pending != nil {
				return nil, malformed("DGI 00B9 without its 8113")
			}
			k, err := parseKeyCRT(d.Data)
			if err != nil {
				return nil, err
			}
			pending = &k
		case 0x8113:
			if pending == nil {
				return nil, malformed("DGI 8113 without a preceding 00B9")
			}
			pending.Encrypted = d.Data
			out = append(out, *pending)
			pending = nil
		default:
			return nil, malformed("unexpected DGI %04X in key loading", d.Tag)
		}
	}
	if pending != nil {
		return nil, truncated("DGI 00B9 without its 8113")
	}
	return out, nil
}

func parseKeyCRT(b []byte) (KeyLoad, error) {
	t, rest, err := ParseTLV(b)
	if err != nil {
		return KeyLoad{}, err
	}
	if t.Tag != 0xB9 || len(rest) != 0 {
		return KeyLoad{}, malformed("DGI 00B9 does not hold one B9 template")
	}
	fields, err := t.Children()
	if err != nil {
		return KeyLoad{}, err
	}
	var k KeyLoad
	one := func(f TLV) (byte, error) {
		if len(f.Value) != 1 {
			return 0, malformed("key template field %s of %d bytes, want 1", f.Tag, len(f.Value))
		}
		return f.Value[0], nil
	}
	for _, f := range fields {
		var v byte
		switch f.Tag {
		case 0x95, 0x80, 0x81, 0x82, 0x83:
			if v, err = one(f); err != nil {
				return KeyLoad{}, err
			}
		}
		switch f.Tag {
		case 0x95:
			k.Usage = v
		case 0x96:
			k.Access = f.Value
		case 0x80:
			k.Type = v
		case 0x81:
			k.Length = int(v)
		case 0x82:
			k.KID = v
		case 0x83:
			k.KVN = v
		case 0x84:
			k.KCV = f.Value
		}
	}
	return k, nil
}
