package smpp_test

import (
	"bufio"
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"os/exec"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keyport/keyport/cardlink/smpp"
)

// bareSubmitRate runs testdata/bareclient.pl, a bare Net::SMPP client
// sending the same short message with the same window, against s and
// returns its submits a second: the SMSC's own rate, the baseline.
func bareSubmitRate(b *testing.B, s *testSMSC, n, window int, sm []byte) float64 {
	b.Helper()
	out, err := exec.Command("perl", "testdata/bareclient.pl", "--port", strconv.Itoa(s.port), "--n", strconv.Itoa(n),
		"--window", strconv.Itoa(window), "--hex", hex.EncodeToString(sm)).Output()
	if err != nil {
		b.Fatalf("bareclient.pl: %v", err)
	}
	var r struct {
		N       int     `json:"n"`
		Seconds float64 `json:"seconds"`
	}
	if err := json.Unmarshal(out, &r); err != nil || r.N != n || r.Seconds <= 0 {
		b.Fatalf("bareclient.pl said %q: %v", out, err)
	}
	return float64(r.N) / r.Seconds
}

// rawSubmitRate is the second baseline: a minimal client that writes
// pre-encoded submit_sm PDUs with window outstanding and counts the
// responses, with none of the ESME's bookkeeping (no Send, no pacing, no
// resend), so the SMSC itself is the limit.
func rawSubmitRate(b *testing.B, s *testSMSC, n, window int, sm []byte) float64 {
	b.Helper()
	conn, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", s.port))
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	bind, _ := smpp.Bind{SystemID: "keyport", Password: "secret"}.Encode()
	if _, err := conn.Write(smpp.PDU{ID: smpp.BindTransceiver, Seq: 1, Body: bind}.Marshal()); err != nil {
		b.Fatal(err)
	}
	r := bufio.NewReader(conn)
	if p, err := smpp.ReadPDU(r); err != nil || p.Status != smpp.StatusOK {
		b.Fatalf("raw bind: %+v %v", p, err)
	}
	body, _ := smpp.ShortMessage{Source: "1234", DestTON: 1, DestNPI: 1, Dest: "491700000000",
		ESMClass: 0x40, ProtocolID: 0x7F, DataCoding: 0xF6, RegisteredDelivery: 1, ShortMessage: sm}.Encode()
	start := time.Now()
	sent, done := 0, 0
	for done < n {
		for sent-done < window && sent < n {
			sent++
			if _, err := conn.Write(smpp.PDU{ID: smpp.SubmitSM, Seq: uint32(sent + 1), Body: body}.Marshal()); err != nil {
				b.Fatal(err)
			}
		}
		p, err := smpp.ReadPDU(r)
		if err != nil {
			b.Fatal(err)
		}
		switch p.ID {
		case smpp.SubmitSMResp:
			done++
		case smpp.DeliverSM:
			if _, err := conn.Write(smpp.PDU{ID: smpp.DeliverSMResp, Seq: p.Seq, Body: []byte{0}}.Marshal()); err != nil {
				b.Fatal(err)
			}
		}
	}
	return float64(n) / time.Since(start).Seconds()
}

// BenchmarkSubmit measures Send (one single-segment SIM data download,
// window 10, no rate limit, receipts acknowledged) against the Net::SMPP
// SMSC, beside the same SMSC's rate in the same run from a bare Net::SMPP
// client (bare-submit/s) and from a minimal pre-encoded client
// (raw-submit/s).
func BenchmarkSubmit(b *testing.B) {
	s := startSMSC(b)
	pkt := packet(20, 1)
	ud, _ := smpp.Segments(pkt, 0)
	base := bareSubmitRate(b, s, 1000, smpp.DefaultWindow, ud[0])
	raw := rawSubmitRate(b, s, 2000, smpp.DefaultWindow, ud[0])

	var receipts atomic.Int64
	e := newESME(b, s.url(""), smpp.Handlers{Receipt: func(smpp.Receipt) error { receipts.Add(1); return nil }})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	if _, err := e.Send(ctx, "491700000000", pkt); err != nil { // bound before the clock starts
		b.Fatal(err)
	}
	var i atomic.Int64
	b.SetParallelism(smpp.DefaultWindow) // enough senders to keep the window full
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			to := fmt.Sprintf("49170%07d", i.Add(1)%1000)
			if _, err := e.Send(ctx, to, pkt); err != nil {
				b.Error(err)
				return
			}
		}
	})
	rate := float64(b.N) / time.Since(start).Seconds()
	b.StopTimer()
	// The machine is shared: the raw baseline is taken before and after
	// and averaged, so a burst of other load counts against both sides.
	raw = (raw + rawSubmitRate(b, s, 2000, smpp.DefaultWindow, ud[0])) / 2
	b.ReportMetric(rate, "submit/s")
	b.ReportMetric(base, "bare-submit/s")
	b.ReportMetric(rate/base, "ratio-to-bare")
	b.ReportMetric(raw, "raw-submit/s")
	b.ReportMetric(rate/raw, "ratio-to-raw")
}
