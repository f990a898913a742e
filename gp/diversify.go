package gp

import (
	"crypto/cipher"
	"crypto/des"
)

// Key types for diversification (PROTOCOLS.md §2.5): the kt byte.
const (
	DiversifyENC byte = 0x01
	DiversifyMAC byte = 0x02
	DiversifyDEK byte = 0x03
)

// DiversifyEMV derives a card key from a 16-byte 3DES master key and the
// 10-byte key diversification data (KDD, first 10 bytes of the INITIALIZE
// UPDATE response): 3DES-ECB(MK, KDD[4..9] ‖ F0 ‖ kt ‖ KDD[4..9] ‖ 0F ‖ kt)
// (GPPro "emv" template, PROTOCOLS.md §2.5).
func DiversifyEMV(master, kdd []byte, kt byte) ([]byte, error) {
	if len(kdd) != 10 {
		return nil, malformed("KDD of %d bytes, want 10", len(kdd))
	}
	d := make([]byte, 0, 16)
	d = append(append(append(d, kdd[4:10]...), 0xF0, kt), kdd[4:10]...)
	d = append(d, 0x0F, kt)
	return tdesECB(master, d)
}

// DiversifyVisa2 derives a card key with the "visa2" template:
// 3DES-ECB(MK, KDD[0..1] ‖ KDD[4..7] ‖ F0 ‖ kt ‖ KDD[0..1] ‖ KDD[4..7] ‖ 0F ‖ kt).
func DiversifyVisa2(master, kdd []byte, kt byte) ([]byte, error) {
	if len(kdd) != 10 {
		return nil, malformed("KDD of %d bytes, want 10", len(kdd))
	}
	half := append(append([]byte{}, kdd[0:2]...), kdd[4:8]...)
	d := append(append(append([]byte{}, half...), 0xF0, kt), half...)
	d = append(d, 0x0F, kt)
	return tdesECB(master, d)
}

// DiversifyKDF3 derives an AES card key with GPPro's "kdf3" template:
// CMAC(MK, i ‖ 00 00 00 ‖ kt ‖ 00 ‖ KDD) for i = 1, 2…, truncated to the
// master key's length. Unlike the AmdD KDF it has no L field.
func DiversifyKDF3(master StaticKey, kdd []byte, kt byte) ([]byte, error) {
	if len(kdd) != 10 {
		return nil, malformed("KDD of %d bytes, want 10", len(kdd))
	}
	in := append([]byte{0, 0, 0, 0, kt, 0}, kdd...)
	var out []byte
	for i := byte(1); len(out) < master.Size(); i++ {
		in[0] = i
		b, err := master.CMAC(in)
		if err != nil {
			return nil, err
		}
		out = append(out, b...)
	}
	return out[:master.Size()], nil
}

// KCVDES returns the check value of a 2- or 3-key 3DES key: the first 3
// bytes of 3DES-ECB(key, 00×8) (GPCS B.6).
func KCVDES(key []byte) ([]byte, error) {
	b, err := tdesECB(key, make([]byte, 8))
	if err != nil {
		return nil, err
	}
	return b[:3:3], nil
}

func tdesECB(key, data []byte) ([]byte, error) {
	var k []byte
	switch len(key) {
	case 16:
		k = append(append([]byte{}, key...), key[:8]...)
	case 24:
		k = key
	default:
		return nil, malformed("3DES key of %d bytes", len(key))
	}
	var b cipher.Block
	b, err := des.NewTripleDESCipher(k)
	if err != nil {
		return nil, malformed("3DES key: %v", err)
	}
	out := make([]byte, len(data))
	for i := 0; i+8 <= len(data); i += 8 {
		b.Encrypt(out[i:], data[i:i+8])
	}
	return out, nil
}
