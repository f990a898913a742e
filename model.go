package keyport

import "time"

// KeySource says where a domain's first keys come from.
type KeySource string

const (
	// KeyDerived: derived in the HSM from the batch master key, never stored.
	KeyDerived KeySource = "derived"
	// KeyImported: supplied by the manufacturer, KWP-wrapped under the batch
	// transport key, and stored only in that wrapped form.
	KeyImported KeySource = "imported"
)

// KeyUsage names one key of an SCP03 key set.
type KeyUsage string

// The three keys of an SCP03 key set, in key-identifier order 1, 2, 3.
const (
	UsageENC KeyUsage = "enc"
	UsageMAC KeyUsage = "mac"
	UsageDEK KeyUsage = "dek"
)

// Usages is the SCP03 key set in key-identifier order.
var Usages = []KeyUsage{UsageENC, UsageMAC, UsageDEK}

// Batch is a set of modules made together; it owns the HSM keys their first
// keys come from (a master key for derived batches, a transport key for
// imported ones).
type Batch struct {
	ID        int64
	Name      string
	KeySource KeySource
	// AIDPrefix is the SSD AID scheme for derived batches: SSD n gets
	// AIDPrefix ‖ n (one byte). Empty for imported batches.
	AIDPrefix AID
	CreatedAt time.Time
}

// Module is one secure module (UICC/eSE) known by its EID.
type Module struct {
	ID        int64
	EID       EID
	BatchID   int64
	ISDAID    AID
	LastSeen  *time.Time
	CreatedAt time.Time
	Domains   []Domain
}

// Domain is one supplementary security domain on a module.
type Domain struct {
	ID       int64
	ModuleID int64
	// BatchID is the batch of the domain's module.
	BatchID int64
	EID     EID
	AID     AID
	KVN     int // key version number of the current key set
	State   DomainState
	// PriorState is the state before a lock, for unlock.
	PriorState DomainState
	OwnerID    string // provider ID; empty while UNASSIGNED
	KeySource  KeySource
	// Imported holds, for KeyImported, each first key KWP-wrapped under the
	// batch transport key, as the manufacturer delivered it.
	Imported map[KeyUsage][]byte
	// KCV holds the GP key check value (3 bytes, upper-case hex) of each first key.
	KCV map[KeyUsage]string
	// SeqCounter is the SCP03 sequence counter keyport believes the card has
	// for this key set; a precomputed script uses it.
	SeqCounter int
	UpdatedAt  time.Time
}

// ProviderKind is the kind of organisation a provider is.
type ProviderKind string

// Provider kinds.
const (
	KindBank     ProviderKind = "bank"
	KindRetailer ProviderKind = "retailer"
	KindTransit  ProviderKind = "transit"
	KindOther    ProviderKind = "other"
)

// ProviderStatus is where a provider is in sign-up.
type ProviderStatus string

// Provider statuses.
const (
	ProviderPending   ProviderStatus = "pending"
	ProviderApproved  ProviderStatus = "approved"
	ProviderSuspended ProviderStatus = "suspended"
)

// Provider is a service provider organisation (a bank, a retailer …).
type Provider struct {
	ID         string
	Name       string
	Kind       ProviderKind
	Email      string
	Status     ProviderStatus
	WebhookURL string
	CreatedAt  time.Time
}

// APIToken lets a provider's server call the REST API. Only its SHA-256 hash
// is stored; the token itself is shown once.
type APIToken struct {
	ID         string
	ProviderID string // empty for an issuer-admin token
	Admin      bool
	Name       string
	Hash       []byte
	CreatedAt  time.Time
	RevokedAt  *time.Time
	// ProviderStatus is the status of the token's provider, read with the
	// token so that authentication takes one query.
	ProviderStatus ProviderStatus
}

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

// Claim records that a provider took a domain, and holds the signed key
// package it received (a JWS with the first keys wrapped to its key; no
// secret in the clear).
type Claim struct {
	ID             string
	ProviderID     string
	DomainID       int64
	EID            EID
	AID            AID
	WrappingKeyID  string
	IdempotencyKey string
	// RequestHash binds an idempotency key to one request body.
	RequestHash string
	Package     []byte
	CreatedAt   time.Time
}

// AuditEvent is one row of the append-only, hash-chained audit log.
type AuditEvent struct {
	Seq      int64
	At       time.Time
	Actor    string // "provider:<id>", "admin:<id>", "system"
	Action   string // "claim", "import", "batch.create", …
	Object   string // "domain:<eid>/<aid>", "batch:<name>", …
	Detail   string // JSON, never a secret
	PrevHash []byte
	Hash     []byte
}

// AuditCheckpoint is an HSM HMAC over the chain head at some sequence number,
// so that rewriting the whole chain needs the HSM too.
type AuditCheckpoint struct {
	Seq  int64
	Hash []byte
	MAC  []byte
	At   time.Time
}

// OutboxMessage is a notification written in the same transaction as the
// change it reports (a webhook to send, a job to start).
type OutboxMessage struct {
	ID        int64
	Topic     string
	Payload   string
	CreatedAt time.Time
	SentAt    *time.Time
}

// Principal is the authenticated caller of a use case.
type Principal struct {
	ProviderID string // set for provider callers
	Admin      bool
	Name       string // for the audit log: user e-mail or token name
}

// Actor is the audit-log actor string of the principal.
func (p Principal) Actor() string {
	switch {
	case p.Admin:
		return "admin:" + p.Name
	case p.ProviderID != "":
		return "provider:" + p.ProviderID
	}
	return "system"
}
