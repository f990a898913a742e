package keyport

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math/big"
	"time"
)

// KeyPackageType is the JWS "typ" of a key package.
const KeyPackageType = "keyport-key-package+json"

// KeyPackage is the payload of the signed key package a provider downloads
// after a claim (DESIGN.md, "Key package").
type KeyPackage struct {
	Version         int             `json:"version"`
	EID             EID             `json:"eid"`
	AID             AID             `json:"aid"`
	KVN             int             `json:"kvn"`
	SCP             string          `json:"scp"`
	I               string          `json:"i"`
	SequenceCounter int             `json:"sequence_counter"`
	Wrapping        PackageWrapping `json:"wrapping"`
	Keys            []PackageKey    `json:"keys"`
	IssuedAt        time.Time       `json:"issued_at"`
	ClaimID         string          `json:"claim_id"`
}

// PackageWrapping says how the keys are wrapped and to which public key.
type PackageWrapping struct {
	Alg             string   `json:"alg"` // "RSA-OAEP+AES-KWP"
	OAEPHash        OAEPHash `json:"oaep_hash"`
	PublicKeySHA256 string   `json:"public_key_sha256"`
}

// PackageKey is one wrapped first key.
type PackageKey struct {
	ID      int      `json:"id"` // SCP03 key identifier: 1 enc, 2 mac, 3 dek
	Usage   KeyUsage `json:"usage"`
	Bits    int      `json:"bits"`
	KCV     string   `json:"kcv"`
	Wrapped []byte   `json:"wrapped"` // base64 in JSON
}

// JWS is a JSON Web Signature in flattened JSON serialization (RFC 7515 §7.2.2).
type JWS struct {
	Protected string `json:"protected"`
	Payload   string `json:"payload"`
	Signature string `json:"signature"`
}

type jwsHeader struct {
	Alg string `json:"alg"`
	Kid string `json:"kid"`
	Typ string `json:"typ"`
}

var b64 = base64.RawURLEncoding

// JWK is a public key in JSON Web Key form (RFC 7517, RFC 7518 §6.2).
type JWK struct {
	Kty string `json:"kty"`
	Crv string `json:"crv"`
	X   string `json:"x"`
	Y   string `json:"y"`
	Kid string `json:"kid"`
	Use string `json:"use"`
	Alg string `json:"alg"`
}

// JWKS is a JSON Web Key Set.
type JWKS struct {
	Keys []JWK `json:"keys"`
}

// NewJWK encodes an ECDSA P-256 public key.
func NewJWK(kid string, pub *ecdsa.PublicKey) JWK {
	pad := func(n *big.Int) string {
		b := make([]byte, 32)
		n.FillBytes(b)
		return b64.EncodeToString(b)
	}
	return JWK{Kty: "EC", Crv: "P-256", X: pad(pub.X), Y: pad(pub.Y), Kid: kid, Use: "sig", Alg: "ES256"}
}

func (k JWK) publicKey() (*ecdsa.PublicKey, error) {
	if k.Kty != "EC" || k.Crv != "P-256" {
		return nil, fmt.Errorf("key %q is not an EC P-256 key", k.Kid)
	}
	x, err1 := b64.DecodeString(k.X)
	y, err2 := b64.DecodeString(k.Y)
	if err1 != nil || err2 != nil || len(x) != 32 || len(y) != 32 {
		return nil, fmt.Errorf("key %q has malformed coordinates", k.Kid)
	}
	pub := &ecdsa.PublicKey{Curve: elliptic.P256(), X: new(big.Int).SetBytes(x), Y: new(big.Int).SetBytes(y)}
	if !pub.Curve.IsOnCurve(pub.X, pub.Y) {
		return nil, fmt.Errorf("key %q is not on P-256", k.Kid)
	}
	return pub, nil
}

// ErrBadPackage reports a key package that is malformed or whose signature
// does not verify. It matches ErrInvalid.
var ErrBadPackage = fmt.Errorf("%w: key package rejected", ErrInvalid)

