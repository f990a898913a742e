package hsm_test

import (
	"bufio"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/miekg/pkcs11"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/hsm"
	"github.com/keyport/keyport/hsm/hsmtest"
	"github.com/keyport/keyport/keywrap"
)

// The PIN holder: someone with the token's user PIN and a PKCS#11 session of
// their own, in their own process, who tries every way to a readable card
// key. The test binary runs itself as that process (pinHolderEnv set), with
// nothing of keyport's but the blobs the database holds, and speaks PKCS#11
// through miekg/pkcs11 directly.
const pinHolderEnv = "KEYPORT_TEST_PIN_HOLDER"

func init() {
	if os.Getenv(pinHolderEnv) != "" {
		os.Exit(pinHolder(os.Getenv(pinHolderEnv)))
	}
}

// pinHolderJob is what the test hands the PIN holder.
type pinHolderJob struct {
	Module, Label, PIN string
	Blobs              map[string]string // name → hex of a stored blob
}

// pinHolderReport is what the PIN holder found.
type pinHolderReport struct {
	SecretKeys []string // labels of the token's secret keys
	// Broken lists every attempt that gave a readable value or a
	// derive-capable key: it must stay empty.
	Broken []string
	// Refused counts the attempts the token refused.
	Refused int
}

func pinHolder(jobFile string) int {
	var job pinHolderJob
	b, err := os.ReadFile(jobFile)
	if err == nil {
		err = json.Unmarshal(b, &job)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	rep, err := attack(job)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	json.NewEncoder(os.Stdout).Encode(rep)
	return 0
}

func attack(job pinHolderJob) (*pinHolderReport, error) {
	p := pkcs11.New(job.Module)
	if p == nil {
		return nil, fmt.Errorf("cannot load %s", job.Module)
	}
	if err := p.Initialize(); err != nil {
		return nil, err
	}
	slots, err := p.GetSlotList(true)
	if err != nil {
		return nil, err
	}
	slot, found := uint(0), false
	for _, s := range slots {
		if ti, err := p.GetTokenInfo(s); err == nil && ti.Label == job.Label {
			slot, found = s, true
		}
	}
	if !found {
		return nil, fmt.Errorf("no token %q", job.Label)
	}
	sh, err := p.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		return nil, err
	}
	if err := p.Login(sh, pkcs11.CKU_USER, job.PIN); err != nil {
		return nil, err
	}
	rep := &pinHolderReport{}
	A := pkcs11.NewAttribute
	refused := func(err error) bool {
		if err != nil {
			rep.Refused++
		}
		return err != nil
	}
	readable := func(o pkcs11.ObjectHandle) bool {
		v, err := p.GetAttributeValue(sh, o, []*pkcs11.Attribute{A(pkcs11.CKA_VALUE, nil)})
		return err == nil && len(v) == 1 && len(v[0].Value) > 0
	}
	// widen tries to give o each usage that would read a key, in place and
	// in a copy; every one must be refused.
	widen := func(rep *pinHolderReport, what string, o pkcs11.ObjectHandle) {
		for _, u := range []uint{pkcs11.CKA_DECRYPT, pkcs11.CKA_ENCRYPT, pkcs11.CKA_DERIVE, pkcs11.CKA_UNWRAP} {
			name := pkcs11.NewAttribute(u, true)
			if err := p.SetAttributeValue(sh, o, []*pkcs11.Attribute{name}); !refused(err) {
				rep.Broken = append(rep.Broken, fmt.Sprintf("%s: C_SetAttributeValue gave it usage 0x%x", what, u))
			}
			if c, err := p.CopyObject(sh, o, []*pkcs11.Attribute{name}); !refused(err) {
				rep.Broken = append(rep.Broken, fmt.Sprintf("%s: C_CopyObject gave a copy usage 0x%x", what, u))
				p.DestroyObject(sh, c)
			}
		}
		if err := p.SetAttributeValue(sh, o, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_MODIFIABLE, true)}); !refused(err) {
			rep.Broken = append(rep.Broken, what+": made modifiable")
		}
	}
	// The PIN holder's own key: extractable, readable, can do anything.
	mine, err := p.CreateObject(sh, []*pkcs11.Attribute{A(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY), A(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		A(pkcs11.CKA_TOKEN, false), A(pkcs11.CKA_VALUE, make([]byte, 32)), A(pkcs11.CKA_WRAP, true), A(pkcs11.CKA_UNWRAP, true),
		A(pkcs11.CKA_ENCRYPT, true), A(pkcs11.CKA_DECRYPT, true), A(pkcs11.CKA_SENSITIVE, false), A(pkcs11.CKA_EXTRACTABLE, true)})
	if err != nil {
		return nil, err
	}

	if err := p.FindObjectsInit(sh, []*pkcs11.Attribute{A(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY)}); err != nil {
		return nil, err
	}
	keys, _, err := p.FindObjects(sh, 1000)
	p.FindObjectsFinal(sh)
	if err != nil {
		return nil, err
	}
	kwp := []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_WRAP_PAD, nil)}
	for _, k := range keys {
		if k == mine {
			continue
		}
		attrs, err := p.GetAttributeValue(sh, k, []*pkcs11.Attribute{A(pkcs11.CKA_LABEL, nil), A(pkcs11.CKA_DERIVE, nil)})
		if err != nil {
			return nil, err
		}
		label := string(attrs[0].Value)
		rep.SecretKeys = append(rep.SecretKeys, label)
		if len(attrs[1].Value) == 1 && attrs[1].Value[0] == 1 {
			rep.Broken = append(rep.Broken, label+": CKA_DERIVE is true")
		}
		// 1. Read the key itself.
		if readable(k) {
			rep.Broken = append(rep.Broken, label+": CKA_VALUE readable")
		} else {
			rep.Refused++
		}
		// 2. Wrap it under my own key.
		if _, err := p.WrapKey(sh, kwp, mine, k); !refused(err) {
			rep.Broken = append(rep.Broken, label+": wrapped under the PIN holder's key")
		}
		// 3. Derive a readable key from it (ECB of chosen data, the old
		// masters' mechanism).
		mech, free := hsm.DerivationMechanismForTest(make([]byte, 16))
		d, err := p.DeriveKey(sh, mech, k, []*pkcs11.Attribute{A(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
			A(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES), A(pkcs11.CKA_VALUE_LEN, 16), A(pkcs11.CKA_TOKEN, false), A(pkcs11.CKA_SENSITIVE, false)})
		free()
		if !refused(err) {
			rep.Broken = append(rep.Broken, label+": C_DeriveKey succeeded")
			p.DestroyObject(sh, d)
		}
		// 4. Give it a usage it was made without, in place or in a copy:
		// a decrypting transport key undoes AES-KWP with its AES-ECB.
		widen(rep, label, k)
		// 5. Unwrap every stored blob under it, in every way that would
		// give a readable key or a tool to read one.
		base := []*pkcs11.Attribute{A(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY), A(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES), A(pkcs11.CKA_TOKEN, false)}
		policy := []*pkcs11.Attribute{A(pkcs11.CKA_SENSITIVE, true), A(pkcs11.CKA_DECRYPT, false), A(pkcs11.CKA_UNWRAP, false), A(pkcs11.CKA_DERIVE, false)}
		tries := map[string][]*pkcs11.Attribute{
			"non-sensitive":                 append(base[:3:3], A(pkcs11.CKA_SENSITIVE, false)),
			"non-sensitive, else compliant": append(append(base[:3:3], A(pkcs11.CKA_SENSITIVE, false)), policy[1:]...),
			"silent template":               base,
			"sensitive but can decrypt":     append(append(base[:3:3], policy[0]), A(pkcs11.CKA_DECRYPT, true), A(pkcs11.CKA_UNWRAP, false), A(pkcs11.CKA_DERIVE, false)),
			"sensitive but can unwrap":      append(append(base[:3:3], policy[0]), A(pkcs11.CKA_DECRYPT, false), A(pkcs11.CKA_UNWRAP, true), A(pkcs11.CKA_DERIVE, false)),
			"sensitive but can derive":      append(append(base[:3:3], policy[0]), A(pkcs11.CKA_DECRYPT, false), A(pkcs11.CKA_UNWRAP, false), A(pkcs11.CKA_DERIVE, true)),
			"as a generic secret":           {A(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY), A(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_GENERIC_SECRET), A(pkcs11.CKA_TOKEN, false), A(pkcs11.CKA_SENSITIVE, false)},
		}
		for name, hexBlob := range job.Blobs {
			blob, _ := hex.DecodeString(hexBlob)
			for how, tmpl := range tries {
				o, err := p.UnwrapKey(sh, kwp, k, blob, tmpl)
				if refused(err) {
					continue
				}
				if readable(o) {
					rep.Broken = append(rep.Broken, fmt.Sprintf("%s under %s, %s: CKA_VALUE readable", name, label, how))
				} else {
					rep.Broken = append(rep.Broken, fmt.Sprintf("%s under %s, %s: unwrapped", name, label, how))
				}
				p.DestroyObject(sh, o)
			}
			// The one path the token cannot close (README, "What the token
			// cannot stop"): a first key unwrapped as the policy demands,
			// extractable, wrapped under the PIN holder's own key. Counted,
			// not hidden: only keys that leave the HSM by design (first
			// keys, to their provider) may be extractable.
			// A key unwrapped as the policy demands must keep what it was
			// given: the template holds after the unwrap too.
			if o, err := p.UnwrapKey(sh, kwp, k, blob, append(base[:3:3], policy...)); err == nil {
				widen(rep, name+" unwrapped under "+label, o)
				p.DestroyObject(sh, o)
			} else {
				rep.Refused++
			}
			o, err := p.UnwrapKey(sh, kwp, k, blob, append(append(base[:3:3], policy...), A(pkcs11.CKA_EXTRACTABLE, true)))
			if err == nil {
				if _, werr := p.WrapKey(sh, kwp, mine, o); werr == nil && !strings.HasPrefix(name, "first/") {
					rep.Broken = append(rep.Broken, fmt.Sprintf("%s under %s: unwrapped extractable and wrapped out", name, label))
				}
				p.DestroyObject(sh, o)
			} else {
				rep.Refused++
			}
		}
	}
	// 6. Destroy each, last: the ISD KEK's loss is every ISD key's, and a
	// destroyed key's label is free for a look-alike.
	for _, k := range keys {
		if k == mine {
			continue
		}
		attrs, _ := p.GetAttributeValue(sh, k, []*pkcs11.Attribute{A(pkcs11.CKA_LABEL, nil)})
		if err := p.DestroyObject(sh, k); !refused(err) {
			rep.Broken = append(rep.Broken, string(attrs[0].Value)+": destroyed")
		}
	}
	return rep, nil
}

