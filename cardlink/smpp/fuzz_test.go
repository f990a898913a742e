package smpp

import (
	"bytes"
	"encoding/hex"
	"errors"
	"io"
	"net/url"
	"reflect"
	"strings"
	"testing"
)

// FuzzReadPDU feeds arbitrary streams to the PDU reader and the body
// decoders the ESME runs on what an SMSC sends: none may panic, and a
// body that decodes re-encodes to what decodes the same.
func FuzzReadPDU(f *testing.F) {
	seed, _ := hex.DecodeString(strings.ReplaceAll(submitVector, " ", ""))
	f.Add(seed)
	f.Add(PDU{ID: BindTransceiverResp, Seq: 1, Body: []byte("smsc\x00")}.Marshal())
	f.Add(PDU{ID: SubmitSMResp, Seq: 7, Body: []byte("12-1\x00")}.Marshal())
	rcpt, _ := ShortMessage{Source: "4917", ESMClass: ESMClassDeliveryReceipt,
		ShortMessage: []byte("id:1 stat:DELIVRD err:000"), TLVs: []TLV{{Tag: TagMessageState, Value: []byte{2}}}}.Encode()
	f.Add(PDU{ID: DeliverSM, Seq: 3, Body: rcpt}.Marshal())
	f.Add([]byte{0, 0, 0, 16, 0x80, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 9})
	f.Fuzz(func(t *testing.T, in []byte) {
		r := bytes.NewReader(in)
		for {
			p, err := ReadPDU(r)
			if err != nil {
				if !errors.Is(err, ErrPDU) && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
					t.Fatalf("unexpected error %v", err)
				}
				return
			}
			if again, err := ReadPDU(bytes.NewReader(p.Marshal())); err != nil || !reflect.DeepEqual(again, p) {
				t.Fatalf("PDU does not survive Marshal: %+v %v", again, err)
			}
			_, _ = DecodeBindResp(p.Body)
			_, _ = DecodeMessageID(p.Body)
			m, err := DecodeShortMessage(p.Body)
			if err != nil {
				continue
			}
			_, _ = receiptFrom(m)
			_, _ = MO{ESMClass: m.ESMClass, UserData: m.UserData()}.ResponsePacket()
			b, err := m.Encode()
			if err != nil {
				continue // a field the decoder allowed is refused by the encoder only for length
			}
			m2, err := DecodeShortMessage(b)
			if err != nil || !reflect.DeepEqual(m, m2) {
				t.Fatalf("round trip: %+v\n%+v\n%v", m, m2, err)
			}
		}
	})
}

// FuzzParseReceiptText: any text the SMSC puts in a receipt.
func FuzzParseReceiptText(f *testing.F) {
	f.Add("id:0123456789 sub:001 dlvrd:001 submit date:2612011410 done date:2612011411 stat:DELIVRD err:000 text:x")
	f.Add("id: stat:")
	f.Add("ID:1 STAT:undeliv")
	f.Fuzz(func(t *testing.T, s string) {
		r, err := ParseReceiptText(s)
		if err == nil && (r.MessageID == "" || r.State == "" || strings.Contains(r.MessageID, " ")) {
			t.Fatalf("%q parsed to %+v", s, r)
		}
	})
}

// FuzzSegments: any packet splits into messages of at most 140 octets
// whose headers parse and whose data joins back to the packet.
func FuzzSegments(f *testing.F) {
	f.Add([]byte{1}, byte(0))
	f.Add(make([]byte, 138), byte(7))
	f.Add(make([]byte, 400), byte(255))
	f.Fuzz(func(t *testing.T, pkt []byte, ref byte) {
		segs, err := Segments(pkt, ref)
		if err != nil {
			if len(pkt) > 0 && len(pkt) <= MaxPacket {
				t.Fatalf("%d octets refused: %v", len(pkt), err)
			}
			return
		}
		var whole []byte
		for i, s := range segs {
			if len(s) > maxUserData {
				t.Fatalf("segment of %d octets", len(s))
			}
			ies, rest, err := SplitUDH(s)
			if err != nil {
				t.Fatal(err)
			}
			has70 := false
			for _, ie := range ies {
				has70 = has70 || ie.ID == IEICommandPacket
			}
			if has70 != (i == 0) {
				t.Fatalf("segment %d: IEI 70 present %v", i+1, has70)
			}
			whole = append(whole, rest...)
		}
		if !bytes.Equal(whole, pkt) {
			t.Fatal("segments do not join to the packet")
		}
	})
}

// FuzzSplitUDH: any user data.
func FuzzSplitUDH(f *testing.F) {
	f.Add([]byte{0x02, 0x71, 0x00, 0xAA})
	f.Add([]byte{0x07, 0x00, 0x03, 0x01, 0x02, 0x01, 0x70, 0x00})
	f.Fuzz(func(t *testing.T, ud []byte) {
		ies, rest, err := SplitUDH(ud)
		if err != nil {
			return
		}
		n := 1 + len(rest)
		for _, ie := range ies {
			n += 2 + len(ie.Data)
		}
		if n != len(ud) {
			t.Fatalf("% X: elements and rest cover %d of %d octets", ud, n, len(ud))
		}
	})
}

// FuzzParseURL feeds KEYPORT_SMPP_URL values built around a password to the
// parser: it never panics, an error never quotes the password (the URL's
// one secret, which logs and the console show errors of), and a URL it
// takes yields a Config that passes Validate with the password it was given.
func FuzzParseURL(f *testing.F) {
	f.Add("keyport", "s3cr3t-pw", "127.0.0.1:2775", "source=4900")
	f.Add("keyport", "p%zz", "smsc", "")
	f.Add("keyport", "pw", "smsc:99999", "")
	f.Add("keyport", "hunter22", "[::1", "")
	f.Add("keyport", "hunter22", "smsc", "window=0")
	f.Add("keyport", "hunter22", "smsc", "timeout=hunter22")
	f.Add("keyport", "hunter22", "smsc", "hunter22=1")
	f.Add("id", "a:b@c", "h", "rate=-1")
	f.Fuzz(func(t *testing.T, id, pw, host, query string) {
		in := "smpp://" + id + ":" + pw + "@" + host + "?" + query
		c, err := ParseURL(in)
		if err != nil {
			// A password that the message would hold anyway (a word of
			// its text, or the user's own host or query) proves nothing.
			_, perr := ParseURL("smpp://" + id + ":QZ7XK9W2@" + host + "?" + query)
			if len(pw) >= 6 && perr != nil && !strings.Contains(perr.Error(), pw) &&
				!strings.Contains(id+host+query, pw) && strings.Contains(err.Error(), pw) {
				t.Fatalf("the error quotes the password: %v", err)
			}
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("ParseURL took %q, Validate refuses it: %v", in, err)
		}
		// With no delimiter in the parts, the password is the one given.
		plain := !strings.ContainsAny(id+pw+host, "@/?#") && !strings.Contains(id, ":")
		if want, _ := url.PathUnescape(pw); plain && c.Password != want {
			t.Fatalf("password %q parsed as %q", pw, c.Password)
		}
	})
}
