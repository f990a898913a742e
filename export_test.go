package keyport

import "context"

// SetCheckPasswordHook makes Login call f before each password hash of a
// known account is computed (nil: none); tests count evaluations with it.
func SetCheckPasswordHook(f func()) { checkPasswordHook = f }

// LockedBy and ReleaseRulesRemoved expose the two readers of a domain's
// issuer-job history to the external tests.
func LockedBy(ctx context.Context, tx Repo, d *Domain) (string, error) { return lockedBy(ctx, tx, d) }
func ReleaseRulesRemoved(ctx context.Context, tx Repo, d *Domain) (string, error) {
	return releaseRulesRemoved(ctx, tx, d)
}

// KeyChangeUnproven exposes what the pending key sets are derived from.
func KeyChangeUnproven(p *SecondKeyPayload, state JobState, r *ScriptResult) bool {
	return keyChangeUnproven(p, state, r)
}
