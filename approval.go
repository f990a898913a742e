package keyport

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

// Dual control (M-of-N): an operation that releases a secret or custody runs
// only after admins other than the one who asked for it approved it. One
// admin requests it (RequestApproval), M−1 others approve it
// (ApproveRequest), and then the requester executes it once
// (ExecuteApproval), receiving what it releases; every step is a chained
// audit event naming its admin. Requests expire. An operation without
// anything to hand over (approving a provider) runs when the last approval
// comes in.

// ApprovalAction names an operation under dual control.
type ApprovalAction string

// Operations under dual control.
const (
	// ActionPSKExport: a module's TLS-PSK written out for a handset agent
	// (ExportHandsetPSK). Target: the EID.
	ActionPSKExport ApprovalAction = "module.psk-export"
	// ActionTransportExport: an imported batch created, its transport key
	// exported wrapped to the manufacturer. Target: the batch name; params
	// "manufacturer_pem" (the RSA public key), "aid_prefix".
	ActionTransportExport ApprovalAction = "batch.transport-export"
	// ActionAdminToken: an issuer-admin API token created. Target: its name.
	ActionAdminToken ApprovalAction = "admin.token-create"
	// ActionProviderApprove: a provider approved or taken out of
	// suspension. Target: the provider ID.
	ActionProviderApprove ApprovalAction = "provider.approve"
	// ActionFactorReset: a portal user's passkeys and TOTP removed, for one
	// who lost them (an admin with neither cannot sign in otherwise); the
	// user's sessions end. Target: the user's e-mail address.
	ActionFactorReset ApprovalAction = "user.factor-reset"
)

// ApprovalActions lists every operation under dual control.
var ApprovalActions = []ApprovalAction{ActionPSKExport, ActionTransportExport, ActionAdminToken, ActionProviderApprove, ActionFactorReset}

// handsOver reports whether executing the action gives the requester
// something (a secret or a key export), so that only they execute it.
func (a ApprovalAction) handsOver() bool { return a != ActionProviderApprove && a != ActionFactorReset }

// ApprovalState is where a request stands.
type ApprovalState string

// Request states.
const (
	ApprovalPending   ApprovalState = "pending"
	ApprovalApproved  ApprovalState = "approved"
	ApprovalExecuted  ApprovalState = "executed"
	ApprovalFailed    ApprovalState = "failed"
	ApprovalCancelled ApprovalState = "cancelled"
	// ApprovalExpired is never stored: a pending or approved request past
	// its expiry reads as expired.
	ApprovalExpired ApprovalState = "expired"
)

// ApprovalRequest is one request for an operation under dual control.
type ApprovalRequest struct {
	ID     string
	Action ApprovalAction
	Target string
	Params map[string]string
	Reason string
	// RequestedBy and Approvers are audit actors (Principal.Actor).
	RequestedBy string
	Approvers   []string
	// Required is how many different admins the operation needs, the
	// requester included (the policy when the request was made).
	Required  int
	State     ApprovalState
	Error     string // why execution failed
	CreatedAt time.Time
	ExpiresAt time.Time
	DoneAt    *time.Time // executed, failed or cancelled
	// Version counts the row's updates; ApprovalRepo.UpdateApproval writes
	// only over the version it read.
	Version int
}

// StateAt is the request's state at now: pending or approved past the
// expiry is expired.
func (r *ApprovalRequest) StateAt(now time.Time) ApprovalState {
	if (r.State == ApprovalPending || r.State == ApprovalApproved) && !now.Before(r.ExpiresAt) {
		return ApprovalExpired
	}
	return r.State
}

// ApprovalResult is what executing an approved request released.
type ApprovalResult struct {
	Request *ApprovalRequest
	// PSK: ActionPSKExport. Token: ActionAdminToken. Batch and Transport:
	// ActionTransportExport.
	PSK       []byte
	Token     string
	Batch     *Batch
	Transport *TransportKeyExport
}

// DualControl is the issuer's policy.
type DualControl struct {
	// Admins is how many different admins an operation needs, the requester
	// included; 0 means 2. 1 turns dual control off (development only:
	// `keyport serve` says so at every start).
	Admins int
	// TTL is how long a request stays open; 0 means 24 hours.
	TTL time.Duration
}

func (d DualControl) admins() int {
	if d.Admins <= 0 {
		return 2
	}
	return d.Admins
}

func (d DualControl) ttl() time.Duration {
	if d.TTL <= 0 {
		return 24 * time.Hour
	}
	return d.TTL
}

// Off reports whether one admin alone may run every operation.
func (d DualControl) Off() bool { return d.admins() == 1 }

