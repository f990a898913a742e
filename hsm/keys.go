package hsm

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/miekg/pkcs11"

	"github.com/keyport/keyport"
)

// Labels (CKA_LABEL) of keyport's long-lived keys. Every one is unique on the
// token; its CKA_ID is derived from the label (see objectID).
const (
	// LabelReceipt: EC P-256 key pair that signs key packages (ES256).
	LabelReceipt = "keyport/receipt"
	// LabelAudit: 32-byte generic secret for HMAC-SHA256 audit checkpoints.
	LabelAudit = "keyport/audit"
	// LabelISDKEK: AES-256 key-encryption key that keeps every module's
	// generated ISD keys at rest.
	LabelISDKEK = "keyport/isd-kek"
)

// BatchKEKLabel is the label of the AES-256 key-encryption key that keeps a
// batch's generated first keys at rest.
func BatchKEKLabel(batch string) string { return "keyport/batch/" + batch + "/kek" }

// TransportLabel is the label of an imported batch's AES-256 transport key.
func TransportLabel(batch string) string { return "keyport/batch/" + batch + "/transport" }

// checkBatch refuses batch names that would make ambiguous labels.
func checkBatch(batch string) error {
	if batch == "" || len(batch) > 64 || strings.ContainsAny(batch, "/\x00") {
		return keyport.Invalid("batch", "batch name must have 1 to 64 characters and no '/'")
	}
	for _, r := range batch {
		if r < 0x20 || r == 0x7f {
			return keyport.Invalid("batch", "batch name must not contain control characters")
		}
	}
	return nil
}

// objectID is the CKA_ID of the key labelled label: the first 16 bytes of
// SHA-256(label). Deterministic, so that tools such as pkcs11-tool can name a
// key by --id as well as by --label.
func objectID(label string) []byte {
	sum := sha256.Sum256([]byte(label))
	return sum[:16]
}

// longLived returns the attributes every long-lived key carries: a token
// object, private, sensitive and never extractable (PKCS#11 v2.40 base
// §4.9 private key and §4.10 secret key objects), neither modifiable,
// copyable nor destroyable (§4.4 storage objects). A token's default is
// modifiable: a PIN holder could then give a key a usage it was made
// without (decrypt, say) and use it with a mechanism it allows (the
// transport key's AES-ECB undoes AES-KWP a block at a time), or copy it
// with another one. And destroyable: the ISD KEK's loss is the loss of
// every ISD key (they exist nowhere else), and a destroyed key's label is
// free for a look-alike (CheckKeys). keyport itself destroys only the old
// masters it migrates away from (legacy.go).
func longLived(label string) []*pkcs11.Attribute {
	return []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
		pkcs11.NewAttribute(pkcs11.CKA_MODIFIABLE, false),
		pkcs11.NewAttribute(pkcs11.CKA_COPYABLE, false),
		pkcs11.NewAttribute(pkcs11.CKA_DESTROYABLE, false),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
		pkcs11.NewAttribute(pkcs11.CKA_ID, objectID(label)),
	}
}

// frozenLast returns t with its CKA_MODIFIABLE moved to the end. A token
// applies a creating call's template in order (SoftHSM 2.6 does), and
// refuses every attribute that follows CKA_MODIFIABLE false
// (CKR_ATTRIBUTE_READ_ONLY) when it unwraps or copies a key.
func frozenLast(t []*pkcs11.Attribute) []*pkcs11.Attribute {
	out := make([]*pkcs11.Attribute, 0, len(t))
	var last []*pkcs11.Attribute
	for _, a := range t {
		if a.Type == pkcs11.CKA_MODIFIABLE {
			last = append(last, a)
		} else {
			out = append(out, a)
		}
	}
	return append(out, last...)
}

// findObject returns the one object of class with label, using the
// session's cache. It fails with keyport.ErrNotFound on no match and with
// ErrAmbiguousObject on more than one.
func (h *HSM) findObject(s *session, class uint, label string) (pkcs11.ObjectHandle, error) {
	k := objectKey{class, label}
	if o, ok := s.objects[k]; ok {
		return o, nil
	}
	found, err := h.findAll(s, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, class),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
	}, 2)
	if err != nil {
		return 0, err
	}
	switch len(found) {
	case 0:
		return 0, fmt.Errorf("no %s labelled %q: %w", className(class), label, keyport.ErrNotFound)
	case 1:
	default:
		return 0, fmt.Errorf("%w: %q (%s)", ErrAmbiguousObject, label, className(class))
	}
	if s.objects == nil {
		s.objects = map[objectKey]pkcs11.ObjectHandle{}
	}
	s.objects[k] = found[0]
	return found[0], nil
}

