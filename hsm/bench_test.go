package hsm_test

import (
	"testing"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/hsm"
	"github.com/keyport/keyport/hsm/hsmtest"
)

// benchHSM opens a token with a generated batch and an RSA-3072 recipient.
func benchHSM(b *testing.B) (*hsm.HSM, keyport.FirstKeysRequest) {
	b.Helper()
	h := hsmtest.Open(b)
	if err := h.CreateBatchKEK(ctx, "b1"); err != nil {
		b.Fatal(err)
	}
	return h, generatedRequest(b, h, "b1", testEID, testAID)
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

// BenchmarkUnwrapWrapFirstKeys: one domain's three first keys unwrapped
// from their blobs, KCV'd and RSA-AES-wrapped to an RSA-3072 key.
func BenchmarkUnwrapWrapFirstKeys(b *testing.B) {
	h, req := benchHSM(b)
	run(b, func() error {
		_, err := h.WrapFirstKeys(ctx, req)
		return err
	})
}

// BenchmarkRawClaimWork is the HSM work of one claim: the three first keys
// derived and wrapped, and the key package signed. It is the baseline for
// the portal's claims/s.
//
// (The first keys are unwrapped from blobs now, no longer derived.)
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

// BenchmarkModulePSK: what a module's TLS-PSK costs the HSM. "unseal" is
// every admin-session handshake; "new" is one module imported or
// personalized.
func BenchmarkModulePSK(b *testing.B) {
	h := hsmtest.Open(b)
	sealed, err := h.NewModulePSK(ctx, testEID)
	if err != nil {
		b.Fatal(err)
	}
	b.Run("unseal", func(b *testing.B) {
		for b.Loop() {
			if _, err := h.ModulePSK(ctx, testEID, sealed); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("new", func(b *testing.B) {
		for b.Loop() {
			if _, err := h.NewModulePSK(ctx, testEID); err != nil {
				b.Fatal(err)
			}
		}
	})
}
