package gp

import (
	"errors"
	"fmt"
)

// Sentinel errors; every decoder error wraps one of them so callers can test
// with errors.Is.
var (
	// ErrTruncated: the input ends before a length it announced.
	ErrTruncated = errors.New("gp: truncated input")
	// ErrMalformed: the input is not valid for its format.
	ErrMalformed = errors.New("gp: malformed input")
	// ErrCryptogram: a card or host cryptogram did not verify (AmdD 6.2.2.2/6.2.2.3).
	ErrCryptogram = errors.New("gp: cryptogram mismatch")
	// ErrMAC: a C-MAC or R-MAC did not verify (AmdD 6.2.4/6.2.5).
	ErrMAC = errors.New("gp: MAC mismatch")
	// ErrState: a secure channel method was called out of order.
	ErrState = errors.New("gp: secure channel state")
)

func malformed(format string, args ...any) error {
	return fmt.Errorf("gp: "+format+": %w", append(args, ErrMalformed)...)
}

func truncated(format string, args ...any) error {
	return fmt.Errorf("gp: "+format+": %w", append(args, ErrTruncated)...)
}
