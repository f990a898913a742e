package keyport

import (
	"context"
	"crypto/rand"
	"encoding/base32"
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
	// Link seals and unseals module TLS-PSKs for imports and card-link admin
	// sessions; nil means Custody's.
	Link LinkCustody
	// Trigger wakes a module so that it opens an admin session (delivery.go).
	Trigger Trigger
	// Delivery tunes card-link delivery: leases, expiry, retries (job.go).
	Delivery DeliveryPolicy
	// DualControl is the M-of-N policy of the operations that release
	// secrets or custody (approval.go); the zero value needs two admins.
	DualControl DualControl
	// Writes commits the writes of admin sessions and job changes,
	// possibly together with other callers' (group commit, store.Group);
	// nil gives each a Store.Tx of its own.
	Writes Committer
	// Claims stores claims, possibly together with other claims
	// (store.Store.ClaimCommits); nil gives each a Store.Tx of its own.
	Claims ClaimWriter
	// Metrics counts claims, key-package downloads, webhook deliveries and
	// imports (metrics.go); nil counts nothing.
	Metrics Metrics
	// SandboxFaults, when set, makes this the provider sandbox's service
	// (sandbox.go): its jobs and webhooks say "sandbox": true, and a card
	// job's cause names the fault the sandbox injected.
	SandboxFaults FaultBook

	batches sync.Map // batch ID -> *Batch; batches never change
	mailing pending  // what later runs (outbox.go)
	// wrappingKeys: provider ID + "\x00" + key ID -> *wrappingKeyEntry;
	// wrapping keys never change (wrappingkey.go).
	wrappingKeys sync.Map
	// claimTokens: API tokens that authenticated recently, for claims
	// (claimtoken.go).
	claimTokens claimTokens
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

// commit runs fn in a write transaction: through Writes, or Store.Tx
// without one.
func (s *Service) commit(ctx context.Context, fn func(ctx context.Context, tx Repo) error) error {
	if s.Writes != nil {
		return s.Writes.Commit(ctx, fn)
	}
	return s.Store.Tx(ctx, func(tx Repo) error { return fn(ctx, tx) })
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

// link is where module PSKs are sealed and unsealed: Link, or Custody.
func (s *Service) link() LinkCustody {
	if s.Link != nil {
		return s.Link
	}
	if s.Custody != nil {
		return s.Custody
	}
	return nil
}

// Clock is the service's current time (Now, or the system clock).
func (s *Service) Clock() time.Time { return s.now() }
