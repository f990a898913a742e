package hsm_test

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"errors"
	"testing"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/gp"
)

// clearUnderDEK decrypts a GeneratedKey.UnderDEK made under the GP test DEK.
func clearUnderDEK(t *testing.T, ct []byte) []byte {
	t.Helper()
	b, err := aes.NewCipher(keyport.GPTestKey)
	if err != nil {
		t.Fatal(err)
	}
	plain := make([]byte, len(ct))
	cipher.NewCBCDecrypter(b, make([]byte, 16)).CryptBlocks(plain, ct)
	return plain
}

// The HSM's OTA key handles compute what software AES-CBC and AES-CMAC
// compute with the clear key, and seal and open SCP80 packets with it.
func TestOTAKeyRunsAESCBCAndCMACInTheHSM(t *testing.T) {
	h := derivedBatch(t)
	gen, err := h.GenerateKeys(ctx, "", keyport.GPTestKey)
	if err != nil {
		t.Fatal(err)
	}
	kicRef := keyport.ISDKey(testEID, testAID, keyport.UsageENC, gen[0].Wrapped)
	kidRef := keyport.ISDKey(testEID, testAID, keyport.UsageMAC, gen[1].Wrapped)
	soft := func(ct []byte) *gp.OTAKey {
		k, err := gp.NewOTAKey(gp.OTAAlgAES, clearUnderDEK(t, ct))
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	kic, kid := soft(gen[0].UnderDEK), soft(gen[1].UnderDEK)
	hkic, hkid := h.OTAKey(ctx, kicRef), h.OTAKey(ctx, kidRef)

	msg := bytes.Repeat([]byte{0x5A, 0x01, 0xC3}, 16) // 48 bytes: 3 blocks
	want, _ := kic.EncryptCBC(msg)
	got, err := hkic.EncryptCBC(msg)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("EncryptCBC = %X, %v; want %X", got, err, want)
	}
	// Card keys never decrypt (the KEKs' unwrap policy).
	if back, err := hkic.DecryptCBC(got); !errors.Is(err, keyport.ErrForbidden) || back != nil {
		t.Fatalf("DecryptCBC = %X, %v; want ErrForbidden", back, err)
	}
	if _, err := hkic.EncryptCBC(msg[:20]); err == nil {
		t.Fatal("a partial block was ciphered")
	}
	wantCC, _ := kid.Checksum(msg[:21])
	cc, err := hkid.Checksum(msg[:21])
	if err != nil || !bytes.Equal(cc, wantCC) || len(cc) != 8 {
		t.Fatalf("Checksum = %X, %v; want %X", cc, err, wantCC)
	}

	// A packet sealed with the HSM's handles opens with the software keys.
	spi := gp.SPI{Integrity: gp.IntegrityCC, Ciphered: true, Counter: gp.CounterHigher, PoR: gp.PoRAlways,
		PoRIntegrity: gp.IntegrityCC}
	coding := byte(keyport.OTAKVN<<4) | gp.OTAAlgAES
	p := gp.CommandPacket{SPI: spi, KIc: coding, KID: coding, TAR: gp.ISDTAR, Counter: 7, Data: []byte("trigger")}
	sealed, err := p.Seal(gp.OTAKeys{Cipher: hkic, MAC: hkid})
	if err != nil {
		t.Fatal(err)
	}
	sp, err := gp.ParseCommandPacket(sealed)
	if err != nil {
		t.Fatal(err)
	}
	opened, err := sp.Open(gp.OTAKeys{KIc: coding, KID: coding, Cipher: kic, MAC: kid})
	if err != nil || opened.Counter != 7 || string(opened.Data) != "trigger" {
		t.Fatalf("opened %+v, %v", opened, err)
	}
	// The KIc blob does not stand in for the KID's: another key, another checksum.
	if other, err := h.OTAKey(ctx, kicRef).Checksum(msg[:21]); err != nil || bytes.Equal(other, wantCC) {
		t.Fatalf("KIc checksum %X (%v) equals the KID's", other, err)
	}
	if s := h.OTAKey(ctx, kicRef).(interface{ String() string }).String(); bytes.Contains([]byte(s), gen[0].Wrapped) {
		t.Fatalf("the handle prints its blob: %q", s)
	}
}

// GenerateKeysUnder encrypts the new keys under a DEK the HSM keeps.
func TestGenerateKeysUnderEncryptsUnderAKeptDEK(t *testing.T) {
	h := derivedBatch(t)
	isd, err := h.GenerateKeys(ctx, "", keyport.GPTestKey)
	if err != nil {
		t.Fatal(err)
	}
	dekRef := keyport.ISDKey(testEID, testAID, keyport.UsageDEK, isd[2].Wrapped)
	dek := clearUnderDEK(t, isd[2].UnderDEK)
	gen, err := h.GenerateKeysUnder(ctx, "", dekRef)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := aes.NewCipher(dek)
	for _, g := range gen {
		plain := make([]byte, 16)
		cipher.NewCBCDecrypter(b, make([]byte, 16)).CryptBlocks(plain, g.UnderDEK)
		if goKCV(t, plain) != g.KCV {
			t.Fatalf("%s: KCV under the kept DEK %s, want %s", g.Usage, goKCV(t, plain), g.KCV)
		}
		if kcv, err := h.KeyKCV(ctx, keyport.ISDKey(testEID, testAID, g.Usage, g.Wrapped)); err != nil || kcv != g.KCV {
			t.Fatalf("%s: blob KCV %s (%v)", g.Usage, kcv, err)
		}
	}
	if _, err := h.GenerateKeysUnder(ctx, "", keyport.ISDKey(testEID, testAID, keyport.UsageDEK, []byte("not a blob"))); err == nil {
		t.Fatal("a bad DEK blob was accepted")
	}
}
