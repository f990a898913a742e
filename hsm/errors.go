package hsm

import (
	"errors"
	"fmt"

	"github.com/miekg/pkcs11"

	"github.com/keyport/keyport"
)

var (
	// ErrPINIncorrect means the token refused the user PIN. It is a
	// configuration error, not an outage: keyport never tries the same PIN
	// again, since every failed C_Login counts towards locking the token.
	ErrPINIncorrect = errors.New("the token refused the user PIN (not retried: failed logins lock the token)")
	// ErrPINLocked means the token's user PIN is locked; the security
	// officer must unlock it.
	ErrPINLocked = errors.New("the token's user PIN is locked")
	// ErrTokenNotFound means no token matches the URI. It also matches
	// keyport.ErrUnavailable, since a removed token looks the same.
	ErrTokenNotFound = errors.New("no token matches the URI")
	// ErrAmbiguousObject means more than one object carries a label that
	// must be unique; keyport never picks one of them silently.
	ErrAmbiguousObject = errors.New("more than one object carries the label")
	// ErrClosed is returned by operations on a closed *HSM.
	ErrClosed = errors.New("hsm closed")
)

// ckr returns the PKCS#11 return value carried by err, if any.
func ckr(err error) (uint, bool) {
	var e pkcs11.Error
	if errors.As(err, &e) {
		return uint(e), true
	}
	return 0, false
}

// sessionFatal lists return values after which the session must not be used
// again (PKCS#11 v2.40 base §5.1 and §5.6): the handle is gone, the token is
// gone, or the login state was lost. The operation is retried once on a new
// session.
var sessionFatal = map[uint]bool{
	pkcs11.CKR_SESSION_HANDLE_INVALID:   true,
	pkcs11.CKR_SESSION_CLOSED:           true,
	pkcs11.CKR_DEVICE_ERROR:             true,
	pkcs11.CKR_DEVICE_REMOVED:           true,
	pkcs11.CKR_TOKEN_NOT_PRESENT:        true,
	pkcs11.CKR_TOKEN_NOT_RECOGNIZED:     true,
	pkcs11.CKR_USER_NOT_LOGGED_IN:       true,
	pkcs11.CKR_CRYPTOKI_NOT_INITIALIZED: true,
	pkcs11.CKR_SLOT_ID_INVALID:          true,
}

// slotGone lists C_OpenSession results after which the token may sit in
// another slot now (PKCS#11 v2.40 base §5.3: slot IDs are not stable across
// C_Initialize).
var slotGone = map[uint]bool{
	pkcs11.CKR_SLOT_ID_INVALID:      true,
	pkcs11.CKR_TOKEN_NOT_PRESENT:    true,
	pkcs11.CKR_DEVICE_REMOVED:       true,
	pkcs11.CKR_TOKEN_NOT_RECOGNIZED: true,
}

// staleHandle lists return values meaning a cached object handle no longer
// names an object in this session: look the object up again.
var staleHandle = map[uint]bool{
	pkcs11.CKR_OBJECT_HANDLE_INVALID:         true,
	pkcs11.CKR_KEY_HANDLE_INVALID:            true,
	pkcs11.CKR_WRAPPING_KEY_HANDLE_INVALID:   true,
	pkcs11.CKR_UNWRAPPING_KEY_HANDLE_INVALID: true,
	pkcs11.CKR_KEY_CHANGED:                   true,
}

// outage lists return values, besides sessionFatal, that say the token
// cannot serve now rather than that the request was wrong.
var outage = map[uint]bool{
	pkcs11.CKR_DEVICE_MEMORY:   true,
	pkcs11.CKR_HOST_MEMORY:     true,
	pkcs11.CKR_GENERAL_ERROR:   true,
	pkcs11.CKR_SESSION_COUNT:   true,
	pkcs11.CKR_FUNCTION_FAILED: true,
}

func isSessionFatal(err error) bool {
	rv, ok := ckr(err)
	return ok && sessionFatal[rv]
}

func isStaleHandle(err error) bool {
	rv, ok := ckr(err)
	return ok && staleHandle[rv]
}

// unavailable reports whether err means the token cannot serve now.
func unavailable(err error) bool {
	if errors.Is(err, keyport.ErrUnavailable) {
		return true
	}
	rv, ok := ckr(err)
	return ok && (sessionFatal[rv] || outage[rv])
}

// opError prefixes err with the operation and, when the token cannot serve,
// makes it match keyport.ErrUnavailable.
func opError(op string, err error) error {
	if unavailable(err) && !errors.Is(err, keyport.ErrUnavailable) {
		return fmt.Errorf("hsm: %s: %w: %w", op, keyport.ErrUnavailable, err)
	}
	return fmt.Errorf("hsm: %s: %w", op, err)
}
