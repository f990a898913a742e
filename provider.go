package keyport

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"strconv"
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
	// Owner is the identity of who created an issuer-admin token
	// ("admin:EMAIL", "operator:NAME"; a token made with a token has that
	// token's owner); OwnerUserID is the admin user's ID when a portal
	// user, or a token of theirs, created it.
	Owner       string
	OwnerUserID string
	// ExpiresAt: the token is refused from then on (nil: never).
	ExpiresAt *time.Time
	// LastUsedAt is the last authenticated request, at most
	// tokenTouchEvery old (nil: never used).
	LastUsedAt *time.Time
	// OwnerDisabled: the admin user who owns the token is disabled, read
	// with the token like ProviderStatus.
	OwnerDisabled bool
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

// AddProvider creates a provider (the command-line route; browser sign-up
// starts pending) and returns it with a new API token, shown once. It is
// approved at once only with dual control off; otherwise it is pending until
// a request for its approval (ActionProviderApprove) is approved.
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
	// Under dual control a provider added by one admin waits for another's
	// approval (ActionProviderApprove): its token works from then on.
	status := ProviderApproved
	if !s.DualControl.Off() {
		status = ProviderPending
	}
	prov := &Provider{ID: NewID("prv"), Name: name, Kind: kind, Email: email, Status: status, CreatedAt: s.now().UTC()}
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

// Authenticate resolves an API token to its principal. Unknown, revoked and
// expired tokens, tokens of a disabled admin user and tokens of providers
// that are not approved are refused alike. A token's last use is recorded
// at most once a minute (touchToken).
func (s *Service) Authenticate(ctx context.Context, token string) (Principal, error) {
	if !strings.HasPrefix(token, TokenPrefix) {
		return Principal{}, ErrUnauthenticated
	}
	p, _, err := s.authenticateHash(ctx, HashToken(token))
	return p, err
}

// authenticateHash is Authenticate of the token with this hash; it also
// returns the token's ID.
func (s *Service) authenticateHash(ctx context.Context, hash []byte) (Principal, string, error) {
	t, err := s.Store.GetAPITokenByHash(ctx, hash)
	if errors.Is(err, ErrNotFound) {
		return Principal{}, "", ErrUnauthenticated
	}
	if err != nil {
		return Principal{}, "", err
	}
	if err := s.liveToken(ctx, t); err != nil {
		return Principal{}, "", err
	}
	if t.Admin {
		return Principal{Admin: true, Name: t.Name, Token: true, TokenID: t.ID, Owner: t.Owner, OwnerUserID: t.OwnerUserID}, t.ID, nil
	}
	if t.ProviderStatus != ProviderApproved {
		return Principal{}, "", fmt.Errorf("%w: provider is %s", ErrForbidden, t.ProviderStatus)
	}
	return Principal{ProviderID: t.ProviderID, Name: t.Name}, t.ID, nil
}

