package keyport_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/internal/fixture"
	"github.com/keyport/keyport/keywrap"
	"github.com/keyport/keyport/store"
	"github.com/keyport/keyport/store/storetest"
)

func TestClaimGivesTheProviderTheManufacturersFirstKeysWrappedToItsKey(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		ctx := context.Background()
		w := fixture.New(t, s, 2, 2)
		sp := fixture.RSAKeys()[0]
		p, _, wk := w.Provider(t, "Bank A", sp)
		eid := fixture.EID(t, 1)
		c, created, err := w.Svc.Claim(ctx, p, keyport.ClaimRequest{EID: eid, WrappingKeyID: wk})
		if err != nil || !created || c.AID != fixture.AID(1) {
			t.Fatalf("claim: %+v %v %v", c, created, err)
		}
		set, err := w.Svc.JWKS(ctx)
		if err != nil {
			t.Fatal(err)
		}
		pkgData, err := w.Svc.KeyPackage(ctx, p, eid, c.AID)
		if err != nil {
			t.Fatal(err)
		}
		pkg, err := keyport.VerifyKeyPackage(pkgData, set)
		if err != nil {
			t.Fatal(err)
		}
		if pkg.EID != eid || pkg.AID != c.AID || pkg.KVN != 0x30 || pkg.ClaimID != c.ID || len(pkg.Keys) != 3 {
			t.Fatalf("package %+v", pkg)
		}
		for _, k := range pkg.Keys {
			clear, err := keywrap.UnwrapRSAAES(sp, k.Wrapped, fixture.OAEPHash(t, pkg.Wrapping.OAEPHash))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(clear, w.Keys[eid][c.AID][k.Usage]) {
				t.Errorf("%s key differs from the manufacturer's", k.Usage)
			}
		}
		d, _ := w.Store.GetDomain(ctx, eid, c.AID)
		if d.State != keyport.Assigned || d.OwnerID != p.ProviderID {
			t.Errorf("domain after claim: %s owner %q", d.State, d.OwnerID)
		}
		// The second claim without AID takes the next free domain.
		c2, _, err := w.Svc.Claim(ctx, p, keyport.ClaimRequest{EID: eid, WrappingKeyID: wk})
		if err != nil || c2.AID != fixture.AID(2) {
			t.Fatalf("second claim: %+v %v", c2, err)
		}
		if _, _, err := w.Svc.Claim(ctx, p, keyport.ClaimRequest{EID: eid, WrappingKeyID: wk}); !errors.Is(err, keyport.ErrConflict) {
			t.Errorf("claim of a full module: %v, want ErrConflict", err)
		}
		if r, err := w.Svc.VerifyAudit(ctx); err != nil || r.Checkpoints == 0 {
			t.Errorf("audit: %+v %v", r, err)
		}
	})
}

func TestFiftyConcurrentClaimsOfOneDomainHaveExactlyOneWinner(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		ctx := context.Background()
		w := fixture.New(t, s, 1, 1)
		eid := fixture.EID(t, 0)
		type caller struct {
			p  keyport.Principal
			wk string
		}
		var callers []caller
		for i := 0; i < 50; i++ {
			p, _, wk := w.Provider(t, fmt.Sprintf("Provider %d", i), fixture.RSAKeys()[0])
			callers = append(callers, caller{p, wk})
		}
		var wins, conflicts atomic.Int32
		var wg sync.WaitGroup
		start := make(chan struct{})
		for _, c := range callers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				_, _, err := w.Svc.Claim(ctx, c.p, keyport.ClaimRequest{EID: eid, AID: fixture.AID(1), WrappingKeyID: c.wk})
				switch {
				case err == nil:
					wins.Add(1)
				case errors.Is(err, keyport.ErrConflict):
					conflicts.Add(1)
				default:
					t.Errorf("claim: %v", err)
				}
			}()
		}
		close(start)
		wg.Wait()
		if wins.Load() != 1 || conflicts.Load() != 49 {
			t.Errorf("wins %d, conflicts %d; want 1 and 49", wins.Load(), conflicts.Load())
		}
		if n := w.CountAudit(t, "claim"); n != 1 {
			t.Errorf("%d claim audit events, want 1", n)
		}
	})
}

func TestClaimRetriedWithTheSameIdempotencyKeyReturnsTheSameClaim(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		ctx := context.Background()
		w := fixture.New(t, s, 1, 2)
		p, _, wk := w.Provider(t, "Bank A", fixture.RSAKeys()[0])
		req := keyport.ClaimRequest{EID: fixture.EID(t, 0), WrappingKeyID: wk, IdempotencyKey: "order-42"}
		c1, created1, err := w.Svc.Claim(ctx, p, req)
		if err != nil || !created1 {
			t.Fatal(err)
		}
		c2, created2, err := w.Svc.Claim(ctx, p, req)
		if err != nil || created2 || c2.ID != c1.ID || !bytes.Equal(c1.Package, c2.Package) {
			t.Fatalf("replay: %v created=%v same=%v", err, created2, c2 != nil && c2.ID == c1.ID)
		}
		req.AID = fixture.AID(2)
		if _, _, err := w.Svc.Claim(ctx, p, req); !errors.Is(err, keyport.ErrConflict) {
			t.Errorf("key reused for another request: %v, want ErrConflict", err)
		}
		if n := w.CountAudit(t, "claim"); n != 1 {
			t.Errorf("%d claim events, want 1", n)
		}
	})
}

