package hsm

import (
	"context"
	"crypto/rand"
	"fmt"

	"github.com/keyport/keyport"
)

// pskLen is the length of a module TLS-PSK: an AES-128-sized secret, the ISD
// key of KVN 0x40, KID 01, key type '85' that opens GP Amendment B admin
// sessions (PROTOCOLS.md §1.4 "KVN conventions", §3.1 step 3).
const pskLen = 16

// pskAAD binds a sealed PSK to its module: a value copied to another
// module's row does not unseal there.
func pskAAD(eid keyport.EID) string { return "module-psk|" + string(eid) }

// NewModulePSK makes a fresh random TLS-PSK for module eid and returns it
// sealed (Seal, bound to the EID). It implements keyport.LinkCustody.
//
// The PSK is the one card secret whose clear value leaves the HSM: OpenSSL
// needs it to build the premaster secret (RFC 4279 §2). So it is not kept
// under a key-encryption key at all, whose unwrap would have to allow a
// readable result for every key it wraps, but sealed by two keys that can
// neither wrap nor unwrap: reading a PSK gives nothing else.
func (h *HSM) NewModulePSK(ctx context.Context, eid keyport.EID) ([]byte, error) {
	if eid == "" {
		return nil, keyport.Invalid("module", "a module PSK needs the EID")
	}
	psk := make([]byte, pskLen)
	if _, err := rand.Read(psk); err != nil {
		return nil, fmt.Errorf("hsm: new module PSK: %w", err)
	}
	defer clear(psk)
	return h.seal(ctx, pskAAD(eid), psk)
}

// ModulePSK unseals the TLS-PSK of module eid for the TLS layer, for one
// handshake; callers must not keep or log it. A value sealed for another
// module, or altered, fails. It implements keyport.LinkCustody.
func (h *HSM) ModulePSK(ctx context.Context, eid keyport.EID, sealed []byte) ([]byte, error) {
	if eid == "" {
		return nil, keyport.Invalid("module", "a module PSK needs the EID")
	}
	psk, err := h.unseal(ctx, pskAAD(eid), sealed)
	if err != nil {
		return nil, fmt.Errorf("hsm: PSK of module %s: %w", eid, err)
	}
	if len(psk) != pskLen {
		return nil, fmt.Errorf("hsm: PSK of module %s: sealed value has %d bytes", eid, len(psk))
	}
	return psk, nil
}
