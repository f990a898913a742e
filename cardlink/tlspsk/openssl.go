package tlspsk

// #cgo pkg-config: libssl libcrypto
// #include <stdlib.h>
// #include "shim.h"
import "C"

import (
	"errors"
	"fmt"
	"runtime/cgo"
	"sync"
	"sync/atomic"
	"unsafe"
)

// liveSessions counts SSL objects (each with its two BIOs and its
// cgo.Handle) not yet freed. Tests use it to prove Close and the runtime
// cleanup free everything.
var liveSessions atomic.Int64

// session is the C side of one Conn. It holds no pointer back to its Conn,
// so a runtime cleanup attached to the Conn can free it.
type session struct {
	ssl    *C.SSL
	rbio   *C.BIO // network -> OpenSSL
	wbio   *C.BIO // OpenSSL -> network
	handle cgo.Handle
	st     C.kp_status // result of the last call; no Go pointers in it
}

// pskState is what the PSK callbacks see of a connection, through a
// cgo.Handle stored in the SSL's app data. For the server: the lookup, and
// the identity and error it produced. For the client: identity and key.
type pskState struct {
	lookup   func(identity string) ([]byte, error)
	identity string
	err      error
	psk      []byte
	// cIdentity is the client's identity in C memory for OpenSSL's TLS
	// 1.3 callback, which keeps the pointer; freed with the session.
	cIdentity *C.char
}

// maxCachedCtx bounds the SSL_CTX cache; configs beyond it get an SSL_CTX
// per connection, freed with it.
const maxCachedCtx = 64

var ctxCache struct {
	sync.Mutex
	m map[ctxKey]*C.SSL_CTX
}

// newSSLCtx builds an SSL_CTX for k (options and suites in shim.c).
func newSSLCtx(k ctxKey) (*C.SSL_CTX, error) {
	ciphers := C.CString(k.ciphers)
	defer C.free(unsafe.Pointer(ciphers))
	hint := C.CString(k.hint)
	defer C.free(unsafe.Pointer(hint))
	suites := C.CString(k.ciphersuites)
	defer C.free(unsafe.Pointer(suites))
	server := C.int(0)
	if k.server {
		server = 1
	}
	st := new(C.kp_status)
	ctx := C.kp_ctx_new(server, ciphers, suites, C.int(k.minVersion), C.int(k.maxVersion), hint, st)
	if ctx == nil {
		return nil, fmt.Errorf("tlspsk: configure OpenSSL (ciphers %q): %s", k.ciphers, C.GoString(&st.text[0]))
	}
	return ctx, nil
}

// sslCtx returns the shared SSL_CTX for k, building it on first use.
// shared is false when the cache is full: the caller owns that SSL_CTX.
func sslCtx(k ctxKey) (ctx *C.SSL_CTX, shared bool, err error) {
	ctxCache.Lock()
	defer ctxCache.Unlock()
	if ctx := ctxCache.m[k]; ctx != nil {
		return ctx, true, nil
	}
	ctx, err = newSSLCtx(k)
	if err != nil {
		return nil, false, err
	}
	if len(ctxCache.m) >= maxCachedCtx {
		return ctx, false, nil
	}
	if ctxCache.m == nil {
		ctxCache.m = make(map[ctxKey]*C.SSL_CTX)
	}
	ctxCache.m[k] = ctx
	return ctx, true, nil
}

// checkCtx builds (and caches) the SSL_CTX for k, to report a bad cipher
// list before the first connection.
func checkCtx(k ctxKey) error {
	ctx, shared, err := sslCtx(k)
	if err == nil && !shared {
		C.SSL_CTX_free(ctx)
	}
	return err
}

func newSession(k ctxKey, ps *pskState) (*session, error) {
	ctx, shared, err := sslCtx(k)
	if err != nil {
		return nil, err
	}
	if !shared {
		// SSL_new takes its own reference to the SSL_CTX.
		defer C.SSL_CTX_free(ctx)
	}
	s := &session{handle: cgo.NewHandle(ps)}
	server := C.int(0)
	if k.server {
		server = 1
	}
	s.ssl = C.kp_ssl_new(ctx, server, C.uintptr_t(s.handle), &s.rbio, &s.wbio, &s.st)
	if s.ssl == nil {
		s.handle.Delete()
		return nil, fmt.Errorf("tlspsk: create SSL: %s", C.GoString(&s.st.text[0]))
	}
	liveSessions.Add(1)
	return s, nil
}

// free releases the SSL object (which owns both BIOs) and the handle.
func (s *session) free() {
	C.SSL_free(s.ssl) // OpenSSL cleanses its own copies of the key
	if ps, ok := s.handle.Value().(*pskState); ok {
		clear(ps.psk) // the client's copy of its PSK
		if ps.cIdentity != nil {
			C.free(unsafe.Pointer(ps.cIdentity))
			ps.cIdentity = nil
		}
	}
	s.ssl, s.rbio, s.wbio = nil, nil, nil
	s.handle.Delete()
	liveSessions.Add(-1)
}

