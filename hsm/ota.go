package hsm

import (
	"context"
	"fmt"

	"github.com/miekg/pkcs11"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/gp"
)

// OTAKey returns the module's SCP80 key ref (KIc: AES-CBC, KID: AES-CMAC)
// as a gp.OTACipher and gp.OTAChecksum whose operations run in the HSM: for
// each call the blob is unwrapped under its KEK into a non-extractable
// session object that can only encrypt (or only sign), used and destroyed.
// The raw key never leaves the token. Decryption is refused: the KEKs'
// unwrap policy gives no card key CKA_DECRYPT (a card key that decrypts
// would open what was wrapped under it), so keyport asks for proofs of
// receipt that are checksummed, not ciphered. ctx is kept for the calls.
func (h *HSM) OTAKey(ctx context.Context, ref keyport.KeyRef) keyport.OTAKey {
	return &otaKey{ctx: ctx, h: h, ref: ref}
}

type otaKey struct {
	ctx context.Context
	h   *HSM
	ref keyport.KeyRef
}

var _ keyport.OTAKey = (*otaKey)(nil)

// String names the key, never its value.
func (k *otaKey) String() string { return "OTA " + k.ref.String() }

func (k *otaKey) BlockSize() int { return 16 }

// DecryptCBC is refused (see OTAKey).
func (k *otaKey) DecryptCBC([]byte) ([]byte, error) {
	return nil, fmt.Errorf("hsm: %s: card keys do not decrypt (ask for an unciphered PoR): %w", k, keyport.ErrForbidden)
}

func (k *otaKey) EncryptCBC(in []byte) ([]byte, error) {
	if len(in)%16 != 0 {
		return nil, fmt.Errorf("hsm: OTA AES-CBC of %d bytes: not whole blocks", len(in))
	}
	var out []byte
	err := k.h.do(k.ctx, "OTA encrypt under "+k.ref.String(), func(s *session) error {
		key, _, err := k.h.unwrapCardKey(s, k.ref, false, pkcs11.CKA_ENCRYPT)
		if err != nil {
			return err
		}
		defer k.h.destroy(s, key)
		if err := k.h.p.EncryptInit(s.h, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_CBC, make([]byte, 16))}, key); err != nil {
			return fmt.Errorf("C_EncryptInit: %w", err)
		}
		out, err = k.h.p.Encrypt(s.h, in)
		if err != nil {
			return fmt.Errorf("C_Encrypt: %w", err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// Checksum is the SCP80 cryptographic checksum: AES-CMAC truncated to its
// first 8 bytes (TS 102 225 5.1.3.1).
func (k *otaKey) Checksum(data []byte) ([]byte, error) {
	mac, err := k.h.SCP03CMAC(k.ctx, k.ref, data)
	if err != nil {
		return nil, err
	}
	if len(mac) < 8 {
		return nil, fmt.Errorf("hsm: OTA checksum of %d bytes", len(mac))
	}
	return mac[:8], nil
}

var _ interface {
	gp.OTACipher
	gp.OTAChecksum
} = (*otaKey)(nil)
