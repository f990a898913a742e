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

// FuzzAccessRulesSize feeds arbitrary first answers of GET DATA FF40 to
// AccessRulesSize, which tells the host how many bytes Get-Next must bring.
// The size depends on the FF40 header alone (every shorter input is
// refused, every longer one gets the same size), stays within
// MaxAccessRulesLength, is the size of the FF40 object the TLV parser
// reads when all of it is there, and is the length of any FF40 rule list
// ParseAccessRules takes; a rule list cut short does not parse.
func FuzzAccessRulesSize(f *testing.F) {
	aosp := unhex(f, "E243E135C114ABCD92CBB156B280FA4E1429A6ECEEB6E5C1BFE4CA1D636F6D2E676F6F676C652E616E64726F69642E617070732E6D79617070E30ADB080000000000000001")
	store, _ := ParseCommand(unhex(f, "80E2900033F031E22FE11E4F06FFFFFFFFFFFFC114E46872F28B350B7E1F140DE535C2A8D5804F0BE3E30DD00101DB080000000000000001"))
	f.Add(Encode(0xFF40, aosp))                        // FF40 45 …: one rule
	f.Add(Encode(0xFF40, store.Data[2:]))              // the public rule, as a Get-All would answer it
	f.Add(Encode(0xFF40, bytes.Repeat(aosp, 6))[:100]) // FF40 82 01 9C …: a first page
	f.Add(unhex(f, "FF4000"))                          // an ARA-M without rules
	f.Add(unhex(f, "FF4083100000"))                    // more than MaxAccessRulesLength
	f.Add(unhex(f, "FF4080E2000000"))                  // indefinite length
	f.Add(append(unhex(f, "FF408145"), aosp...))       // long form of a short length
	f.Add(store.Data)                                  // F0 …: a STORE DATA, not a Get-All
	f.Fuzz(func(t *testing.T, b []byte) {
		n, err := AccessRulesSize(b)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("%X: error %v is not ErrMalformed", b, err)
			}
		} else {
			// The shortest prefix that has a size is the header.
			h := 0
			for ; h <= len(b); h++ {
				if _, err := AccessRulesSize(b[:h]); err == nil {
					break
				}
			}
			if h < 3 || h > 7 || n < h || n-h > MaxAccessRulesLength {
				t.Fatalf("%X: size %d with a header of %d bytes", b, n, h)
			}
			for i := h; i <= len(b); i++ {
				if m, err := AccessRulesSize(b[:i]); err != nil || m != n {
					t.Fatalf("%X: size %d, but %d with the first %d bytes: %v", b, n, m, i, err)
				}
			}
			if len(b) >= n {
				tlv, rest, err := ParseTLV(b)
				if err != nil || tlv.Tag != 0xFF40 || tlv.Indefinite || len(b)-len(rest) != n {
					t.Fatalf("%X: size %d, but the TLV parser reads %s of %d bytes: %v", b, n, tlv.Tag, len(b)-len(rest), err)
				}
			}
		}
		// What the TLV parser reads as a whole definite FF40 object of at
		// most MaxAccessRulesLength bytes has that object's size.
		if tlv, rest, err := ParseTLV(b); err == nil && tlv.Tag == 0xFF40 && !tlv.Indefinite && len(tlv.Value) <= MaxAccessRulesLength {
			if m, err := AccessRulesSize(b); err != nil || m != len(b)-len(rest) {
				t.Fatalf("%X: the TLV parser reads FF40 of %d bytes, AccessRulesSize says %d: %v", b, len(b)-len(rest), m, err)
			}
		}
		rules, err := ParseAccessRules(b)
		if err != nil || len(b) < 3 || b[0] != 0xFF || b[1] != 0x40 || b[2] == 0x80 {
			return
		}
		if n, err := AccessRulesSize(b); err != nil || n != len(b) {
			t.Fatalf("%X: ParseAccessRules reads %d rules from %d bytes, AccessRulesSize says %d: %v", b, len(rules), len(b), n, err)
		}
		for _, i := range []int{1, 2, 3, len(b) / 2, len(b) - 1} {
			if i >= 1 && i < len(b) {
				if _, err := ParseAccessRules(b[:i]); err == nil {
					t.Fatalf("%X: the first %d bytes parse as a rule list", b, i)
				}
			}
		}
	})
}

