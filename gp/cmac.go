package gp

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/subtle"
)

// cmacKey is an AES key prepared for AES-CMAC (NIST SP 800-38B, RFC 4493):
// the cipher and the two subkeys K1, K2.
type cmacKey struct {
	block  cipher.Block
	k1, k2 [16]byte
}

func newCMACKey(key []byte) (*cmacKey, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, malformed("AES key of %d bytes", len(key))
	}
	k := &cmacKey{block: block}
	var l [16]byte
	block.Encrypt(l[:], l[:])
	k.k1 = dbl(l)
	k.k2 = dbl(k.k1)
	return k, nil
}

// dbl multiplies by x in GF(2^128) with the CMAC polynomial (RFC 4493 2.3).
func dbl(in [16]byte) [16]byte {
	var out [16]byte
	carry := in[0] >> 7
	for i := 0; i < 15; i++ {
		out[i] = in[i]<<1 | in[i+1]>>7
	}
	out[15] = in[15] << 1
	out[15] ^= 0x87 & -carry // constant time: 0x87 when the top bit was set
	return out
}

// sum returns AES-CMAC over the concatenation of parts.
func (k *cmacKey) sum(parts ...[]byte) [16]byte {
	var x, buf [16]byte
	n := 0 // bytes pending in buf
	for _, p := range parts {
		for len(p) > 0 {
			if n == 16 {
				// Only a block followed by more data is chained here; the
				// last block is finished with K1/K2 below.
				subtle.XORBytes(x[:], x[:], buf[:])
				k.block.Encrypt(x[:], x[:])
				n = 0
			}
			c := copy(buf[n:], p)
			n += c
			p = p[c:]
		}
	}
	if n == 16 {
		subtle.XORBytes(buf[:], buf[:], k.k1[:])
	} else {
		buf[n] = 0x80
		for i := n + 1; i < 16; i++ {
			buf[i] = 0
		}
		subtle.XORBytes(buf[:], buf[:], k.k2[:])
	}
	subtle.XORBytes(x[:], x[:], buf[:])
	k.block.Encrypt(x[:], x[:])
	return x
}

// CMAC returns AES-CMAC(key, msg) (RFC 4493), 16 bytes.
func CMAC(key, msg []byte) ([]byte, error) {
	k, err := newCMACKey(key)
	if err != nil {
		return nil, err
	}
	s := k.sum(msg)
	return s[:], nil
}
