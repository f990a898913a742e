package keyport

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base32"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"
)

// Service holds keyport's use cases. Its fields are the ports it needs; the
// zero values of the optional ones are usable.
type Service struct {
	Store   Store
	Custody Custody
	// Log receives operational events. It never receives key material.
	Log *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// CheckpointEvery is how many audit events lie between two HSM-MACed
	// checkpoints; 0 means 16.
	CheckpointEvery int64
	// Mailer sends account e-mail; nil leaves it in the outbox (account.go).
	Mailer Mailer
	// Sealer seals TOTP secrets in the HSM; nil disables TOTP (totp.go).
	Sealer SecretSealer
	// Link derives module TLS-PSKs for card-link admin sessions (delivery.go).
	Link LinkCustody
	// Trigger wakes a module so that it opens an admin session (delivery.go).
	Trigger Trigger
	// Delivery tunes card-link delivery: leases, expiry, retries (job.go).
	Delivery DeliveryPolicy

	batches sync.Map // batch ID -> *Batch; batches never change
}

func (s *Service) now() time.Time {
	if s.Now != nil {
		return s.Now()
	}
	return time.Now()
}

func (s *Service) log() *slog.Logger {
	if s.Log != nil {
		return s.Log
	}
	return slog.New(slog.DiscardHandler)
}

// NewID returns a random identifier with a type prefix, e.g. "clm_…". IDs
// visible to users are random so that they cannot be guessed or enumerated.
func NewID(prefix string) string {
	var b [15]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("keyport: no randomness: " + err.Error())
	}
	return prefix + "_" + strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(b[:]))
}

// audit appends an event to the chain inside tx and, every CheckpointEvery
// events, an HSM HMAC checkpoint over the chain head.
func (s *Service) audit(ctx context.Context, tx Repo, actor, action, object string, detail any) error {
	d, err := json.Marshal(detail)
	if err != nil {
		return err
	}
	e := &AuditEvent{At: AuditTime(s.now()), Actor: actor, Action: action, Object: object, Detail: string(d)}
	if err := tx.AppendAudit(ctx, e); err != nil {
		return fmt.Errorf("keyport: audit %s: %w", action, err)
	}
	every := s.CheckpointEvery
	if every <= 0 {
		every = 16
	}
	if e.Seq%every == 0 {
		mac, err := s.Custody.AuditMAC(ctx, checkpointInput(e.Seq, e.Hash))
		if err != nil {
			return fmt.Errorf("keyport: audit checkpoint: %w", err)
		}
		if err := tx.AddCheckpoint(ctx, &AuditCheckpoint{Seq: e.Seq, Hash: e.Hash, MAC: mac, At: e.At}); err != nil {
			return fmt.Errorf("keyport: audit checkpoint: %w", err)
		}
	}
	return nil
}

func checkpointInput(seq int64, hash []byte) []byte {
	return []byte(fmt.Sprintf("keyport/audit-checkpoint/v1|%d|%x", seq, hash))
}

// ---- Batches and import (flow 1, manufacturer route) ----

// TransportKeyExport is what a manufacturer receives for an imported batch:
// the batch transport key RSA-AES-wrapped to its public key, with the KCV.
type TransportKeyExport struct {
	Batch    string   `json:"batch"`
	Wrapped  []byte   `json:"wrapped"`
	KCV      string   `json:"kcv"`
	OAEPHash OAEPHash `json:"oaep_hash"`
}

// CreateBatch creates a batch and its HSM key. For an imported batch
// (manufacturer != nil) the transport key is returned wrapped to the
// manufacturer; for a derived batch the master key never leaves the HSM.
func (s *Service) CreateBatch(ctx context.Context, p Principal, name string, aidPrefix AID, manufacturer *rsa.PublicKey) (*Batch, *TransportKeyExport, error) {
	if !p.Admin {
		return nil, nil, ErrForbidden
	}
	if err := validBatchName(name); err != nil {
		return nil, nil, err
	}
	b := &Batch{Name: name, KeySource: KeyDerived, AIDPrefix: aidPrefix, CreatedAt: s.now().UTC()}
	if manufacturer != nil {
		if err := checkRSA(manufacturer); err != nil {
			return nil, nil, err
		}
		b.KeySource = KeyImported
	}
	if _, err := s.Store.GetBatch(ctx, name); err == nil {
		return nil, nil, fmt.Errorf("%w: batch %q exists", ErrConflict, name)
	} else if !errors.Is(err, ErrNotFound) {
		return nil, nil, err
	}
	var export *TransportKeyExport
	if manufacturer != nil {
		wrapped, kcv, err := s.Custody.CreateTransportKey(ctx, name, manufacturer)
		if err != nil {
			return nil, nil, fmt.Errorf("keyport: create transport key for batch %q: %w", name, err)
		}
		export = &TransportKeyExport{Batch: name, Wrapped: wrapped, KCV: kcv, OAEPHash: s.Custody.OAEPHash()}
	} else if err := s.Custody.CreateBatchMaster(ctx, name); err != nil {
		return nil, nil, fmt.Errorf("keyport: create master key for batch %q: %w", name, err)
	}
	err := s.Store.Tx(ctx, func(tx Repo) error {
		if err := tx.CreateBatch(ctx, b); err != nil {
			return err
		}
		return s.audit(ctx, tx, p.Actor(), "batch.create", "batch:"+name, map[string]any{"key_source": b.KeySource})
	})
	if err != nil {
		return nil, nil, err
	}
	return b, export, nil
}

