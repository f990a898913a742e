package store_test

import (
	"bytes"
	"errors"
	"testing"
	"time"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/store"
	"github.com/keyport/keyport/store/storetest"
)

func TestProviderRoundTripsAndItsEmailIsUnique(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		p := &keyport.Provider{Name: "Small Bank", Kind: keyport.KindBank, Email: "ops@small.example",
			Status: keyport.ProviderPending, WebhookURL: "https://small.example/hook"}
		if err := s.CreateProvider(ctx, p); err != nil {
			t.Fatal(err)
		}
		if p.ID == "" || p.CreatedAt.IsZero() {
			t.Fatalf("ID/CreatedAt not set: %+v", p)
		}
		got, err := s.GetProvider(ctx, p.ID)
		if err != nil {
			t.Fatal(err)
		}
		if *got != *p {
			t.Errorf("got %+v, want %+v", got, p)
		}
		dup := &keyport.Provider{Name: "Other", Kind: keyport.KindOther, Email: p.Email, Status: keyport.ProviderPending}
		if err := s.CreateProvider(ctx, dup); !errors.Is(err, keyport.ErrConflict) {
			t.Errorf("same e-mail: %v, want ErrConflict", err)
		}
		if _, err := s.GetProvider(ctx, "missing"); !errors.Is(err, keyport.ErrNotFound) {
			t.Errorf("GetProvider(missing): %v, want ErrNotFound", err)
		}
	})
}

func TestAPITokenIsFoundByHashUntilRevoked(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		p := createProvider(t, s, "p@example.com")
		tok := &keyport.APIToken{ProviderID: p.ID, Name: "ci", Hash: bytes.Repeat([]byte{1}, 32)}
		if err := s.CreateAPIToken(ctx, tok); err != nil {
			t.Fatal(err)
		}
		got, err := s.GetAPITokenByHash(ctx, tok.Hash)
		if err != nil {
			t.Fatal(err)
		}
		if got.ID != tok.ID || got.ProviderID != p.ID || got.Admin || got.Name != "ci" ||
			!bytes.Equal(got.Hash, tok.Hash) || !got.CreatedAt.Equal(tok.CreatedAt) || got.RevokedAt != nil {
			t.Errorf("got %+v, want %+v", got, tok)
		}
		admin := &keyport.APIToken{Admin: true, Name: "root", Hash: bytes.Repeat([]byte{2}, 32)}
		if err := s.CreateAPIToken(ctx, admin); err != nil {
			t.Fatal(err)
		}
		if got, err := s.GetAPITokenByHash(ctx, admin.Hash); err != nil || !got.Admin || got.ProviderID != "" {
			t.Errorf("admin token: %+v, %v", got, err)
		}
		revokedAt := time.Now()
		revoked := &keyport.APIToken{ProviderID: p.ID, Name: "old", Hash: bytes.Repeat([]byte{3}, 32), RevokedAt: &revokedAt}
		if err := s.CreateAPIToken(ctx, revoked); err != nil {
			t.Fatal(err)
		}
		if _, err := s.GetAPITokenByHash(ctx, revoked.Hash); !errors.Is(err, keyport.ErrNotFound) {
			t.Errorf("revoked token: %v, want ErrNotFound", err)
		}
		if _, err := s.GetAPITokenByHash(ctx, bytes.Repeat([]byte{9}, 32)); !errors.Is(err, keyport.ErrNotFound) {
			t.Errorf("unknown token: %v, want ErrNotFound", err)
		}
		dup := &keyport.APIToken{ProviderID: p.ID, Name: "dup", Hash: tok.Hash}
		if err := s.CreateAPIToken(ctx, dup); !errors.Is(err, keyport.ErrConflict) {
			t.Errorf("same hash: %v, want ErrConflict", err)
		}
	})
}