// errNoIdentity: an admin token without an owner cannot take part.
var errNoIdentity = fmt.Errorf("%w: this admin token has no owner (it predates token owners), so it cannot take part in dual control; make a new one", ErrForbidden)

// dualAdmin checks that p is an admin with an identity.
func dualAdmin(p Principal) error {
	if !p.Admin {
		return ErrForbidden
	}
	if p.Identity() == "" {
		return errNoIdentity
	}
	return nil
}

// ErrOwnRequest: an admin tried to approve their own request.
var ErrOwnRequest = fmt.Errorf("%w: the requester cannot approve their own request", ErrForbidden)

// RequestApproval records admin p's request for action on target. With dual
// control off the request is approved at once (the audit event says so).
func (s *Service) RequestApproval(ctx context.Context, p Principal, action ApprovalAction, target string, params map[string]string, reason string) (*ApprovalRequest, error) {
	if err := dualAdmin(p); err != nil {
		return nil, err
	}
	if !slices.Contains(ApprovalActions, action) {
		return nil, Invalid("action", "unknown operation %q", action)
	}
	if err := s.checkApprovalTarget(ctx, action, target, params); err != nil {
		return nil, err
	}
	if len(reason) > 500 {
		return nil, Invalid("reason", "at most 500 characters")
	}
	now := s.now().UTC()
	r := &ApprovalRequest{ID: NewID("apr"), Action: action, Target: target, Params: params, Reason: strings.TrimSpace(reason),
		RequestedBy: p.Identity(), Required: s.DualControl.admins(), State: ApprovalPending, CreatedAt: AuditTime(now),
		ExpiresAt: AuditTime(now.Add(s.DualControl.ttl()))}
	if r.Required == 1 {
		r.State = ApprovalApproved
	}
	err := s.Store.Tx(ctx, func(tx Repo) error {
		if err := tx.CreateApproval(ctx, r); err != nil {
			return err
		}
		return s.audit(ctx, tx, p.Actor(), "approval.request", "approval:"+r.ID, map[string]any{
			"operation": action, "target": target, "reason": r.Reason, "admins_required": r.Required, "identity": r.RequestedBy,
			"dual_control_off": r.Required == 1})
	})
	if err != nil {
		return nil, err
	}
	return r, nil
}

// checkApprovalTarget refuses a request that could never execute.
func (s *Service) checkApprovalTarget(ctx context.Context, action ApprovalAction, target string, params map[string]string) error {
	if target == "" || len(target) > 200 {
		return Invalid("target", "the operation needs a target of 1 to 200 characters")
	}
	for k, v := range params {
		if len(k) > 64 || len(v) > 16<<10 {
			return Invalid("params", "parameter %q is too long", k)
		}
	}
	switch action {
	case ActionPSKExport:
		eid, err := ParseEID(target)
		if err != nil {
			return err
		}
		_, err = s.Store.GetModule(ctx, eid)
		return err
	case ActionTransportExport:
		if err := validBatchName(target); err != nil {
			return err
		}
		if _, err := ParsePublicKeyPEM([]byte(params["manufacturer_pem"])); err != nil {
			return Invalid("manufacturer_pem", "the manufacturer's RSA public key (PEM): %v", err)
		}
	case ActionAdminToken:
		if strings.TrimSpace(target) != target || len(target) > 100 {
			return Invalid("target", "an admin token's name: 1 to 100 characters, no leading or trailing spaces")
		}
		if d := params["ttl"]; d != "" {
			if ttl, err := time.ParseDuration(d); err != nil || ttl < time.Minute || ttl > MaxAdminTokenTTL {
				return Invalid("ttl", "a duration from 1m to %dh", int(MaxAdminTokenTTL/time.Hour))
			}
		}
	case ActionProviderApprove:
		return approvable(ctx, s.Store, target)
	case ActionFactorReset:
		_, err := s.Store.GetUserByEmail(ctx, strings.ToLower(target))
		return err
	}
	return nil
}

