package keyport

import (
	"context"
	"crypto/ecdsa"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"strings"
	"time"
)

// WebhookEventType is the JWS "typ" of a webhook signature.
const WebhookEventType = "keyport-event+json"

// WebhookSignatureHeader carries a webhook body's detached JWS (RFC 7515
// Appendix F): BASE64URL(header) ".." BASE64URL(ES256 signature), the
// signing input being BASE64URL(header) "." BASE64URL(body). The key is the
// HSM receipt key published at /.well-known/jwks.json, so no secret is shared
// with providers.
const WebhookSignatureHeader = "Keyport-Signature"

// WebhookEvent is one event POSTed to a provider: a job changed state.
type WebhookEvent struct {
	ID   string    `json:"id"`
	Type string    `json:"type"` // "job.queued", "job.sent", "job.done", "job.failed", …
	At   time.Time `json:"at"`
	Job  JobView   `json:"job"`
	// DomainState is the domain's state after the change, when known.
	DomainState DomainState `json:"domain_state,omitempty"`
	// Sandbox marks an event of the provider sandbox.
	Sandbox bool `json:"sandbox,omitempty"`
}

// webhookURL reads, before a transaction, where the provider's events go:
// reads inside a write transaction would hold SQLite's one writer longer.
func (s *Service) webhookURL(ctx context.Context, providerID string) (string, error) {
	prov, err := s.Store.GetProvider(ctx, providerID)
	if err != nil {
		return "", err
	}
	return prov.WebhookURL, nil
}

// notify queues, inside tx, a webhook job telling j's provider (whose URL
// is hook, from webhookURL) that j is now in j.State; nothing without a URL.
// A URL changed since it was read only affects this event: ClaimWebhooks
// posts to the URL current at sending time.
func (s *Service) notify(ctx context.Context, tx Repo, j *Job, ds DomainState, hook string) error {
	if hook == "" {
		return nil
	}
	now := s.now().UTC()
	ev := WebhookEvent{ID: NewID("evt"), Type: "job." + strings.ToLower(string(j.State)), At: now, Job: j.View(), DomainState: ds,
		Sandbox: s.IsSandbox()}
	ev.Job.Sandbox = ev.Sandbox
	b, err := json.Marshal(ev)
	if err != nil {
		return err
	}
	exp := now.Add(72 * time.Hour)
	return tx.CreateJob(ctx, &Job{Ref: NewID("job"), Kind: JobWebhook, ProviderID: j.ProviderID, State: JobQueued,
		NextRunAt: now, ExpiresAt: &exp, Event: b})
}

// SignDetached signs payload with the HSM receipt key and returns the
// detached compact JWS (RFC 7515 Appendix F) of WebhookSignatureHeader.
func (s *Service) SignDetached(ctx context.Context, payload []byte) (string, error) {
	kid, _, err := s.Custody.ReceiptKey(ctx)
	if err != nil {
		return "", fmt.Errorf("keyport: receipt key: %w", err)
	}
	hdr, _ := json.Marshal(jwsHeader{Alg: "ES256", Kid: kid, Typ: WebhookEventType})
	protected := b64.EncodeToString(hdr)
	sig, err := s.Custody.SignES256(ctx, []byte(protected+"."+b64.EncodeToString(payload)))
	if err != nil {
		return "", fmt.Errorf("keyport: sign webhook: %w", err)
	}
	return protected + ".." + b64.EncodeToString(sig), nil
}

// VerifyWebhook checks a webhook body against its detached signature and
// the portal's JWKS, and returns the event: what a provider's server runs.
func VerifyWebhook(body []byte, signature string, keys JWKS) (*WebhookEvent, error) {
	protected, sigB64, ok := strings.Cut(signature, "..")
	if !ok {
		return nil, errors.New("keyport: webhook signature is not a detached JWS")
	}
	hdrJSON, err := b64.DecodeString(protected)
	if err != nil {
		return nil, errors.New("keyport: webhook signature header is not base64url")
	}
	var hdr jwsHeader
	if err := json.Unmarshal(hdrJSON, &hdr); err != nil || hdr.Alg != "ES256" || hdr.Typ != WebhookEventType {
		return nil, errors.New("keyport: webhook signature header must say alg ES256, typ " + WebhookEventType)
	}
	var pub *ecdsa.PublicKey
	for _, k := range keys.Keys {
		if k.Kid == hdr.Kid {
			if pub, err = k.publicKey(); err != nil {
				return nil, fmt.Errorf("keyport: webhook key: %w", err)
			}
		}
	}
	if pub == nil {
		return nil, fmt.Errorf("keyport: webhook signed by unknown key %q", hdr.Kid)
	}
	sig, err := b64.DecodeString(sigB64)
	if err != nil || len(sig) != 64 {
		return nil, errors.New("keyport: webhook signature is not 64 bytes of ES256")
	}
	digest := sha256.Sum256([]byte(protected + "." + b64.EncodeToString(body)))
	if !ecdsa.Verify(pub, digest[:], new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])) {
		return nil, errors.New("keyport: webhook signature does not verify")
	}
	var ev WebhookEvent
	if err := json.Unmarshal(body, &ev); err != nil {
		return nil, fmt.Errorf("keyport: webhook body: %w", err)
	}
	return &ev, nil
}