// CreateAPIToken makes an API token for the caller's provider and returns
// it once; only its hash is kept.
func (s *Service) CreateAPIToken(ctx context.Context, p Principal, name string) (string, *APIToken, error) {
	if p.ProviderID == "" {
		return "", nil, ErrForbidden
	}
	name, err := apiTokenName(name)
	if err != nil {
		return "", nil, err
	}
	token, t := newAPIToken(p.ProviderID, name, s.now().UTC())
	err = s.Store.Tx(ctx, func(tx Repo) error {
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

// CreateAPITokenReauth is CreateAPIToken for a signed-in portal user, who
// gives the current password (and TOTP code) in the same request, as for
// SetWebhookReauth: a token outlives the session, sign-out and a password
// change, and can set the webhook, so a stolen session alone must not be
// able to make one. The name is checked first, so that a typing mistake
// costs no sign-in attempt.
func (s *Service) CreateAPITokenReauth(ctx context.Context, su *SessionUser, r Reauth, name string) (string, *APIToken, error) {
	if su.Principal.ProviderID == "" {
		return "", nil, ErrForbidden
	}
	if _, err := apiTokenName(name); err != nil {
		return "", nil, err
	}
	if _, err := s.reauthenticate(ctx, su.User.ID, "api-token", r); err != nil {
		return "", nil, fmt.Errorf("keyport: create API token: %w", err)
	}
	return s.CreateAPIToken(ctx, su.Principal, name)
}

// apiTokenName is a provider token's name as given, trimmed, or why it is
// not one.
func apiTokenName(name string) (string, error) {
	name = strings.TrimSpace(name)
	if n := len(name); n == 0 || n > 100 {
		return "", invalid("name", "name the token (1 to 100 characters), e.g. the server that will use it")
	}
	return name, nil
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
	s.claimTokens.forget(id)
	return nil
}

// CheckWebhookURL accepts an https URL whose host is a DNS name or a public
// IP address; empty clears the webhook. Events must not be a way to reach
// keyport's own network: IP literals that are not public
// (WebhookAddrAllowed) and names kept for local use ("localhost",
// "*.localhost", "*.internal", "*.local", "*.home.arpa", single labels,
// numeric forms such as "127.1") are refused. With devLoopback (a
// development receiver, DeliveryPolicy.DevLoopbackWebhooks) http or https to
// a loopback IP literal is accepted as well, and nothing else more. What a
// name resolves to is checked again when the webhook is sent.
func CheckWebhookURL(raw string, devLoopback bool) (string, error) {
	raw = strings.TrimSpace(raw)
	if raw == "" {
		return "", nil
	}
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" || u.User != nil || u.Opaque != "" || len(raw) > 2000 {
		return "", invalid("webhook_url", "enter a full URL such as https://example.com/keyport-events")
	}
	if u.Scheme != "https" && u.Scheme != "http" {
		return "", invalid("webhook_url", "use an https URL")
	}
	host := u.Hostname()
	devReceiver := false
	if ip, err := netip.ParseAddr(host); err == nil {
		switch {
		case devLoopback && ip.Unmap().IsLoopback() && ip.Zone() == "":
			devReceiver = true
		case u.Scheme != "https":
			return "", invalid("webhook_url", "use an https URL")
		default:
			if err := WebhookAddrAllowed(ip); err != nil {
				return "", invalid("webhook_url", "the address "+host+" is not public ("+err.Error()+"); use the public name or address of your endpoint")
			}
		}
	} else {
		if u.Scheme != "https" {
			return "", invalid("webhook_url", "use an https URL")
		}
		if reason := localName(host); reason != "" {
			return "", invalid("webhook_url", "the host "+host+" "+reason+"; use the public name of your endpoint")
		}
	}
	if !devReceiver {
		if err := WebhookPortAllowed(u.Port()); err != nil {
			return "", invalid("webhook_url", err.Error())
		}
	}
	u.Fragment = ""
	return u.String(), nil
}

// localName says why host is not a public DNS name, or "".
func localName(host string) string {
	h := strings.TrimSuffix(strings.ToLower(host), ".")
	if h == "" || strings.ContainsAny(h, "%[]:") {
		return "is not a DNS name"
	}
	for _, suffix := range []string{"localhost", "internal", "local", "localdomain", "home.arpa"} {
		if h == suffix || strings.HasSuffix(h, "."+suffix) {
			return "is a local name"
		}
	}
	labels := strings.Split(h, ".")
	if len(labels) < 2 {
		return "is a single-label name, resolved on the local network"
	}
	last := labels[len(labels)-1]
	if strings.HasPrefix(last, "0x") || strings.Trim(last, "0123456789") == "" {
		return "is a numeric address, not a DNS name"
	}
	return ""
}

// Address ranges webhooks never go to, besides what netip classifies
// (loopback, private, link-local, multicast, unspecified): the IPv4
// special-purpose ranges that are not globally reachable, and those IPv6
// ranges within global unicast (2000::/3, the only IPv6 space webhooks go
// to) that are special, documentation, or carry an IPv4 address that a
// translator or tunnel would reach (IANA IPv4 and IPv6 Special-Purpose
// Address Registries).
var nonPublicPrefixes = []struct {
	prefix netip.Prefix
	what   string
}{
	{netip.MustParsePrefix("0.0.0.0/8"), "this network"},
	{netip.MustParsePrefix("100.64.0.0/10"), "carrier-grade NAT"},
	{netip.MustParsePrefix("192.0.0.0/24"), "IETF protocol assignments"},
	{netip.MustParsePrefix("192.0.2.0/24"), "documentation"},
	{netip.MustParsePrefix("192.88.99.0/24"), "6to4 relay anycast"},
	{netip.MustParsePrefix("198.18.0.0/15"), "benchmarking"},
	{netip.MustParsePrefix("198.51.100.0/24"), "documentation"},
	{netip.MustParsePrefix("203.0.113.0/24"), "documentation"},
	{netip.MustParsePrefix("240.0.0.0/4"), "reserved"},
	// 2001::/23 holds Teredo (2001::/32, an IPv4 address inside),
	// benchmarking, ORCHID and other protocol assignments.
	{netip.MustParsePrefix("2001::/32"), "Teredo"},
	{netip.MustParsePrefix("2001::/23"), "IETF protocol assignments"},
	{netip.MustParsePrefix("2001:db8::/32"), "documentation"},
	{netip.MustParsePrefix("2002::/16"), "6to4"},
	{netip.MustParsePrefix("3fff::/20"), "documentation"},
}

// Named IPv6 ranges outside global unicast, for clearer refusals; every
// other address outside 2000::/3 is refused as not global unicast.
var nonGlobalIPv6 = []struct {
	prefix netip.Prefix
	what   string
}{
	{netip.MustParsePrefix("64:ff9b:1::/48"), "local-use NAT64"},
	{netip.MustParsePrefix("::ffff:0:0:0/96"), "IPv4-translated"},
	{netip.MustParsePrefix("::/96"), "IPv4-compatible"},
	{netip.MustParsePrefix("100::/64"), "discard-only"},
	{netip.MustParsePrefix("fec0::/10"), "site-local"},
}

var (
	// nat64 is the well-known NAT64 prefix (RFC 6052): its addresses
	// carry an IPv4 address in their last 32 bits, which is what is
	// checked. The local-use prefix (RFC 8215) is refused: where its
	// IPv4 address sits is up to the network.
	nat64 = netip.MustParsePrefix("64:ff9b::/96")
	// globalUnicast is the IPv6 space IANA allocates to the internet.
	globalUnicast = netip.MustParsePrefix("2000::/3")
)

// WebhookAddrAllowed returns nil if webhooks may be sent to ip: a public
// unicast address. Loopback, private (RFC 1918, fc00::/7), link-local
// (169.254.0.0/16 with the cloud metadata address, fe80::/10), multicast,
// unspecified, carrier-grade NAT (100.64.0.0/10), documentation and other
// special-purpose ranges are refused, also in their IPv4-mapped and
// well-known NAT64 (64:ff9b::/96) forms. An IPv6 address must be global
// unicast (2000::/3) and in none of its special ranges: 6to4, Teredo,
// documentation, IETF protocol assignments; other prefixes that embed an
// IPv4 address (local-use NAT64 64:ff9b:1::/48, IPv4-translated
// ::ffff:0:0:0/96, IPv4-compatible ::/96) are refused whatever they embed.
func WebhookAddrAllowed(ip netip.Addr) error {
	if !ip.IsValid() {
		return errors.New("not an IP address")
	}
	if ip.Zone() != "" {
		return errors.New("scoped address")
	}
	ip = ip.Unmap()
	if nat64.Contains(ip) {
		b := ip.As16()
		ip = netip.AddrFrom4([4]byte(b[12:]))
	}
	switch {
	case ip.IsLoopback():
		return errors.New("loopback address")
	case ip.IsPrivate():
		return errors.New("private address")
	case ip.IsLinkLocalUnicast(), ip.IsLinkLocalMulticast():
		return errors.New("link-local address")
	case ip.IsMulticast(), ip.IsInterfaceLocalMulticast():
		return errors.New("multicast address")
	case ip.IsUnspecified():
		return errors.New("unspecified address")
	}
	if ip.Is4() && ip.As4() == [4]byte{255, 255, 255, 255} {
		return errors.New("broadcast address")
	}
	if ip.Is6() && !globalUnicast.Contains(ip) {
		for _, p := range nonGlobalIPv6 {
			if p.prefix.Contains(ip) {
				return errors.New(p.what + " address")
			}
		}
		return errors.New("IPv6 address outside global unicast (2000::/3)")
	}
	for _, p := range nonPublicPrefixes {
		if p.prefix.Contains(ip) {
			return errors.New(p.what + " address")
		}
	}
	return nil
}

// WebhookPortAllowed returns nil if webhooks may be sent to port (empty:
// the scheme's default): 443, or an unprivileged port 1024-65535. The
// ports below 1024 other than 443 are other services' (ssh, smtp, http),
// not an HTTPS receiver's; the rule also keeps webhooks off the usual
// internal services on them. Each high port is an operator's choice, and
// the address rule keeps them public.
func WebhookPortAllowed(port string) error {
	if port == "" {
		return nil
	}
	n, err := strconv.Atoi(port)
	switch {
	case err != nil || n < 0 || n > 65535:
		return errors.New("the port " + port + " is not a port number")
	case n == 443 || n >= 1024:
		return nil
	}
	return errors.New("the port " + port + " is not allowed: use 443 or a port from 1024 to 65535")
}

// SetWebhook sets the URL the caller's events are posted to.
func (s *Service) SetWebhook(ctx context.Context, p Principal, raw string) (string, error) {
	if p.ProviderID == "" {
		return "", ErrForbidden
	}
	u, err := CheckWebhookURL(raw, s.Delivery.DevLoopbackWebhooks)
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
	if status == ProviderApproved {
		if err := approvable(ctx, s.Store, id); err != nil {
			return fmt.Errorf("keyport: approve provider %s: %w", id, err)
		}
		// Approval and un-suspension let a provider claim keys: dual control.
		if err := s.underDualControl(ctx, ActionProviderApprove, id); err != nil {
			return err
		}
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