// ApproveRequest records admin p's approval of request id. The requester
// cannot approve their own request (ErrOwnRequest), nor anyone twice. With
// the last approval the request is approved; an operation that hands
// nothing over runs then, by p.
func (s *Service) ApproveRequest(ctx context.Context, p Principal, id string) (*ApprovalRequest, error) {
	if err := dualAdmin(p); err != nil {
		return nil, err
	}
	for attempt := 0; ; attempt++ {
		r, err := s.Store.GetApproval(ctx, id)
		if err != nil {
			return nil, err
		}
		now := s.now().UTC()
		switch st := r.StateAt(now); {
		case st != ApprovalPending:
			return nil, fmt.Errorf("%w: request %s is %s", ErrConflict, id, st)
		case r.RequestedBy == p.Identity():
			return nil, ErrOwnRequest
		case slices.Contains(r.Approvers, p.Identity()):
			return nil, fmt.Errorf("%w: %s approved request %s already", ErrConflict, p.Identity(), id)
		}
		from := r.Version
		r.Approvers = append(r.Approvers, p.Identity())
		if 1+len(r.Approvers) >= r.Required {
			r.State = ApprovalApproved
		}
		err = s.Store.Tx(ctx, func(tx Repo) error {
			if err := tx.UpdateApproval(ctx, r, from); err != nil {
				return err
			}
			return s.audit(ctx, tx, p.Actor(), "approval.approve", "approval:"+r.ID, map[string]any{
				"operation": r.Action, "target": r.Target, "requested_by": r.RequestedBy, "identity": p.Identity(),
				"approvals": len(r.Approvers), "admins_required": r.Required})
		})
		if errors.Is(err, ErrConflict) && attempt < 5 {
			continue // another approval came in first: read again
		}
		if err != nil {
			return nil, err
		}
		if r.State == ApprovalApproved && !r.Action.handsOver() {
			if _, err := s.execute(ctx, p, r); err != nil {
				return r, err
			}
		}
		return r, nil
	}
}

// CancelApproval withdraws a pending or approved request (its requester only).
func (s *Service) CancelApproval(ctx context.Context, p Principal, id string) error {
	if err := dualAdmin(p); err != nil {
		return err
	}
	r, err := s.Store.GetApproval(ctx, id)
	if err != nil {
		return err
	}
	if r.RequestedBy != p.Identity() {
		return fmt.Errorf("%w: only the requester cancels a request", ErrForbidden)
	}
	if st := r.StateAt(s.now()); st != ApprovalPending && st != ApprovalApproved {
		return fmt.Errorf("%w: request %s is %s", ErrConflict, id, st)
	}
	from := r.Version
	now := AuditTime(s.now().UTC())
	r.State, r.DoneAt = ApprovalCancelled, &now
	return s.Store.Tx(ctx, func(tx Repo) error {
		if err := tx.UpdateApproval(ctx, r, from); err != nil {
			return err
		}
		return s.audit(ctx, tx, p.Actor(), "approval.cancel", "approval:"+r.ID, map[string]any{"operation": r.Action, "target": r.Target})
	})
}

// ExecuteApproval runs an approved request, once, for its requester, and
// returns what it releases.
func (s *Service) ExecuteApproval(ctx context.Context, p Principal, id string) (*ApprovalResult, error) {
	if err := dualAdmin(p); err != nil {
		return nil, err
	}
	r, err := s.Store.GetApproval(ctx, id)
	if err != nil {
		return nil, err
	}
	if r.RequestedBy != p.Identity() {
		return nil, fmt.Errorf("%w: only the requester (%s) executes request %s", ErrForbidden, r.RequestedBy, id)
	}
	if st := r.StateAt(s.now()); st != ApprovalApproved {
		return nil, fmt.Errorf("%w: request %s is %s, not approved", ErrConflict, id, st)
	}
	return s.execute(ctx, p, r)
}

// execute marks r executed (conditionally: of two callers one wins), then
// runs it; a failure is recorded on the request.
func (s *Service) execute(ctx context.Context, p Principal, r *ApprovalRequest) (*ApprovalResult, error) {
	from := r.Version
	now := AuditTime(s.now().UTC())
	r.State, r.DoneAt = ApprovalExecuted, &now
	if err := s.Store.UpdateApproval(ctx, r, from); err != nil {
		return nil, fmt.Errorf("request %s: %w", r.ID, err)
	}
	res, runErr := s.runApproved(context.WithValue(ctx, approvedKey{}, r), p, r)
	detail := map[string]any{"operation": r.Action, "target": r.Target, "requested_by": r.RequestedBy, "approvers": r.Approvers}
	if runErr != nil {
		from = r.Version
		r.State, r.Error = ApprovalFailed, runErr.Error()
		detail["error"] = r.Error
		err := s.Store.Tx(ctx, func(tx Repo) error {
			if err := tx.UpdateApproval(ctx, r, from); err != nil {
				return err
			}
			return s.audit(ctx, tx, p.Actor(), "approval.fail", "approval:"+r.ID, detail)
		})
		return nil, errors.Join(runErr, err)
	}
	err := s.Store.Tx(ctx, func(tx Repo) error {
		return s.audit(ctx, tx, p.Actor(), "approval.execute", "approval:"+r.ID, detail)
	})
	if err != nil {
		return nil, err
	}
	res.Request = r
	return res, nil
}

