package keywrap

import (
	"crypto/aes"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
)

// kwpAIV is the high half of the RFC 5649 §3 alternative initial value; the
// low half is the 32-bit message length indicator (MLI).
const kwpAIV = 0xA65959A6

// ErrKWPIntegrity means a KWP blob failed the RFC 5649 §3 integrity check:
// wrong key, or the blob was altered.
var ErrKWPIntegrity = errors.New("AES-KWP integrity check failed (wrong key or altered data)")

// WrapKWP wraps key under kek with AES Key Wrap with Padding (RFC 5649 §4.1).
// kek is an AES-128/192/256 key; key has 1 to 2^32-1 bytes.
func WrapKWP(kek, key []byte) ([]byte, error) {
	block, err := aes.NewCipher(kek)
	if err != nil {
		return nil, fmt.Errorf("keywrap: KWP wrap: %w", err)
	}
	if len(key) == 0 || uint64(len(key)) > 0xFFFFFFFF {
		return nil, errors.New("keywrap: KWP wrap: key length out of range")
	}
	var a [8]byte
	binary.BigEndian.PutUint32(a[:4], kwpAIV)
	binary.BigEndian.PutUint32(a[4:], uint32(len(key)))
	padded := make([]byte, (len(key)+7)/8*8) // zero padding to 8 bytes
	copy(padded, key)
	if len(padded) == 8 {
		// RFC 5649 §4.1: one 64-bit block is encrypted once, with the AIV, in ECB.
		out := make([]byte, 16)
		copy(out, a[:])
		copy(out[8:], padded)
		block.Encrypt(out, out)
		return out, nil
	}
	// Otherwise the RFC 3394 §2.2.1 wrapping process with the AIV.
	n := len(padded) / 8
	out := make([]byte, 8+len(padded))
	copy(out[8:], padded)
	var b [16]byte
	for j := 0; j < 6; j++ {
		for i := 1; i <= n; i++ {
			copy(b[:8], a[:])
			copy(b[8:], out[8*i:8*i+8])
			block.Encrypt(b[:], b[:])
			t := uint64(n*j + i)
			binary.BigEndian.PutUint64(a[:], binary.BigEndian.Uint64(b[:8])^t)
			copy(out[8*i:], b[8:])
		}
	}
	copy(out, a[:])
	return out, nil
}

// UnwrapKWP reverses WrapKWP (RFC 5649 §4.2), checking the AIV, the length
// indicator and the zero padding; any mismatch is ErrKWPIntegrity.
func UnwrapKWP(kek, wrapped []byte) ([]byte, error) {
	block, err := aes.NewCipher(kek)
	if err != nil {
		return nil, fmt.Errorf("keywrap: KWP unwrap: %w", err)
	}
	if len(wrapped) < 16 || len(wrapped)%8 != 0 {
		return nil, fmt.Errorf("keywrap: KWP unwrap: %d bytes is not a KWP blob (multiple of 8, at least 16)", len(wrapped))
	}
	n := len(wrapped)/8 - 1
	var a [8]byte
	plain := make([]byte, 8*n)
	if n == 1 {
		var b [16]byte
		block.Decrypt(b[:], wrapped)
		copy(a[:], b[:8])
		copy(plain, b[8:])
	} else {
		// RFC 3394 §2.2.2 unwrapping process.
		copy(a[:], wrapped[:8])
		copy(plain, wrapped[8:])
		var b [16]byte
		for j := 5; j >= 0; j-- {
			for i := n; i >= 1; i-- {
				t := uint64(n*j + i)
				binary.BigEndian.PutUint64(b[:8], binary.BigEndian.Uint64(a[:])^t)
				copy(b[8:], plain[8*(i-1):8*i])
				block.Decrypt(b[:], b[:])
				copy(a[:], b[:8])
				copy(plain[8*(i-1):], b[8:])
			}
		}
	}
	// RFC 5649 §3: AIV high half, 8(n-1) < MLI ≤ 8n, zero padding. The
	// checks are combined so that a failure does not say which one failed.
	mli := binary.BigEndian.Uint32(a[4:])
	var aiv [4]byte
	binary.BigEndian.PutUint32(aiv[:], kwpAIV)
	ok := subtle.ConstantTimeCompare(a[:4], aiv[:])
	if uint64(mli) <= uint64(8*(n-1)) || uint64(mli) > uint64(8*n) {
		ok = 0
		mli = uint32(8 * n)
	}
	var pad byte
	for _, c := range plain[mli:] {
		pad |= c
	}
	ok &= subtle.ConstantTimeByteEq(pad, 0)
	if ok != 1 {
		return nil, fmt.Errorf("keywrap: KWP unwrap: %w", ErrKWPIntegrity)
	}
	return plain[:mli], nil
}
