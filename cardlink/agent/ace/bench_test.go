package ace_test

import (
	"bytes"
	"slices"
	"testing"
	"time"

	"github.com/keyport/keyport/cardlink/agent/ace"
	"github.com/keyport/keyport/cardlink/agent/ace/acetest"
	"github.com/keyport/keyport/gp"
)

// cplcReads is how many GET DATA CPLC (45 bytes each) make the benchmark's
// 1 KB read.
const cplcReads = 23

func median(d []time.Duration) time.Duration {
	slices.Sort(d)
	return d[len(d)/2]
}

func benchHandset(b *testing.B) (*acetest.Handset, acetest.App, *ace.AppClient) {
	hs := acetest.NewHandset(b)
	app := acetest.NewApp(b, "bench")
	hs.Issuer.StoreRule(gp.AccessRule{AID: acetest.SSDAID, DeviceAppID: app.SHA256(), APDU: []byte{0x01}})
	_, socket := hs.Serve(b)
	c, err := ace.DialApp(b.Context(), socket)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	return hs, app, c
}

// BenchmarkEnforcerRelayedAPDUVsBare measures, in the same run, one GET DATA
// CPLC sent bare (ebfe/scard → pcscd → vpcd → vcard, the basic channel, as
// vcard's BenchmarkAPDURoundTrip) and one relayed by the enforcer on an open
// channel (app socket → enforcer → pcscd → …), alternately.
func BenchmarkEnforcerRelayedAPDUVsBare(b *testing.B) {
	hs, app, c := benchHandset(b)
	if _, err := c.Open(app.PEM, acetest.SSDAID, ""); err != nil {
		b.Fatal(err)
	}
	if _, err := hs.Env.TransmitErr(gp.Select(acetest.SSDAID).Bytes()); err != nil {
		b.Fatal(err)
	}
	apdu := gp.GetData(gp.DataCPLC).Bytes()
	bare := make([]time.Duration, 0, b.N)
	relayed := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for range b.N {
		start := time.Now()
		r, err := hs.Env.TransmitErr(apdu)
		bare = append(bare, time.Since(start))
		if err != nil || !bytes.HasSuffix(r, []byte{0x90, 0x00}) {
			b.Fatalf("bare GET DATA: %X %v", r, err)
		}
		start = time.Now()
		r, err = c.Transmit(apdu)
		relayed = append(relayed, time.Since(start))
		if err != nil || !bytes.HasSuffix(r, []byte{0x90, 0x00}) {
			b.Fatalf("relayed GET DATA: %X %v", r, err)
		}
	}
	b.StopTimer()
	mb, mr := median(bare), median(relayed)
	b.ReportMetric(float64(mb.Microseconds()), "bare-median-µs")
	b.ReportMetric(float64(mr.Microseconds()), "relayed-median-µs")
	b.ReportMetric(float64(mr)/float64(mb), "relayed/bare")
}

// BenchmarkEnforcerOpenAnd1KBReadVsBare measures, in the same run, an app
// session through the enforcer (open: ARA-M refresh tag on a channel of its
// own, MANAGE CHANNEL, SELECT; then 23 GET DATA CPLC, 1035 bytes; close)
// against the same reads bare on the basic channel (SELECT, 23 GET DATA).
func BenchmarkEnforcerOpenAnd1KBReadVsBare(b *testing.B) {
	hs, app, c := benchHandset(b)
	sel, apdu := gp.Select(acetest.SSDAID).Bytes(), gp.GetData(gp.DataCPLC).Bytes()
	bare := make([]time.Duration, 0, b.N)
	session := make([]time.Duration, 0, b.N)
	read := 0
	b.ResetTimer()
	for range b.N {
		start := time.Now()
		if _, err := hs.Env.TransmitErr(sel); err != nil {
			b.Fatal(err)
		}
		for range cplcReads {
			if r, err := hs.Env.TransmitErr(apdu); err != nil || len(r) != 47 {
				b.Fatalf("bare GET DATA: %X %v", r, err)
			}
		}
		bare = append(bare, time.Since(start))

		start = time.Now()
		if _, err := c.Open(app.PEM, acetest.SSDAID, ""); err != nil {
			b.Fatal(err)
		}
		read = 0
		for range cplcReads {
			r, err := c.Transmit(apdu)
			if err != nil || len(r) != 47 {
				b.Fatalf("relayed GET DATA: %X %v", r, err)
			}
			read += len(r) - 2
		}
		if err := c.CloseChannel(); err != nil {
			b.Fatal(err)
		}
		session = append(session, time.Since(start))
	}
	b.StopTimer()
	mb, ms := median(bare), median(session)
	b.ReportMetric(float64(read), "bytes-read/op")
	b.ReportMetric(float64(mb.Microseconds()), "bare-median-µs")
	b.ReportMetric(float64(ms.Microseconds()), "enforcer-median-µs")
	b.ReportMetric(float64(ms)/float64(mb), "enforcer/bare")
}
