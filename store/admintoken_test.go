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

func TestAdminTokenKeepsOwnerExpiryAndLastUseAndSeesItsOwnerDisabled(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		at := time.Date(2026, 5, 1, 8, 0, 0, 123000, time.UTC)
		u := &keyport.User{Email: "root@issuer.example", Admin: true, PasswordHash: "x", CreatedAt: at}
		if err := s.CreateUser(ctx, u); err != nil {
			t.Fatal(err)
		}
		exp := at.Add(90 * 24 * time.Hour)
		tok := &keyport.APIToken{Admin: true, Name: "nightly", Hash: bytes.Repeat([]byte{7}, 32), CreatedAt: at,
			Owner: "admin:root@issuer.example", OwnerUserID: u.ID, ExpiresAt: &exp}
		if err := s.CreateAPIToken(ctx, tok); err != nil {
			t.Fatal(err)
		}
		p := &keyport.Provider{Name: "Bank", Kind: keyport.KindBank, Email: "ops@bank.example", Status: keyport.ProviderApproved}
		if err := s.CreateProvider(ctx, p); err != nil {
			t.Fatal(err)
		}
		if err := s.CreateAPIToken(ctx, &keyport.APIToken{ProviderID: p.ID, Name: "prov", Hash: bytes.Repeat([]byte{8}, 32), CreatedAt: at}); err != nil {
			t.Fatal(err)
		}
		got, err := s.GetAPITokenByHash(ctx, tok.Hash)
		if err != nil || got.Owner != tok.Owner || got.OwnerUserID != u.ID || got.ExpiresAt == nil || !got.ExpiresAt.Equal(exp) ||
			got.LastUsedAt != nil || got.OwnerDisabled {
			t.Fatalf("by hash: %+v %v", got, err)
		}
		used := at.Add(time.Hour)
		if err := s.TouchAPIToken(ctx, tok.ID, used); err != nil {
			t.Fatal(err)
		}
		if err := s.SetUserDisabled(ctx, u.ID, &used); err != nil {
			t.Fatal(err)
		}
		if got, err = s.GetAPITokenByHash(ctx, tok.Hash); err != nil || !got.OwnerDisabled || got.LastUsedAt == nil || !got.LastUsedAt.Equal(used) {
			t.Fatalf("after touch and disable: %+v %v", got, err)
		}
		if du, err := s.GetUser(ctx, u.ID); err != nil || du.DisabledAt == nil || !du.DisabledAt.Equal(used) {
			t.Fatalf("disabled user: %+v %v", du, err)
		}
		if admins, err := s.ListAdminUsers(ctx); err != nil || len(admins) != 1 || admins[0].ID != u.ID {
			t.Fatalf("admin users: %+v %v", admins, err)
		}
		if err := s.SetUserDisabled(ctx, u.ID, nil); err != nil {
			t.Fatal(err)
		}
		if got, _ = s.GetAPITokenByHash(ctx, tok.Hash); got.OwnerDisabled {
			t.Fatal("enabled owner still disabled")
		}
		list, err := s.ListAdminTokens(ctx)
		if err != nil || len(list) != 1 || list[0].ID != tok.ID || list[0].LastUsedAt == nil {
			t.Fatalf("admin tokens: %+v %v", list, err)
		}
		provTokens, _ := s.ListAPITokens(ctx, p.ID)
		if err := s.RevokeAdminToken(ctx, provTokens[0].ID, used); !errors.Is(err, keyport.ErrNotFound) {
			t.Fatalf("revoke a provider's token as admin: %v", err)
		}
		if err := s.RevokeAdminToken(ctx, tok.ID, used); err != nil {
			t.Fatal(err)
		}
		if _, err := s.GetAPITokenByHash(ctx, tok.Hash); !errors.Is(err, keyport.ErrNotFound) {
			t.Fatalf("revoked: %v", err)
		}
	})
}
