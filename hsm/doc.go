// Package hsm is keyport's key custody over a PKCS#11 token (github.com/miekg/pkcs11):
// it implements keyport.Custody.
//
// The token is named by an RFC 7512 URI (uri.go). Open loads the module once
// per process, finds the token by label or serial, logs in once and keeps a
// pool of sessions, one per goroutine at a time (pool.go). Sessions the token
// drops are replaced and the operation is retried once; errors match
// keyport.ErrUnavailable when the token cannot serve.
//
// Keys (DESIGN.md, "Key hierarchy"): long-lived keys are token objects,
// private, sensitive and never extractable, each with a unique CKA_LABEL and a
// CKA_ID (keys.go). A domain's first keys exist only as session objects for
// the length of one call: derived from the batch master (derive.go) or
// unwrapped from the manufacturer's KWP blob under the batch transport key,
// then wrapped to the provider with RSA-OAEP ‖ AES-KWP (wrap.go). Package
// keywrap holds the pure-Go other side of those wraps.
package hsm

import "github.com/keyport/keyport"

var _ keyport.Custody = (*HSM)(nil)