// findAll returns up to max objects matching tmpl (PKCS#11 v2.40 base §5.7
// C_FindObjectsInit/C_FindObjects/C_FindObjectsFinal).
func (h *HSM) findAll(s *session, tmpl []*pkcs11.Attribute, max int) ([]pkcs11.ObjectHandle, error) {
	if err := h.p.FindObjectsInit(s.h, tmpl); err != nil {
		return nil, fmt.Errorf("C_FindObjectsInit: %w", err)
	}
	found, _, err := h.p.FindObjects(s.h, max)
	if ferr := h.p.FindObjectsFinal(s.h); err == nil && ferr != nil {
		err = ferr
	}
	if err != nil {
		return nil, fmt.Errorf("C_FindObjects: %w", err)
	}
	return found, nil
}

// labelledObject is a token object and its CKA_LABEL.
type labelledObject struct {
	handle pkcs11.ObjectHandle
	label  string
}

// tokenObjects returns the token's objects of class, with their labels.
func (h *HSM) tokenObjects(s *session, class uint) ([]labelledObject, error) {
	found, err := h.findAll(s, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, class),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
	}, 1<<16)
	if err != nil {
		return nil, err
	}
	out := make([]labelledObject, 0, len(found))
	for _, o := range found {
		attrs, err := h.p.GetAttributeValue(s.h, o, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_LABEL, nil)})
		if err != nil {
			return nil, fmt.Errorf("C_GetAttributeValue CKA_LABEL: %w", err)
		}
		out = append(out, labelledObject{o, string(attrs[0].Value)})
	}
	return out, nil
}

func className(class uint) string {
	switch class {
	case pkcs11.CKO_SECRET_KEY:
		return "secret key"
	case pkcs11.CKO_PRIVATE_KEY:
		return "private key"
	case pkcs11.CKO_PUBLIC_KEY:
		return "public key"
	}
	return fmt.Sprintf("object of class %d", class)
}

// refuseExisting fails with keyport.ErrConflict if any object carries label:
// keyport never overwrites or duplicates a key.
func (h *HSM) refuseExisting(s *session, label string) error {
	found, err := h.findAll(s, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_LABEL, label)}, 1)
	if err != nil {
		return err
	}
	if len(found) > 0 {
		return fmt.Errorf("a key labelled %q exists: %w", label, keyport.ErrConflict)
	}
	return nil
}

// usageAttrs lists, per object class, the usage attributes a key template
// sets (PKCS#11 v2.40 base §4.8-§4.10). All are set explicitly, because
// modules have their own defaults: SoftHSM turns on encrypt, decrypt, wrap,
// unwrap and verify when a template is silent.
var usageAttrs = map[uint][]uint{
	pkcs11.CKO_SECRET_KEY: {pkcs11.CKA_ENCRYPT, pkcs11.CKA_DECRYPT, pkcs11.CKA_WRAP, pkcs11.CKA_UNWRAP,
		pkcs11.CKA_SIGN, pkcs11.CKA_VERIFY, pkcs11.CKA_DERIVE},
	pkcs11.CKO_PRIVATE_KEY: {pkcs11.CKA_DECRYPT, pkcs11.CKA_UNWRAP, pkcs11.CKA_SIGN, pkcs11.CKA_DERIVE},
	pkcs11.CKO_PUBLIC_KEY:  {pkcs11.CKA_ENCRYPT, pkcs11.CKA_WRAP, pkcs11.CKA_VERIFY, pkcs11.CKA_DERIVE},
}

// usage returns the usage attributes of class: true for those in on, false
// for the others.
func usage(class uint, on ...uint) []*pkcs11.Attribute {
	var t []*pkcs11.Attribute
	for _, a := range usageAttrs[class] {
		t = append(t, pkcs11.NewAttribute(a, slices.Contains(on, a)))
	}
	return t
}

// aesKey returns the template of a long-lived AES-256 key that may do only
// the usages in on.
func aesKey(label string, on ...uint) []*pkcs11.Attribute {
	t := append([]*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, 32),
	}, longLived(label)...)
	return append(t, usage(pkcs11.CKO_SECRET_KEY, on...)...)
}

