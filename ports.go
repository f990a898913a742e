package keyport

import (
	"context"
	"crypto/ecdsa"
	"crypto/rsa"
)

// OAEPHash names the hash of RSA-OAEP in the RSA-AES wrap. SoftHSM offers
// only SHA-1; real HSMs and cloud KMSs prefer SHA-256.
type OAEPHash string

// OAEP hashes.
const (
	OAEPSHA1   OAEPHash = "sha1"
	OAEPSHA256 OAEPHash = "sha256"
)

// FirstKeysRequest asks the HSM to produce one domain's first key set and
// wrap each key to a provider's RSA key.
type FirstKeysRequest struct {
	Batch  string // batch name: selects the master or transport key
	Source KeySource
	EID    EID
	AID    AID
	// Imported holds the manufacturer's KWP-wrapped keys (Source == KeyImported).
	Imported map[KeyUsage][]byte
	// Recipient is the provider's RSA public key.
	Recipient *rsa.PublicKey
}

// WrappedKey is one first key as the provider receives it.
type WrappedKey struct {
	Usage KeyUsage
	Bits  int
	// KCV is the GP key check value, upper-case hex of 3 bytes.
	KCV string
	// Wrapped is RSA-OAEP(ephemeral AES-256) ‖ AES-KWP(ephemeral, key): the
	// layout of CKM_RSA_AES_KEY_WRAP.
	Wrapped []byte
}

// Custody is what keyport asks of its HSM. Every key stays inside it; what
// comes out is wrapped, a KCV, a signature or a MAC. Implementations return
// errors matching ErrUnavailable when the token cannot serve.
type Custody interface {
	// CreateBatchMaster creates the AES-256 master key of a derived batch.
	// It fails with ErrConflict if the batch already has one.
	CreateBatchMaster(ctx context.Context, batch string) error
	// CreateTransportKey creates the AES-256 transport key of an imported
	// batch and returns it RSA-AES-wrapped to the manufacturer, with its KCV.
	// The copy kept in the HSM is not extractable. ErrConflict if it exists.
	CreateTransportKey(ctx context.Context, batch string, manufacturer *rsa.PublicKey) (wrapped []byte, kcv string, err error)
	// ImportedKCV unwraps a manufacturer's KWP-wrapped key inside the HSM and
	// returns its KCV, to check an import file.
	ImportedKCV(ctx context.Context, batch string, wrapped []byte) (kcv string, err error)
	// WrapFirstKeys derives or unwraps the domain's first keys inside the HSM
	// and wraps each to the recipient, in Usages order.
	WrapFirstKeys(ctx context.Context, req FirstKeysRequest) ([]WrappedKey, error)
	// OAEPHash is the OAEP hash WrapFirstKeys and CreateTransportKey use.
	OAEPHash() OAEPHash
	// SignES256 signs data (SHA-256 then ECDSA P-256 with the receipt key) and
	// returns the 64-byte r‖s signature JWS uses.
	SignES256(ctx context.Context, data []byte) ([]byte, error)
	// ReceiptKey returns the receipt signing key's public half and key ID.
	ReceiptKey(ctx context.Context) (kid string, pub *ecdsa.PublicKey, err error)
	// AuditMAC returns HMAC-SHA256 of data under the audit key.
	AuditMAC(ctx context.Context, data []byte) ([]byte, error)
	// Health reports whether the token can serve.
	Health(ctx context.Context) error
}

// ModuleImport is one module of an import file, validated.
type ModuleImport struct {
	Line    int
	EID     EID
	ISDAID  AID
	Domains []Domain // State, KeySource, Imported, KCV, KVN, AID set
}

// Repo is the storage keyport's use cases need. Every method works both on
// the store and inside a transaction (Store.Tx).
type Repo interface {
	AccountRepo // portal users, sessions and admin views (account.go)

	CreateBatch(ctx context.Context, b *Batch) error // ErrConflict on a taken name
	GetBatch(ctx context.Context, name string) (*Batch, error)
	GetBatchByID(ctx context.Context, id int64) (*Batch, error)

	// ImportModules inserts every module next yields (nil, nil ends) into
	// the batch, all or nothing. A module whose EID exists already fails
	// with a *LineError wrapping ErrConflict.
	ImportModules(ctx context.Context, batchID int64, next func() (*ModuleImport, error)) (int, error)
	// GetModule returns the module with its domains; ErrNotFound if unknown.
	GetModule(ctx context.Context, eid EID) (*Module, error)
	// GetDomain returns one domain; ErrNotFound if unknown.
	GetDomain(ctx context.Context, eid EID, aid AID) (*Domain, error)
	// ListDomains returns a provider's domains, newest first.
	ListDomains(ctx context.Context, providerID string) ([]Domain, error)
	// TransitionDomain moves a domain from one of `from` to `to` with a
	// conditional update, setting OwnerID to owner (nil: leave it). It fails
	// with ErrConflict, changing nothing, when the domain is not in `from`.
	TransitionDomain(ctx context.Context, domainID int64, from []DomainState, to DomainState, owner *string) error
	// FirstUnassigned returns the module's lowest UNASSIGNED domain.
	FirstUnassigned(ctx context.Context, eid EID) (*Domain, error)

	CreateProvider(ctx context.Context, p *Provider) error // ErrConflict on a taken e-mail
	GetProvider(ctx context.Context, id string) (*Provider, error)
	CreateAPIToken(ctx context.Context, t *APIToken) error
	// GetAPITokenByHash returns a token that is not revoked.
	GetAPITokenByHash(ctx context.Context, hash []byte) (*APIToken, error)

	CreateWrappingKey(ctx context.Context, k *WrappingKey) error
	// GetWrappingKey returns the provider's key; ErrNotFound for another's.
	GetWrappingKey(ctx context.Context, providerID, id string) (*WrappingKey, error)

	CreateClaim(ctx context.Context, c *Claim) error // ErrConflict on a reused (provider, idempotency key)
	GetClaimByIdempotencyKey(ctx context.Context, providerID, key string) (*Claim, error)
	// GetClaimForDomain returns the provider's current claim of a domain.
	GetClaimForDomain(ctx context.Context, providerID string, domainID int64) (*Claim, error)

	// AppendAudit chains e to the log: under a lock it reads the head, sets
	// e.Seq, e.PrevHash and e.Hash = ChainHash(head, *e), and inserts it.
	AppendAudit(ctx context.Context, e *AuditEvent) error
	// AuditEvents returns up to limit events with Seq > after, in Seq order.
	AuditEvents(ctx context.Context, after int64, limit int) ([]AuditEvent, error)
	AddCheckpoint(ctx context.Context, c *AuditCheckpoint) error
	Checkpoints(ctx context.Context) ([]AuditCheckpoint, error)

	AddOutbox(ctx context.Context, m *OutboxMessage) error

	JobRepo // card-link jobs and admin-session leases (job.go)
}

// Store is a Repo that can run a function in one transaction. If fn returns
// an error, nothing fn did is kept.
type Store interface {
	Repo
	Tx(ctx context.Context, fn func(tx Repo) error) error
}