// runApproved does what r asks.
func (s *Service) runApproved(ctx context.Context, p Principal, r *ApprovalRequest) (*ApprovalResult, error) {
	switch r.Action {
	case ActionPSKExport:
		eid, err := ParseEID(r.Target)
		if err != nil {
			return nil, err
		}
		psk, err := s.ExportHandsetPSK(ctx, p, eid)
		return &ApprovalResult{PSK: psk}, err
	case ActionTransportExport:
		pub, err := ParsePublicKeyPEM([]byte(r.Params["manufacturer_pem"]))
		if err != nil {
			return nil, err
		}
		b, export, err := s.CreateBatch(ctx, p, r.Target, AID(r.Params["aid_prefix"]), pub)
		return &ApprovalResult{Batch: b, Transport: export}, err
	case ActionAdminToken:
		var ttl time.Duration
		if d := r.Params["ttl"]; d != "" {
			var err error
			if ttl, err = time.ParseDuration(d); err != nil {
				return nil, Invalid("ttl", "a Go duration such as 720h")
			}
		}
		token, _, err := s.CreateAdminToken(ctx, p, r.Target, ttl)
		return &ApprovalResult{Token: token}, err
	case ActionProviderApprove:
		return &ApprovalResult{}, s.SetProviderStatus(ctx, p, r.Target, ProviderApproved)
	case ActionFactorReset:
		return &ApprovalResult{}, s.resetSecondFactors(ctx, p, r.Target)
	}
	return nil, Invalid("action", "unknown operation %q", r.Action)
}

// ErrApprovalRequired: the operation is under dual control and was called
// outside an approved request.
var ErrApprovalRequired = fmt.Errorf("%w: the operation is under dual control: request it, have another admin approve it, then execute the request", ErrForbidden)

// approvedKey marks the context of an approved request's execution.
type approvedKey struct{}

// underDualControl is the guard of each operation under dual control: it
// passes when dual control is off or ctx is the execution of an approved
// request for action on target.
func (s *Service) underDualControl(ctx context.Context, action ApprovalAction, target string) error {
	if s.DualControl.Off() {
		return nil
	}
	if r, ok := ctx.Value(approvedKey{}).(*ApprovalRequest); ok && r.Action == action && r.Target == target && r.State == ApprovalExecuted {
		return nil
	}
	if action == ActionAdminToken && ctx.Value(bootstrapKey{}) == true {
		return nil
	}
	return fmt.Errorf("%s %s: %w", action, target, ErrApprovalRequired)
}

// ListApprovals returns the newest requests, up to limit (admins only).
func (s *Service) ListApprovals(ctx context.Context, p Principal, limit int) ([]ApprovalRequest, error) {
	if !p.Admin {
		return nil, ErrForbidden
	}
	return s.Store.ListApprovals(ctx, limit)
}

// GetApproval returns one request (admins only).
func (s *Service) GetApproval(ctx context.Context, p Principal, id string) (*ApprovalRequest, error) {
	if !p.Admin {
		return nil, ErrForbidden
	}
	return s.Store.GetApproval(ctx, id)
}

// resetSecondFactors removes the user's passkeys and TOTP and ends their
// sessions (an approved ActionFactorReset only). The password stays: the
// user signs in with it and enrols anew.
func (s *Service) resetSecondFactors(ctx context.Context, p Principal, email string) error {
	if err := s.underDualControl(ctx, ActionFactorReset, email); err != nil {
		return err
	}
	u, err := s.Store.GetUserByEmail(ctx, strings.ToLower(email))
	if err != nil {
		return err
	}
	return s.Store.Tx(ctx, func(tx Repo) error {
		keys, err := tx.ListPasskeys(ctx, u.ID)
		if err != nil {
			return err
		}
		for _, k := range keys {
			if err := tx.DeletePasskey(ctx, u.ID, k.ID); err != nil {
				return err
			}
		}
		if err := tx.SetUserTOTP(ctx, u.ID, nil, u.TOTPLastStep); err != nil {
			return err
		}
		if err := tx.DeleteUserSessions(ctx, u.ID); err != nil {
			return err
		}
		return s.audit(ctx, tx, p.Actor(), "user.factor-reset", "user:"+u.ID,
			map[string]any{"email": u.Email, "passkeys_removed": len(keys), "totp_removed": u.TOTPSealed != nil})
	})
}