// Key policy the token enforces (DESIGN.md, "Key hierarchy"; measured on
// SoftHSM 2.6.1, see kekPolicy's test). A key-encryption key can only wrap
// and unwrap, with AES-KWP alone (CKA_ALLOWED_MECHANISMS), and carries a
// CKA_UNWRAP_TEMPLATE that every key unwrapped under it must match: a
// sensitive AES session object that can neither decrypt, unwrap nor derive,
// and whose attributes cannot be changed afterwards (CKA_MODIFIABLE false:
// otherwise the template would hold only at the unwrap, and the PIN holder
// would add decrypt to the key they got).
// So a PIN holder who unwraps a stored blob gets a key whose value the token
// will not show, and that cannot be turned into a tool to read another key
// (wrap under it, then decrypt or unwrap as non-sensitive). A caller's
// template that leaves out or contradicts any of these is refused.

// kekPolicy is the unwrap template of a KEK. extractable, when not nil, is
// forced too: false for the ISD KEK, whose keys never leave the HSM again
// after perso; the batch KEKs leave it open, because a claim wraps the
// first keys to the provider.
func kekPolicy(extractable *bool) []*pkcs11.Attribute {
	t := []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
		pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, false),
		pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, false),
		pkcs11.NewAttribute(pkcs11.CKA_DERIVE, false),
		pkcs11.NewAttribute(pkcs11.CKA_MODIFIABLE, false),
	}
	if extractable != nil {
		t = append(t, pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, *extractable))
	}
	return t
}

// unwrapTarget is the template keyport itself unwraps a card key with: the
// policy's attributes, whether the copy may be wrapped again, and the usages
// in on (which must not include decrypt, unwrap or derive).
func unwrapTarget(extractable bool, on ...uint) []*pkcs11.Attribute {
	t := []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, extractable),
		pkcs11.NewAttribute(pkcs11.CKA_MODIFIABLE, false),
	}
	return append(t, usage(pkcs11.CKO_SECRET_KEY, on...)...)
}

var (
	isdKEK   = false
	kwpOnly  = []uint{pkcs11.CKM_AES_KEY_WRAP_PAD}
	kekUsage = []uint{pkcs11.CKA_WRAP, pkcs11.CKA_UNWRAP}
)

// createKEK generates the token KEK labelled label with kekPolicy(extractable).
func (h *HSM) createKEK(s *session, label string, extractable *bool) error {
	policy, free := attributeArray(kekPolicy(extractable))
	defer free()
	return h.generateAES(s, append(aesKey(label, kekUsage...),
		pkcs11.NewAttribute(pkcs11.CKA_UNWRAP_TEMPLATE, policy),
		pkcs11.NewAttribute(pkcs11.CKA_ALLOWED_MECHANISMS, mechanismList(kwpOnly...))))
}

// kekLabel returns the label of the key that unwraps ref's blob: the ISD KEK
// for an ISD key, the batch KEK for a generated first key, the transport key
// for an imported one.
func kekLabel(ref keyport.KeyRef) (string, error) {
	if ref.EID == "" || ref.AID == "" || ref.Usage == "" {
		return "", keyport.Invalid("key", "a key reference needs EID, AID and usage")
	}
	if ref.Source == keyport.KeyDerived || len(ref.Wrapped) == 0 {
		return "", fmt.Errorf("%s has no wrapped key (stored before keys were wrapped at rest): run `keyport hsm init` to migrate: %w",
			ref, keyport.ErrUnavailable)
	}
	if ref.Batch == "" {
		return LabelISDKEK, nil
	}
	if err := checkBatch(ref.Batch); err != nil {
		return "", err
	}
	switch ref.Source {
	case keyport.KeyGenerated:
		return BatchKEKLabel(ref.Batch), nil
	case keyport.KeyImported:
		return TransportLabel(ref.Batch), nil
	}
	return "", keyport.Invalid("source", "unknown key source %q", ref.Source)
}

// createKey creates the key labelled label with create, refusing an existing
// label with keyport.ErrConflict. Creation is serialized in this process,
// and under the deployment's lock (Config.Exclusive) across the processes
// that share the token: the label check and the creation are not atomic in
// PKCS#11, and two processes that both found no key would each make one.
func (h *HSM) createKey(ctx context.Context, op, label string, create func(*session) error) error {
	h.createMu.Lock()
	defer h.createMu.Unlock()
	return underLock(ctx, h.exclusive, op, func(ctx context.Context) error {
		return h.do(ctx, op, func(s *session) error {
			if err := h.refuseExisting(s, label); err != nil {
				return err
			}
			return create(s)
		})
	})
}

