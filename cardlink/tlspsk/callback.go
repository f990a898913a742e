package tlspsk

// #include "shim.h"
import "C"

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"runtime/cgo"
	"sync"
	"unsafe"
)

// dummySecret keys the dummy PSKs of refused identities. It is random per
// process and never leaves it.
var dummySecret = sync.OnceValue(func() []byte {
	b := make([]byte, 32)
	rand.Read(b) // never fails (crypto/rand)
	return b
})

// dummyPSKLen is the length of a dummy PSK: that of the AES-128 module
// keys (GP Amd B, key type '85').
const dummyPSKLen = 16

// dummyPSK returns the key a refused identity is handshaken with:
// HMAC-SHA256(dummySecret, identity), cut to dummyPSKLen. No client holds
// it, so the handshake fails on the client's Finished exactly as with a
// wrong PSK; the same identity always gets the same key, so retries look
// alike too.
func dummyPSK(identity string) []byte {
	m := hmac.New(sha256.New, dummySecret())
	m.Write([]byte(identity))
	return m.Sum(nil)[:dummyPSKLen]
}

// keyportServerPSK is OpenSSL's PSK server callback (RFC 4279 §2), reached
// through kp_psk_server_cb in shim.c. It runs inside SSL_do_handshake on the
// handshaking goroutine, which holds Conn.sslMu. A refused identity (the
// lookup failed, panicked or gave no usable key) is recorded in ps.err and
// answered with dummyPSK, never with 0: OpenSSL would then send
// unknown_psk_identity, which tells a registered identity from an unknown
// one. The handshake fails on the client's Finished (bad_record_mac) as it
// does for a wrong PSK, and Conn reports ErrUnknownIdentity from ps.err.
//
//export keyportServerPSK
func keyportServerPSK(h C.uintptr_t, identity *C.char, psk *C.uchar, maxLen C.uint) (n C.uint) {
	ps := cgo.Handle(h).Value().(*pskState)
	ps.identity = C.GoString(identity)
	out := unsafe.Slice((*byte)(unsafe.Pointer(psk)), int(maxLen))
	refuse := func(err error) C.uint {
		ps.err = err
		return C.uint(copy(out, dummyPSK(ps.identity)))
	}
	defer func() {
		// A panic must not unwind through OpenSSL's frames.
		if r := recover(); r != nil {
			n = refuse(fmt.Errorf("PSK lookup panicked: %v", r))
		}
	}()
	key, err := ps.lookup(ps.identity)
	// The key is OpenSSL's once copied: the Go copy is wiped, whatever
	// the outcome, so that it does not stay in the heap until collected.
	defer clear(key)
	switch {
	case err != nil:
		return refuse(err)
	case len(key) == 0:
		return refuse(errors.New("PSK lookup returned no key"))
	case len(key) > int(maxLen):
		return refuse(fmt.Errorf("PSK is %d bytes, OpenSSL takes at most %d", len(key), int(maxLen)))
	}
	copy(out, key)
	return C.uint(len(key))
}

// keyportClientPSK is OpenSSL's PSK client callback (RFC 4279 §2): it
// writes the NUL-terminated identity and the key. OpenSSL's identity
// buffer has maxIdentity+1 bytes; config validation keeps both in range.
//
//export keyportClientPSK
func keyportClientPSK(h C.uintptr_t, identity *C.char, maxIdentity C.uint, psk *C.uchar, maxPSK C.uint) C.uint {
	ps := cgo.Handle(h).Value().(*pskState)
	if len(ps.identity) > int(maxIdentity) || len(ps.psk) > int(maxPSK) {
		ps.err = errors.New("identity or PSK longer than OpenSSL accepts")
		return 0
	}
	id := unsafe.Slice((*byte)(unsafe.Pointer(identity)), int(maxIdentity)+1)
	id[copy(id, ps.identity)] = 0
	copy(unsafe.Slice((*byte)(unsafe.Pointer(psk)), int(maxPSK)), ps.psk)
	return C.uint(len(ps.psk))
}

// keyportClientIdentity returns the client's identity as a C string that
// stays valid until the session is freed (OpenSSL's TLS 1.3 PSK callback
// keeps the pointer), and its length.
//
//export keyportClientIdentity
func keyportClientIdentity(h C.uintptr_t, n *C.size_t) *C.char {
	ps := cgo.Handle(h).Value().(*pskState)
	if ps.cIdentity == nil {
		ps.cIdentity = C.CString(ps.identity)
	}
	*n = C.size_t(len(ps.identity))
	return ps.cIdentity
}