// VerifyKeyPackage checks a key package's ES256 signature against the keys of
// a JWKS and returns its payload.
func VerifyKeyPackage(pkg []byte, keys JWKS) (*KeyPackage, error) {
	var j JWS
	dec := json.NewDecoder(bytes.NewReader(pkg))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&j); err != nil {
		return nil, fmt.Errorf("%w: not a flattened JWS: %s", ErrBadPackage, DescribeJSONError(err))
	}
	hdrJSON, err := b64.DecodeString(j.Protected)
	if err != nil {
		return nil, fmt.Errorf("%w: protected header is not base64url", ErrBadPackage)
	}
	var hdr jwsHeader
	if err := json.Unmarshal(hdrJSON, &hdr); err != nil {
		return nil, fmt.Errorf("%w: protected header is not JSON", ErrBadPackage)
	}
	if hdr.Alg != "ES256" || hdr.Typ != KeyPackageType {
		return nil, fmt.Errorf("%w: header must say alg ES256 and typ %s", ErrBadPackage, KeyPackageType)
	}
	var pub *ecdsa.PublicKey
	for _, k := range keys.Keys {
		if k.Kid == hdr.Kid {
			if pub, err = k.publicKey(); err != nil {
				return nil, fmt.Errorf("%w: %v", ErrBadPackage, err)
			}
		}
	}
	if pub == nil {
		return nil, fmt.Errorf("%w: signed by unknown key %q", ErrBadPackage, hdr.Kid)
	}
	sig, err := b64.DecodeString(j.Signature)
	if err != nil || len(sig) != 64 {
		return nil, fmt.Errorf("%w: signature is not a 64-byte ES256 signature", ErrBadPackage)
	}
	digest := sha256.Sum256([]byte(j.Protected + "." + j.Payload))
	r, s := new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])
	if !ecdsa.Verify(pub, digest[:], r, s) {
		return nil, fmt.Errorf("%w: signature does not verify", ErrBadPackage)
	}
	payload, err := b64.DecodeString(j.Payload)
	if err != nil {
		return nil, fmt.Errorf("%w: payload is not base64url", ErrBadPackage)
	}
	var p KeyPackage
	if err := json.Unmarshal(payload, &p); err != nil {
		return nil, fmt.Errorf("%w: payload is not a key package", ErrBadPackage)
	}
	if p.Version != 1 || len(p.Keys) == 0 {
		return nil, fmt.Errorf("%w: unsupported version %d or no keys", ErrBadPackage, p.Version)
	}
	return &p, nil
}

func (p *KeyPackage) kcvs() map[KeyUsage]string {
	m := map[KeyUsage]string{}
	for _, k := range p.Keys {
		m[k.Usage] = k.KCV
	}
	return m
}

// signPackage serializes p as a flattened JWS signed in the HSM (ES256).
func (s *Service) signPackage(ctx context.Context, p *KeyPackage) ([]byte, error) {
	kid, _, err := s.Custody.ReceiptKey(ctx)
	if err != nil {
		return nil, fmt.Errorf("keyport: receipt key: %w", err)
	}
	payload, err := json.Marshal(p)
	if err != nil {
		return nil, err
	}
	hdr, _ := json.Marshal(jwsHeader{Alg: "ES256", Kid: kid, Typ: KeyPackageType})
	j := JWS{Protected: b64.EncodeToString(hdr), Payload: b64.EncodeToString(payload)}
	sig, err := s.Custody.SignES256(ctx, []byte(j.Protected+"."+j.Payload))
	if err != nil {
		return nil, fmt.Errorf("keyport: sign key package: %w", err)
	}
	j.Signature = b64.EncodeToString(sig)
	return json.Marshal(j)
}

// KeyPackage returns the signed key package of one of the caller's domains.
// It can be downloaded again as often as needed; each download is audited.
func (s *Service) KeyPackage(ctx context.Context, p Principal, eid EID, aid AID) (pkg []byte, err error) {
	defer func() { s.metrics().KeyPackageServed(ResultOf(err)) }()
	if p.ProviderID == "" {
		return nil, ErrForbidden
	}
	d, err := s.Store.GetDomain(ctx, eid, aid)
	if err != nil {
		return nil, err
	}
	if d.OwnerID != p.ProviderID || d.State == Releasing {
		// A domain being released has new first keys coming: the old
		// package names keys the card is losing.
		return nil, ErrNotFound
	}
	c, err := s.Store.GetClaimForDomain(ctx, p.ProviderID, d.ID)
	if err != nil {
		return nil, err
	}
	err = s.Store.Tx(ctx, func(tx Repo) error {
		return s.audit(ctx, tx, p.Actor(), "key-package.download", "domain:"+string(eid)+"/"+string(aid), map[string]any{"claim": c.ID})
	})
	if err != nil {
		return nil, err
	}
	return c.Package, nil
}

// JWKS returns the receipt key set that verifies key packages.
func (s *Service) JWKS(ctx context.Context) (JWKS, error) {
	kid, pub, err := s.Custody.ReceiptKey(ctx)
	if err != nil {
		return JWKS{}, err
	}
	return JWKS{Keys: []JWK{NewJWK(kid, pub)}}, nil
}