func TestAPINHolderWithTheirOwnSessionCannotReadAnyCardKey(t *testing.T) {
	h, tok := hsmtest.OpenToken(t)
	if err := h.CreateBatchKEK(ctx, "b1"); err != nil {
		t.Fatal(err)
	}
	tkey, _ := transport(t, h)
	job := pinHolderJob{Module: hsmtest.ModulePath, Label: tok.Label, PIN: tok.UserPIN, Blobs: map[string]string{}}
	for u, b := range domainBlobs(t, h, "b1", testEID, testAID) {
		job.Blobs["first/"+string(u)] = hex.EncodeToString(b)
	}
	isd, err := h.GenerateKeys(ctx, "", keyport.GPTestKey)
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range isd {
		job.Blobs["isd/"+string(g.Usage)] = hex.EncodeToString(g.Wrapped)
	}
	imported, err := keywrap.WrapKWP(tkey, make([]byte, 16))
	if err != nil {
		t.Fatal(err)
	}
	job.Blobs["first/imported"] = hex.EncodeToString(imported)
	// The blobs are good: keyport itself uses each one.
	if _, err := h.KeyKCV(ctx, keyport.ISDKey(testEID, testAID, keyport.UsageENC, isd[0].Wrapped)); err != nil {
		t.Fatal(err)
	}
	if _, err := h.ImportedKCV(ctx, "imp", imported); err != nil {
		t.Fatal(err)
	}

	jobFile := filepath.Join(t.TempDir(), "job.json")
	b, _ := json.Marshal(job)
	if err := os.WriteFile(jobFile, b, 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), pinHolderEnv+"="+jobFile, "SOFTHSM2_CONF="+tok.Conf)
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("the PIN holder's process: %v\n%s", err, out)
	}
	var rep pinHolderReport
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "{") {
			if err := json.Unmarshal(sc.Bytes(), &rep); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, want := range []string{hsm.LabelISDKEK, hsm.BatchKEKLabel("b1"), hsm.TransportLabel("imp"), hsm.LabelAudit, hsm.LabelSealEnc, hsm.LabelSealMAC} {
		if !strings.Contains(strings.Join(rep.SecretKeys, "\n"), want) {
			t.Errorf("the PIN holder did not see %s among the token's keys %v: the attack did not run", want, rep.SecretKeys)
		}
	}
	if len(rep.Broken) > 0 {
		t.Fatalf("the PIN holder got through:\n%s", strings.Join(rep.Broken, "\n"))
	}
	// 6 keys × (read, wrap, derive, 9 widenings, destroy) + 3 unwrapping
	// keys × 7 blobs × 8 ways at the least: that the count is high shows
	// the attempts were made.
	if rep.Refused < 6*13+3*7*8 {
		t.Fatalf("only %d refused attempts: the attack did not run in full", rep.Refused)
	}
	t.Logf("the token refused %d attempts on %d secret keys", rep.Refused, len(rep.SecretKeys))
}
