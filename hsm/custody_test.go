package hsm_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/aes"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/miekg/pkcs11"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/gp"
	"github.com/keyport/keyport/hsm"
	"github.com/keyport/keyport/hsm/hsmtest"
	"github.com/keyport/keyport/keywrap"
)

func TestMain(m *testing.M) { hsmtest.Main(m) }

var ctx = context.Background()

const (
	testEID  = keyport.EID("89049032123451234512345678901235")
	testEID2 = keyport.EID("89049032123451234512345678901236")
	testAID  = keyport.AID("A000000151535041")
	testAID2 = keyport.AID("A000000151535042")
)

var rsaKeys struct {
	once sync.Once
	sp   *rsa.PrivateKey // the provider's wrapping key
	mfr  *rsa.PrivateKey // the manufacturer's key
}

// keys returns two RSA-3072 keys generated once per test process.
func keys(t testing.TB) (sp, mfr *rsa.PrivateKey) {
	t.Helper()
	rsaKeys.once.Do(func() {
		var err error
		if rsaKeys.sp, err = rsa.GenerateKey(rand.Reader, 3072); err != nil {
			panic(err)
		}
		if rsaKeys.mfr, err = rsa.GenerateKey(rand.Reader, 3072); err != nil {
			panic(err)
		}
	})
	return rsaKeys.sp, rsaKeys.mfr
}

// derivedBatch opens a token with a batch "b1" whose keys keyport generates.
func derivedBatch(t testing.TB) *hsm.HSM {
	t.Helper()
	h := hsmtest.Open(t)
	if err := h.CreateBatchKEK(ctx, "b1"); err != nil {
		t.Fatal(err)
	}
	return h
}

// generated holds, per token, batch and domain, the first keys the test
// generated: what perso would have stored.
var generated struct {
	sync.Mutex
	m map[string]keyport.KeyBlobs
}

// domainBlobs returns the domain's first-key blobs under the batch KEK,
// generated on first use.
func domainBlobs(t testing.TB, h *hsm.HSM, batch string, eid keyport.EID, aid keyport.AID) keyport.KeyBlobs {
	t.Helper()
	generated.Lock()
	defer generated.Unlock()
	key := fmt.Sprintf("%p/%s/%s/%s", h, batch, eid, aid)
	if b, ok := generated.m[key]; ok {
		return b
	}
	gen, err := h.GenerateKeys(ctx, batch, nil)
	if err != nil {
		t.Fatal(err)
	}
	b := keyport.KeyBlobs{}
	for _, g := range gen {
		b[g.Usage] = g.Wrapped
	}
	if generated.m == nil {
		generated.m = map[string]keyport.KeyBlobs{}
	}
	generated.m[key] = b
	return b
}

// firstRef names a generated first key of batch (domainBlobs).
func firstRef(t testing.TB, h *hsm.HSM, batch string, eid keyport.EID, aid keyport.AID, u keyport.KeyUsage) keyport.KeyRef {
	return keyport.FirstKey(batch, eid, aid, u, domainBlobs(t, h, batch, eid, aid)[u])
}

// isdRef names a generated ISD key (domainBlobs under the ISD KEK).
func isdRef(t testing.TB, h *hsm.HSM, eid keyport.EID, isd keyport.AID, u keyport.KeyUsage) keyport.KeyRef {
	return keyport.ISDKey(eid, isd, u, domainBlobs(t, h, "", eid, isd)[u])
}

// generatedRequest is the FirstKeysRequest of a generated domain of batch.
func generatedRequest(t testing.TB, h *hsm.HSM, batch string, eid keyport.EID, aid keyport.AID) keyport.FirstKeysRequest {
	sp, _ := keys(t)
	return keyport.FirstKeysRequest{Batch: batch, Source: keyport.KeyGenerated, EID: eid, AID: aid,
		Wrapped: domainBlobs(t, h, batch, eid, aid), Recipient: &sp.PublicKey}
}