func TestWrappingKeyIsVisibleOnlyToItsProvider(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		p := createProvider(t, s, "p@example.com")
		other := createProvider(t, s, "o@example.com")
		k := createWrappingKey(t, s, p.ID)
		got, err := s.GetWrappingKey(ctx, p.ID, k.ID)
		if err != nil {
			t.Fatal(err)
		}
		if got.ID != k.ID || !bytes.Equal(got.PublicKeyDER, k.PublicKeyDER) || got.SHA256 != k.SHA256 ||
			got.Bits != 3072 || !got.CreatedAt.Equal(k.CreatedAt) {
			t.Errorf("got %+v, want %+v", got, k)
		}
		if _, err := s.GetWrappingKey(ctx, other.ID, k.ID); !errors.Is(err, keyport.ErrNotFound) {
			t.Errorf("another provider's key: %v, want ErrNotFound", err)
		}
	})
}

func TestClaimsByIdempotencyKeyAndByDomain(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		b := createBatch(t, s, "b")
		importModules(t, s, b.ID, 1, 1, 2)
		p := createProvider(t, s, "p@example.com")
		k := createWrappingKey(t, s, p.ID)
		d, _ := s.GetDomain(ctx, testEID(1), testAID(1))

		c := &keyport.Claim{ProviderID: p.ID, DomainID: d.ID, EID: d.EID, AID: d.AID, WrappingKeyID: k.ID,
			IdempotencyKey: "req-1", RequestHash: "h1", Package: []byte(`{"payload":"jws"}`)}
		if err := s.CreateClaim(ctx, c); err != nil {
			t.Fatal(err)
		}
		got, err := s.GetClaimByIdempotencyKey(ctx, p.ID, "req-1")
		if err != nil {
			t.Fatal(err)
		}
		if got.ID != c.ID || got.DomainID != d.ID || got.EID != d.EID || got.AID != d.AID || got.WrappingKeyID != k.ID ||
			got.RequestHash != "h1" || !bytes.Equal(got.Package, c.Package) || !got.CreatedAt.Equal(c.CreatedAt) {
			t.Errorf("got %+v, want %+v", got, c)
		}
		reuse := &keyport.Claim{ProviderID: p.ID, DomainID: d.ID, EID: d.EID, AID: d.AID, WrappingKeyID: k.ID,
			IdempotencyKey: "req-1"}
		if err := s.CreateClaim(ctx, reuse); !errors.Is(err, keyport.ErrConflict) {
			t.Errorf("reused idempotency key: %v, want ErrConflict", err)
		}
		// Claims without a key never collide with each other.
		for i := 0; i < 2; i++ {
			time.Sleep(2 * time.Millisecond)
			c2 := &keyport.Claim{ProviderID: p.ID, DomainID: d.ID, EID: d.EID, AID: d.AID, WrappingKeyID: k.ID,
				RequestHash: "later"}
			if err := s.CreateClaim(ctx, c2); err != nil {
				t.Fatalf("claim without idempotency key %d: %v", i, err)
			}
			c = c2
		}
		latest, err := s.GetClaimForDomain(ctx, p.ID, d.ID)
		if err != nil {
			t.Fatal(err)
		}
		if latest.ID != c.ID || latest.IdempotencyKey != "" {
			t.Errorf("GetClaimForDomain = %+v, want the latest claim %s", latest, c.ID)
		}
		other := createProvider(t, s, "o@example.com")
		if _, err := s.GetClaimForDomain(ctx, other.ID, d.ID); !errors.Is(err, keyport.ErrNotFound) {
			t.Errorf("another provider's claim: %v, want ErrNotFound", err)
		}
		if _, err := s.GetClaimByIdempotencyKey(ctx, other.ID, "req-1"); !errors.Is(err, keyport.ErrNotFound) {
			t.Errorf("another provider's idempotency key: %v, want ErrNotFound", err)
		}
		if _, err := s.GetClaimByIdempotencyKey(ctx, p.ID, ""); !errors.Is(err, keyport.ErrNotFound) {
			t.Errorf("empty idempotency key: %v, want ErrNotFound", err)
		}
		bad := &keyport.Claim{ProviderID: p.ID, DomainID: 999999, WrappingKeyID: k.ID}
		if err := s.CreateClaim(ctx, bad); !errors.Is(err, keyport.ErrNotFound) {
			t.Errorf("claim of an unknown domain: %v, want ErrNotFound", err)
		}
	})
}