func validBatchName(name string) error {
	if name == "" || len(name) > 64 {
		return invalid("name", "a batch name is 1 to 64 characters")
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
			return invalid("name", "a batch name may hold letters, digits, '-', '_' and '.' only")
		}
	}
	return nil
}

// VerifyMode says how many imported KCVs are checked inside the HSM.
type VerifyMode string

// Verify modes for ImportModules.
const (
	VerifyAll    VerifyMode = "all"
	VerifySample VerifyMode = "sample" // the first module and every 997th
	VerifyNone   VerifyMode = "none"
)

func (s *Service) checkImportedKCVs(ctx context.Context, batch string, m *ModuleImport) error {
	for _, d := range m.Domains {
		for _, u := range Usages {
			kcv, err := s.Custody.ImportedKCV(ctx, batch, d.Imported[u])
			if err != nil {
				if errors.Is(err, ErrUnavailable) {
					return err
				}
				return Invalid("domains.keys."+string(u), "domain %s: the key does not unwrap under the batch transport key", d.AID)
			}
			if kcv != d.KCV[u] {
				return Invalid("domains.kcv."+string(u), "domain %s: KCV %s does not match the key (HSM computes %s)", d.AID, d.KCV[u], kcv)
			}
		}
	}
	return nil
}

// ---- Providers and credentials ----

// TokenPrefix starts every API token, so that leaked tokens are easy to find.
const TokenPrefix = "kp_"

// HashToken is how API tokens are stored: SHA-256 of the whole token. Tokens
// carry 120 random bits, so a fast hash is enough (no dictionary to attack).
func HashToken(token string) []byte {
	h := sha256.Sum256([]byte(token))
	return h[:]
}

// AddProvider creates an approved provider (the command-line route; browser
// sign-up starts pending) and returns it with a new API token, shown once.
func (s *Service) AddProvider(ctx context.Context, p Principal, name, email string, kind ProviderKind) (*Provider, string, error) {
	if !p.Admin {
		return nil, "", ErrForbidden
	}
	name = strings.TrimSpace(name)
	if name == "" || len(name) > 200 {
		return nil, "", invalid("name", "a provider name is 1 to 200 characters")
	}
	email = strings.ToLower(strings.TrimSpace(email))
	if at := strings.IndexByte(email, '@'); at < 1 || at == len(email)-1 || strings.ContainsAny(email, " <>,;") {
		return nil, "", invalid("email", "not an e-mail address")
	}
	if kind == "" {
		kind = KindOther
	}
	switch kind {
	case KindBank, KindRetailer, KindTransit, KindOther:
	default:
		return nil, "", invalid("kind", "must be bank, retailer, transit or other")
	}
	prov := &Provider{ID: NewID("prv"), Name: name, Kind: kind, Email: email, Status: ProviderApproved, CreatedAt: s.now().UTC()}
	token := TokenPrefix + NewID("tok")[4:]
	err := s.Store.Tx(ctx, func(tx Repo) error {
		if err := tx.CreateProvider(ctx, prov); err != nil {
			return err
		}
		t := &APIToken{ID: NewID("tok"), ProviderID: prov.ID, Name: "cli", Hash: HashToken(token), CreatedAt: prov.CreatedAt}
		if err := tx.CreateAPIToken(ctx, t); err != nil {
			return err
		}
		return s.audit(ctx, tx, p.Actor(), "provider.add", "provider:"+prov.ID, map[string]any{"name": name, "email": email})
	})
	if err != nil {
		return nil, "", err
	}
	return prov, token, nil
}