// FuzzParseDGIs feeds arbitrary STORE DATA payloads of DGI structure to
// ParseDGIs: what it takes is the whole input cut into DGIs in order, each
// in either length form of GPCS 11.11.2.2, its value a capped sub-slice of
// the input; DGI.Bytes re-encodes them to the input when every length was
// in its shortest form, and to bytes that parse to the same DGIs in any
// case; an input cut inside a DGI is ErrTruncated. Key loading DGIs that
// ParseKeyLoadDGIs takes survive KeyLoadDGIs.
func FuzzParseDGIs(f *testing.F) {
	kl := []KeyLoad{{Usage: KeyUsageENC, Type: KeyTypeAES, Length: 16, KID: 1, KVN: 0x30, KCV: unhex(f, "C35280"), Encrypted: bytes.Repeat([]byte{0xAB}, 16)},
		{Usage: KeyUsageMAC, Access: []byte{0x00}, Type: KeyTypeAES, Length: 16, KID: 2, KVN: 0x30, KCV: unhex(f, "013808"), Encrypted: bytes.Repeat([]byte{0xCD}, 16)}}
	f.Add(KeyLoadDGIs(kl))
	f.Add(unhex(f, "00B916B9149501388001888101108201018301308403C35280"))
	f.Add(unhex(f, "010103AABBCC"))
	f.Add(unhex(f, "0101FF0003AABBCC"))
	f.Add(DGI{Tag: 0x0102, Data: bytes.Repeat([]byte{7}, 300)}.Bytes())
	f.Add(append(unhex(f, "0101020102"), DGI{Tag: 0x0102, Data: bytes.Repeat([]byte{7}, MaxDataObject)}.Bytes()...))
	f.Add(unhex(f, "010105AABB"))
	f.Add(unhex(f, "01"))
	f.Fuzz(func(t *testing.T, b []byte) {
		ds, err := ParseDGIs(b)
		if err != nil {
			if !errors.Is(err, ErrTruncated) {
				t.Fatalf("%X: error %v is not ErrTruncated", b, err)
			}
			return
		}
		var canon []byte
		var ends []int
		shortest, pos := true, 0
		for i, d := range ds {
			enc := d.Bytes()
			long := append([]byte{byte(d.Tag >> 8), byte(d.Tag), 0xFF, byte(len(d.Data) >> 8), byte(len(d.Data))}, d.Data...)
			switch {
			case bytes.HasPrefix(b[pos:], enc):
			case bytes.HasPrefix(b[pos:], long):
				shortest, enc = false, long
			default:
				t.Fatalf("%X: DGI %d %04X (%d bytes) is not the input at offset %d", b, i, d.Tag, len(d.Data), pos)
			}
			if cap(d.Data) != len(d.Data) || len(d.Data) > 0 && &d.Data[0] != &b[pos+len(enc)-len(d.Data)] {
				t.Fatalf("%X: DGI %d's value is not the input's bytes at offset %d", b, i, pos+len(enc)-len(d.Data))
			}
			pos += len(enc)
			ends = append(ends, pos)
			canon = append(canon, d.Bytes()...)
		}
		if pos != len(b) {
			t.Fatalf("%X: %d DGIs cover %d of %d bytes", b, len(ds), pos, len(b))
		}
		if shortest && !bytes.Equal(canon, b) {
			t.Fatalf("%X re-encodes to %X", b, canon)
		}
		back, err := ParseDGIs(canon)
		if err != nil || len(back) != len(ds) {
			t.Fatalf("%X: re-encoded %X parses to %d DGIs: %v", b, canon, len(back), err)
		}
		for i := range back {
			if back[i].Tag != ds[i].Tag || !bytes.Equal(back[i].Data, ds[i].Data) {
				t.Fatalf("%X: DGI %d re-encoded parses to %04X %X, want %04X %X", b, i, back[i].Tag, back[i].Data, ds[i].Tag, ds[i].Data)
			}
		}
		// Cut one byte short of each of the first DGIs' ends and of the
		// last's: truncated; cut at an end: the DGIs before it.
		for i, e := range ends {
			if i >= 8 && i != len(ends)-1 {
				continue
			}
			if _, err := ParseDGIs(b[:e-1]); !errors.Is(err, ErrTruncated) {
				t.Fatalf("%X cut to %d bytes, inside DGI %d: %v, want ErrTruncated", b, e-1, i, err)
			}
			if got, err := ParseDGIs(b[:e]); err != nil || len(got) != i+1 {
				t.Fatalf("%X cut to %d bytes, after DGI %d: %d DGIs, %v", b, e, i, len(got), err)
			}
		}
		keys, err := ParseKeyLoadDGIs(b)
		if err != nil {
			return
		}
		again, err := ParseKeyLoadDGIs(KeyLoadDGIs(keys))
		if err != nil || len(again) != len(keys) {
			t.Fatalf("%X: key loading re-encoded parses to %d keys, want %d: %v", b, len(again), len(keys), err)
		}
		for i, k := range keys {
			g := again[i]
			if g.Usage != k.Usage || g.Type != k.Type || g.Length != k.Length || g.KID != k.KID || g.KVN != k.KVN ||
				!bytes.Equal(g.Access, k.Access) || (g.Access == nil) != (k.Access == nil) || !bytes.Equal(g.KCV, k.KCV) || !bytes.Equal(g.Encrypted, k.Encrypted) {
				t.Fatalf("%X: key %d re-encoded is %+v, want %+v", b, i, g, k)
			}
		}
	})
}

