package hsm

import (
	"context"

	"github.com/miekg/pkcs11"
)

// P11 exposes the PKCS#11 surface to the external tests, so that they can
// interpose on it (count logins, inject token failures).
type P11 = p11

// OpenWithHook is Open with wrap interposed on every PKCS#11 call.
func OpenWithHook(ctx context.Context, cfg Config, wrap func(P11) P11) (*HSM, error) {
	return open(ctx, cfg, wrap)
}

// CloseAllSessionsForTest closes every session of the process on the token,
// as a token reset or another thread calling C_CloseAllSessions would.
func (h *HSM) CloseAllSessionsForTest() error { return h.p.CloseAllSessions(h.slot) }

// RawForTest runs fn with the PKCS#11 context and a pooled session.
func (h *HSM) RawForTest(ctx context.Context, fn func(p P11, sh pkcs11.SessionHandle) error) error {
	return h.do(ctx, "test", func(s *session) error { return fn(h.p, s.h) })
}

func AttributeArrayForTest(a []*pkcs11.Attribute) ([]byte, func()) { return attributeArray(a) }
func MechanismListForTest(m ...uint) []byte                        { return mechanismList(m...) }

// DerivationMechanismForTest is CKM_AES_ECB_ENCRYPT_DATA over data, with its
// parameter in C memory until free.
func DerivationMechanismForTest(data []byte) ([]*pkcs11.Mechanism, func()) {
	return derivationMechanism(data)
}