// CreateAdminToken creates an issuer-admin API token and returns it once.
func (s *Service) CreateAdminToken(ctx context.Context, name string) (string, error) {
	token := TokenPrefix + NewID("adm")[4:]
	t := &APIToken{ID: NewID("tok"), Admin: true, Name: name, Hash: HashToken(token), CreatedAt: s.now().UTC()}
	err := s.Store.Tx(ctx, func(tx Repo) error {
		if err := tx.CreateAPIToken(ctx, t); err != nil {
			return err
		}
		return s.audit(ctx, tx, "system", "admin-token.create", "token:"+t.ID, map[string]any{"name": name})
	})
	if err != nil {
		return "", err
	}
	return token, nil
}

// Authenticate resolves an API token to its principal. Unknown, revoked
// tokens and tokens of providers that are not approved are refused alike.
func (s *Service) Authenticate(ctx context.Context, token string) (Principal, error) {
	if !strings.HasPrefix(token, TokenPrefix) {
		return Principal{}, ErrUnauthenticated
	}
	t, err := s.Store.GetAPITokenByHash(ctx, HashToken(token))
	if errors.Is(err, ErrNotFound) {
		return Principal{}, ErrUnauthenticated
	}
	if err != nil {
		return Principal{}, err
	}
	if t.Admin {
		return Principal{Admin: true, Name: t.Name}, nil
	}
	if t.ProviderStatus != ProviderApproved {
		return Principal{}, fmt.Errorf("%w: provider is %s", ErrForbidden, t.ProviderStatus)
	}
	return Principal{ProviderID: t.ProviderID, Name: t.Name}, nil
}

// ---- Wrapping keys (flow 3) ----

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
	return k, checkRSA(k)
}

func checkRSA(k *rsa.PublicKey) error {
	if bits := k.N.BitLen(); bits < MinWrappingKeyBits {
		return Invalid("public_key", "RSA key of %d bits is too small: at least %d bits", bits, MinWrappingKeyBits)
	}
	if bits := k.N.BitLen(); bits > 8192 {
		return Invalid("public_key", "RSA key of %d bits is larger than 8192", bits)
	}
	if k.E < 3 || k.E%2 == 0 {
		return invalid("public_key", "RSA public exponent is not valid")
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

// ---- Lookup (flow 4) ----

// ModuleView is what a provider may see of a module: the domains it can
// claim and the ones it owns, never another provider's.
type ModuleView struct {
	EID      EID
	ISDAID   AID
	LastSeen *time.Time
	Domains  []Domain
}

// LookupModule finds a module by EID for the caller.
func (s *Service) LookupModule(ctx context.Context, p Principal, eid EID) (*ModuleView, error) {
	if !p.Admin && p.ProviderID == "" {
		return nil, ErrForbidden
	}
	m, err := s.Store.GetModule(ctx, eid)
	if err != nil {
		return nil, err
	}
	v := &ModuleView{EID: m.EID, ISDAID: m.ISDAID, LastSeen: m.LastSeen}
	for _, d := range m.Domains {
		if p.Admin || d.State == Unassigned || d.OwnerID == p.ProviderID {
			v.Domains = append(v.Domains, redactDomain(d))
		}
	}
	return v, nil
}

// redactDomain drops the stored wrapped keys from a domain shown to a caller;
// they are wrapped, but nobody outside the HSM has a use for them.
func redactDomain(d Domain) Domain {
	d.Imported = nil
	return d
}

// ListDomains returns the caller's domains.
func (s *Service) ListDomains(ctx context.Context, p Principal) ([]Domain, error) {
	if p.ProviderID == "" {
		return nil, ErrForbidden
	}
	ds, err := s.Store.ListDomains(ctx, p.ProviderID)
	for i := range ds {
		ds[i] = redactDomain(ds[i])
	}
	return ds, err
}

// GetDomain returns one of the caller's domains (admins see all).
func (s *Service) GetDomain(ctx context.Context, p Principal, eid EID, aid AID) (*Domain, error) {
	if !p.Admin && p.ProviderID == "" {
		// An unassigned domain has no owner: a caller with no provider must
		// not match it.
		return nil, ErrForbidden
	}
	d, err := s.Store.GetDomain(ctx, eid, aid)
	if err != nil {
		return nil, err
	}
	if !p.Admin && d.OwnerID != p.ProviderID {
		return nil, ErrNotFound
	}
	r := redactDomain(*d)
	return &r, nil
}
