package keyport

import (
	"context"
	"fmt"

	"github.com/keyport/keyport/gp"
)

// KeySource says where a domain's first keys come from.
type KeySource string

const (
	// KeyDerived: derived in the HSM from the batch master key, never stored.
	KeyDerived KeySource = "derived"
	// KeyImported: supplied by the manufacturer, KWP-wrapped under the batch
	// transport key, and stored only in that wrapped form.
	KeyImported KeySource = "imported"
)

// KeyUsage names one key of an SCP03 key set.
type KeyUsage string

// The three keys of an SCP03 key set, in key-identifier order 1, 2, 3.
const (
	UsageENC KeyUsage = "enc"
	UsageMAC KeyUsage = "mac"
	UsageDEK KeyUsage = "dek"
)

// Usages is the SCP03 key set in key-identifier order.
var Usages = []KeyUsage{UsageENC, UsageMAC, UsageDEK}

// KeyRef names one static card key the HSM keeps: a module's ISD key
// (Batch empty: derived from the ISD master with the ISD's AID), an SSD
// first key of a derived batch (derived from the batch master with the SSD's
// AID), or an SSD first key of an imported batch (Wrapped: the
// manufacturer's KWP blob, unwrapped under the batch transport key inside
// the HSM). The derivation is the one WrapFirstKeys uses at claim time
// (DESIGN.md, "Key hierarchy"), so a provider who claims a personalized
// domain receives exactly the keys that are on the card.
type KeyRef struct {
	Batch string // empty for an ISD key
	EID   EID
	AID   AID
	Usage KeyUsage
	// Wrapped is the key as the manufacturer delivered it, for a domain of
	// an imported batch; nil for a derived key.
	Wrapped []byte
}

// DomainKey names the usage first key of domain d of the batch called batch,
// derived or imported as the domain's key source says.
func DomainKey(batch string, d *Domain, usage KeyUsage) KeyRef {
	r := FirstKey(batch, d.EID, d.AID, usage)
	if d.KeySource == KeyImported {
		r.Wrapped = d.Imported[usage]
	}
	return r
}

// StaticKey is the static SCP03 key ref as a gp.StaticKey whose CMACs the
// HSM computes, so that a gp.HostSession can run on it (gp.StaticKey has no
// context: ctx is kept for the calls). First keys and ISD keys are AES-128.
func StaticKey(ctx context.Context, keys CardKeys, ref KeyRef) gp.StaticKey {
	return hsmStaticKey{ctx: ctx, keys: keys, ref: ref}
}

type hsmStaticKey struct {
	ctx  context.Context
	keys CardKeys
	ref  KeyRef
}

func (k hsmStaticKey) CMAC(data []byte) ([]byte, error) { return k.keys.SCP03CMAC(k.ctx, k.ref, data) }
func (k hsmStaticKey) Size() int                        { return 16 }

// ISDKey names the usage key of the ISD isdAID of module eid.
func ISDKey(eid EID, isdAID AID, usage KeyUsage) KeyRef {
	return KeyRef{EID: eid, AID: isdAID, Usage: usage}
}

// FirstKey names the usage first key of SSD aid on module eid in a derived batch.
func FirstKey(batch string, eid EID, aid AID, usage KeyUsage) KeyRef {
	return KeyRef{Batch: batch, EID: eid, AID: aid, Usage: usage}
}

// String names the key without revealing anything secret.
func (r KeyRef) String() string {
	if r.Batch == "" {
		return fmt.Sprintf("ISD %s key of %s/%s", r.Usage, r.EID, r.AID)
	}
	if r.Wrapped != nil {
		return fmt.Sprintf("batch %s imported %s key of %s/%s", r.Batch, r.Usage, r.EID, r.AID)
	}
	return fmt.Sprintf("batch %s %s key of %s/%s", r.Batch, r.Usage, r.EID, r.AID)
}

// KVNs of a personalized module (PROTOCOLS.md §1.2, §1.4 "KVN conventions").
const (
	// PersoISDKVN is the KVN of the ISD key set perso installs. It replaces
	// the blank module's key set (KVN 30 on keyport's virtual module, FF on
	// some cards) with PUT KEY P1 = old KVN. Keeping a KVN of its own, in the
	// SCP03 range 30-3F, lets perso tell from GET DATA 00E0 alone, without a
	// failed authentication counting toward the lock, whether the ISD still
	// holds the test keys or already holds keyport's.
	PersoISDKVN byte = 0x31
	// FirstKVN is the KVN of an SSD's first key set: the key package and
	// `keyport sp script` expect 30, which the provider replaces by 31.
	FirstKVN byte = 0x30
)

// GPTestKey is the well-known GlobalPlatform test key 40 41 … 4F that blank
// modules carry as ENC, MAC and DEK of their ISD. It is public, so it may be
// handled in clear.
var GPTestKey = []byte{0x40, 0x41, 0x42, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48, 0x49, 0x4A, 0x4B, 0x4C, 0x4D, 0x4E, 0x4F}
