package cardlink_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/cardlink/cardlinktest"
	"github.com/keyport/keyport/cardlink/vcard"
	"github.com/keyport/keyport/internal/fixture"
	"github.com/keyport/keyport/perso"
)

// BenchmarkReleaseAgainstPerso measures, in one run on the same SoftHSM
// token and store, a release end to end (request, then one admin session
// through the handset agent: the release dialog, the removal of the access
// rules and keyport's proof session, until the domain is UNASSIGNED)
// against the personalization of a module with one domain, in ms/op.
func BenchmarkReleaseAgainstPerso(b *testing.B) {
	w := cardlinktest.NewIssuerWorld(b, cardlinktest.LinkOptions{NoWorker: true})
	var wk string
	var releaseMS, persoMS float64
	b.Run("release", func(b *testing.B) {
		prov := w.Prov
		for i := 0; b.Loop(); i++ {
			if i > 0 {
				b.StopTimer()
				prov, _, wk = w.Provider(b, fmt.Sprintf("Bench Bank %d", i), fixture.RSAKeys()[0])
				if _, _, err := w.Svc.Claim(ctx, prov, keyport.ClaimRequest{EID: w.EID, AID: w.AID, WrappingKeyID: wk}); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
			start := time.Now()
			if _, err := w.Svc.RequestRelease(ctx, prov, w.EID, w.AID); err != nil {
				b.Fatal(err)
			}
			if _, err := w.Agent().Session(ctx); err != nil {
				b.Fatal(err)
			}
			releaseMS += float64(time.Since(start).Microseconds()) / 1000
			b.StopTimer()
			if d, _ := w.Store.GetDomain(ctx, w.EID, w.AID); d.State != keyport.Unassigned {
				b.Fatalf("domain %s after the release", d.State)
			}
			b.StartTimer()
		}
		releaseMS /= float64(b.N)
		b.ReportMetric(releaseMS, "ms/release")
	})
	b.Run("perso", func(b *testing.B) {
		st := &perso.Station{Service: w.Svc, Keys: w.HSM}
		for i := 0; b.Loop(); i++ {
			b.StopTimer()
			card, err := vcard.New(string(fixture.EID(b, 1000+i)), vcard.Config{})
			if err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
			start := time.Now()
			if _, err := st.Personalize(ctx, fixture.Admin, &cardlinktest.MemCard{Card: card}, perso.Request{Batch: "p1", Domains: 1}); err != nil {
				b.Fatal(err)
			}
			persoMS += float64(time.Since(start).Microseconds()) / 1000
		}
		persoMS /= float64(b.N)
		b.ReportMetric(persoMS, "ms/perso")
	})
	if persoMS > 0 {
		b.Logf("release %.1f ms, perso of one domain %.1f ms: release/perso = %.2f", releaseMS, persoMS, releaseMS/persoMS)
	}
}
