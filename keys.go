package keyport

import (
	"context"
	"fmt"

	"github.com/keyport/keyport/gp"
)

// KeySource says where a batch's or a domain's first keys come from, and so
// which HSM key unwraps the blobs the database keeps of them (DESIGN.md,
// "Key hierarchy").
type KeySource string

const (
	// KeyGenerated: generated in the HSM at personalization and kept as
	// RFC 5649 KWP blobs under the batch KEK, whose unwrap template keeps
	// every unwrapped copy sensitive. `keyport hsm init` also rewraps the
	// keys of older batches under it.
	KeyGenerated KeySource = "generated"
	// KeyImported: supplied by the manufacturer, KWP-wrapped under the batch
	// transport key, and stored only in that wrapped form.
	KeyImported KeySource = "imported"
	// KeyDerived: derived from a batch master key, never stored. Tokens made
	// before keys were wrapped at rest hold such masters; `keyport hsm
	// init` migrates them (derive once, wrap, store, destroy the master),
	// and no other operation accepts a derived key.
	KeyDerived KeySource = "derived"
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

// KeyRef names one static card key the HSM keeps, by the blob the database
// holds of it: a module's ISD key (Batch empty: a KWP blob under the ISD
// KEK), or an SSD first key of a batch (Source KeyGenerated: a KWP blob
// under the batch KEK; KeyImported: the manufacturer's KWP blob under the
// batch transport key). The HSM unwraps the blob inside itself for each use;
// the unwrapped copy is a sensitive session object that lives for one call.
// Source KeyDerived names a key of a token made before keys were wrapped at
// rest, which only the migration (`keyport hsm init`) derives.
type KeyRef struct {
	Batch  string // empty for an ISD key
	EID    EID
	AID    AID
	Usage  KeyUsage
	Source KeySource
	// Wrapped is the key's blob; nil only for KeyDerived.
	Wrapped []byte
}

// DomainKey names the usage first key of domain d of the batch called batch.
func DomainKey(batch string, d *Domain, usage KeyUsage) KeyRef {
	return KeyRef{Batch: batch, EID: d.EID, AID: d.AID, Usage: usage, Source: d.KeySource, Wrapped: d.Wrapped[usage]}
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

// withStaticKeys runs fn with refs as gp.StaticKeys, in order: in one
// CardKeyScope when keys has it (each key unwrapped once for all of fn's
// CMACs), otherwise as StaticKey does. fn must not keep the keys.
func withStaticKeys(ctx context.Context, keys CardKeys, refs []KeyRef, fn func([]gp.StaticKey) error) error {
	ks := make([]gp.StaticKey, len(refs))
	sc, ok := keys.(CardKeyScope)
	if !ok {
		for i, ref := range refs {
			ks[i] = StaticKey(ctx, keys, ref)
		}
		return fn(ks)
	}
	return sc.WithCardKeys(ctx, refs, func(cmac func(int, []byte) ([]byte, error)) error {
		for i := range refs {
			ks[i] = scopedKey{i: i, cmac: cmac}
		}
		return fn(ks)
	})
}

// scopedKey is key i of a CardKeyScope.
type scopedKey struct {
	i    int
	cmac func(int, []byte) ([]byte, error)
}

func (k scopedKey) CMAC(data []byte) ([]byte, error) { return k.cmac(k.i, data) }
func (k scopedKey) Size() int                        { return 16 }

// ISDKey names the usage key of the ISD isdAID of module eid, whose blob
// under the ISD KEK is wrapped.
func ISDKey(eid EID, isdAID AID, usage KeyUsage, wrapped []byte) KeyRef {
	return KeyRef{EID: eid, AID: isdAID, Usage: usage, Source: KeyGenerated, Wrapped: wrapped}
}

// FirstKey names the usage first key of SSD aid on module eid in a batch
// whose keys were generated, by its blob under the batch KEK.
func FirstKey(batch string, eid EID, aid AID, usage KeyUsage, wrapped []byte) KeyRef {
	return KeyRef{Batch: batch, EID: eid, AID: aid, Usage: usage, Source: KeyGenerated, Wrapped: wrapped}
}

// String names the key without revealing anything secret.
func (r KeyRef) String() string {
	if r.Batch == "" {
		return fmt.Sprintf("ISD %s key of %s/%s", r.Usage, r.EID, r.AID)
	}
	return fmt.Sprintf("batch %s %s %s key of %s/%s", r.Batch, r.Source, r.Usage, r.EID, r.AID)
}

// KeyBlobs is a key set as the database keeps it: one blob per usage.
type KeyBlobs map[KeyUsage][]byte

// Complete reports whether every usage of the key set has a blob.
func (b KeyBlobs) Complete() bool {
	for _, u := range Usages {
		if len(b[u]) == 0 {
			return false
		}
	}
	return true
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
