package keyport

import (
	"context"
	"encoding/hex"
	"fmt"
	"strings"
	"sync"
	"time"
)

// A claim asked with an API token checks the token where it is written:
// the claim's own write finds the token unrevoked, unexpired and its
// provider approved, or writes nothing (ErrTokenNotLive). The token's read
// before the claim then decides nothing, and a claim can start from what
// the token was a few seconds ago (AuthenticateClaim), which saves a
// database round trip on every claim of a busy provider. No answer rests on
// that remembered state alone: a claim that did not commit reads the token
// again before it answers (Service.Claim), so a revoked token learns
// nothing, not even that a domain is taken.

// ErrTokenNotLive is the ErrUnauthenticated of Repo.ClaimDomain when the
// API token the claim was asked with was revoked, expired or its provider
// no longer approved when the claim was written. Nothing was written.
var ErrTokenNotLive = fmt.Errorf("%w: the API token is no longer valid", ErrUnauthenticated)

// claimTokenTTL is how long an authenticated token is remembered for
// claims; shorter than tokenTouchEvery, so that a busy token's last use is
// still written about once a minute.
const claimTokenTTL = 10 * time.Second

// claimTokenMax bounds the remembered tokens; only tokens that
// authenticated are remembered.
const claimTokenMax = 4096

// tokenCheck is the API token a principal's claim must find live.
type tokenCheck struct {
	id   string
	hash []byte
}

// claimTokens remembers the principals of recently authenticated tokens,
// by the hex of the token's hash.
type claimTokens struct {
	mu sync.Mutex
	m  map[string]rememberedToken
}

type rememberedToken struct {
	p  Principal // its check set
	at time.Time
}

// stale: remembered claimTokenTTL or more before now (or after it, the
// clock having gone back).
func (e rememberedToken) stale(now time.Time) bool {
	return now.Sub(e.at) >= claimTokenTTL || now.Before(e.at)
}

func (c *claimTokens) get(hash string, now time.Time) (Principal, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[hash]
	if !ok || e.stale(now) {
		return Principal{}, false
	}
	return e.p, true
}

func (c *claimTokens) put(hash string, p Principal, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = map[string]rememberedToken{}
	}
	if len(c.m) >= claimTokenMax {
		for k, e := range c.m {
			if e.stale(now) {
				delete(c.m, k)
			}
		}
		if len(c.m) >= claimTokenMax {
			clear(c.m)
		}
	}
	c.m[hash] = rememberedToken{p: p, at: now}
}

// forget drops the token with this ID (revoked here: no claim needs to
// start from it again to find out).
func (c *claimTokens) forget(id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, e := range c.m {
		if e.p.check.id == id {
			delete(c.m, k)
		}
	}
}

// AuthenticateClaim authenticates the API token of a claim request, as
// Authenticate does, except that it may answer from the token's
// authentication of a few seconds ago. The principal it returns carries the
// token: Claim checks it in the claim's write, and reads it again before
// answering anything else. Use it for claims alone.
func (s *Service) AuthenticateClaim(ctx context.Context, token string) (Principal, error) {
	if !strings.HasPrefix(token, TokenPrefix) {
		return Principal{}, ErrUnauthenticated
	}
	hash := HashToken(token)
	key := hex.EncodeToString(hash)
	now := s.now()
	if p, ok := s.claimTokens.get(key, now); ok {
		return p, nil
	}
	p, id, err := s.authenticateHash(ctx, hash)
	if err != nil || p.ProviderID == "" {
		return p, err // an admin's token cannot claim: nothing to remember
	}
	p.check = &tokenCheck{id: id, hash: hash}
	s.claimTokens.put(key, p, now)
	return p, nil
}

// recheck authenticates p's token again, from the database: the principal
// it returns needs no check in the claim's write.
func (s *Service) recheck(ctx context.Context, p Principal) (Principal, error) {
	fresh, _, err := s.authenticateHash(ctx, p.check.hash)
	if err != nil {
		s.claimTokens.forget(p.check.id)
		return Principal{}, err
	}
	return fresh, nil
}

// checkedToken is the ID of the token p's claim must find live, or "".
func (p Principal) checkedToken() string {
	if p.check == nil {
		return ""
	}
	return p.check.id
}