// failingClaims is the store with CreateClaim failing inside transactions:
// the failure falls between the HSM wrap and the commit.
type failingClaims struct{ keyport.Store }

func (f failingClaims) Tx(ctx context.Context, fn func(keyport.Repo) error) error {
	return f.Store.Tx(ctx, func(tx keyport.Repo) error { return fn(failingRepo{tx}) })
}

type failingRepo struct{ keyport.Repo }

func (failingRepo) CreateClaim(context.Context, *keyport.Claim) error {
	return errors.New("injected failure after the HSM wrap")
}

// ClaimDomain fails after the domain's UPDATE, as a failing claim insert
// inside it would.
func (f failingRepo) ClaimDomain(ctx context.Context, c *keyport.Claim, from []keyport.DomainState, _ *keyport.OutboxMessage, _ string) error {
	owner := c.ProviderID
	if err := f.Repo.TransitionDomain(ctx, c.DomainID, from, keyport.Assigned, &owner); err != nil {
		return err
	}
	return f.CreateClaim(ctx, c)
}

func TestClaimThatFailsBetweenTheHSMWrapAndTheCommitLeavesTheDomainUnassigned(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		ctx := context.Background()
		w := fixture.New(t, s, 1, 1)
		p, _, wk := w.Provider(t, "Bank A", fixture.RSAKeys()[0])
		before := w.CountAudit(t, "claim")
		broken := &keyport.Service{Store: failingClaims{s}, Custody: w.HSM}
		eid := fixture.EID(t, 0)
		if _, _, err := broken.Claim(ctx, p, keyport.ClaimRequest{EID: eid, AID: fixture.AID(1), WrappingKeyID: wk}); err == nil {
			t.Fatal("claim succeeded through a failing store")
		}
		d, err := s.GetDomain(ctx, eid, fixture.AID(1))
		if err != nil || d.State != keyport.Unassigned || d.OwnerID != "" {
			t.Fatalf("domain after failed claim: %+v %v", d, err)
		}
		if _, err := w.Svc.KeyPackage(ctx, p, eid, fixture.AID(1)); !errors.Is(err, keyport.ErrNotFound) {
			t.Errorf("package after failed claim: %v, want ErrNotFound", err)
		}
		if w.CountAudit(t, "claim") != before {
			t.Error("failed claim left an audit event")
		}
		// And the domain can still be claimed.
		if _, _, err := w.Svc.Claim(ctx, p, keyport.ClaimRequest{EID: eid, AID: fixture.AID(1), WrappingKeyID: wk}); err != nil {
			t.Errorf("claim after the failure: %v", err)
		}
	})
}

// A wrapping key in the database that would not be registered today (an
// exponent of 1: RSA-OAEP is then an encoding anyone undoes) is never
// wrapped to: the claim is refused and the domain stays UNASSIGNED.
func TestAClaimToAStoredWrappingKeyWithAWeakExponentIsRefused(t *testing.T) {
	w := fixture.New(t, storetest.Open(t, storetest.SQLitePath(t)), 1, 1)
	ctx := context.Background()
	key, err := rsa.GenerateKey(rand.Reader, 3072)
	if err != nil {
		t.Fatal(err)
	}
	p, _, _ := w.Provider(t, "Weak Bank", key)
	der, err := x509.MarshalPKIXPublicKey(&rsa.PublicKey{N: key.N, E: 1})
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(der)
	weak := &keyport.WrappingKey{ID: "wk_weak", ProviderID: p.ProviderID, PublicKeyDER: der, SHA256: hex.EncodeToString(sum[:]),
		Bits: 3072, CreatedAt: time.Now().UTC()}
	if err := w.Store.CreateWrappingKey(ctx, weak); err != nil {
		t.Fatal(err)
	}
	eid := fixture.EID(t, 0)
	if _, _, err := w.Svc.Claim(ctx, p, keyport.ClaimRequest{EID: eid, WrappingKeyID: weak.ID}); !errors.Is(err, keyport.ErrInvalid) ||
		!strings.Contains(err.Error(), "exponent") {
		t.Fatalf("claim to an e = 1 key: %v", err)
	}
	d, err := w.Store.GetDomain(ctx, eid, fixture.AID(1))
	if err != nil || d.State != keyport.Unassigned {
		t.Fatalf("domain after the refused claim: %+v %v", d, err)
	}
}