// FuzzFCIDFName feeds arbitrary SELECT answers to FCIDFName, whose answer
// decides whether a SELECT reached the asked applet or one whose AID only
// starts with it. A name it returns is the input's own bytes inside the FCI
// template (6F) that starts the input, right after an 84 header; an input
// cut inside that template names nothing; whatever 6F { 84 AID } wraps
// comes back whole.
func FuzzFCIDFName(f *testing.F) {
	f.Add(unhex(f, "6F108408A000000151000000A5049F6501FF"))        // the virtual card's ISD
	f.Add(unhex(f, "6F108408A000000003000000A5049F6501FF"))        // an ISD with the UICC AID
	f.Add(unhex(f, "6F0E8409A00000015141434C00A5019F"))            // ARA-M, its A5 holding a tag without a length
	f.Add(Encode(0x6F, Encode(0x84, unhex(f, "A000000151000000")), // proprietary data with card recognition data
		Encode(0xA5, unhex(f, "734A06072A864886FC6B01600C060A2A864886FC6B02020101630906072A864886FC6B03640B06092A864886FC6B040215650B06092B8510864864020103660C060A2B060104012A026E0102"), Encode(0x9F6E, unhex(f, "479000000000")))))
	f.Add(unhex(f, "6F0BA5049F6501FF8403A00000")) // 84 after A5
	f.Add(unhex(f, "6F028400"))                   // an empty name
	f.Add(unhex(f, "6F80840500010203040000"))     // indefinite length
	f.Add(unhex(f, "6F088481050001020304"))       // 84 with a non-minimal length
	f.Add(unhex(f, "6F0884050001020304"))         // 6F longer than the input
	f.Add(unhex(f, "6A82"))
	f.Fuzz(func(t *testing.T, fci []byte) {
		if got := FCIDFName(Encode(0x6F, Encode(0x84, fci))); got == nil || !bytes.Equal(got, fci) {
			t.Fatalf("6F { 84 %X } names %X", fci, got)
		}
		name := FCIDFName(fci)
		if name == nil {
			return
		}
		tmpl, rest, err := ParseTLV(fci)
		if err != nil || tmpl.Tag != 0x6F {
			t.Fatalf("%X names %X but does not start with a 6F object: %v", fci, name, err)
		}
		end := len(fci) - len(rest)
		for _, i := range []int{1, end / 2, end - 1} {
			if i >= 1 && i < end {
				if got := FCIDFName(fci[:i]); got != nil {
					t.Fatalf("%X cut to %d bytes, inside its 6F of %d, names %X", fci, i, end, got)
				}
			}
		}
		if len(name) == 0 {
			return
		}
		at := -1
		for i := range fci {
			if &fci[i] == &name[0] {
				at = i
			}
		}
		start := end - len(tmpl.Value) // where the 6F value starts
		if tmpl.Indefinite {
			start -= 2 // before the end-of-contents 00 00
		}
		if at < 0 || at < start || at+len(name) > start+len(tmpl.Value) {
			t.Fatalf("%X names %X, which is not inside its 6F value at %d..%d (at %d)", fci, name, start, start+len(tmpl.Value), at)
		}
		// An 84 header of 2 to 6 bytes ends where the name starts.
		for h := at - 2; h >= max(start, at-6); h-- {
			if n, _, err := ParseTLV(fci[h:]); err == nil && n.Tag == 0x84 && len(n.Value) == len(name) && &n.Value[0] == &name[0] {
				return
			}
		}
		t.Fatalf("%X names %X, which no 84 header announces", fci, name)
	})
}
