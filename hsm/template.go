package hsm

/*
#include <stdlib.h>
#include <string.h>

// CK_ATTRIBUTE (PKCS#11 v2.40 base §3.3) on the Unix ABI: CK_ULONG type,
// CK_VOID_PTR pValue, CK_ULONG ulValueLen.
typedef struct {
	unsigned long type;
	void *pValue;
	unsigned long ulValueLen;
} keyport_attribute;

static keyport_attribute *keyport_attrs(size_t n) {
	return calloc(n, sizeof(keyport_attribute));
}

static void keyport_set_attr(keyport_attribute *a, size_t i, unsigned long type, void *value, unsigned long len) {
	a[i].type = type;
	a[i].pValue = value;
	a[i].ulValueLen = len;
}
*/
import "C"

import (
	"encoding/binary"
	"unsafe"

	"github.com/miekg/pkcs11"
)

// attributeArray returns the value of an attribute whose value is itself an
// attribute list (CKF_ARRAY_ATTRIBUTE: CKA_UNWRAP_TEMPLATE and
// CKA_WRAP_TEMPLATE, PKCS#11 v2.40 base §4.10): the bytes of a CK_ATTRIBUTE
// array whose values live in C memory. miekg/pkcs11 copies the outer bytes
// but knows nothing of the pointers inside, so the caller keeps the C
// memory alive with free deferred until the PKCS#11 call has returned (the
// token copies the template into the object).
func attributeArray(attrs []*pkcs11.Attribute) (value []byte, free func()) {
	arr := C.keyport_attrs(C.size_t(len(attrs)))
	ptrs := []unsafe.Pointer{unsafe.Pointer(arr)}
	for i, a := range attrs {
		var p unsafe.Pointer
		if len(a.Value) > 0 {
			p = C.CBytes(a.Value)
			ptrs = append(ptrs, p)
		}
		C.keyport_set_attr(arr, C.size_t(i), C.ulong(a.Type), p, C.ulong(len(a.Value)))
	}
	value = C.GoBytes(unsafe.Pointer(arr), C.int(len(attrs)*int(unsafe.Sizeof(C.keyport_attribute{}))))
	return value, func() {
		for _, p := range ptrs {
			C.free(p)
		}
	}
}

// parseMechanismList reads a CKA_ALLOWED_MECHANISMS value, mechanismList's
// form.
func parseMechanismList(v []byte) []uint {
	size := int(unsafe.Sizeof(C.ulong(0)))
	var out []uint
	for i := 0; i+size <= len(v); i += size {
		if size == 8 {
			out = append(out, uint(binary.NativeEndian.Uint64(v[i:])))
		} else {
			out = append(out, uint(binary.NativeEndian.Uint32(v[i:])))
		}
	}
	return out
}

// mechanismList is the value of CKA_ALLOWED_MECHANISMS: an array of
// CK_MECHANISM_TYPE (CK_ULONG) in the host's byte order.
func mechanismList(mechs ...uint) []byte {
	size := int(unsafe.Sizeof(C.ulong(0)))
	out := make([]byte, 0, len(mechs)*size)
	for _, m := range mechs {
		if size == 8 {
			out = binary.NativeEndian.AppendUint64(out, uint64(m))
		} else {
			out = binary.NativeEndian.AppendUint32(out, uint32(m))
		}
	}
	return out
}
