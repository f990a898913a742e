package keyport

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"
)

// Portal use cases: what a signed-in provider manages beside claims (API
// tokens, webhook, its audit trail) and what an issuer admin oversees
// (providers, the outbox, statistics). Every method checks the principal.

// ListWrappingKeys returns the caller's wrapping keys.
func (s *Service) ListWrappingKeys(ctx context.Context, p Principal) ([]WrappingKey, error) {
	if p.ProviderID == "" {
		return nil, ErrForbidden
	}
	return s.Store.ListWrappingKeys(ctx, p.ProviderID)
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
	token := TokenPrefix + NewID("tok")[4:]
	t := &APIToken{ID: NewID("tok"), ProviderID: p.ProviderID, Name: name, Hash: HashToken(token), CreatedAt: s.now().UTC()}
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

// MyAudit returns the newest audit events done by the caller's provider or
// about it.
func (s *Service) MyAudit(ctx context.Context, p Principal, limit int) ([]AuditEvent, error) {
	if p.ProviderID == "" {
		return nil, ErrForbidden
	}
	return s.Store.ProviderAudit(ctx, p.ProviderID, limit)
}

// ---- Issuer admin ----

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

// Outbox returns the newest queued messages (admins only); e-mails sent
// without SMTP wait here.
func (s *Service) Outbox(ctx context.Context, p Principal, topic string, limit int) ([]OutboxMessage, error) {
	if !p.Admin {
		return nil, ErrForbidden
	}
	return s.Store.ListOutbox(ctx, topic, limit)
}

// RecentAudit returns the newest audit events (admins only).
func (s *Service) RecentAudit(ctx context.Context, p Principal, limit int) ([]AuditEvent, error) {
	if !p.Admin {
		return nil, ErrForbidden
	}
	return s.Store.RecentAudit(ctx, limit)
}

// ListBatches returns every batch (admins only).
func (s *Service) ListBatches(ctx context.Context, p Principal) ([]Batch, error) {
	if !p.Admin {
		return nil, ErrForbidden
	}
	return s.Store.ListBatches(ctx)
}

// StatsDays is the window of the claims-per-day chart.
const StatsDays = 30

// Stats returns the admin dashboard's numbers (admins only).
func (s *Service) Stats(ctx context.Context, p Principal) (*PortalStats, error) {
	if !p.Admin {
		return nil, ErrForbidden
	}
	today := s.now().UTC().Truncate(24 * time.Hour)
	since := today.AddDate(0, 0, -(StatsDays - 1))
	st, err := s.Store.PortalStats(ctx, since)
	if err != nil {
		return nil, fmt.Errorf("keyport: stats: %w", err)
	}
	// One bar per day, zero days included.
	byDay := map[time.Time]int64{}
	for _, d := range st.ClaimsPerDay {
		byDay[d.Day.UTC().Truncate(24*time.Hour)] += d.Count
	}
	st.ClaimsPerDay = st.ClaimsPerDay[:0]
	for d := since; !d.After(today); d = d.AddDate(0, 0, 1) {
		st.ClaimsPerDay = append(st.ClaimsPerDay, DayCount{Day: d, Count: byDay[d]})
	}
	return st, nil
}
