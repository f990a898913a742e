package keyport

import (
	"context"
	"errors"
	"fmt"
)

// EmailConfirmation says whether a provider's e-mail address is known to
// reach it.
type EmailConfirmation string

const (
	// EmailConfirmed: the provider signed up in the portal and followed the
	// mailed link.
	EmailConfirmed EmailConfirmation = "confirmed"
	// EmailUnconfirmed: signed up in the portal, link not yet followed.
	// Such a provider cannot be approved.
	EmailUnconfirmed EmailConfirmation = "not confirmed"
	// EmailByAdmin: an admin created the provider (keyport provider add,
	// the REST API) and vouched for the address; no portal user has it.
	EmailByAdmin EmailConfirmation = "given by an admin"
)

// ErrEmailUnconfirmed: a provider whose sign-up address is not confirmed
// cannot be approved.
var ErrEmailUnconfirmed = fmt.Errorf("%w: the provider has not confirmed its e-mail address yet: it must follow the link keyport mailed before it can be approved", ErrConflict)

// emailConfirmation finds out whether prov's address is confirmed: by the
// portal user that signed up with it.
func emailConfirmation(ctx context.Context, r Repo, prov *Provider) (EmailConfirmation, error) {
	u, err := r.GetUserByEmail(ctx, prov.Email)
	switch {
	case errors.Is(err, ErrNotFound), err == nil && u.ProviderID != prov.ID:
		return EmailByAdmin, nil
	case err != nil:
		return "", err
	case u.VerifiedAt == nil:
		return EmailUnconfirmed, nil
	}
	return EmailConfirmed, nil
}

// ProviderEmails returns each provider's EmailConfirmation by ID (admins
// only).
func (s *Service) ProviderEmails(ctx context.Context, p Principal, provs []Provider) (map[string]EmailConfirmation, error) {
	if !p.Admin {
		return nil, ErrForbidden
	}
	out := make(map[string]EmailConfirmation, len(provs))
	for i := range provs {
		c, err := emailConfirmation(ctx, s.Store, &provs[i])
		if err != nil {
			return nil, fmt.Errorf("keyport: provider %s e-mail: %w", provs[i].ID, err)
		}
		out[provs[i].ID] = c
	}
	return out, nil
}

// approvable refuses to approve a provider whose sign-up address is not
// confirmed (ErrEmailUnconfirmed).
func approvable(ctx context.Context, r Repo, id string) error {
	prov, err := r.GetProvider(ctx, id)
	if err != nil {
		return err
	}
	c, err := emailConfirmation(ctx, r, prov)
	if err != nil {
		return err
	}
	if c == EmailUnconfirmed {
		return ErrEmailUnconfirmed
	}
	return nil
}