// CreateBatchKEK creates the batch's key-encryption key (label
// BatchKEKLabel(batch)): AES-256, never extractable, wrap and unwrap with
// AES-KWP only, under kekPolicy. It fails with keyport.ErrConflict if the
// batch already has one.
func (h *HSM) CreateBatchKEK(ctx context.Context, batch string) error {
	if err := checkBatch(batch); err != nil {
		return fmt.Errorf("hsm: create batch KEK: %w", err)
	}
	label := BatchKEKLabel(batch)
	return h.createKey(ctx, "create batch KEK "+batch, label, func(s *session) error {
		return h.createKEK(s, label, nil)
	})
}

func (h *HSM) generateAES(s *session, tmpl []*pkcs11.Attribute) error {
	_, err := h.p.GenerateKey(s.h, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)}, frozenLast(tmpl))
	if err != nil {
		return fmt.Errorf("C_GenerateKey: %w", err)
	}
	return nil
}

// p256OID is the DER of the OID of NIST P-256 (secp256r1, RFC 5480 §2.1.1.1),
// the CKA_EC_PARAMS of the receipt key.
var p256OID = []byte{0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07}

// Init creates keyport's token-wide keys that do not exist yet: the receipt
// signing key pair (LabelReceipt), the audit MAC key (LabelAudit), the ISD
// KEK (LabelISDKEK) and the two keys that seal small secrets (TOTP seeds,
// module PSKs). Existing keys are kept. It returns the labels of the keys it
// created.
func (h *HSM) Init(ctx context.Context) (created []string, err error) {
	steps := []struct {
		label  string
		create func(*session) error
	}{
		{LabelReceipt, h.generateReceiptKey},
		{LabelAudit, func(s *session) error {
			_, err := h.p.GenerateKey(s.h,
				[]*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_GENERIC_SECRET_KEY_GEN, nil)},
				frozenLast(append([]*pkcs11.Attribute{
					pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
					pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_GENERIC_SECRET),
					// SoftHSM requires ≥ 32 bytes for CKM_SHA256_HMAC (RFC 2104 §3: ≥ L).
					pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, 32),
					pkcs11.NewAttribute(pkcs11.CKA_ALLOWED_MECHANISMS, mechanismList(pkcs11.CKM_SHA256_HMAC)),
				}, slices.Concat(longLived(LabelAudit), usage(pkcs11.CKO_SECRET_KEY, pkcs11.CKA_SIGN, pkcs11.CKA_VERIFY))...)))
			if err != nil {
				return fmt.Errorf("C_GenerateKey: %w", err)
			}
			return nil
		}},
		{LabelISDKEK, func(s *session) error { return h.createKEK(s, LabelISDKEK, &isdKEK) }},
		{LabelSealEnc, func(s *session) error { return h.generateSealKey(s, LabelSealEnc) }},
		{LabelSealMAC, func(s *session) error { return h.generateSealKey(s, LabelSealMAC) }},
	}
	for _, st := range steps {
		err := h.createKey(ctx, "init "+st.label, st.label, st.create)
		switch {
		case err == nil:
			created = append(created, st.label)
		case errors.Is(err, keyport.ErrConflict):
		default:
			return created, err
		}
	}
	return created, nil
}

func (h *HSM) generateReceiptKey(s *session) error {
	pub := append([]*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PUBLIC_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_EC),
		pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, p256OID),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, false),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, LabelReceipt),
		pkcs11.NewAttribute(pkcs11.CKA_ID, objectID(LabelReceipt)),
	}, usage(pkcs11.CKO_PUBLIC_KEY, pkcs11.CKA_VERIFY)...)
	priv := append([]*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_EC),
		pkcs11.NewAttribute(pkcs11.CKA_ALLOWED_MECHANISMS, mechanismList(pkcs11.CKM_ECDSA)),
	}, slices.Concat(longLived(LabelReceipt), usage(pkcs11.CKO_PRIVATE_KEY, pkcs11.CKA_SIGN))...)
	_, _, err := h.p.GenerateKeyPair(s.h,
		[]*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_EC_KEY_PAIR_GEN, nil)}, pub, frozenLast(priv))
	if err != nil {
		return fmt.Errorf("C_GenerateKeyPair: %w", err)
	}
	return nil
}
