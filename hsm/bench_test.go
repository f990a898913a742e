package hsm_test

import (
	"testing"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/hsm"
	"github.com/keyport/keyport/hsm/hsmtest"
)

// benchHSM opens a token with a derived batch and an RSA-3072 recipient.
func benchHSM(b *testing.B) (*hsm.HSM, keyport.FirstKeysRequest) {
	b.Helper()
	h := hsmtest.Open(b)
	if err := h.CreateBatchMaster(ctx, "b1"); err != nil {
		b.Fatal(err)
	}
	sp, _ := keys(b)
	return h, keyport.FirstKeysRequest{Batch: "b1", Source: keyport.KeyDerived, EID: testEID, AID: testAID, Recipient: &sp.PublicKey}
}

// run benchmarks op on one goroutine and on GOMAXPROCS goroutines.
func run(b *testing.B, op func() error) {
	b.Run("serial", func(b *testing.B) {
		for b.Loop() {
			if err := op(); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if err := op(); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
}

// BenchmarkDeriveWrapFirstKeys: one domain's three first keys derived,
// KCV'd and RSA-AES-wrapped to an RSA-3072 key.
func BenchmarkDeriveWrapFirstKeys(b *testing.B) {
	h, req := benchHSM(b)
	run(b, func() error {
		_, err := h.WrapFirstKeys(ctx, req)
		return err
	})
}

// BenchmarkRawClaimWork is the HSM work of one claim: the three first keys
// derived and wrapped, and the key package signed. It is the baseline for
// the portal's claims/s.
func BenchmarkRawClaimWork(b *testing.B) {
	h, req := benchHSM(b)
	payload := make([]byte, 1500)
	run(b, func() error {
		if _, err := h.WrapFirstKeys(ctx, req); err != nil {
			return err
		}
		_, err := h.SignES256(ctx, payload)
		return err
	})
}

// BenchmarkSignES256 signs a key-package-sized payload with the receipt key.
func BenchmarkSignES256(b *testing.B) {
	h, _ := benchHSM(b)
	payload := make([]byte, 1500)
	run(b, func() error {
		_, err := h.SignES256(ctx, payload)
		return err
	})
}