func firstKeys(t testing.TB, h *hsm.HSM, eid keyport.EID, aid keyport.AID) []keyport.WrappedKey {
	t.Helper()
	out, err := h.WrapFirstKeys(ctx, generatedRequest(t, h, "b1", eid, aid))
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func kcvs(ks []keyport.WrappedKey) []string {
	var s []string
	for _, k := range ks {
		s = append(s, k.KCV)
	}
	return s
}

func TestWrappingTheSameDomainTwiceGivesTheSameKCVs(t *testing.T) {
	h := derivedBatch(t)
	a := firstKeys(t, h, testEID, testAID)
	b := firstKeys(t, h, testEID, testAID)
	if strings.Join(kcvs(a), ",") != strings.Join(kcvs(b), ",") {
		t.Fatalf("KCVs differ: %v vs %v", kcvs(a), kcvs(b))
	}
	for i, u := range keyport.Usages {
		if a[i].Usage != u || a[i].Bits != 128 || len(a[i].KCV) != 6 || strings.ToUpper(a[i].KCV) != a[i].KCV {
			t.Fatalf("key %d: %+v", i, a[i])
		}
	}
	if bytes.Equal(a[0].Wrapped, b[0].Wrapped) {
		t.Fatal("two wraps are identical: the ephemeral key was reused")
	}
}

func TestGeneratedKeysDifferByEIDAIDUsageAndBatch(t *testing.T) {
	h := derivedBatch(t)
	if err := h.CreateBatchKEK(ctx, "b2"); err != nil {
		t.Fatal(err)
	}
	seen := map[string]string{}
	add := func(what string, ks []keyport.WrappedKey) {
		for _, k := range ks {
			name := what + "/" + string(k.Usage)
			if other, dup := seen[k.KCV]; dup {
				t.Fatalf("%s and %s have the same KCV %s", name, other, k.KCV)
			}
			seen[k.KCV] = name
		}
	}
	add("eid1/aid1", firstKeys(t, h, testEID, testAID))
	add("eid2/aid1", firstKeys(t, h, testEID2, testAID))
	add("eid1/aid2", firstKeys(t, h, testEID, testAID2))
	sp, _ := keys(t)
	other, err := h.WrapFirstKeys(ctx, generatedRequest(t, h, "b2", testEID, testAID))
	if err != nil {
		t.Fatal(err)
	}
	add("batch2", other)
	// A blob of b1 does not unwrap under b2's KEK.
	req := generatedRequest(t, h, "b2", testEID, testAID)
	req.Wrapped = domainBlobs(t, h, "b1", testEID, testAID)
	req.Recipient = &sp.PublicKey
	if _, err := h.WrapFirstKeys(ctx, req); !errors.Is(err, keyport.ErrInvalid) {
		t.Fatalf("b1's blobs under b2's KEK: err = %v, want ErrInvalid", err)
	}
}

// goKCV is the KCV of a clear key computed in software (gp.KCV), upper-case
// hex as the HSM reports it.
func goKCV(t testing.TB, key []byte) string {
	t.Helper()
	k, err := gp.KCV(key)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%X", k)
}

func TestWrappedFirstKeysUnwrapInGoAndMatchTheirKCVs(t *testing.T) {
	h := derivedBatch(t)
	sp, _ := keys(t)
	for _, k := range firstKeys(t, h, testEID, testAID) {
		if len(k.Wrapped) != 384+24 {
			t.Fatalf("%s: wrapped has %d bytes, want 384 (RSA-3072) + 24 (KWP of 16)", k.Usage, len(k.Wrapped))
		}
		key, err := keywrap.UnwrapRSAAES(sp, k.Wrapped, crypto.SHA1)
		if err != nil {
			t.Fatalf("%s: %v", k.Usage, err)
		}
		if len(key) != 16 {
			t.Fatalf("%s: key has %d bytes", k.Usage, len(key))
		}
		if want := goKCV(t, key); k.KCV != want {
			t.Fatalf("%s: KCV %s, Go computes %s", k.Usage, k.KCV, want)
		}
	}
}

// documented is the old derivation recomputed in Go (hsm.DerivationData).
func documented(master []byte, eid keyport.EID, aid keyport.AID, u keyport.KeyUsage) []byte {
	block, _ := aes.NewCipher(master)
	sum := sha256.Sum256([]byte("keyport/v1" + string(eid) + strings.ToUpper(string(aid)) + string(u)))
	want := make([]byte, 16)
	block.Encrypt(want, sum[:16])
	return want
}

func TestTheMigrationRewrapsTheKeysTheOldMastersDerivedAndThenDestroysThem(t *testing.T) {
	h, tok := hsmtest.OpenToken(t)
	master, isdMaster := bytes.Repeat([]byte{0x5a}, 32), bytes.Repeat([]byte{0x3c}, 32)
	hsmtest.OldKey(t, tok, hsm.BatchMasterLabel("b1"), master, true)
	hsmtest.OldKey(t, tok, hsm.LabelISDMaster, isdMaster, true)
	l, err := h.LegacyKeys(ctx)
	if err != nil || !l.ISDMaster || strings.Join(l.Masters, ",") != "b1" || len(l.Transport) != 0 {
		t.Fatalf("LegacyKeys = %+v, %v", l, err)
	}

	// First keys: derived once, wrapped under the (new) batch KEK; the claim
	// then hands out exactly the documented keys.
	lower := keyport.AID(strings.ToLower(string(testAID)))
	blobs := keyport.KeyBlobs{}
	for _, u := range keyport.Usages {
		blob, kcv, err := h.RewrapLegacy(ctx, keyport.KeyRef{Batch: "b1", EID: testEID, AID: lower, Usage: u, Source: keyport.KeyDerived})
		if err != nil {
			t.Fatal(err)
		}
		if want := goKCV(t, documented(master, testEID, testAID, u)); kcv != want {
			t.Fatalf("%s: KCV %s, the documented derivation gives %s", u, kcv, want)
		}
		blobs[u] = blob
	}
	sp, _ := keys(t)
	ks, err := h.WrapFirstKeys(ctx, keyport.FirstKeysRequest{Batch: "b1", Source: keyport.KeyGenerated, EID: testEID, AID: testAID,
		Wrapped: blobs, Recipient: &sp.PublicKey})
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range ks {
		got, err := keywrap.UnwrapRSAAES(sp, k.Wrapped, crypto.SHA1)
		if err != nil {
			t.Fatal(err)
		}
		if want := documented(master, testEID, testAID, k.Usage); !bytes.Equal(got, want) {
			t.Fatalf("%s: the migrated key is %x, the documented derivation gives %x", k.Usage, got, want)
		}
	}

	// ISD keys go under the ISD KEK, and the PSK is sealed with the value
	// the old token derived.
	isdBlob, isdKCV, err := h.RewrapLegacy(ctx, keyport.KeyRef{EID: testEID, AID: "A000000151000000", Usage: keyport.UsageMAC, Source: keyport.KeyDerived})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := h.KeyKCV(ctx, keyport.ISDKey(testEID, "A000000151000000", keyport.UsageMAC, isdBlob)); err != nil || got != isdKCV {
		t.Fatalf("the rewrapped ISD key: KCV %s (%v), want %s", got, err, isdKCV)
	}
	sealed, err := h.LegacyPSK(ctx, testEID, "A000000151000000")
	if err != nil {
		t.Fatal(err)
	}
	psk, err := h.ModulePSK(ctx, testEID, sealed)
	if want := documented(isdMaster, testEID, "A000000151000000", hsm.UsagePSK); err != nil || !bytes.Equal(psk, want) {
		t.Fatalf("migrated PSK %x (%v), the old token derived %x", psk, err, want)
	}

	destroyed, err := h.DestroyLegacyKeys(ctx)
	if err != nil || strings.Join(destroyed, ",") != hsm.LabelISDMaster+","+hsm.BatchMasterLabel("b1") {
		t.Fatalf("destroyed %v, %v", destroyed, err)
	}
	if l, err := h.LegacyKeys(ctx); err != nil || !l.Empty() {
		t.Fatalf("after the migration LegacyKeys = %+v, %v", l, err)
	}
	if _, _, err := h.RewrapLegacy(ctx, keyport.KeyRef{Batch: "b1", EID: testEID, AID: testAID, Usage: keyport.UsageENC, Source: keyport.KeyDerived}); !errors.Is(err, keyport.ErrNotFound) {
		t.Fatalf("deriving after the masters are gone: %v, want ErrNotFound", err)
	}
	// The migrated blobs still serve.
	if _, err := h.WrapFirstKeys(ctx, keyport.FirstKeysRequest{Batch: "b1", Source: keyport.KeyGenerated, EID: testEID, AID: testAID,
		Wrapped: blobs, Recipient: &sp.PublicKey}); err != nil {
		t.Fatal(err)
	}
	// And nothing derived is accepted any more.
	if _, err := h.SCP03CMAC(ctx, keyport.KeyRef{Batch: "b1", EID: testEID, AID: testAID, Usage: keyport.UsageMAC, Source: keyport.KeyDerived}, []byte("x")); !errors.Is(err, keyport.ErrUnavailable) {
		t.Fatalf("a derived key ref: %v, want ErrUnavailable (migrate first)", err)
	}
}

// transport creates batch "imp" with a transport key and returns the key as
// the manufacturer recovers it from the wrapped output.
func transport(t testing.TB, h *hsm.HSM) (key []byte, kcv string) {
	t.Helper()
	_, mfr := keys(t)
	wrapped, kcv, err := h.CreateTransportKey(ctx, "imp", &mfr.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	key, err = keywrap.UnwrapRSAAES(mfr, wrapped, crypto.SHA1)
	if err != nil {
		t.Fatal(err)
	}
	return key, kcv
}

func TestTransportKeyReachesTheManufacturerWithAMatchingKCV(t *testing.T) {
	h := hsmtest.Open(t)
	key, kcv := transport(t, h)
	if len(key) != 32 {
		t.Fatalf("transport key has %d bytes, want 32", len(key))
	}
	if want := goKCV(t, key); kcv != want {
		t.Fatalf("KCV %s, Go computes %s", kcv, want)
	}
}

func TestImportedKeysUnwrapInsideTheHSMAndReachTheProvider(t *testing.T) {
	h := hsmtest.Open(t)
	tkey, _ := transport(t, h)
	sp, _ := keys(t)
	req := keyport.FirstKeysRequest{Batch: "imp", Source: keyport.KeyImported, EID: testEID, AID: testAID,
		Recipient: &sp.PublicKey, Wrapped: map[keyport.KeyUsage][]byte{}}
	clear := map[keyport.KeyUsage][]byte{}
	for i, u := range keyport.Usages {
		k := make([]byte, []int{16, 24, 32}[i]) // AES-128, -192, -256
		rand.Read(k)
		clear[u] = k
		blob, err := keywrap.WrapKWP(tkey, k)
		if err != nil {
			t.Fatal(err)
		}
		req.Wrapped[u] = blob
		kcv, err := h.ImportedKCV(ctx, "imp", blob)
		if err != nil {
			t.Fatal(err)
		}
		if want := goKCV(t, k); kcv != want {
			t.Fatalf("%s: ImportedKCV %s, want %s", u, kcv, want)
		}
	}
	out, err := h.WrapFirstKeys(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	for i, wk := range out {
		got, err := keywrap.UnwrapRSAAES(sp, wk.Wrapped, crypto.SHA1)
		if err != nil {
			t.Fatal(err)
		}
		u := keyport.Usages[i]
		if wk.Usage != u || !bytes.Equal(got, clear[u]) || wk.Bits != 8*len(clear[u]) || wk.KCV != goKCV(t, clear[u]) {
			t.Fatalf("%s: got %+v", u, wk)
		}
	}
}

func TestImportedKCVRejectsABlobWrappedUnderAnotherKeyAsInvalid(t *testing.T) {
	h := hsmtest.Open(t)
	transport(t, h)
	blob, _ := keywrap.WrapKWP(bytes.Repeat([]byte{7}, 32), bytes.Repeat([]byte{1}, 16))
	_, err := h.ImportedKCV(ctx, "imp", blob)
	if !errors.Is(err, keyport.ErrInvalid) {
		t.Fatalf("err = %v, want ErrInvalid", err)
	}
}

func TestOpenSSLUnwrapsWhatTheHSMWraps(t *testing.T) {
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Skip("openssl not installed")
	}
	h := derivedBatch(t)
	sp, _ := keys(t)
	k := firstKeys(t, h, testEID, testAID)[0]
	dir := t.TempDir()
	der, _ := x509.MarshalPKCS8PrivateKey(sp)
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	keyFile := write("k.pem", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
	rsaFile := write("rsa.bin", k.Wrapped[:sp.Size()])
	kwpFile := write("kwp.bin", k.Wrapped[sp.Size():])
	eph, err := exec.Command("openssl", "pkeyutl", "-decrypt", "-inkey", keyFile, "-in", rsaFile,
		"-pkeyopt", "rsa_padding_mode:oaep", "-pkeyopt", "rsa_oaep_md:sha1").Output()
	if err != nil {
		t.Fatalf("openssl pkeyutl: %v", err)
	}
	key, err := exec.Command("openssl", "enc", "-d", "-id-aes256-wrap-pad", "-K", hex.EncodeToString(eph),
		"-iv", "A65959A6", "-in", kwpFile).Output()
	if err != nil {
		t.Fatalf("openssl enc: %v", err)
	}
	if got := goKCV(t, key); got != k.KCV {
		t.Fatalf("OpenSSL's key has KCV %s, the HSM said %s", got, k.KCV)
	}
}

func TestCreatingAKeyWhoseLabelExistsIsAConflict(t *testing.T) {
	h := derivedBatch(t)
	if err := h.CreateBatchKEK(ctx, "b1"); !errors.Is(err, keyport.ErrConflict) {
		t.Fatalf("second batch KEK: err = %v, want ErrConflict", err)
	}
	_, mfr := keys(t)
	if _, _, err := h.CreateTransportKey(ctx, "imp", &mfr.PublicKey); err != nil {
		t.Fatal(err)
	}
	if _, _, err := h.CreateTransportKey(ctx, "imp", &mfr.PublicKey); !errors.Is(err, keyport.ErrConflict) {
		t.Fatalf("second transport key: err = %v, want ErrConflict", err)
	}
}

func TestInitKeepsExistingKeysAndCreatesOnlyMissingOnes(t *testing.T) {
	h, tok := hsmtest.OpenToken(t) // runs Init once
	kid1, _, err := h.ReceiptKey(ctx)
	if err != nil {
		t.Fatal(err)
	}
	created, err := h.Init(ctx)
	if err != nil || len(created) != 0 {
		t.Fatalf("second Init created %v, err %v", created, err)
	}
	h2, err := hsm.Open(ctx, hsm.Config{URI: tok.URI})
	if err != nil {
		t.Fatal(err)
	}
	defer h2.Close()
	kid2, _, err := h2.ReceiptKey(ctx)
	if err != nil || kid1 != kid2 {
		t.Fatalf("receipt key changed: %s vs %s (%v)", kid1, kid2, err)
	}
}

func TestFirstInitCreatesReceiptAuditISDKEKAndSealKeys(t *testing.T) {
	tok := hsmtest.NewToken(t)
	h, err := hsm.Open(ctx, hsm.Config{URI: tok.URI})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	created, err := h.Init(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{hsm.LabelReceipt, hsm.LabelAudit, hsm.LabelISDKEK, hsm.LabelSealEnc, hsm.LabelSealMAC}
	if strings.Join(created, " ") != strings.Join(want, " ") {
		t.Fatalf("created %v, want %v", created, want)
	}
}

// attr reads boolean attributes of the objects labelled label.
func boolAttrs(t *testing.T, h *hsm.HSM, label string) []map[uint]bool {
	t.Helper()
	var out []map[uint]bool
	err := h.RawForTest(ctx, func(p hsm.P11, sh pkcs11.SessionHandle) error {
		if err := p.FindObjectsInit(sh, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_LABEL, label)}); err != nil {
			return err
		}
		objs, _, err := p.FindObjects(sh, 10)
		p.FindObjectsFinal(sh)
		if err != nil {
			return err
		}
		for _, o := range objs {
			cls, err := p.GetAttributeValue(sh, o, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_CLASS, nil)})
			if err != nil {
				return err
			}
			if cls[0].Value[0] == pkcs11.CKO_PUBLIC_KEY {
				continue
			}
			types := []uint{pkcs11.CKA_TOKEN, pkcs11.CKA_PRIVATE, pkcs11.CKA_SENSITIVE, pkcs11.CKA_EXTRACTABLE,
				pkcs11.CKA_ALWAYS_SENSITIVE, pkcs11.CKA_NEVER_EXTRACTABLE}
			var q []*pkcs11.Attribute
			for _, ty := range types {
				q = append(q, pkcs11.NewAttribute(ty, nil))
			}
			got, err := p.GetAttributeValue(sh, o, q)
			if err != nil {
				return err
			}
			m := map[uint]bool{}
			for _, a := range got {
				m[a.Type] = len(a.Value) == 1 && a.Value[0] == 1
			}
			out = append(out, m)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestEveryLongLivedKeyIsSensitiveAndNotExtractable(t *testing.T) {
	h := derivedBatch(t)
	transport(t, h)
	for _, label := range []string{hsm.LabelReceipt, hsm.LabelAudit, hsm.LabelISDKEK, hsm.BatchKEKLabel("b1"), hsm.TransportLabel("imp"),
		hsm.LabelSealEnc, hsm.LabelSealMAC} {
		objs := boolAttrs(t, h, label)
		if len(objs) != 1 {
			t.Fatalf("%s: %d secret/private objects, want 1", label, len(objs))
		}
		a := objs[0]
		if !a[pkcs11.CKA_TOKEN] || !a[pkcs11.CKA_PRIVATE] || !a[pkcs11.CKA_SENSITIVE] || a[pkcs11.CKA_EXTRACTABLE] {
			t.Fatalf("%s: token=%v private=%v sensitive=%v extractable=%v", label,
				a[pkcs11.CKA_TOKEN], a[pkcs11.CKA_PRIVATE], a[pkcs11.CKA_SENSITIVE], a[pkcs11.CKA_EXTRACTABLE])
		}
		// Generated on the token, these were never extractable; the transport
		// key was (it left wrapped once, by design) until copied to the token.
		if label != hsm.TransportLabel("imp") && !a[pkcs11.CKA_NEVER_EXTRACTABLE] {
			t.Fatalf("%s: CKA_NEVER_EXTRACTABLE is false", label)
		}
	}
}

func TestPkcs11ToolListsTheTransportKeyAsSensitiveAndNotExtractable(t *testing.T) {
	if _, err := exec.LookPath("pkcs11-tool"); err != nil {
		t.Skip("pkcs11-tool not installed: " + hsmtest.InstallHint)
	}
	tok := hsmtest.NewToken(t)
	h, err := hsm.Open(ctx, hsm.Config{URI: tok.URI})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if _, err := h.Init(ctx); err != nil {
		t.Fatal(err)
	}
	if err := h.CreateBatchKEK(ctx, "b1"); err != nil {
		t.Fatal(err)
	}
	transport(t, h)
	cmd := exec.Command("pkcs11-tool", "--module", hsmtest.ModulePath, "--token-label", tok.Label,
		"--login", "--pin", tok.UserPIN, "--list-objects")
	cmd.Env = append(os.Environ(), "SOFTHSM2_CONF="+tok.Conf)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("pkcs11-tool: %v\n%s", err, out)
	}
	blocks := objectBlocks(string(out))
	for _, label := range []string{hsm.TransportLabel("imp"), hsm.BatchKEKLabel("b1"), hsm.LabelISDKEK, hsm.LabelAudit, hsm.LabelSealEnc, hsm.LabelSealMAC} {
		b, ok := blocks[label]
		if !ok {
			t.Fatalf("pkcs11-tool does not list %s:\n%s", label, out)
		}
		access := lineWith(b, "Access:")
		if !strings.Contains(access, "sensitive") || strings.Contains(strings.ReplaceAll(access, "never extractable", ""), "extractable") {
			t.Fatalf("%s: %q", label, access)
		}
		wantUsage := map[string]string{hsm.TransportLabel("imp"): "unwrap", hsm.BatchKEKLabel("b1"): "wrap, unwrap", hsm.LabelISDKEK: "wrap, unwrap",
			// pkcs11-tool names no usage of a secret key that can only sign.
			hsm.LabelSealEnc: "encrypt", hsm.LabelSealMAC: "none"}
		if u, ok := wantUsage[label]; ok && lineWith(b, "Usage:") != "Usage:      "+u {
			t.Fatalf("%s: %q, want only %s", label, lineWith(b, "Usage:"), u)
		}
		if label != hsm.TransportLabel("imp") && !strings.Contains(access, "never extractable") {
			t.Fatalf("%s: %q, want never extractable", label, access)
		}
	}
}

// objectBlocks splits pkcs11-tool --list-objects output into the secret key
// blocks, by label.
func objectBlocks(out string) map[string]string {
	blocks := map[string]string{}
	var cur []string
	flush := func() {
		b := strings.Join(cur, "\n")
		if strings.HasPrefix(b, "Secret Key Object") || strings.HasPrefix(b, "Private Key Object") {
			if l := lineWith(b, "label:"); l != "" {
				blocks[strings.TrimSpace(strings.SplitN(l, "label:", 2)[1])] = b
			}
		}
		cur = nil
	}
	for _, line := range strings.Split(out, "\n") {
		if line != "" && line[0] != ' ' && line[0] != '\t' {
			flush()
		}
		cur = append(cur, line)
	}
	flush()
	return blocks
}

func lineWith(block, prefix string) string {
	for _, l := range strings.Split(block, "\n") {
		if strings.HasPrefix(strings.TrimSpace(l), prefix) {
			return strings.TrimSpace(l)
		}
	}
	return ""
}

func TestSignES256VerifiesWithTheReceiptPublicKey(t *testing.T) {
	h := hsmtest.Open(t)
	kid, pub, err := h.ReceiptKey(ctx)
	if err != nil {
		t.Fatal(err)
	}
	spki, _ := x509.MarshalPKIXPublicKey(pub)
	sum := sha256.Sum256(spki)
	if raw, err := base64.RawURLEncoding.DecodeString(kid); err != nil || !bytes.Equal(raw, sum[:16]) {
		t.Fatalf("kid %q does not encode SHA-256(SPKI)[:16]", kid)
	}
	msg := []byte("protected.payload")
	sig, err := h.SignES256(ctx, msg)
	if err != nil {
		t.Fatal(err)
	}
	if len(sig) != 64 {
		t.Fatalf("signature has %d bytes, want 64 (r‖s)", len(sig))
	}
	digest := sha256.Sum256(msg)
	r, s := new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])
	if !ecdsa.Verify(pub, digest[:], r, s) {
		t.Fatal("signature does not verify")
	}
	digest[0] ^= 1
	if ecdsa.Verify(pub, digest[:], r, s) {
		t.Fatal("signature verifies for other data")
	}
}

func TestAuditMACIsDeterministicHMACSHA256(t *testing.T) {
	h := hsmtest.Open(t)
	a, err := h.AuditMAC(ctx, []byte("head"))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := h.AuditMAC(ctx, []byte("head"))
	c, _ := h.AuditMAC(ctx, []byte("head2"))
	if len(a) != 32 || !bytes.Equal(a, b) || bytes.Equal(a, c) {
		t.Fatalf("MACs %x %x %x", a, b, c)
	}
}

func TestAuditMACFailsWhenTwoKeysCarryTheLabel(t *testing.T) {
	h := hsmtest.Open(t)
	err := h.RawForTest(ctx, func(p hsm.P11, sh pkcs11.SessionHandle) error {
		_, err := p.CreateObject(sh, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_GENERIC_SECRET),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
			pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
			pkcs11.NewAttribute(pkcs11.CKA_SIGN, true),
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, hsm.LabelAudit),
			pkcs11.NewAttribute(pkcs11.CKA_VALUE, bytes.Repeat([]byte{1}, 32)),
		})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.AuditMAC(ctx, []byte("x")); !errors.Is(err, hsm.ErrAmbiguousObject) {
		t.Fatalf("err = %v, want ErrAmbiguousObject", err)
	}
}

