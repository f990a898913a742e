package hsm

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/miekg/pkcs11"

	"github.com/keyport/keyport"
)

// Sealing of small secrets (TOTP seeds) for the database: the secret is
// encrypted in AES-CTR and authenticated with AES-CMAC (encrypt-then-MAC),
// both computed inside the HSM with two AES-256 token keys that never leave
// it. SoftHSM offers AES-ECB encryption but not AES-CTR or GCM decryption,
// so CTR's keystream is made of ECB encryptions of counter blocks (NIST SP
// 800-38A §6.5); decryption is the same operation.
const (
	// LabelSealEnc encrypts sealed secrets (CTR keystream).
	LabelSealEnc = "keyport/seal/enc"
	// LabelSealMAC authenticates sealed secrets (CMAC).
	LabelSealMAC = "keyport/seal/mac"

	sealVersion  = 1
	sealNonceLen = 12
	sealTagLen   = 16
	// maxSealed bounds what Seal accepts: it is for short secrets.
	maxSealed = 1024
)

// errBadSeal: the sealed value was altered, truncated or sealed elsewhere.
var errBadSeal = errors.New("sealed secret does not verify")

var _ keyport.SecretSealer = (*HSM)(nil)

// Seal encrypts and authenticates plaintext in the HSM. The result is
// version ‖ nonce ‖ ciphertext ‖ CMAC tag.
func (h *HSM) Seal(ctx context.Context, plaintext []byte) ([]byte, error) {
	return h.seal(ctx, "", plaintext)
}

// Unseal checks the tag and decrypts a value made by Seal.
func (h *HSM) Unseal(ctx context.Context, sealed []byte) ([]byte, error) {
	return h.unseal(ctx, "", sealed)
}

// seal is Seal with associated data: the tag covers aad too, so a value
// sealed for one purpose or owner (a module's EID) does not unseal for
// another. aad "" is Seal's own format.
func (h *HSM) seal(ctx context.Context, aad string, plaintext []byte) ([]byte, error) {
	if len(plaintext) == 0 || len(plaintext) > maxSealed {
		return nil, fmt.Errorf("hsm: seal: %d bytes; 1 to %d allowed", len(plaintext), maxSealed)
	}
	if err := h.ensureSealKeys(ctx); err != nil {
		return nil, err
	}
	out := make([]byte, 1+sealNonceLen, 1+sealNonceLen+len(plaintext)+sealTagLen)
	out[0] = sealVersion
	if _, err := rand.Read(out[1:]); err != nil {
		return nil, fmt.Errorf("hsm: seal: %w", err)
	}
	err := h.do(ctx, "seal", func(s *session) error {
		ks, err := h.keystream(s, out[1:1+sealNonceLen], len(plaintext))
		if err != nil {
			return err
		}
		for i := range plaintext {
			out = append(out, plaintext[i]^ks[i])
		}
		tag, err := h.sealTag(s, aad, out)
		if err != nil {
			return err
		}
		out = append(out, tag...)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

func (h *HSM) unseal(ctx context.Context, aad string, sealed []byte) ([]byte, error) {
	if len(sealed) < 1+sealNonceLen+1+sealTagLen || sealed[0] != sealVersion {
		return nil, fmt.Errorf("hsm: unseal: %w", errBadSeal)
	}
	body, tag := sealed[:len(sealed)-sealTagLen], sealed[len(sealed)-sealTagLen:]
	var plain []byte
	err := h.do(ctx, "unseal", func(s *session) error {
		want, err := h.sealTag(s, aad, body)
		if err != nil {
			return err
		}
		if subtle.ConstantTimeCompare(want, tag) != 1 {
			return errBadSeal
		}
		ct := body[1+sealNonceLen:]
		ks, err := h.keystream(s, body[1:1+sealNonceLen], len(ct))
		if err != nil {
			return err
		}
		plain = make([]byte, len(ct))
		for i := range ct {
			plain[i] = ct[i] ^ ks[i]
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return plain, nil
}

// keystream returns n bytes of AES-CTR keystream: ECB(nonce ‖ counter32)
// for counters 1, 2, … (0 is never used).
func (h *HSM) keystream(s *session, nonce []byte, n int) ([]byte, error) {
	key, err := h.findObject(s, pkcs11.CKO_SECRET_KEY, LabelSealEnc)
	if err != nil {
		return nil, err
	}
	blocks := make([]byte, 0, (n+15)/16*16)
	for ctr := uint32(1); len(blocks) < n; ctr++ {
		var b [16]byte
		copy(b[:], nonce)
		binary.BigEndian.PutUint32(b[12:], ctr)
		blocks = append(blocks, b[:]...)
	}
	if err := h.p.EncryptInit(s.h, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_ECB, nil)}, key); err != nil {
		return nil, fmt.Errorf("C_EncryptInit: %w", err)
	}
	ks, err := h.p.Encrypt(s.h, blocks)
	if err != nil {
		return nil, fmt.Errorf("C_Encrypt: %w", err)
	}
	return ks[:n], nil
}

// sealTag is the CMAC of "keyport/seal/v1|" ‖ data, or with associated data
// of "keyport/seal/v1+aad|" ‖ len(aad) (2 bytes) ‖ aad ‖ data.
func (h *HSM) sealTag(s *session, aad string, data []byte) ([]byte, error) {
	key, err := h.findObject(s, pkcs11.CKO_SECRET_KEY, LabelSealMAC)
	if err != nil {
		return nil, err
	}
	in := []byte("keyport/seal/v1|")
	if aad != "" {
		in = binary.BigEndian.AppendUint16([]byte("keyport/seal/v1+aad|"), uint16(len(aad)))
		in = append(in, aad...)
	}
	tag, err := h.sign(s, pkcs11.CKM_AES_CMAC, key, append(in, data...))
	if err != nil {
		return nil, err
	}
	return tag, nil
}

// generateSealKey creates one of the two sealing keys: the encryption key
// can only encrypt with AES-ECB (the CTR keystream), the MAC key only sign
// with AES-CMAC. Neither can wrap or unwrap, so neither can be used to take
// a card key out.
func (h *HSM) generateSealKey(s *session, label string) error {
	use, mech := uint(pkcs11.CKA_ENCRYPT), uint(pkcs11.CKM_AES_ECB)
	if label == LabelSealMAC {
		use, mech = pkcs11.CKA_SIGN, pkcs11.CKM_AES_CMAC
	}
	return h.generateAES(s, append(aesKey(label, use),
		pkcs11.NewAttribute(pkcs11.CKA_ALLOWED_MECHANISMS, mechanismList(mech))))
}

// ensureSealKeys creates the two sealing keys on first use (tokens that
// Init made before it created them). Once both exist it costs nothing: every
// PSK an import seals would otherwise look them up twice first.
func (h *HSM) ensureSealKeys(ctx context.Context) error {
	if h.sealKeys.Load() {
		return nil
	}
	for _, label := range []string{LabelSealEnc, LabelSealMAC} {
		err := h.do(ctx, "find "+label, func(s *session) error {
			_, err := h.findObject(s, pkcs11.CKO_SECRET_KEY, label)
			return err
		})
		if !errors.Is(err, keyport.ErrNotFound) {
			if err != nil {
				return err
			}
			continue
		}
		err = h.createKey(ctx, "create "+label, label, func(s *session) error {
			return h.generateSealKey(s, label)
		})
		if err != nil && !errors.Is(err, keyport.ErrConflict) {
			return err
		}
	}
	h.sealKeys.Store(true)
	return nil
}
