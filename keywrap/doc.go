// Package keywrap is the software side of keyport's key hand-offs: RFC 5649
// AES Key Wrap with Padding (kwp.go) and the RSA-AES layout of
// CKM_RSA_AES_KEY_WRAP, RSA-OAEP(ephemeral AES key) ‖ KWP(ephemeral, key)
// (rsaaes.go), computed in Go exactly as the HSM computes them.
//
// Those outside the HSM use it: a provider opening its key package (`keyport
// sp unwrap`, `keyport sp script`), a manufacturer wrapping first keys under
// a transport key, and tests that check the HSM's output independently. None
// of them needs a PKCS#11 module, so the package imports only the standard
// library: the OAEP hash is a crypto.Hash, and ParseOAEPHash reads the names
// key packages carry.
package keywrap
