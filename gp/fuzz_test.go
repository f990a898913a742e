package gp

import (
	"bytes"
	"errors"
	"testing"
)

// Every decoder is fuzzed: it must never panic, and what it accepts must
// survive its encoder where one exists. Seed corpora live in
// testdata/fuzz/<FuzzName>/ and are extended by `go test -fuzz`.

func FuzzParseCommand(f *testing.F) {
	for _, s := range []string{"80F22002", "80CA006600", "00A4040008A00000015100000000", "80CA0066000000", "80E20000000003AABBCC0000", "80E2000000"} {
		f.Add(unhex(f, s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := ParseCommand(b)
		if err != nil {
			return
		}
		// Re-encoding is canonical: parse it again and compare fields.
		d, err := ParseCommand(c.Bytes())
		if err != nil || !bytes.Equal(c.Data, d.Data) || c.Ne != d.Ne || c.INS != d.INS {
			t.Fatalf("%X → %X: %v", b, c.Bytes(), err)
		}
	})
}

func FuzzParseResponse(f *testing.F) {
	f.Add(unhex(f, "9000"))
	f.Add(unhex(f, "01026A88"))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := ParseResponse(b)
		if err == nil && !bytes.Equal(r.Bytes(), b) {
			t.Fatalf("%X → %X", b, r.Bytes())
		}
		if err == nil {
			_ = r.SW.String()
		}
	})
}

func FuzzParseTLV(f *testing.F) {
	for _, s := range []string{"4F02A0B1", "9F700107", "AE80220180000099", "C1820001AA", "E380E3800000000000", "BF3E035A0101"} {
		f.Add(unhex(f, s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		tlvs, err := ParseAllTLV(b)
		if err != nil {
			return
		}
		for _, x := range tlvs {
			if x.Tag.Constructed() {
				_, _ = x.Children()
			}
			y, rest, err := ParseTLV(x.Bytes())
			if err != nil || len(rest) != 0 || y.Tag != x.Tag || !bytes.Equal(y.Value, x.Value) {
				t.Fatalf("%X: re-encoding %X does not parse back: %v", b, x.Bytes(), err)
			}
		}
	})
}

func FuzzParseCPLC(f *testing.F) {
	f.Add(CPLC{ICFabricator: 0x4790, ICSerialNumber: 0x01020304}.Bytes())
	f.Add(make([]byte, 42))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := ParseCPLC(b)
		if err != nil {
			return
		}
		d, err := ParseCPLC(c.Bytes())
		if err != nil || d != c {
			t.Fatalf("CPLC round trip %X: %v", b, err)
		}
	})
}

func FuzzParseGetStatus(f *testing.F) {
	f.Add(unhex(f, "E3144F07A00000015100009F700107C50180EA028000"))
	f.Add(unhex(f, "E3464F08A0000000030000009F700101C5039EFE80CF0140CF0141CF0142CF0143CF0180CF0181CF0182CF0183C40BD276000005AAFFCAFE0001CE020001CC08A000000003000000"))
	f.Fuzz(func(t *testing.T, b []byte) {
		entries, err := ParseGetStatus(b)
		if err != nil {
			return
		}
		for _, e := range entries {
			back, err := ParseGetStatus(e.Bytes())
			if err != nil || len(back) != 1 || !bytes.Equal(back[0].AID, e.AID) || back[0].Privileges != e.Privileges {
				t.Fatalf("registry entry round trip %X: %v", e.Bytes(), err)
			}
		}
	})
}

func FuzzParsePutKey(f *testing.F) {
	f.Add(unhex(f, "80D8308146318811108AEF4B6F9C4C0AD05BBAA8BBC43C8D7F03EE72CB8811104C08B47ABF0C939F5D6FF7E2A35B16A00349B6D588111058CA28775AC649577DA2BF18186478B503FB929200"))
	f.Add(unhex(f, "80D83081433188108AEF4B6F9C4C0AD05BBAA8BBC43C8D7F03EE72CB88104C08B47ABF0C939F5D6FF7E2A35B16A00349B6D5881058CA28775AC649577DA2BF18186478B503FB929200"))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := ParseCommand(b)
		if err != nil {
			return
		}
		p, err := ParsePutKey(c)
		if err != nil {
			return
		}
		d, err := p.Command()
		if err != nil {
			return
		}
		q, err := ParsePutKey(d)
		if err != nil || len(q.Keys) != len(p.Keys) || q.NewKVN != p.NewKVN {
			t.Fatalf("PUT KEY round trip %X → %X: %v", b, d.Bytes(), err)
		}
		_, _ = ParsePutKeyResponse(c.Data)
	})
}

func FuzzParseInstall(f *testing.F) {
	f.Add(byte(0x0C), unhex(f, "07A000000151535008A00000015153504107F00102030405010380400006C9048102037000"))
	f.Add(byte(0x20), unhex(f, "000007F0010203040501000000"))
	f.Fuzz(func(t *testing.T, p1 byte, b []byte) {
		in, err := ParseInstall(p1, b)
		if err != nil {
			return
		}
		if _, err := ParseInstall(p1, in.Command().Data); err != nil {
			t.Fatalf("INSTALL round trip %X: %v", b, err)
		}
		_, _ = ParseInstallParams(in.Params)
	})
}

