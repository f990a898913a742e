package keywrap

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"fmt"
	"hash"
)

// ParseOAEPHash returns the hash that the "oaep_hash" field of a key package
// or a transport key export names (DESIGN.md, "Key package"): "sha1" or
// "sha256". An empty name is SHA-1, the RSAES-OAEP default (RFC 8017 A.2.1).
//
// It takes a plain string so that keywrap stays free of the keyport package:
// callers pass string(h) of their keyport.OAEPHash.
func ParseOAEPHash(name string) (crypto.Hash, error) {
	switch name {
	case "sha1", "":
		return crypto.SHA1, nil
	case "sha256":
		return crypto.SHA256, nil
	}
	return 0, fmt.Errorf("keywrap: unknown OAEP hash %q (want sha1 or sha256)", name)
}

// oaepHash is the hash function of RSA-OAEP and of its MGF1: the two OAEP
// hashes keyport configures (SoftHSM has only SHA-1, ENVIRONMENT.md).
func oaepHash(h crypto.Hash) (hash.Hash, error) {
	switch h {
	case crypto.SHA1:
		return sha1.New(), nil
	case crypto.SHA256:
		return sha256.New(), nil
	}
	return nil, fmt.Errorf("OAEP hash %v not supported (SHA-1 or SHA-256)", h)
}

// splitRSAAES cuts an RSA-AES blob into its RSA-OAEP part, size bytes (the
// size of the modulus), and the KWP part, which must have the shape of a KWP
// blob (16 + 8n bytes). The shape is checked before any RSA operation.
func splitRSAAES(blob []byte, size int) (rsaPart, kwp []byte, err error) {
	if len(blob) < size+16 || (len(blob)-size)%8 != 0 {
		return nil, nil, fmt.Errorf("%d bytes is not an RSA-AES blob for a %d-bit RSA key (%d bytes of RSA-OAEP, then 16 + 8n of KWP)",
			len(blob), 8*size, size)
	}
	return blob[:size:size], blob[size:], nil
}

// UnwrapRSAAES opens a key wrapped with the RSA-AES layout keyport produces
// (that of CKM_RSA_AES_KEY_WRAP): the first priv.Size() bytes are
// RSA-OAEP(hash, MGF1 with the same hash, empty label) of an AES key E, the
// rest is AES-KWP(E, key) (RFC 5649).
func UnwrapRSAAES(priv *rsa.PrivateKey, blob []byte, hash crypto.Hash) ([]byte, error) {
	hf, err := oaepHash(hash)
	if err != nil {
		return nil, fmt.Errorf("keywrap: RSA-AES unwrap: %w", err)
	}
	rsaPart, kwp, err := splitRSAAES(blob, priv.Size())
	if err != nil {
		return nil, fmt.Errorf("keywrap: RSA-AES unwrap: %w", err)
	}
	eph, err := rsa.DecryptOAEP(hf, nil, priv, rsaPart, nil)
	if err != nil {
		return nil, fmt.Errorf("keywrap: RSA-AES unwrap: RSA-OAEP with %v: %w", hash, err)
	}
	switch len(eph) {
	case 16, 24, 32:
	default:
		return nil, fmt.Errorf("keywrap: RSA-AES unwrap: the RSA part holds %d bytes, not an AES key", len(eph))
	}
	key, err := UnwrapKWP(eph, kwp)
	if err != nil {
		return nil, fmt.Errorf("keywrap: RSA-AES unwrap: %w", err)
	}
	return key, nil
}

// WrapRSAAES wraps key to pub with the layout UnwrapRSAAES opens, using a
// fresh AES-256 ephemeral key. It is what a manufacturer or a test does
// outside the HSM.
func WrapRSAAES(pub *rsa.PublicKey, key []byte, hash crypto.Hash) ([]byte, error) {
	hf, err := oaepHash(hash)
	if err != nil {
		return nil, fmt.Errorf("keywrap: RSA-AES wrap: %w", err)
	}
	eph := make([]byte, 32)
	if _, err := rand.Read(eph); err != nil {
		return nil, fmt.Errorf("keywrap: RSA-AES wrap: %w", err)
	}
	kwp, err := WrapKWP(eph, key)
	if err != nil {
		return nil, err
	}
	rsaPart, err := rsa.EncryptOAEP(hf, rand.Reader, pub, eph, nil)
	if err != nil {
		return nil, fmt.Errorf("keywrap: RSA-AES wrap: RSA-OAEP with %v: %w", hash, err)
	}
	return append(rsaPart, kwp...), nil
}
