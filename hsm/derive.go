package hsm

/*
#include <stdlib.h>

// CK_KEY_DERIVATION_STRING_DATA (PKCS#11 v2.40 Current Mechanisms,
// "key derivation by data encryption"): CK_BYTE_PTR then CK_ULONG. On the
// Unix ABI CK_ULONG is unsigned long.
typedef struct {
	unsigned char *pData;
	unsigned long ulLen;
} keyport_derivation_string_data;
*/
import "C"

import (
	"crypto/sha256"
	"fmt"
	"strings"
	"unsafe"

	"github.com/miekg/pkcs11"

	"github.com/keyport/keyport"
)

// DerivationPrefix starts every derivation input; a new format would get a
// new prefix.
const DerivationPrefix = "keyport/v1"

// DerivationData is the 16-byte input from which a master key derives one
// first key. The format is stable: changing it changes every derived key.
//
//	data = SHA-256( "keyport/v1" ‖ EID ‖ AID ‖ usage )[0:16]
//
// where EID is the 32 ASCII decimal digits, AID is the AID in ASCII
// upper-case hex (no spaces), usage is "enc", "mac" or "dek", and ‖ is plain
// concatenation of the ASCII bytes (no separators or lengths: EID has a fixed
// length and usage comes last, so the split is unambiguous). The key is then
//
//	key = AES-256-ECB(master, data)   (one block → AES-128 key)
//
// computed inside the HSM by C_DeriveKey with CKM_AES_ECB_ENCRYPT_DATA.
// Domain first keys use the batch master and the SSD's AID; ISD keys use the
// ISD master and the ISD's AID.
func DerivationData(eid keyport.EID, aid keyport.AID, usage keyport.KeyUsage) [16]byte {
	h := sha256.New()
	h.Write([]byte(DerivationPrefix))
	h.Write([]byte(eid))
	h.Write([]byte(strings.ToUpper(string(aid))))
	h.Write([]byte(usage))
	var d [16]byte
	copy(d[:], h.Sum(nil))
	return d
}

// derivationMechanism builds CKM_AES_ECB_ENCRYPT_DATA with its
// CK_KEY_DERIVATION_STRING_DATA parameter. The data is copied to C memory,
// since the parameter holds a pointer to it; call free after C_DeriveKey.
func derivationMechanism(data []byte) (m []*pkcs11.Mechanism, free func()) {
	p := C.CBytes(data)
	param := C.keyport_derivation_string_data{pData: (*C.uchar)(p), ulLen: C.ulong(len(data))}
	raw := C.GoBytes(unsafe.Pointer(&param), C.int(unsafe.Sizeof(param)))
	return []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_ECB_ENCRYPT_DATA, raw)},
		func() { C.free(p) }
}

// sessionAES returns the template of an AES session key of n bytes (0: the
// mechanism decides) that stays sensitive but can leave the HSM wrapped
// (CKA_EXTRACTABLE), and may do only the usages in on. A key whose KCV is
// needed must have CKA_ENCRYPT.
func sessionAES(n int, on ...uint) []*pkcs11.Attribute {
	t := []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, true),
	}
	if n > 0 {
		t = append(t, pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, n))
	}
	return append(t, usage(pkcs11.CKO_SECRET_KEY, on...)...)
}

// deriveKey derives the AES-128 session key for (eid, aid, usage) from the
// master key base (see DerivationData), able to do the usages in on. The
// caller destroys it.
func (h *HSM) deriveKey(s *session, base pkcs11.ObjectHandle, eid keyport.EID, aid keyport.AID, ku keyport.KeyUsage, on ...uint) (pkcs11.ObjectHandle, error) {
	data := DerivationData(eid, aid, ku)
	mech, free := derivationMechanism(data[:])
	defer free()
	k, err := h.p.DeriveKey(s.h, mech, base, sessionAES(16, on...))
	if err != nil {
		return 0, fmt.Errorf("C_DeriveKey %s: %w", ku, err)
	}
	return k, nil
}
