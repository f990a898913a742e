package keyport

import (
	"errors"
	"fmt"
)

// Sentinel errors. Adapters wrap them with %w; web/ maps them to HTTP status
// codes and problem+json types in one place.
var (
	// ErrNotFound: the object does not exist, or is not visible to the caller.
	// Both cases look the same so that IDs of other providers leak nothing.
	ErrNotFound = errors.New("not found")
	// ErrConflict: the object is in a state that forbids the change (a domain
	// already claimed, a name already taken, an idempotency key reused).
	ErrConflict = errors.New("conflict")
	// ErrInvalid: the caller's input is malformed. Use *InvalidError for details.
	ErrInvalid = errors.New("invalid input")
	// ErrForbidden: the caller is known but may not do this.
	ErrForbidden = errors.New("forbidden")
	// ErrUnauthenticated: no valid credentials.
	ErrUnauthenticated = errors.New("unauthenticated")
	// ErrUnavailable: a dependency (the HSM, the database) cannot serve now;
	// nothing was changed and the caller may retry.
	ErrUnavailable = errors.New("temporarily unavailable")
)

// InvalidError says which input field is wrong and why, in words meant for
// the person who typed it. It matches ErrInvalid with errors.Is.
type InvalidError struct {
	Field  string
	Reason string
}

func (e *InvalidError) Error() string {
	if e.Field == "" {
		return e.Reason
	}
	return e.Field + ": " + e.Reason
}

// Is makes errors.Is(err, ErrInvalid) true.
func (e *InvalidError) Is(target error) bool { return target == ErrInvalid }

func invalid(field, reason string) error { return &InvalidError{Field: field, Reason: reason} }

// Invalid returns an *InvalidError for adapters that validate input themselves.
func Invalid(field, format string, args ...any) error {
	return &InvalidError{Field: field, Reason: fmt.Sprintf(format, args...)}
}

// LineError names the line of an import file that failed.
type LineError struct {
	Line int
	Err  error
}

func (e *LineError) Error() string { return fmt.Sprintf("line %d: %v", e.Line, e.Err) }
func (e *LineError) Unwrap() error { return e.Err }

// ErrUnreachable: a push trigger could not reach the module.
var ErrUnreachable = errors.New("module not reachable")
