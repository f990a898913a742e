package gp

import "testing"

type diversificationVectors struct {
	Source    string            `json:"source"`
	Templates map[string]string `json:"templates"`
	NoteKDD   string            `json:"note_kdd"`
	Vectors   map[string]struct {
		MasterKey   string            `json:"master_key"`
		KDD         string            `json:"kdd"`
		Derived     map[string]string `json:"derived"`
		ExpectedKCV map[string]string `json:"expected_kcv_from_source"`
		ExpectedENC string            `json:"expected_ENC"`
	} `json:"vectors"`
}

// TestKeyDiversificationMatchesGPPro derives every key of
// key_diversification.json and checks the published KCVs.
func TestKeyDiversificationMatchesGPPro(t *testing.T) {
	var v diversificationVectors
	loadVectors(t, "key_diversification.json", &v)
	cov := newCoverage(t, "key_diversification.json vectors")
	kts := map[string]byte{"ENC": DiversifyENC, "MAC": DiversifyMAC, "DEK": DiversifyDEK}
	for name, x := range v.Vectors {
		cov.use(name)
		mk, kdd := unhex(t, x.MasterKey), unhex(t, x.KDD)
		derive := func(kt byte) ([]byte, error) {
			switch name {
			case "emv":
				return DiversifyEMV(mk, kdd, kt)
			case "visa2":
				return DiversifyVisa2(mk, kdd, kt)
			}
			return DiversifyKDF3(AESKey(mk), kdd, kt)
		}
		if x.ExpectedENC != "" {
			k, err := derive(DiversifyENC)
			if err != nil || hexs(k) != x.ExpectedENC {
				t.Errorf("%s: ENC %X %v, want %s", name, k, err, x.ExpectedENC)
			}
			continue
		}
		for kn, want := range x.Derived {
			k, err := derive(kts[kn])
			if err != nil || hexs(k) != want {
				t.Errorf("%s %s: %X %v, want %s", name, kn, k, err, want)
				continue
			}
			kcv, err := KCVDES(k)
			if len(k) != 16 || name[:3] == "kdf" {
				kcv, err = KCV(k)
			}
			if err != nil || hexs(kcv) != x.ExpectedKCV[kn] {
				t.Errorf("%s %s KCV %X %v, want %s", name, kn, kcv, err, x.ExpectedKCV[kn])
			}
		}
	}
	cov.check(keysOf(v.Vectors))
}
