package gp

import (
	"bytes"
	"testing"
)

// Fuzz targets of the SCP80 and SMS-PP decoders (seed corpora in
// testdata/fuzz/<FuzzName>/).

func fuzzOTAKeys(f *testing.F) OTAKeys {
	kic, err := NewOTAKey(OTAAlgAES, unhex(f, sja5AESKIc))
	if err != nil {
		f.Fatal(err)
	}
	kid, err := NewOTAKey(OTAAlgAES, unhex(f, sja5AESKID))
	if err != nil {
		f.Fatal(err)
	}
	return OTAKeys{KIc: 0x12, KID: 0x12, Cipher: kic, MAC: kid}
}

func FuzzParseCommandPacket(f *testing.F) {
	keys := fuzzOTAKeys(f)
	for _, v := range scp80Vectors {
		if v.cmd != "" && !v.fromCHL {
			f.Add(unhex(f, v.cmd))
		}
	}
	p := CommandPacket{SPI: SPI{Integrity: IntegrityCC, Ciphered: true, Counter: CounterHigher, PoR: PoRAlways, PoRIntegrity: IntegrityCC},
		KIc: 0x12, KID: 0x12, Counter: 1, Data: unhex(f, "811F831D8404020281828504000201018607B000250301020389068A008B008C00")}
	if b, err := p.Seal(keys); err == nil {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		sp, err := ParseCommandPacket(b)
		if err != nil {
			return
		}
		_, _ = sp.Counter()
		p, err := sp.Open(keys)
		if err != nil {
			if _, ok := PoRStatusOf(err); !ok {
				t.Fatalf("%X: Open error without a PoR status: %v", b, err)
			}
			return
		}
		// What opens seals again into a packet that opens to the same data.
		again, err := p.Seal(keys)
		if err != nil {
			t.Fatalf("%X: reseal: %v", b, err)
		}
		sp2, err := ParseCommandPacket(again)
		if err != nil {
			t.Fatalf("%X: resealed %X does not parse: %v", b, again, err)
		}
		q, err := sp2.Open(keys)
		if err != nil || !bytes.Equal(q.Data, p.Data) || q.Counter != p.Counter {
			t.Fatalf("%X: resealed %X opens to %+v, %v", b, again, q, err)
		}
	})
}

func FuzzOpenSMSPoR(f *testing.F) {
	keys := fuzzOTAKeys(f)
	for _, v := range scp80Vectors {
		if v.por != "" {
			f.Add(unhex(f, v.por), v.spi[1])
		}
	}
	// A plain "counter low" PoR (no CC), refused under an SPI asking for one.
	f.Add(unhex(f, "027100000B0A000000000000002A0002"), byte(0x09))
	f.Fuzz(func(t *testing.T, b []byte, spi2 byte) {
		spi, err := ParseSPI(0, spi2)
		if err != nil {
			return
		}
		r, err := OpenSMSPoR(b, spi, keys)
		if err != nil {
			return
		}
		_ = r.Status.String()
		// What opens under an SPI asking for a CC carried one (RHL 12):
		// a PoR without it is never taken as authenticated.
		if spi.PoRIntegrity == IntegrityCC && b[5] != 0x12 {
			t.Fatalf("%X: opened under SPI ..%02X without a CC: %+v", b, spi2, r)
		}
		again, err := r.SealSMS(spi, keys)
		if err != nil {
			t.Fatalf("%X: reseal: %v", b, err)
		}
		r2, err := OpenSMSPoR(again, spi, keys)
		if err != nil || !bytes.Equal(r2.Data, r.Data) || r2.Status != r.Status || r2.Counter != r.Counter {
			t.Fatalf("%X: resealed %X: %+v, %v", b, again, r2, err)
		}
	})
}

func FuzzParseSMSDeliver(f *testing.F) {
	f.Add(unhex(f, "400881214365877ff62270520000000003027000"))
	f.Add(unhex(f, "040B914477123456F87FF6000000000000000603027000AABB"))
	f.Fuzz(func(t *testing.T, b []byte) {
		d, err := ParseSMSDeliver(b)
		if err != nil {
			return
		}
		out, err := d.Bytes()
		if err != nil || !bytes.Equal(out, b) {
			t.Fatalf("%X → %X, %v", b, out, err)
		}
		if d.UDHI {
			_, _ = ParseUserData(d.UserData)
			_, _ = JoinSMSPP([][]byte{d.UserData})
		}
	})
}

func FuzzJoinSMSPP(f *testing.F) {
	f.Add(unhex(f, "027000AABB"), unhex(f, ""))
	f.Add(unhex(f, "0700034202017000AABB"), unhex(f, "05000342020201CC"))
	f.Fuzz(func(t *testing.T, a, b []byte) {
		if u, err := ParseUserData(a); err == nil && !bytes.Equal(u.Bytes(), a) {
			t.Fatalf("%X → %X", a, u.Bytes())
		}
		_, _ = JoinSMSPP([][]byte{a})
		_, _ = JoinSMSPP([][]byte{a, b})
	})
}

func FuzzParseCAT(f *testing.F) {
	f.Add(unhex(f, "D10D8202838186039111228B024000"))
	f.Add(unhex(f, "D022810301400182028182350702010304020003390205783C03021F903E0521C0A80001"))
	f.Add(unhex(f, "81030140018202828183010038028100"))
	f.Add(unhex(f, "811F831D8404020281828504000201018607B000250301020389068A008B008C00"))
	f.Fuzz(func(t *testing.T, b []byte) {
		if e, err := ParseSMSPPDownload(b); err == nil {
			if _, err := ParseSMSPPDownload(e.Bytes()); err != nil {
				t.Fatalf("%X: re-encoded %X: %v", b, e.Bytes(), err)
			}
		}
		if p, err := ParseProactiveCommand(b); err == nil {
			q, err := ParseProactiveCommand(p.Bytes())
			if err != nil || q.Type != p.Type || !bytes.Equal(q.Objects, p.Objects) {
				t.Fatalf("%X: re-encoded %X: %v", b, p.Bytes(), err)
			}
		}
		if r, err := ParseTerminalResponse(b); err == nil {
			if _, err := ParseTerminalResponse(r.Bytes()); err != nil {
				t.Fatalf("%X: re-encoded %X: %v", b, r.Bytes(), err)
			}
		}
		if a, err := ParseAdminTrigger(b); err == nil {
			if _, err := OpenChannel(1, a.Connection); err != nil {
				t.Fatalf("%X: trigger connection parameters do not make an OPEN CHANNEL: %v", b, err)
			}
		}
	})
}
