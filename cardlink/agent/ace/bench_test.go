package ace_test

import (
	"bytes"
	"context"
	"crypto/rand"
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

func median(d []time.Duration) time.Duration { return percentile(d, 50) }

// percentile is the p-th percentile of d (nearest rank; d is sorted).
func percentile(d []time.Duration, p int) time.Duration {
	slices.Sort(d)
	i := (len(d)*p + 99) / 100
	return d[max(i-1, 0)]
}

// reportPercentiles reports the p50 and p99 of d in µs as name-p50-µs and
// name-p99-µs.
func reportPercentiles(b *testing.B, name string, d []time.Duration) {
	b.ReportMetric(float64(percentile(d, 50).Microseconds()), name+"-p50-µs")
	b.ReportMetric(float64(percentile(d, 99).Microseconds()), name+"-p99-µs")
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
	reportPercentiles(b, "bare", bare)
	reportPercentiles(b, "relayed", relayed)
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
	reportPercentiles(b, "bare", bare)
	reportPercentiles(b, "enforcer", session)
	b.ReportMetric(float64(ms)/float64(mb), "enforcer/bare")
}

// dataObjects1KB are the provider's 1 KB in data objects of at most 236
// bytes (gp/dataobj.go).
func dataObjects1KB() []gp.DGI {
	data := make([]byte, 1024)
	rand.Read(data)
	var objs []gp.DGI
	for off := 0; off < len(data); off += gp.MaxDataObject {
		objs = append(objs, gp.DGI{Tag: 0x0101 + uint16(len(objs)), Data: data[off:min(off+gp.MaxDataObject, len(data))]})
	}
	return objs
}

// readObjects opens SCP03 at level 33 with keys on the SD selected behind
// h and reads objs with GET DATA; it returns the bytes read.
func readObjects(b *testing.B, h *gp.Host, keys gp.KeySet, objs []gp.DGI) int {
	ctx := context.Background()
	if _, err := h.Open(ctx, keys, 0x33); err != nil {
		b.Fatal(err)
	}
	n := 0
	for _, o := range objs {
		r, err := h.SendOK(ctx, gp.GetDataObject(o.Tag))
		if err != nil {
			b.Fatal(err)
		}
		v, err := gp.ParseDataObject(o.Tag, r)
		if err != nil || !bytes.Equal(v, o.Data) {
			b.Fatalf("DGI %04X: %X %v", o.Tag, v, err)
		}
		n += len(v)
	}
	return n
}

// BenchmarkEnforcerOpenAndSCP03DataReadVsBare measures, in the same run
// and alternately, what the live data path costs on the handset: an app's
// channel open through the enforcer (refresh tag, MANAGE CHANNEL, SELECT)
// plus an SCP03 session at level 33 reading the provider's 1 KB of data
// objects (INITIALIZE UPDATE, EXTERNAL AUTHENTICATE, five GET DATA, every
// answer R-MAC checked and R-ENC decrypted) and the close, against the
// same session bare on the basic channel (SELECT, the handshake, five GET
// DATA) and against one bare APDU round trip (GET DATA CPLC through
// ebfe/scard → pcscd → vpcd → vcard). It reports p50 and p99 of each.
func BenchmarkEnforcerOpenAndSCP03DataReadVsBare(b *testing.B) {
	hs, app, c := benchHandset(b)
	keys := acetest.ProviderKeys{KVN: 0x31, ENC: make([]byte, 16), MAC: make([]byte, 16), DEK: make([]byte, 16)}
	for _, k := range [][]byte{keys.ENC, keys.MAC, keys.DEK} {
		rand.Read(k)
	}
	hs.Issuer.Personalize(acetest.SSDAID, keys)
	objs := dataObjects1KB()
	hs.Issuer.StoreDataObjects(acetest.SSDAID, keys, objs)
	ctx := context.Background()
	bareHost := gp.NewHost(gp.ChannelFunc(func(_ context.Context, apdu []byte) ([]byte, error) { return hs.Env.TransmitErr(apdu) }))
	appHost := gp.NewHost(gp.ChannelFunc(func(_ context.Context, apdu []byte) ([]byte, error) { return c.Transmit(apdu) }))
	cplc := gp.GetData(gp.DataCPLC).Bytes()
	apdu := make([]time.Duration, 0, b.N)
	bare := make([]time.Duration, 0, b.N)
	enforcer := make([]time.Duration, 0, b.N)
	read := 0
	b.ResetTimer()
	for range b.N {
		// Untimed: end the basic channel's session of the last round.
		if _, found, err := bareHost.Select(ctx, acetest.SSDAID); err != nil || !found {
			b.Fatalf("SELECT: %v", err)
		}
		start := time.Now()
		if r, err := hs.Env.TransmitErr(cplc); err != nil || len(r) != 47 {
			b.Fatalf("bare GET DATA: %X %v", r, err)
		}
		apdu = append(apdu, time.Since(start))

		start = time.Now()
		if _, found, err := bareHost.Select(ctx, acetest.SSDAID); err != nil || !found {
			b.Fatalf("SELECT: %v", err)
		}
		readObjects(b, bareHost, keys.KeySet(), objs)
		bare = append(bare, time.Since(start))

		start = time.Now()
		if _, err := c.Open(app.PEM, acetest.SSDAID, ""); err != nil {
			b.Fatal(err)
		}
		read = readObjects(b, appHost, keys.KeySet(), objs)
		if err := c.CloseChannel(); err != nil {
			b.Fatal(err)
		}
		enforcer = append(enforcer, time.Since(start))
	}
	b.StopTimer()
	b.ReportMetric(float64(read), "bytes-read/op")
	reportPercentiles(b, "apdu", apdu)
	reportPercentiles(b, "bare-session", bare)
	reportPercentiles(b, "enforcer-session", enforcer)
	b.ReportMetric(float64(median(enforcer))/float64(median(bare)), "enforcer/bare")
	b.ReportMetric(float64(median(enforcer))/float64(median(apdu)), "enforcer/apdu")
}
