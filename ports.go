package keyport

import (
	"context"
	"crypto/ecdsa"
	"crypto/rsa"
	"time"

	"github.com/keyport/keyport/gp"
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
	Batch  string // batch name: selects the batch KEK or transport key
	Source KeySource
	EID    EID
	AID    AID
	// Wrapped holds the domain's KWP blobs: under the batch KEK
	// (KeyGenerated) or the manufacturer's under the transport key
	// (KeyImported).
	Wrapped KeyBlobs
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
	// CardKeys: keyport checks what a card answered to a provider's script
	// (the card cryptogram and R-MACs) under the domain's current keys.
	CardKeys
	// LinkCustody: modules' sealed TLS-PSKs (Service.Link, when set, is
	// used instead).
	LinkCustody
	// CreateBatchKEK creates the AES-256 key-encryption key that keeps a
	// batch's generated first keys at rest. It fails with ErrConflict if the
	// batch already has one.
	CreateBatchKEK(ctx context.Context, batch string) error
	// CreateTransportKey creates the AES-256 transport key of an imported
	// batch and returns it RSA-AES-wrapped to the manufacturer, with its KCV.
	// The copy kept in the HSM is not extractable. ErrConflict if it exists.
	CreateTransportKey(ctx context.Context, batch string, manufacturer *rsa.PublicKey) (wrapped []byte, kcv string, err error)
	// ImportedKCV unwraps a manufacturer's KWP-wrapped key inside the HSM and
	// returns its KCV, to check an import file.
	ImportedKCV(ctx context.Context, batch string, wrapped []byte) (kcv string, err error)
	// WrapFirstKeys unwraps the domain's first keys inside the HSM and wraps
	// each to the recipient, in Usages order.
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

// Repo is the storage keyport's use cases need, one interface per concept.
// Every method works both on the store and inside a transaction (Store.Tx,
// Committer.Commit).
type Repo interface {
	ModuleRepo
	ClaimRepo
	AccountRepo
	AuditRepo
	JobRepo
	ApprovalRepo
	AccessRuleRepo
	OTARepo
	CampaignRepo
}

// CampaignRepo stores campaigns (campaign.go) and their targets, one row
// each, paged by ID (keyset) so that no caller holds more than a page.
type CampaignRepo interface {
	CreateCampaign(ctx context.Context, c *Campaign) error
	// GetCampaign returns the campaign; ErrNotFound if unknown.
	GetCampaign(ctx context.Context, id string) (*Campaign, error)
	// ListCampaigns returns the provider's campaigns ("": every one),
	// newest first, but none still CREATING.
	ListCampaigns(ctx context.Context, providerID string, limit int) ([]Campaign, error)
	// CreatingCampaigns returns up to limit campaigns still CREATING that
	// were created before before, oldest first.
	CreatingCampaigns(ctx context.Context, before time.Time, limit int) ([]Campaign, error)
	// DeleteCampaign deletes the campaign and its targets, the targets a
	// chunk a statement, so that outside a transaction no statement holds
	// the writer for long. An unknown campaign is no error.
	DeleteCampaign(ctx context.Context, id string) error
	// RunnableCampaigns returns up to limit campaigns without a finish
	// time, oldest first: RUNNING, PAUSED and CANCELLED ones (whose sent
	// jobs may still end).
	RunnableCampaigns(ctx context.Context, limit int) ([]Campaign, error)
	SetCampaignTotal(ctx context.Context, id string, total int) error
	// SetCampaignState moves the campaign from one of from to to with a
	// conditional update (ErrConflict, changing nothing, otherwise).
	SetCampaignState(ctx context.Context, id string, from []CampaignState, to CampaignState) error
	// EndCampaign sets the campaign's finish time unless it is set; it
	// reports whether it did.
	EndCampaign(ctx context.Context, id string, at time.Time) (bool, error)
	// ClaimCampaign takes or renews holder's lease of the campaign until
	// until, only while it is free, expired at now, or holder's already: of
	// two runners exactly one gets it.
	ClaimCampaign(ctx context.Context, id, holder string, now, until time.Time) (bool, error)
	// CampaignStateForQueue reads the campaign's state inside a queueing
	// transaction, locking the row against a concurrent state change
	// (PostgreSQL: FOR SHARE; SQLite serializes writers anyway).
	CampaignStateForQueue(ctx context.Context, id string) (CampaignState, error)
	// LockModuleForQueue locks the module's row until the transaction ends
	// (PostgreSQL: FOR NO KEY UPDATE), so that two transactions counting its
	// pending jobs do so one after the other.
	LockModuleForQueue(ctx context.Context, moduleID int64) error

	// AddCampaignTargets inserts targets (IDs set by the store).
	AddCampaignTargets(ctx context.Context, ts []CampaignTarget) error
	// AddCampaignBatchTargets inserts, PENDING, every claimed domain (one
	// with an owner) of the batch's modules, only those with AID aid when
	// aid is set, a range of domain IDs a statement, in ID order; it returns
	// how many.
	AddCampaignBatchTargets(ctx context.Context, campaignID string, batchID int64, aid AID) (int, error)
	// AddCampaignProviderTargets inserts, PENDING, every domain of the
	// provider in state, as AddCampaignBatchTargets does; it returns how
	// many.
	AddCampaignProviderTargets(ctx context.Context, campaignID, providerID string, state DomainState) (int, error)
	// CampaignTargetsAfter returns up to limit of the campaign's targets in
	// state with an ID above afterID, in ID order.
	CampaignTargetsAfter(ctx context.Context, campaignID string, state TargetState, afterID int64, limit int) ([]CampaignTarget, error)
	// MarkCampaignTarget moves target id from state from to to with the job
	// (0 and "": the target's job is left as it is), cause and detail,
	// conditionally; it reports whether it moved.
	MarkCampaignTarget(ctx context.Context, id int64, from, to TargetState, jobID int64, jobRef, cause, detail string) (bool, error)
	// CancelPendingTargets moves the campaign's PENDING targets to
	// CANCELLED, in one statement.
	CancelPendingTargets(ctx context.Context, campaignID string) error
	// CampaignEnds returns up to limit QUEUED targets above afterID whose
	// job has ended, in ID order, with the job's end.
	CampaignEnds(ctx context.Context, campaignID string, afterID int64, limit int) ([]CampaignEnd, error)
	// CampaignCounts counts the campaign's targets by state.
	CampaignCounts(ctx context.Context, campaignID string) (map[TargetState]int, error)
	// CampaignCauses groups the campaign's targets that ended otherwise
	// than DONE by state and cause, largest group first, each with one
	// example detail.
	CampaignCauses(ctx context.Context, campaignID string) ([]CampaignCause, error)
}

// AccessRuleRepo stores providers' access rules (accessrule.go): hashes
// and filters only, nothing secret.
type AccessRuleRepo interface {
	// CreateAccessRule inserts r (its ID set by the caller).
	CreateAccessRule(ctx context.Context, r *AccessRule) error
	// GetAccessRule returns the rule; ErrNotFound if none.
	GetAccessRule(ctx context.Context, id string) (*AccessRule, error)
	// ListAccessRules returns the domain's rules that are not REMOVED,
	// oldest first.
	ListAccessRules(ctx context.Context, domainID int64) ([]AccessRule, error)
	// SetAccessRuleState moves rule id, unless it is REMOVED, to state to
	// with job, cause and sw; with onlyJob set, only if the rule's job is
	// onlyJob. It reports whether the rule changed.
	SetAccessRuleState(ctx context.Context, id, onlyJob string, to AccessRuleState, job, cause, sw string) (bool, error)
}

// Store is a Repo that can run a function in one transaction. If fn returns
// an error, nothing fn did is kept.
type Store interface {
	Repo
	Tx(ctx context.Context, fn func(tx Repo) error) error
}

// Exclusive runs fn while no other process of the deployment runs a
// function under the same name: a lock every replica shares
// (store.Store.Exclusive, in the database). The HSM creates token keys under
// it, so that processes starting together on an empty token do not each
// create their own.
type Exclusive func(ctx context.Context, name string, fn func(context.Context) error) error

// Committer commits write transactions, possibly several callers' in one
// database transaction (group commit; store.Group). Commit runs fn as
// Store.Tx would: if fn returns an error nothing it did is kept, and Commit
// returns only once what fn wrote is durably stored. fn must use the context
// and Repo it is given, and may run more than once (only a committed run
// counts), so it keeps nothing from a run but what it returns.
type Committer interface {
	Commit(ctx context.Context, fn func(ctx context.Context, tx Repo) error) error
}

// ClaimWriter stores claims, possibly several callers' in one database
// transaction (store.Store.ClaimCommits). A claim is given as data, not as
// a function, so that a store can send a group of them to the database
// without waiting for each statement (on PostgreSQL, pipelined).
type ClaimWriter interface {
	// WriteClaim does w.Apply in a transaction, and returns only once it
	// is durably stored; keys keys the audit head (AuditSealer). A domain
	// not in w.From fails with ErrDomainTaken and nothing of w is written.
	WriteClaim(ctx context.Context, w ClaimWrite, keys AuditKeys) error
}

// ModuleRepo stores batches, modules and their domains.
type ModuleRepo interface {
	CreateBatch(ctx context.Context, b *Batch) error // ErrConflict on a taken name
	GetBatch(ctx context.Context, name string) (*Batch, error)
	GetBatchByID(ctx context.Context, id int64) (*Batch, error)
	ListBatches(ctx context.Context) ([]Batch, error)

	// ImportModules inserts every module next yields (nil, nil ends) into
	// the batch, all or nothing. A module whose EID exists already, or
	// whose MSISDN another module has (stored, or earlier in the file),
	// fails with a *LineError wrapping ErrConflict.
	ImportModules(ctx context.Context, batchID int64, next func() (*ModuleImport, error)) (int, error)

	// An import file is loaded in steps so that no transaction lasts as
	// long as the file (importload.go). BeginImport records an import into
	// the batch, LOADING; ErrNotFound for an unknown batch.
	BeginImport(ctx context.Context, batchID int64) (*Import, error)
	// StageModules stores the modules next yields into the import's batch,
	// a chunk a transaction, hidden: GetModule, GetDomain, FirstUnassigned,
	// campaign selections, MSISDN lookups and stats leave them out until
	// PublishImport. Errors as ImportModules; ErrConflict once the import
	// is no longer LOADING (swept as abandoned).
	StageModules(ctx context.Context, imp *Import, next func() (*ModuleImport, error)) (int, error)
	// CommitImport moves the import LOADING → PUBLISHING with its module
	// count: from then on it is published, never dropped. ErrConflict from
	// any other state.
	CommitImport(ctx context.Context, id int64, modules int) error
	// PublishImport makes a PUBLISHING import's modules visible, a chunk a
	// transaction, then forgets the import; nothing for an unknown one.
	PublishImport(ctx context.Context, id int64) error
	// DropImport deletes an unfinished import's modules and domains, a
	// chunk a transaction, then the import; nothing for an unknown one,
	// ErrConflict for one that is PUBLISHING.
	DropImport(ctx context.Context, id int64) error
	// StaleImports returns up to limit imports last touched before before,
	// oldest first; with the zero time, every unfinished import, whatever
	// its clock said when it touched the row. Every chunk staged, published
	// or dropped touches its import.
	StaleImports(ctx context.Context, before time.Time, limit int) ([]Import, error)
	// GetModule returns the module with its domains; ErrNotFound if unknown.
	GetModule(ctx context.Context, eid EID) (*Module, error)
	// GetAdminModule returns what an admin session's handshake needs of
	// module eid (its ID, ISD AID and sealed PSK), without its domains;
	// ErrNotFound if unknown or still loading, as for GetModule.
	GetAdminModule(ctx context.Context, eid EID) (*AdminModule, error)

	// GetDomain returns one domain; ErrNotFound if unknown.
	GetDomain(ctx context.Context, eid EID, aid AID) (*Domain, error)
	// ListDomains returns a provider's domains, newest first.
	ListDomains(ctx context.Context, providerID string) ([]Domain, error)
	// FirstUnassigned returns the module's lowest UNASSIGNED domain.
	FirstUnassigned(ctx context.Context, eid EID) (*Domain, error)
	// TransitionDomain moves a domain from one of `from` to `to` with a
	// conditional update, setting OwnerID to owner (nil: leave it). It fails
	// with ErrConflict, changing nothing, when the domain is not in `from`.
	TransitionDomain(ctx context.Context, domainID int64, from []DomainState, to DomainState, owner *string) error
	// MoveDomainKeys is TransitionDomain and SetDomainKeys in one write,
	// for a key change the card confirmed; it changes nothing when the
	// transition fails.
	MoveDomainKeys(ctx context.Context, domainID int64, from []DomainState, to DomainState, owner *string, kvn int,
		kcv map[KeyUsage]string, seq int) error
	// SetDomainKeys records the key set the card confirmed: KVN, KCVs (nil:
	// unchanged) and the SCP03 sequence counter.
	SetDomainKeys(ctx context.Context, domainID int64, kvn int, kcv map[KeyUsage]string, seq int) error
	// SetCounterUnverified sets or clears Domain.SeqUnverified
	// (SetDomainKeys clears it too).
	SetCounterUnverified(ctx context.Context, domainID int64, unverified bool) error

	// GetPersoKeys returns what a personalization run generated for module
	// eid before writing it to the card; ErrNotFound if nothing.
	GetPersoKeys(ctx context.Context, eid EID) (*PersoKeys, error)
	// PutPersoKeys stores k, replacing what was stored for its EID.
	PutPersoKeys(ctx context.Context, k *PersoKeys) error
	// DeletePersoKeys deletes what was stored for eid (none: no error).
	DeletePersoKeys(ctx context.Context, eid EID) error
	// ModulesAfter returns up to limit modules (with domains) whose ID is
	// above afterID, in ID order: for walks over every module.
	ModulesAfter(ctx context.Context, afterID int64, limit int) ([]Module, error)
	// SetModuleKeys stores a module's ISD key blobs (nil: unchanged) and
	// sealed PSK (nil: unchanged).
	SetModuleKeys(ctx context.Context, moduleID int64, isd KeyBlobs, psk []byte) error
	// SetDomainWrapped stores a domain's first-key blobs and their source.
	SetDomainWrapped(ctx context.Context, domainID int64, source KeySource, wrapped KeyBlobs) error
	// SetBatchKeySource changes a batch's key source.
	SetBatchKeySource(ctx context.Context, batchID int64, source KeySource) error

	// PortalStats counts modules, domains by state, claims per day since
	// `since` and jobs by state, for the admin dashboard.
	PortalStats(ctx context.Context, since time.Time) (*PortalStats, error)
}

// ClaimRepo stores providers' wrapping keys and their claims of domains.
type ClaimRepo interface {
	CreateWrappingKey(ctx context.Context, k *WrappingKey) error
	// GetWrappingKey returns the provider's key; ErrNotFound for another's.
	GetWrappingKey(ctx context.Context, providerID, id string) (*WrappingKey, error)
	ListWrappingKeys(ctx context.Context, providerID string) ([]WrappingKey, error)

	CreateClaim(ctx context.Context, c *Claim) error // ErrConflict on a reused (provider, idempotency key)
	// ClaimDomain is TransitionDomain of c.DomainID from one of `from` to
	// ASSIGNED owned by c.ProviderID, CreateClaim(c) and AddOutbox(m) in one
	// call (one statement where the database allows). A domain not in
	// `from` fails with ErrDomainTaken, a reused idempotency key with
	// ErrConflict; either way nothing is written. With token set, the claim
	// is written only if that API token of c.ProviderID is unrevoked,
	// unexpired and its provider approved, and fails with ErrTokenNotLive
	// otherwise.
	ClaimDomain(ctx context.Context, c *Claim, from []DomainState, m *OutboxMessage, token string) error
	GetClaimByIdempotencyKey(ctx context.Context, providerID, key string) (*Claim, error)
	// GetClaimForDomain returns the provider's current claim of a domain.
	GetClaimForDomain(ctx context.Context, providerID string, domainID int64) (*Claim, error)
}

// AccountRepo stores who may sign in or call the API: providers, their API
// tokens and webhook URL, portal users with their one-time tokens and
// sessions, and the outbox of messages to them.
type AccountRepo interface {
	CreateProvider(ctx context.Context, p *Provider) error // ErrConflict on a taken e-mail
	GetProvider(ctx context.Context, id string) (*Provider, error)
	ListProviders(ctx context.Context) ([]Provider, error)
	// SetProviderStatus changes a provider's status; ErrNotFound if unknown.
	SetProviderStatus(ctx context.Context, id string, status ProviderStatus) error
	SetWebhookURL(ctx context.Context, providerID, webhookURL string) error

	CreateAPIToken(ctx context.Context, t *APIToken) error
	// GetAPITokenByHash returns a token that is not revoked, with its
	// provider's status and whether its owning admin user is disabled.
	GetAPITokenByHash(ctx context.Context, hash []byte) (*APIToken, error)
	// ListAPITokens returns a provider's tokens (revoked ones too), newest first.
	ListAPITokens(ctx context.Context, providerID string) ([]APIToken, error)
	// RevokeAPIToken revokes one of the provider's tokens (a revoked one
	// stays as it is); ErrNotFound for another provider's.
	RevokeAPIToken(ctx context.Context, providerID, id string, at time.Time) error
	// ListAdminTokens returns every issuer-admin token (revoked and expired
	// ones too), newest first.
	ListAdminTokens(ctx context.Context) ([]APIToken, error)
	// RevokeAdminToken revokes an issuer-admin token (a revoked one stays
	// as it is); ErrNotFound for an unknown ID or a provider's token.
	RevokeAdminToken(ctx context.Context, id string, at time.Time) error
	// TouchAPIToken records the token's last use.
	TouchAPIToken(ctx context.Context, id string, at time.Time) error

	CreateUser(ctx context.Context, u *User) error // ErrConflict on a taken e-mail
	GetUser(ctx context.Context, id string) (*User, error)
	GetUserByEmail(ctx context.Context, email string) (*User, error)
	// ListAdminUsers returns the issuer-admin users by e-mail address.
	ListAdminUsers(ctx context.Context) ([]User, error)
	// SetUserDisabled disables the user from at (nil: enables again).
	SetUserDisabled(ctx context.Context, id string, at *time.Time) error
	// ReserveLoginAttempt counts one sign-in attempt before the password
	// is checked, atomically: only while the user is not locked and has
	// fewer than max; the attempt that reaches max locks the user until
	// lockUntil; a lock over at now starts afresh. reserved is false when
	// the user is locked (u is the user either way).
	ReserveLoginAttempt(ctx context.Context, id string, max int, now, lockUntil time.Time) (u *User, reserved bool, err error)
	// ResetFailedLogins clears the count and any lock.
	ResetFailedLogins(ctx context.Context, id string) error
	SetUserVerified(ctx context.Context, id string, at time.Time) error
	// SetUserPassword replaces the password hash and clears
	// PasswordChangeRequired.
	SetUserPassword(ctx context.Context, id, hash string) error
	// SetUserTOTP stores a sealed TOTP secret (nil: off) and the time step
	// of the code that confirmed it.
	SetUserTOTP(ctx context.Context, id string, sealed []byte, step int64) error
	// AcceptTOTPStep records the time step of an accepted TOTP code;
	// ErrConflict if it is not after the last accepted one (a replay).
	AcceptTOTPStep(ctx context.Context, id string, step int64) error

	CreateUserToken(ctx context.Context, t *UserToken) error
	// TakeUserToken deletes and returns an unexpired token of the purpose;
	// ErrNotFound if there is none (unknown, used or expired).
	TakeUserToken(ctx context.Context, purpose TokenPurpose, hash []byte, now time.Time) (*UserToken, error)
	// DeleteUserTokens deletes every token of the purpose the user has.
	DeleteUserTokens(ctx context.Context, userID string, purpose TokenPurpose) error

	CreateSession(ctx context.Context, s *Session) error
	// GetSession returns an unexpired session; ErrNotFound otherwise.
	GetSession(ctx context.Context, hash []byte, now time.Time) (*Session, error)
	// TouchSession records that the session was used at at.
	TouchSession(ctx context.Context, hash []byte, at time.Time) error
	DeleteSession(ctx context.Context, hash []byte) error
	DeleteUserSessions(ctx context.Context, userID string) error

	// CreatePasskey stores a user's new WebAuthn credential; ErrConflict
	// if the credential ID is registered already (to anyone).
	CreatePasskey(ctx context.Context, p *Passkey) error
	// ListPasskeys returns the user's passkeys, oldest first.
	ListPasskeys(ctx context.Context, userID string) ([]Passkey, error)
	// DeletePasskey removes one of the user's passkeys; ErrNotFound for
	// another user's or an unknown one.
	DeletePasskey(ctx context.Context, userID, id string) error
	// UsePasskey records an assertion: the new sign count, flags and time,
	// conditionally: only while the stored count is below signCount (or
	// both are 0, an authenticator without a counter). Otherwise it
	// changes nothing and fails with ErrConflict (a cloned authenticator,
	// or a parallel use of the same count).
	UsePasskey(ctx context.Context, id string, signCount uint32, flags byte, at time.Time) error
	// CreatePasskeyCeremony stores a WebAuthn challenge by its hash.
	CreatePasskeyCeremony(ctx context.Context, c *PasskeyCeremony) error
	// TakePasskeyCeremony deletes and returns an unexpired ceremony of the
	// purpose; ErrNotFound if there is none (unknown, used or expired).
	TakePasskeyCeremony(ctx context.Context, purpose PasskeyPurpose, hash []byte, now time.Time) (*PasskeyCeremony, error)

	AddOutbox(ctx context.Context, m *OutboxMessage) error
	// ListOutbox returns the newest limit messages of a topic ("" = all).
	ListOutbox(ctx context.Context, topic string, limit int) ([]OutboxMessage, error)
	MarkOutboxSent(ctx context.Context, id int64, at time.Time) error
}

// AuditRepo stores the hash-chained audit log and its HSM checkpoints.
type AuditRepo interface {
	// AppendAudit chains e to the log: under a lock it reads the head, sets
	// e.Seq, e.PrevHash and e.Hash = ChainHash(head, *e), and inserts it.
	// A store may instead queue e in a transaction (e.Seq stays 0) and
	// chain it when the transaction commits (AuditSealer).
	AppendAudit(ctx context.Context, e *AuditEvent) error
	// AuditEvents returns up to limit events with Seq > after, in Seq order.
	AuditEvents(ctx context.Context, after int64, limit int) ([]AuditEvent, error)
	// RecentAudit returns the newest limit audit events, newest first.
	RecentAudit(ctx context.Context, limit int) ([]AuditEvent, error)
	// ProviderAudit returns, newest first, up to limit audit events done by
	// the provider or about it.
	ProviderAudit(ctx context.Context, providerID string, limit int) ([]AuditEvent, error)
	AddCheckpoint(ctx context.Context, c *AuditCheckpoint) error
	Checkpoints(ctx context.Context) ([]AuditCheckpoint, error)
	// SetAuditHead stores h as the log's keyed head unless the stored head
	// is already at h.Seq or later. Called in the append's transaction, under
	// the append's lock.
	SetAuditHead(ctx context.Context, h *AuditHead) error
	// AuditHead returns the keyed head, ErrNotFound if none was written yet.
	AuditHead(ctx context.Context) (*AuditHead, error)
	// AuditKeyedSince returns when the store began keeping the keyed head
	// (for the SQL store, when its migration 4 was applied): every event
	// from then on is covered by the head, and every CheckpointEvery-th by
	// a checkpoint. ErrNotFound if the store has no record of it.
	AuditKeyedSince(ctx context.Context) (time.Time, error)
}

// AuditSealer is a transaction's Repo that queues its audit appends and
// chains them at the end: SealAudit, called from a BeforeCommit function,
// takes the chain's lock, chains the queued events in order and stores
// them with the head and checkpoints keys returns for them, so that the
// lock is held only from the seal to the commit. What no one sealed is
// chained at the commit, without a keyed head.
type AuditSealer interface {
	SealAudit(ctx context.Context, keys AuditKeys) error
}

// AuditKeys returns the keyed head and the checkpoints for events just
// chained (Seq, PrevHash and Hash set), under the chain's lock.
type AuditKeys func(chained []AuditEvent) (*AuditHead, []AuditCheckpoint, error)

// BeforeCommit is a Repo that can defer a write to the end of its
// transaction. The store's repos implement it; audit uses it so that a
// transaction holding many appends (a group commit) writes the keyed head,
// and has the HSM MAC it, once, for its last event.
type BeforeCommit interface {
	// BeforeCommit runs fn in the transaction just before it commits;
	// a later fn with the same key replaces it (in a group commit, a
	// caller rolled back to its savepoint gets back the fn set before
	// it). An error of fn fails the commit. Outside a transaction fn runs
	// at once and its error is returned.
	BeforeCommit(ctx context.Context, key string, fn func(ctx context.Context, tx Repo) error) error
}

// JobRepo stores card-link jobs and the admin-session lease of each module.
type JobRepo interface {
	// CreateJob inserts j and sets its ID, CreatedAt and UpdatedAt.
	CreateJob(ctx context.Context, j *Job) error
	// GetJob returns the job with the public reference; ErrNotFound if none.
	GetJob(ctx context.Context, ref string) (*Job, error)
	// ListJobs returns the jobs f selects, oldest first.
	ListJobs(ctx context.Context, f JobFilter) ([]Job, error)
	// UpdateJob writes j's state, attempts, next run, result and last
	// error, conditionally: only if the row is still in state `from` with
	// `fromAttempts` attempts and at j.Version, the version it was read
	// at; it then moves j.Version on. Otherwise it changes nothing and
	// fails with ErrConflict (another replica, session or receipt wrote the
	// job first).
	UpdateJob(ctx context.Context, j *Job, from JobState, fromAttempts int) error

	// PendingModuleJobs returns up to limit of the module's card jobs (CardJobKinds)
	// that are QUEUED or SENT, oldest first, each with its domain's state
	// and its provider's webhook URL: what an admin session reads before
	// it writes, in one query.
	PendingModuleJobs(ctx context.Context, moduleID int64, limit int) ([]PendingJob, error)
	// WebhookHealth returns, for each provider with webhook jobs, how many
	// wait (QUEUED), its newest delivery (DONE) and its newest failure (a
	// QUEUED job with an error, or FAILED), by provider ID.
	WebhookHealth(ctx context.Context) ([]WebhookHealth, error)

	// AcquireLease gives holder the module's admin-session lease until
	// `until`, if nobody else holds an unexpired one at `now`, and sets the
	// module's last admin-session time to `now`; ErrConflict, changing
	// nothing, otherwise. The holder renews with the same call.
	AcquireLease(ctx context.Context, moduleID int64, holder string, now, until time.Time) error
	// ReleaseLease ends holder's lease, if it holds it; holder "" breaks
	// the lease whoever holds it.
	ReleaseLease(ctx context.Context, moduleID int64, holder string) error
	// ReleaseIdleLease ends holder's lease only if the module has no
	// card job (CardJobKinds) QUEUED or SENT, and reports whether it did: in the
	// transaction that records a session's last answer, the session ends
	// exactly when there is nothing more to send.
	ReleaseIdleLease(ctx context.Context, moduleID int64, holder string) (bool, error)
}

// ApprovalRepo stores dual-control requests (approval.go).
type ApprovalRepo interface {
	// CreateApproval inserts r (Version 0).
	CreateApproval(ctx context.Context, r *ApprovalRequest) error
	// GetApproval returns request id; ErrNotFound if unknown.
	GetApproval(ctx context.Context, id string) (*ApprovalRequest, error)
	// ListApprovals returns the newest limit requests, newest first.
	ListApprovals(ctx context.Context, limit int) ([]ApprovalRequest, error)
	// UpdateApproval writes r's approvers, state, error and done time and
	// increments r.Version, only if the stored row is still at version from;
	// otherwise ErrConflict and nothing changes.
	UpdateApproval(ctx context.Context, r *ApprovalRequest, from int) error
}

// Mailer sends e-mail (SMTP in production; in development, a printer to
// the server's stderr). Send gets the live message with its one-time link,
// which is stored nowhere: the outbox keeps a redacted copy, and without a
// Mailer the link is lost.
type Mailer interface {
	Send(ctx context.Context, to, subject, body string) error
}

// LinkCustody is the HSM part of card-link: each module's TLS-PSK (KVN 0x40,
// key type '85'), kept sealed by the HSM and bound to the module's EID, and
// unsealed only for the TLS layer.
type LinkCustody interface {
	// NewModulePSK makes a fresh PSK for module eid and returns it sealed.
	NewModulePSK(ctx context.Context, eid EID) (sealed []byte, err error)
	// ModulePSK unseals module eid's PSK; a value sealed for another module
	// does not unseal.
	ModulePSK(ctx context.Context, eid EID, sealed []byte) ([]byte, error)
}

// Trigger wakes a module so that it opens an admin session (GP Amendment B:
// "administration session triggering"; an SMS in the field). Wake returns
// ErrUnreachable when the module cannot be told now; the job is retried
// with backoff.
type Trigger interface {
	Wake(ctx context.Context, eid EID) error
}

// WakeBus carries wake-ups between the replicas that share one database
// (PostgreSQL LISTEN/NOTIFY): a replica where no handset agent of the
// module waits publishes the wake-up, and every replica hands it to the
// agents waiting on it. A published wake-up reaches the replicas listening
// at that moment; one lost to a dropped connection is made good by the
// agents' own polling of the database and by the job's next wake-up.
type WakeBus interface {
	PublishWake(ctx context.Context, eid EID) error
	// ListenWakes calls fn with each wake-up published (by any replica,
	// this one included) until ctx ends or the connection is lost, which
	// it returns.
	ListenWakes(ctx context.Context, fn func(EID)) error
}

// SecretSealer keeps small secrets (TOTP seeds) sealed by the HSM: the
// database holds only what Seal returns.
type SecretSealer interface {
	Seal(ctx context.Context, plaintext []byte) ([]byte, error)
	Unseal(ctx context.Context, sealed []byte) ([]byte, error)
}

// CardKeys is what an SCP03 host needs of the static card keys the HSM
// keeps (KeyRef): AES-CMAC under one of them, from which the session keys,
// cryptograms and MACs follow (AmdD 6.2.1, 6.2.2). The static key never
// leaves the HSM; session keys exist outside it for one session only.
type CardKeys interface {
	SCP03CMAC(ctx context.Context, ref KeyRef, data []byte) ([]byte, error)
}

// CardKeyScope is CardKeys for a run of CMACs under a few keys, such as
// checking what a card answered in one SCP03 session (its challenge and
// three session keys: four CMACs under two keys): fn runs on one HSM
// session, each of refs is unwrapped there at its first use, only once, and
// destroyed when fn returns. cmac(i, data) is AES-CMAC of data under
// refs[i]; it fails once fn has returned. fn may run a second time after
// the HSM lost the session, so it must be safe to repeat; it should do
// nothing slow but CMACs (no database). The HSM implements it; CardKeys
// without it get one HSM call per CMAC (withStaticKeys).
type CardKeyScope interface {
	WithCardKeys(ctx context.Context, refs []KeyRef, fn func(cmac func(i int, data []byte) ([]byte, error)) error) error
}

// PersoCustody is what the personalization station asks of the HSM. Card
// keys are generated there and leave it only wrapped: as KWP blobs under a
// KEK for the database, encrypted under a DEK as PUT KEY and STORE DATA
// carry them; besides come CMACs and KCVs.
type PersoCustody interface {
	CardKeys
	LinkCustody
	// GenerateKeys generates an SCP03 key set (AES-128 ENC, MAC, DEK) and
	// returns each key as a blob under the batch KEK (batch "": the ISD
	// KEK), with its KCV and, when clearDEK is given, encrypted under that
	// DEK (AES-CBC, zero IV: the PUT KEY of a blank ISD whose DEK is the
	// public GP test key).
	GenerateKeys(ctx context.Context, batch string, clearDEK []byte) ([]GeneratedKey, error)
	// GenerateKeysUnder is GenerateKeys with the key set encrypted (in
	// GeneratedKey.UnderDEK) under the DEK dek the HSM keeps (an ISD's
	// Key-DEK): how perso loads a key set, such as the ISD's OTA keys, that
	// is kept under the ISD KEK, whose blobs unwrap only into keys that
	// cannot be exported afterwards.
	GenerateKeysUnder(ctx context.Context, batch string, dek KeyRef) ([]GeneratedKey, error)
	// EncryptUnderKey returns target encrypted under the DEK dek (AES-CBC,
	// zero IV: AmdD 7.2.1, 7.3) and target's KCV.
	EncryptUnderKey(ctx context.Context, dek, target KeyRef) (cipher []byte, kcv string, err error)
	// KeyKCV returns the GP KCV of the key ref.
	KeyKCV(ctx context.Context, ref KeyRef) (string, error)
}

// GeneratedKey is one key GenerateKeys made.
type GeneratedKey struct {
	Usage   KeyUsage
	Wrapped []byte // KWP under the KEK
	KCV     string
	// UnderDEK is the key encrypted under the clear DEK, if one was given.
	UnderDEK []byte
}

// KeyMigrator is what `keyport hsm init` needs of a token made before card
// keys were wrapped at rest (DESIGN.md, "Key hierarchy"): it derives each
// key once from the old masters, wraps it under the new KEKs, and then
// destroys the masters, so that no key on the token can derive card keys.
type KeyMigrator interface {
	// LegacyKeys lists the old keys still on the token: the ISD master,
	// batch masters and transport keys without an unwrap template, by batch.
	LegacyKeys(ctx context.Context) (*LegacyKeys, error)
	// RewrapLegacy derives ref (Source KeyDerived) from its master, or, for
	// an imported key, unwraps it under the old transport key, and returns
	// it as a blob under the batch KEK (the ISD KEK for an ISD key), with
	// its KCV. The batch KEK is created when missing.
	RewrapLegacy(ctx context.Context, ref KeyRef) (wrapped []byte, kcv string, err error)
	// LegacyPSK derives module eid's TLS-PSK from the ISD master and
	// returns it sealed, as NewModulePSK would.
	LegacyPSK(ctx context.Context, eid EID, isdAID AID) (sealed []byte, err error)
	// DestroyLegacyKeys destroys the keys LegacyKeys listed and returns
	// their labels.
	DestroyLegacyKeys(ctx context.Context) ([]string, error)
}

// LegacyKeys are the old keys a token holds.
type LegacyKeys struct {
	ISDMaster bool
	// Masters lists the batches with a master key; Transport the imported
	// batches whose transport key lets a blob unwrap into a readable key.
	Masters, Transport []string
}

// Empty reports whether there is nothing to migrate.
func (l *LegacyKeys) Empty() bool {
	return !l.ISDMaster && len(l.Masters) == 0 && len(l.Transport) == 0
}

// Metrics counts what the use cases did, for monitoring. Every label is
// from a fixed set (Result); nothing passed names a module, domain,
// provider, token or key. Implementations are called on the request path:
// they must be cheap and safe for concurrent use. Service.Metrics nil
// counts nothing.
type Metrics interface {
	// Claimed counts one Claim by its result (ResultReplayed: an earlier
	// claim returned for its idempotency key).
	Claimed(r Result)
	// KeyPackageServed counts one key-package download by its result.
	KeyPackageServed(r Result)
	// WebhookDelivered counts one webhook delivery attempt by its result.
	WebhookDelivered(r Result)
	// ImportStarted, ImportLine and ImportEnded follow a module import:
	// each line checked, and how it ended with the modules it stored.
	ImportStarted()
	ImportLine()
	ImportEnded(r Result, modules int)
}

// OTARepo stores modules' MSISDNs, OTA key sets and SCP80 counters.
type OTARepo interface {
	// GetModuleOTA returns the module's SMS reach (a zero ModuleOTA with
	// the ID when nothing is stored), with whether its MSISDN is still
	// also other modules' number (ModuleOTA.Shared).
	GetModuleOTA(ctx context.Context, moduleID int64) (*ModuleOTA, error)
	// SetModuleMSISDN sets the module's MSISDN ("": clears it);
	// ErrConflict when another module has it, also one written by a
	// transaction running at the same time: a number reaches one module.
	SetModuleMSISDN(ctx context.Context, moduleID int64, msisdn string) error
	// SetModuleOTAKeys stores the OTA key set the card accepted.
	SetModuleOTAKeys(ctx context.Context, moduleID int64, kvn int, keys KeyBlobs) error
	// NextOTACounter increments the module's SCP80 counter in one
	// conditional statement and returns the new value: strictly increasing
	// across every caller. ErrConflict past the 5-byte maximum.
	NextOTACounter(ctx context.Context, moduleID int64) (uint64, error)
	// RaiseOTACounter sets the module's SCP80 counter to `to` if it is
	// still `from` (a compare-and-set in one statement) and says whether it
	// moved; it never lowers the counter nor passes the 5-byte maximum.
	RaiseOTACounter(ctx context.Context, moduleID int64, from, to uint64) (bool, error)
	// ModuleByMSISDN returns the EID of the module with that MSISDN;
	// ErrNotFound if none, ErrConflict if several have it (numbers shared
	// before keyport refused it): none of them is picked.
	ModuleByMSISDN(ctx context.Context, msisdn string) (EID, error)
	// SharedMSISDNs lists the numbers several modules have, from before
	// keyport refused it, each with its modules.
	SharedMSISDNs(ctx context.Context) ([]SharedMSISDN, error)
	// RecordSMS notes the SMSC's message ids of a trigger SMS sent to
	// module eid at `at`, and forgets the notes older than keep before it;
	// ErrNotFound for an unknown module.
	RecordSMS(ctx context.Context, eid EID, ids []string, at time.Time, keep time.Duration) error
	// ModuleBySMS returns the EID of the module the SMS with that message
	// id went to; ErrNotFound for an id not noted (or forgotten).
	ModuleBySMS(ctx context.Context, messageID string) (EID, error)
}

// OTACustody is the HSM part of SMS reach: the module's OTA keys as
// handles whose operations run in the HSM.
type OTACustody interface {
	// OTAKey returns the key ref as an AES KIc/KID: every call unwraps the
	// blob into a session object inside the HSM, uses it and destroys it.
	OTAKey(ctx context.Context, ref KeyRef) OTAKey
}

// OTAKey is an SCP80 key held in the HSM.
type OTAKey interface {
	gp.OTACipher
	gp.OTAChecksum
}

// FaultBook keeps the sandbox modules' faults (sandbox.go) and what the
// sandbox did to each module's traffic; the card-channel and transport
// wrappers of the sandbox adapter read and write it.
type FaultBook interface {
	// Fault returns module eid's fault (FaultNone when none is set).
	Fault(eid EID) Fault
	// SetFault sets module eid's fault; FaultNone clears it.
	SetFault(eid EID, f Fault) error
	// TakeInjected returns, and forgets, what the faults did to module
	// eid's traffic since the last call ("" when nothing).
	TakeInjected(eid EID) string
}
