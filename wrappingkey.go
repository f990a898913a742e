package keyport

import (
	"context"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
	"time"
)

// WrappingKey is a provider's RSA public key that first keys are wrapped to.
type WrappingKey struct {
	ID         string
	ProviderID string
	// PublicKeyDER is the SubjectPublicKeyInfo.
	PublicKeyDER []byte
	// SHA256 is the hex SHA-256 of PublicKeyDER, the fingerprint shown to users.
	SHA256    string
	Bits      int
	CreatedAt time.Time
}

// MinWrappingKeyBits is the smallest RSA modulus keyport wraps first keys to.
const MinWrappingKeyBits = 3072

// ParsePublicKeyPEM reads an RSA public key from PEM ("PUBLIC KEY" SPKI or
// "RSA PUBLIC KEY" PKCS#1) or from DER SPKI, and checks its size.
func ParsePublicKeyPEM(data []byte) (*rsa.PublicKey, error) {
	der := data
	if blk, _ := pem.Decode(data); blk != nil {
		switch blk.Type {
		case "PUBLIC KEY", "RSA PUBLIC KEY":
		case "PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY", "ENCRYPTED PRIVATE KEY":
			return nil, invalid("public_key", "this is a PRIVATE key: never upload it; send the public key only")
		default:
			return nil, Invalid("public_key", "PEM block %q is not a public key", blk.Type)
		}
		der = blk.Bytes
	} else if strings.Contains(string(data), "-----BEGIN") {
		return nil, invalid("public_key", "the PEM is damaged (no complete BEGIN/END block)")
	}
	var pub any
	var err error
	if pub, err = x509.ParsePKIXPublicKey(der); err != nil {
		if k, err2 := x509.ParsePKCS1PublicKey(der); err2 == nil {
			pub, err = k, nil
		} else {
			return nil, invalid("public_key", "not a PEM or DER public key")
		}
	}
	k, ok := pub.(*rsa.PublicKey)
	if !ok {
		return nil, Invalid("public_key", "the key is %T; keyport wraps only to RSA keys", pub)
	}
	return k, CheckRSAKey("public_key", k)
}

// CheckRSAKey is every check an RSA public key that keyport wraps to (a
// provider's wrapping key, a manufacturer's) must pass: a modulus of
// MinWrappingKeyBits to 8192 bits and an odd public exponent of at least 3
// (with e = 1, RSA-OAEP is an encoding anyone can undo). field names the
// key in the error. The HSM adapter checks again before it wraps, and a
// claim checks a stored key again when it reads it.
func CheckRSAKey(field string, k *rsa.PublicKey) error {
	if k == nil || k.N == nil {
		return Invalid(field, "the RSA public key is missing")
	}
	if bits := k.N.BitLen(); bits < MinWrappingKeyBits {
		return Invalid(field, "RSA key of %d bits is too small: at least %d bits", bits, MinWrappingKeyBits)
	}
	if bits := k.N.BitLen(); bits > 8192 {
		return Invalid(field, "RSA key of %d bits is larger than 8192", bits)
	}
	if k.E < 3 || k.E%2 == 0 {
		return invalid(field, "RSA public exponent is not valid")
	}
	return nil
}

// RegisterWrappingKey stores a provider's RSA public key and returns it with
// its SHA-256 fingerprint.
func (s *Service) RegisterWrappingKey(ctx context.Context, p Principal, data []byte) (*WrappingKey, error) {
	if p.ProviderID == "" {
		return nil, ErrForbidden
	}
	pub, err := ParsePublicKeyPEM(data)
	if err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(der)
	k := &WrappingKey{ID: NewID("wk"), ProviderID: p.ProviderID, PublicKeyDER: der, SHA256: hex.EncodeToString(sum[:]),
		Bits: pub.N.BitLen(), CreatedAt: s.now().UTC()}
	err = s.Store.Tx(ctx, func(tx Repo) error {
		if err := tx.CreateWrappingKey(ctx, k); err != nil {
			return err
		}
		return s.audit(ctx, tx, p.Actor(), "wrapping-key.register", "wrapping-key:"+k.ID, map[string]any{"sha256": k.SHA256, "bits": k.Bits})
	})
	if err != nil {
		return nil, err
	}
	return k, nil
}

// ListWrappingKeys returns the caller's wrapping keys.
func (s *Service) ListWrappingKeys(ctx context.Context, p Principal) ([]WrappingKey, error) {
	if p.ProviderID == "" {
		return nil, ErrForbidden
	}
	return s.Store.ListWrappingKeys(ctx, p.ProviderID)
}

// wrappingKeyEntry is a wrapping key as a claim uses it: the row and its
// parsed public key.
type wrappingKeyEntry struct {
	wk  *WrappingKey
	pub *rsa.PublicKey
}

// wrappingKey returns the provider's wrapping key id with its public key,
// parsed. A wrapping key row never changes and is never deleted once
// registered (nothing in keyport updates or removes one), so what was read
// once is cached for the life of the process; an unknown key is not cached,
// so a key registered since (here or on another replica) is found.
func (s *Service) wrappingKey(ctx context.Context, providerID, id string) (*WrappingKey, *rsa.PublicKey, error) {
	key := providerID + "\x00" + id
	if e, ok := s.wrappingKeys.Load(key); ok {
		e := e.(*wrappingKeyEntry)
		return e.wk, e.pub, nil
	}
	wk, err := s.Store.GetWrappingKey(ctx, providerID, id)
	if errors.Is(err, ErrNotFound) {
		return nil, nil, Invalid("wrapping_key_id", "no wrapping key %q is registered for you", id)
	}
	if err != nil {
		return nil, nil, err
	}
	pub, err := x509.ParsePKIXPublicKey(wk.PublicKeyDER)
	if err != nil {
		return nil, nil, fmt.Errorf("keyport: stored wrapping key %s: %w", wk.ID, err)
	}
	rsaPub, ok := pub.(*rsa.PublicKey)
	if !ok {
		return nil, nil, fmt.Errorf("keyport: stored wrapping key %s is a %T, not an RSA key", wk.ID, pub)
	}
	if err := CheckRSAKey("wrapping_key_id", rsaPub); err != nil {
		// Registered before the check was this strict, or written behind
		// keyport's back: never wrapped to.
		return nil, nil, fmt.Errorf("keyport: stored wrapping key %s: %w", wk.ID, err)
	}
	s.wrappingKeys.Store(key, &wrappingKeyEntry{wk: wk, pub: rsaPub})
	return wk, rsaPub, nil
}