func TestSigningWithoutInitFailsWithNotFound(t *testing.T) {
	h, err := hsm.Open(ctx, hsm.Config{URI: hsmtest.New(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if _, err := h.SignES256(ctx, []byte("x")); !errors.Is(err, keyport.ErrNotFound) {
		t.Fatalf("err = %v, want ErrNotFound", err)
	}
}

// The HSM adapter wraps only to keys the domain would register: a short
// modulus, or a public exponent of 1 (RSA-OAEP is then an encoding anyone
// undoes) or an even one, is refused before anything is wrapped.
func TestWrapFirstKeysRefusesAWeakRecipientKey(t *testing.T) {
	h := derivedBatch(t)
	small, _ := rsa.GenerateKey(rand.Reader, 1024)
	mid, _ := rsa.GenerateKey(rand.Reader, 2048)
	good, _ := rsa.GenerateKey(rand.Reader, 3072)
	for name, pub := range map[string]*rsa.PublicKey{
		"1024 bits":  &small.PublicKey,
		"2048 bits":  &mid.PublicKey,
		"e = 1":      {N: good.N, E: 1},
		"even e":     {N: good.N, E: 65536},
		"no modulus": {E: 65537},
	} {
		req := generatedRequest(t, h, "b1", testEID, testAID)
		req.Recipient = pub
		if _, err := h.WrapFirstKeys(ctx, req); !errors.Is(err, keyport.ErrInvalid) {
			t.Errorf("%s: err = %v, want ErrInvalid", name, err)
		}
	}
	req := generatedRequest(t, h, "b1", testEID, testAID)
	req.Recipient = &good.PublicKey
	if _, err := h.WrapFirstKeys(ctx, req); err != nil {
		t.Fatalf("a 3072-bit key: %v", err)
	}
}

func TestSHA256OAEPIsRefusedBySoftHSMWithAClearError(t *testing.T) {
	tok := hsmtest.NewToken(t)
	h, err := hsm.Open(ctx, hsm.Config{URI: tok.URI, OAEPHash: keyport.OAEPSHA256})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if h.OAEPHash() != keyport.OAEPSHA256 {
		t.Fatal("OAEPHash not kept")
	}
	if _, err := h.Init(ctx); err != nil {
		t.Fatal(err)
	}
	if err := h.CreateBatchKEK(ctx, "b1"); err != nil {
		t.Fatal(err)
	}
	_, err = h.WrapFirstKeys(ctx, generatedRequest(t, h, "b1", testEID, testAID))
	if err == nil || !strings.Contains(err.Error(), "RSA-OAEP-sha256") || errors.Is(err, keyport.ErrUnavailable) {
		t.Fatalf("err = %v", err)
	}
}