func FuzzParseCardData(f *testing.F) {
	f.Add(unhex(f, "E012C00401708010C00402038810"))
	f.Add(unhex(f, "664C734A06072A864886FC6B01600C060A2A864886FC6B02020101630906072A864886FC6B03640B06092A864886FC6B040215650B06092B8510864864020103660C060A2B060104012A026E0102"))
	f.Add(unhex(f, "FF210B81010D8202C5D683020962"))
	f.Add(unhex(f, "C103000002"))
	f.Add(unhex(f, "00B916B9149501388001888101108201018301308403C352808113"))
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _ = ParseKeyInformation(b)
		_, _ = ParseCardRecognition(b)
		_, _ = ParseCardResources(b)
		_, _ = ParseSequenceCounter(b)
		_, _ = ParseKeyLoadDGIs(b)
		_, _ = ParseEIDResponse(b)
		_, _ = ParseAccessRules(b)
		_, _ = ParseInitUpdateResponse(b)
		_, _ = ParseCommandScript(b)
	})
}

func FuzzParseResponseScript(f *testing.F) {
	for _, s := range []string{"AF808001012304930590000000", "AB088001012303019000", "AF8023026A880000"} {
		f.Add(unhex(f, s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := ParseResponseScript(b)
		if err != nil {
			return
		}
		back, err := ParseResponseScript(s.Bytes())
		if err != nil || len(back.Responses) != len(s.Responses) {
			t.Fatalf("response script round trip %X → %X: %v", b, s.Bytes(), err)
		}
	})
}

func FuzzParseAccessRules(f *testing.F) {
	f.Add(unhex(f, "E243E135C114ABCD92CBB156B280FA4E1429A6ECEEB6E5C1BFE4CA1D636F6D2E676F6F676C652E616E64726F69642E617070732E6D79617070E30ADB080000000000000001"))
	f.Fuzz(func(t *testing.T, b []byte) {
		rules, err := ParseAccessRules(b)
		if err != nil {
			return
		}
		for _, r := range rules {
			if _, err := ParseAccessRules(r.Bytes()); err != nil {
				t.Fatalf("rule round trip %X: %v", r.Bytes(), err)
			}
		}
	})
}

// FuzzCardSessionUnwrap feeds arbitrary commands to an open card session at
// level 33; nothing may panic and a failure must be a 6982 *SWError.
func FuzzCardSessionUnwrap(f *testing.F) {
	h, _ := NewHostSession(testKeys, bytes.Repeat([]byte{1}, 8))
	w1, _ := func() (Command, error) {
		c, _ := NewCardSession(CardConfig{Keys: testKeys, KDD: make([]byte, 10), I: 0x70, AID: []byte{1, 2, 3, 4, 5}})
		r, _ := c.InitializeUpdate(h.InitializeUpdate(), 1)
		_ = h.OnInitUpdateResponse(r)
		_, _ = h.ExternalAuthenticate(0x33)
		return h.Wrap(Command{CLA: 0x80, INS: 0xE2, P1: 0x90, Data: []byte{1, 2, 3}, Ne: 256})
	}()
	f.Add(w1.Bytes())
	f.Add(unhex(f, "84F2200208AC6A59024BED84CC"))
	f.Fuzz(func(t *testing.T, b []byte) {
		cmd, err := ParseCommand(b)
		if err != nil {
			return
		}
		c, _ := NewCardSession(CardConfig{Keys: testKeys, KDD: make([]byte, 10), I: 0x70, AID: []byte{1, 2, 3, 4, 5}})
		h, _ := NewHostSession(testKeys, bytes.Repeat([]byte{1}, 8))
		r, _ := c.InitializeUpdate(h.InitializeUpdate(), 1)
		if err := h.OnInitUpdateResponse(r); err != nil {
			t.Fatal(err)
		}
		ea, _ := h.ExternalAuthenticate(0x33)
		if _, err := c.ExternalAuthenticate(ea); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Unwrap(cmd); err != nil {
			sw, ok := err.(*SWError)
			if !ok || sw.SW != SWSecurityNotSatisfied {
				t.Fatalf("unexpected error %v", err)
			}
		}
		_, _ = c.Wrap(Response{Data: b, SW: SWOK})
		// The host side too: arbitrary responses must not panic.
		_, _ = h.Unwrap(Response{Data: b, SW: SWOK})
		_, _ = c.ExternalAuthenticate(cmd)
		_, _ = c.InitializeUpdate(cmd, 2)
	})
}

// FuzzParseTargetedApplication feeds arbitrary X-Admin-Targeted-Application
// values (the header a handset's agent reads from the admin server) to the
// parser: it never panics, takes only 5- to 16-byte AIDs, and what it takes
// formats back to a value that parses to the same AID.
func FuzzParseTargetedApplication(f *testing.F) {
	f.Add("//aid/A000000151/53504101")
	f.Add("//aid/a000000151/")
	f.Add("//aid/A000000151")
	f.Add("//aid/A0000001/5153504101")
	f.Add("//aid/A000000151/535041010203040506070809AABB")
	f.Add("/aid/A000000151/00")
	f.Fuzz(func(t *testing.T, s string) {
		aid, err := ParseTargetedApplication(s)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v is not ErrMalformed", err)
			}
			return
		}
		if len(aid) < 5 || len(aid) > 16 {
			t.Fatalf("%q parsed to an AID of %d bytes", s, len(aid))
		}
		back, err := TargetedApplication(aid)
		if err != nil {
			t.Fatalf("%q parsed to %X, which does not format: %v", s, aid, err)
		}
		again, err := ParseTargetedApplication(back)
		if err != nil || !bytes.Equal(again, aid) {
			t.Fatalf("%q → %X → %q → %X, %v", s, aid, back, again, err)
		}
	})
}
