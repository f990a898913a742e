package keyport

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"
)

// ProviderKind is the kind of organisation a provider is.
type ProviderKind string

// Provider kinds.
const (
	KindBank     ProviderKind = "bank"
	KindRetailer ProviderKind = "retailer"
	KindTransit  ProviderKind = "transit"
	KindOther    ProviderKind = "other"
)

// Valid reports whether k is one of the provider kinds.
func (k ProviderKind) Valid() bool {
	switch k {
	case KindBank, KindRetailer, KindTransit, KindOther:
		return true
	}
	return false
}

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

// TokenPrefix starts every API token, so that leaked tokens are easy to find.
const TokenPrefix = "kp_"

// HashToken is how API tokens are stored: SHA-256 of the whole token. Tokens
// carry 120 random bits, so a fast hash is enough (no dictionary to attack).
func HashToken(token string) []byte {
	h := sha256.Sum256([]byte(token))
	return h[:]
}

// newAPIToken mints an API token for the provider (an issuer-admin token
// without one): the token, shown once, and the row that keeps its hash.
func newAPIToken(providerID, name string, at time.Time) (string, *APIToken) {
	token := TokenPrefix + NewID("tok")[4:]
	return token, &APIToken{ID: NewID("tok"), ProviderID: providerID, Admin: providerID == "", Name: name,
		Hash: HashToken(token), CreatedAt: at}
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
	email, err := normaliseEmail(email)
	if err != nil {
		return nil, "", err
	}
	if kind == "" {
		kind = KindOther
	}
	if !kind.Valid() {
		return nil, "", invalid("kind", "must be bank, retailer, transit or other")
	}
	prov := &Provider{ID: NewID("prv"), Name: name, Kind: kind, Email: email, Status: ProviderApproved, CreatedAt: s.now().UTC()}
	token, t := newAPIToken(prov.ID, "cli", prov.CreatedAt)
	err = s.Store.Tx(ctx, func(tx Repo) error {
		if err := tx.CreateProvider(ctx, prov); err != nil {
			return err
		}
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
	token, t := newAPIToken("", name, s.now().UTC())
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

// CreateAPIToken makes an API token for the caller's provider and returns
// it once; only its hash is kept.
func (s *Service) CreateAPIToken(ctx context.Context, p Principal, name string) (string, *APIToken, error) {
	if p.ProviderID == "" {
		return "", nil, ErrForbidden
	}
	name = strings.TrimSpace(name)
	if n := len(name); n == 0 || n > 100 {
		return "", nil, invalid("name", "name the token (1 to 100 characters), e.g. the server that will use it")
	}
	token, t := newAPIToken(p.ProviderID, name, s.now().UTC())
	err := s.Store.Tx(ctx, func(tx Repo) error {
		if err := tx.CreateAPIToken(ctx, t); err != nil {
			return err
		}
		return s.audit(ctx, tx, p.Actor(), "api-token.create", "token:"+t.ID, map[string]any{"name": name})
	})
	if err != nil {
		return "", nil, fmt.Errorf("keyport: create API token: %w", err)
	}
	return token, t, nil
}

// ListAPITokens returns the caller's API tokens (hashes only).
func (s *Service) ListAPITokens(ctx context.Context, p Principal) ([]APIToken, error) {
	if p.ProviderID == "" {
		return nil, ErrForbidden
	}
	return s.Store.ListAPITokens(ctx, p.ProviderID)
}

// RevokeAPIToken revokes one of the caller's tokens; another provider's
// token is ErrNotFound, as if it did not exist.
func (s *Service) RevokeAPIToken(ctx context.Context, p Principal, id string) error {
	if p.ProviderID == "" {
		return ErrForbidden
	}
	err := s.Store.Tx(ctx, func(tx Repo) error {
		if err := tx.RevokeAPIToken(ctx, p.ProviderID, id, s.now().UTC()); err != nil {
			return err
		}
		return s.audit(ctx, tx, p.Actor(), "api-token.revoke", "token:"+id, map[string]any{})
	})
	if err != nil {
		return fmt.Errorf("keyport: revoke API token: %w", err)
	}
	return nil
}

// CheckWebhookURL accepts an https URL, or http to a loopback address for
// development; empty clears the webhook.
func CheckWebhookURL(raw string) (string, error) {
	raw = strings.TrimSpace(raw)
	if raw == "" {
		return "", nil
	}
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" || u.User != nil || len(raw) > 2000 {
		return "", invalid("webhook_url", "enter a full URL such as https://example.com/keyport-events")
	}
	switch u.Scheme {
	case "https":
	case "http":
		if ip := net.ParseIP(u.Hostname()); ip == nil || !ip.IsLoopback() {
			return "", invalid("webhook_url", "use https (plain http only to 127.0.0.1, for development)")
		}
	default:
		return "", invalid("webhook_url", "use an https URL")
	}
	u.Fragment = ""
	return u.String(), nil
}

// SetWebhook sets the URL the caller's events are posted to.
func (s *Service) SetWebhook(ctx context.Context, p Principal, raw string) (string, error) {
	if p.ProviderID == "" {
		return "", ErrForbidden
	}
	u, err := CheckWebhookURL(raw)
	if err != nil {
		return "", err
	}
	err = s.Store.Tx(ctx, func(tx Repo) error {
		if err := tx.SetWebhookURL(ctx, p.ProviderID, u); err != nil {
			return err
		}
		return s.audit(ctx, tx, p.Actor(), "webhook.set", "provider:"+p.ProviderID, map[string]any{"url": u})
	})
	if err != nil {
		return "", fmt.Errorf("keyport: set webhook: %w", err)
	}
	return u, nil
}

// GetProvider returns the caller's own provider (admins: any).
func (s *Service) GetProvider(ctx context.Context, p Principal, id string) (*Provider, error) {
	if !p.Admin && (p.ProviderID == "" || p.ProviderID != id) {
		return nil, ErrNotFound
	}
	return s.Store.GetProvider(ctx, id)
}

// ListProviders returns every provider (admins only).
func (s *Service) ListProviders(ctx context.Context, p Principal) ([]Provider, error) {
	if !p.Admin {
		return nil, ErrForbidden
	}
	return s.Store.ListProviders(ctx)
}

// SetProviderStatus approves or suspends a provider (admins only). A
// suspended provider's tokens and sessions stop working at once, because
// both check the status on every request.
func (s *Service) SetProviderStatus(ctx context.Context, p Principal, id string, status ProviderStatus) error {
	if !p.Admin {
		return ErrForbidden
	}
	if status != ProviderApproved && status != ProviderSuspended {
		return invalid("status", "must be approved or suspended")
	}
	err := s.Store.Tx(ctx, func(tx Repo) error {
		if err := tx.SetProviderStatus(ctx, id, status); err != nil {
			return err
		}
		action := "provider.approve"
		if status == ProviderSuspended {
			action = "provider.suspend"
		}
		return s.audit(ctx, tx, p.Actor(), action, "provider:"+id, map[string]any{})
	})
	if err != nil {
		return fmt.Errorf("keyport: set provider %s %s: %w", id, status, err)
	}
	return nil
}
