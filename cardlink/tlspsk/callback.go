package tlspsk

// #include "shim.h"
import "C"

import (
	"errors"
	"fmt"
	"runtime/cgo"
	"unsafe"
)

// keyportServerPSK is OpenSSL's PSK server callback (RFC 4279 §2), reached
// through kp_psk_server_cb in shim.c. It runs inside SSL_do_handshake on the
// handshaking goroutine, which holds Conn.sslMu. Returning 0 refuses the
// identity; OpenSSL then sends unknown_psk_identity.
//
//export keyportServerPSK
func keyportServerPSK(h C.uintptr_t, identity *C.char, psk *C.uchar, maxLen C.uint) (n C.uint) {
	ps := cgo.Handle(h).Value().(*pskState)
	ps.identity = C.GoString(identity)
	defer func() {
		// A panic must not unwind through OpenSSL's frames.
		if r := recover(); r != nil {
			ps.err = fmt.Errorf("PSK lookup panicked: %v", r)
			n = 0
		}
	}()
	key, err := ps.lookup(ps.identity)
	switch {
	case err != nil:
		ps.err = err
		return 0
	case len(key) == 0:
		ps.err = errors.New("PSK lookup returned no key")
		return 0
	case len(key) > int(maxLen):
		ps.err = fmt.Errorf("PSK is %d bytes, OpenSSL takes at most %d", len(key), int(maxLen))
		return 0
	}
	copy(unsafe.Slice((*byte)(unsafe.Pointer(psk)), int(maxLen)), key)
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
