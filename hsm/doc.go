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
// CKA_ID (keys.go). Card keys are generated in the HSM (perso.go) and kept
// in the database as KWP blobs under key-encryption keys whose unwrap
// template the token enforces; they exist in the HSM only as sensitive
// session objects for the length of one call: unwrapped from their blob
// (under the batch KEK, the ISD KEK, or the manufacturer's under the batch
// transport key), then CMACed, encrypted under a DEK, or wrapped to the
// provider with RSA-OAEP ‖ AES-KWP (wrap.go). Module TLS-PSKs are sealed
// (psk.go, seal.go). Tokens made with derive-capable masters are migrated by
// legacy.go. Package keywrap holds the pure-Go other side of those wraps.
package hsm

import "github.com/keyport/keyport"

var _ keyport.Custody = (*HSM)(nil)
