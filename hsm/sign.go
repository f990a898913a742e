package hsm

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"encoding/base64"
	"fmt"

	"github.com/miekg/pkcs11"
)

// SignES256 signs data with the receipt key: SHA-256 in Go, then CKM_ECDSA
// on the digest in the HSM (PKCS#11 v2.40 Current Mechanisms §2.3, ECDSA). The
// result is the 64-byte r‖s that JWS ES256 uses (RFC 7518 §3.4), which is
// also PKCS#11's ECDSA signature format.
func (h *HSM) SignES256(ctx context.Context, data []byte) ([]byte, error) {
	digest := sha256.Sum256(data)
	var sig []byte
	err := h.do(ctx, "sign ES256", func(s *session) error {
		k, err := h.findObject(s, pkcs11.CKO_PRIVATE_KEY, LabelReceipt)
		if err != nil {
			return err
		}
		if sig, err = h.sign(s, pkcs11.CKM_ECDSA, k, digest[:]); err != nil {
			return err
		}
		if len(sig) != 64 {
			return fmt.Errorf("ECDSA signature has %d bytes, want r‖s of 64", len(sig))
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return sig, nil
}

// ReceiptKey returns the receipt key's public half and its key ID: the
// base64url (no padding) of the first 16 bytes of SHA-256 of the public
// key's SubjectPublicKeyInfo DER. The result is cached.
func (h *HSM) ReceiptKey(ctx context.Context) (kid string, pub *ecdsa.PublicKey, err error) {
	h.receiptMu.Lock()
	defer h.receiptMu.Unlock()
	if h.receiptPub != nil {
		return h.receiptKid, h.receiptPub, nil
	}
	var point []byte
	err = h.do(ctx, "read receipt key", func(s *session) error {
		k, err := h.findObject(s, pkcs11.CKO_PUBLIC_KEY, LabelReceipt)
		if err != nil {
			return err
		}
		attrs, err := h.p.GetAttributeValue(s.h, k, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_EC_POINT, nil)})
		if err != nil {
			return fmt.Errorf("C_GetAttributeValue CKA_EC_POINT: %w", err)
		}
		point = attrs[0].Value
		return nil
	})
	if err != nil {
		return "", nil, err
	}
	pub, err = parseECPoint(point)
	if err != nil {
		return "", nil, fmt.Errorf("hsm: read receipt key: %w", err)
	}
	spki, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "", nil, fmt.Errorf("hsm: read receipt key: %w", err)
	}
	sum := sha256.Sum256(spki)
	h.receiptKid, h.receiptPub = base64.RawURLEncoding.EncodeToString(sum[:16]), pub
	return h.receiptKid, h.receiptPub, nil
}

// parseECPoint decodes CKA_EC_POINT: the DER OCTET STRING that wraps the
// uncompressed point 04‖X‖Y (PKCS#11 v2.40 Current Mechanisms §2.3, EC
// public key objects; ANSI X9.62). Some modules return the bare point, which is accepted too.
func parseECPoint(v []byte) (*ecdsa.PublicKey, error) {
	var point []byte
	if rest, err := asn1.Unmarshal(v, &point); err != nil || len(rest) != 0 {
		point = v
	}
	pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), point)
	if err != nil {
		return nil, fmt.Errorf("CKA_EC_POINT is not a P-256 point: %w", err)
	}
	return pub, nil
}

// sign is C_SignInit with mechanism mech and key, then C_Sign of data: the
// one-part signature or MAC every signing call of this package makes.
func (h *HSM) sign(s *session, mech uint, key pkcs11.ObjectHandle, data []byte) ([]byte, error) {
	if err := h.p.SignInit(s.h, []*pkcs11.Mechanism{pkcs11.NewMechanism(mech, nil)}, key); err != nil {
		return nil, fmt.Errorf("C_SignInit: %w", err)
	}
	out, err := h.p.Sign(s.h, data)
	if err != nil {
		return nil, fmt.Errorf("C_Sign: %w", err)
	}
	return out, nil
}

// AuditMAC returns HMAC-SHA256 of data under the audit key (CKM_SHA256_HMAC,
// RFC 2104).
func (h *HSM) AuditMAC(ctx context.Context, data []byte) ([]byte, error) {
	var mac []byte
	// The append's transaction holds the audit lock (and, on SQLite, the
	// one writer) while it waits for this MAC: it takes the session kept
	// for that, not a turn in the pool's queue.
	err := h.doOn(ctx, h.locked, "audit MAC", func(s *session) error {
		k, err := h.findObject(s, pkcs11.CKO_SECRET_KEY, LabelAudit)
		if err != nil {
			return err
		}
		mac, err = h.sign(s, pkcs11.CKM_SHA256_HMAC, k, data)
		return err
	})
	if err != nil {
		return nil, err
	}
	return mac, nil
}

// Health reports whether the token can serve: a pooled session works, the
// user is logged in and the token is present. Errors match
// keyport.ErrUnavailable when it cannot.
func (h *HSM) Health(ctx context.Context) error {
	return h.do(ctx, "health", func(s *session) error {
		if _, err := h.p.GetTokenInfo(h.slot); err != nil {
			return fmt.Errorf("C_GetTokenInfo: %w", err)
		}
		return nil
	})
}
