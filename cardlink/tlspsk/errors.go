package tlspsk

import (
	"strconv"
	"strings"
)

// sentinel is an error kind; its text reads well both alone and inside an
// *Error.
type sentinel string

func (s sentinel) Error() string { return "tlspsk: " + string(s) }

var (
	// ErrUnknownIdentity: the server refused the client's PSK identity.
	// On the server, the PSK callback returned an error or no key (the
	// client is answered as for a wrong PSK, see ServerConfig.PSK); on
	// the client, a server sent the unknown_psk_identity alert (RFC 4279
	// §2), which this package's servers never do.
	ErrUnknownIdentity error = sentinel("unknown PSK identity")

	// ErrPSKMismatch: the identity was accepted but the Finished message
	// did not verify, which with PSK suites means the two sides hold
	// different keys (RFC 5246 §7.4.9: bad_record_mac or decrypt_error).
	ErrPSKMismatch error = sentinel("PSK mismatch")
)

// Error is a failed TLS operation: what was being done, with which PSK
// identity, the kind (ErrUnknownIdentity, ErrPSKMismatch or nil), the cause
// (the PSK callback's error, a network error, a context error) and the text
// of OpenSSL's error queue. It never holds key material. errors.Is matches
// both Kind and Err.
type Error struct {
	Op       string // "handshake", "read", "write", "close"
	Identity string // the PSK identity, when known
	Kind     error
	Err      error
	OpenSSL  string
}

// Error formats the failure as
// `tlspsk: <op> with identity "<id>": <kind>: <cause> (openssl: <queue>)`.
func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("tlspsk: ")
	b.WriteString(e.Op)
	if e.Identity != "" {
		b.WriteString(" with identity ")
		b.WriteString(strconv.Quote(e.Identity))
	}
	if e.Kind != nil {
		b.WriteString(": ")
		if s, ok := e.Kind.(sentinel); ok {
			b.WriteString(string(s))
		} else {
			b.WriteString(e.Kind.Error())
		}
	}
	if e.Err != nil {
		b.WriteString(": ")
		b.WriteString(e.Err.Error())
	}
	if e.OpenSSL != "" {
		b.WriteString(" (openssl: ")
		b.WriteString(e.OpenSSL)
		b.WriteString(")")
	}
	if e.Kind == nil && e.Err == nil && e.OpenSSL == "" {
		b.WriteString(": failed")
	}
	return b.String()
}

// Unwrap returns Kind and Err, for errors.Is and errors.As.
func (e *Error) Unwrap() []error {
	var errs []error
	if e.Kind != nil {
		errs = append(errs, e.Kind)
	}
	if e.Err != nil {
		errs = append(errs, e.Err)
	}
	return errs
}