// status is a Go copy of kp_status.
type status struct {
	ret      int
	sslError int
	reasons  []int
	text     string
}

func (s *session) status() status {
	st := status{ret: int(s.st.ret), sslError: int(s.st.ssl_error)}
	if s.st.nreasons > 0 {
		st.reasons = make([]int, int(s.st.nreasons))
		for i := range st.reasons {
			st.reasons[i] = int(s.st.reasons[i])
		}
		st.text = C.GoString(&s.st.text[0])
	}
	return st
}

func (s *session) handshake() status {
	C.kp_handshake(s.ssl, &s.st)
	return s.status()
}

func (s *session) read(p []byte) status {
	C.kp_read(s.ssl, unsafe.Pointer(unsafe.SliceData(p)), C.int(len(p)), &s.st)
	return s.status()
}

func (s *session) write(p []byte) status {
	C.kp_write(s.ssl, unsafe.Pointer(unsafe.SliceData(p)), C.int(len(p)), &s.st)
	return s.status()
}

func (s *session) shutdown() status {
	C.kp_shutdown(s.ssl, &s.st)
	return s.status()
}

// feed hands bytes read from the network to OpenSSL. A memory BIO grows
// as needed, so it takes all of them.
func (s *session) feed(p []byte) error {
	if n := C.kp_feed(s.rbio, unsafe.Pointer(unsafe.SliceData(p)), C.int(len(p))); int(n) != len(p) {
		return errors.New("tlspsk: memory BIO refused input")
	}
	return nil
}

// drain appends the bytes OpenSSL wants sent to out.
func (s *session) drain(out []byte) []byte {
	n := int(C.kp_out_pending(s.wbio))
	if n <= 0 {
		return out
	}
	start := len(out)
	out = append(out, make([]byte, n)...)
	got := int(C.kp_drain(s.wbio, unsafe.Pointer(&out[start]), C.int(n)))
	if got < 0 {
		got = 0
	}
	return out[:start+got]
}

// outPending reports whether OpenSSL has bytes queued for the peer.
func (s *session) outPending() bool { return C.kp_out_pending(s.wbio) > 0 }

// buffered reports whether OpenSSL holds received bytes not yet returned:
// part of a record, at an EOF, means the stream was cut.
func (s *session) buffered() bool {
	return C.kp_in_buffered(s.ssl, s.rbio) != 0
}

func (s *session) options() uint64 { return uint64(C.kp_options(s.ssl)) }

func (s *session) cipher() string { return C.GoString(C.kp_cipher_name(s.ssl)) }

func (s *session) version() string { return C.GoString(C.SSL_get_version(s.ssl)) }

// OpenSSL 3.0 reason codes (openssl/sslerr.h) that this package names.
const (
	reasonPSKIdentityNotFound     = 223  // SSL_R_PSK_IDENTITY_NOT_FOUND (server)
	reasonAlertUnknownPSKIdentity = 1115 // SSL_R_TLSV1_ALERT_UNKNOWN_PSK_IDENTITY (client)
	reasonBadRecordMAC            = 281  // SSL_R_DECRYPTION_FAILED_OR_BAD_RECORD_MAC
	reasonAlertBadRecordMAC       = 1020 // SSL_R_SSLV3_ALERT_BAD_RECORD_MAC
	reasonAlertDecryptError       = 1051 // SSL_R_TLSV1_ALERT_DECRYPT_ERROR
	reasonDigestCheckFailed       = 149  // SSL_R_DIGEST_CHECK_FAILED (Finished mismatch)
	reasonBinderDoesNotVerify     = 253  // SSL_R_BINDER_DOES_NOT_VERIFY (TLS 1.3 server)
	// SSL_R_SSLV3_ALERT_ILLEGAL_PARAMETER: what a TLS 1.3 client sees when
	// the server finds its PSK binder wrong (RFC 8446 4.2.11).
	reasonAlertIllegalParameter = 1047
)

// SSL_get_error values (openssl/ssl.h). With memory BIOs there is never
// SSL_ERROR_WANT_WRITE: the output BIO grows.
const (
	sslErrorWantRead   = C.SSL_ERROR_WANT_READ
	sslErrorZeroReturn = C.SSL_ERROR_ZERO_RETURN
)

func (st status) has(reasons ...int) bool {
	for _, r := range st.reasons {
		for _, want := range reasons {
			if r == want {
				return true
			}
		}
	}
	return false
}

// kind classifies a handshake failure from OpenSSL's reason codes.
func (st status) kind() error {
	switch {
	case st.has(reasonPSKIdentityNotFound, reasonAlertUnknownPSKIdentity):
		return ErrUnknownIdentity
	case st.has(reasonBadRecordMAC, reasonAlertBadRecordMAC, reasonAlertDecryptError, reasonDigestCheckFailed, reasonBinderDoesNotVerify):
		return ErrPSKMismatch
	}
	return nil
}
