package gp

import (
	"bytes"
	"context"
	"errors"
	"testing"
)

// scripted answers the commands it is sent with the given R-APDUs in order
// and records the commands.
type scripted struct {
	answers [][]byte
	sent    [][]byte
}

func (s *scripted) Transmit(_ context.Context, apdu []byte) ([]byte, error) {
	s.sent = append(s.sent, append([]byte(nil), apdu...))
	if len(s.answers) == 0 {
		return []byte{0x6F, 0x00}, nil
	}
	a := s.answers[0]
	s.answers = s.answers[1:]
	return a, nil
}

func TestLogicalChannelRecodesEveryCommandAndRefusesAShortOne(t *testing.T) {
	s := &scripted{}
	ctx := context.Background()
	for n, want := range map[int]byte{2: 0x82, 7: 0xC3} {
		if _, err := (LogicalChannel{Ch: s, N: n}).Transmit(ctx, GetData(DataCPLC).Bytes()); err != nil {
			t.Fatal(err)
		}
		if got := s.sent[len(s.sent)-1]; got[0] != want || !bytes.Equal(got[1:], GetData(DataCPLC).Bytes()[1:]) {
			t.Errorf("channel %d sent %X, want class %02X", n, got, want)
		}
	}
	if _, err := (LogicalChannel{Ch: s, N: 1}).Transmit(ctx, []byte{0x80, 0xCA}); err == nil {
		t.Error("a 2-byte APDU went out")
	}
	if _, err := (LogicalChannel{Ch: s, N: 20}).Transmit(ctx, GetData(DataCPLC).Bytes()); err == nil {
		t.Error("channel 20 went out")
	}
}

func TestParseManageChannelOpen(t *testing.T) {
	if n, err := ParseManageChannelOpen(Response{Data: []byte{0x03}, SW: SWOK}); err != nil || n != 3 {
		t.Fatalf("%d %v", n, err)
	}
	for _, r := range []Response{{SW: 0x6A81}, {Data: []byte{0}, SW: SWOK}, {Data: []byte{20}, SW: SWOK}, {Data: []byte{1, 2}, SW: SWOK}} {
		if _, err := ParseManageChannelOpen(r); err == nil {
			t.Errorf("%X %v accepted", r.Data, r.SW)
		}
	}
	var se *SWError
	if _, err := ParseManageChannelOpen(Response{SW: 0x6A81}); !errors.As(err, &se) || se.SW != 0x6A81 {
		t.Errorf("6A81: %v", err)
	}
}

func TestAccessRulesFollowsGetNextAndRefusesWhatDoesNotAddUp(t *testing.T) {
	ctx := context.Background()
	rule := AccessRule{AID: []byte{0xF0, 1, 2, 3, 4, 5, 1}, DeviceAppID: bytes.Repeat([]byte{0xAB}, 32), APDU: []byte{1}}
	var all []byte
	for range 6 {
		all = append(all, rule.Bytes()...)
	}
	whole := Encode(0xFF40, all) // FF40 81 xx …
	ok := func(b []byte) []byte { return append(append([]byte(nil), b...), 0x90, 0x00) }

	s := &scripted{answers: [][]byte{ok(whole[:100]), ok(whole[100:200]), ok(whole[200:])}}
	rules, err := NewHost(s).AccessRules(ctx)
	if err != nil || len(rules) != 6 {
		t.Fatalf("paged: %d rules %v", len(rules), err)
	}
	if len(s.sent) != 3 || s.sent[1][2] != 0xFF || s.sent[1][3] != 0x60 {
		t.Fatalf("commands %X", s.sent)
	}
	empty := &scripted{answers: [][]byte{{0x6A, 0x88}}}
	if rules, err := NewHost(empty).AccessRules(ctx); err != nil || rules != nil {
		t.Fatalf("6A88: %v %v", rules, err)
	}
	for name, answers := range map[string][][]byte{
		"not FF40":          {ok([]byte{0xE2, 0x00})},
		"Get-Next empty":    {ok(whole[:100]), ok(nil)},
		"overshoot":         {ok(whole[:100]), ok(append(append([]byte(nil), whole[100:]...), 0x00))},
		"huge announcement": {ok([]byte{0xFF, 0x40, 0x83, 0x10, 0x00, 0x00})},
		"Get-Next error":    {ok(whole[:100]), {0x69, 0x85}},
		"Get-All error":     {{0x69, 0x85}},
	} {
		if _, err := NewHost(&scripted{answers: answers}).AccessRules(ctx); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// TestAccessRulesSizeTakesEveryLengthFormTheTLVParserTakes: an FF40 whose
// length is written 84 and four bytes, which ParseAccessRules reads, was
// refused by AccessRulesSize, so the host could not read such an ARA-M's
// rules (found with FuzzAccessRulesSize). Lengths beyond
// MaxAccessRulesLength and the indefinite form stay refused.
func TestAccessRulesSizeTakesEveryLengthFormTheTLVParserTakes(t *testing.T) {
	ctx := context.Background()
	rule := AccessRule{AID: []byte{0xF0, 1, 2, 3, 4, 5, 1}, DeviceAppID: bytes.Repeat([]byte{0xAB}, 32), APDU: []byte{1}}
	value := bytes.Repeat(rule.Bytes(), 3)
	for k := 1; k <= 4; k++ {
		length := []byte{0x80 | byte(k)} // 81 xx, 82 00xx, 83 0000xx, 84 000000xx
		for i := k - 1; i >= 0; i-- {
			length = append(length, byte(len(value)>>(8*i)))
		}
		whole := append(append(unhex(t, "FF40"), length...), value...)
		if rules, err := ParseAccessRules(whole); err != nil || len(rules) != 3 {
			t.Fatalf("FF40 %X: ParseAccessRules reads %d rules: %v", length, len(rules), err)
		}
		if n, err := AccessRulesSize(whole[:10]); err != nil || n != len(whole) {
			t.Errorf("FF40 %X: size %d, want %d: %v", length, n, len(whole), err)
		}
		ok := func(b []byte) []byte { return append(append([]byte(nil), b...), 0x90, 0x00) }
		s := &scripted{answers: [][]byte{ok(whole[:100]), ok(whole[100:])}}
		if rules, err := NewHost(s).AccessRules(ctx); err != nil || len(rules) != 3 {
			t.Errorf("FF40 %X, paged: %d rules, %v", length, len(rules), err)
		}
	}
	// Too long (by one byte, and by a length that overflows a 32-bit int),
	// 85, indefinite, and 84 with three of its four bytes.
	for _, first := range []string{"FF408400010001", "FF4084FFFFFFFF", "FF4085000000000096", "FF4080E200", "FF4084000000"} {
		if n, err := AccessRulesSize(unhex(t, first)); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: size %d, %v, want ErrMalformed", first, n, err)
		}
	}
}

func TestRefreshTagWantsEightBytes(t *testing.T) {
	ctx := context.Background()
	tag := []byte{1, 2, 3, 4, 5, 6, 7, 8}
	got, err := NewHost(&scripted{answers: [][]byte{append(Encode(0xDF20, tag), 0x90, 0x00)}}).RefreshTag(ctx)
	if err != nil || !bytes.Equal(got, tag) {
		t.Fatalf("%X %v", got, err)
	}
	for _, a := range [][]byte{append(Encode(0xDF20, tag[:4]), 0x90, 0x00), {0x6A, 0x88}, append(Encode(0xDF21, tag), 0x90, 0x00)} {
		if _, err := NewHost(&scripted{answers: [][]byte{a}}).RefreshTag(ctx); err == nil {
			t.Errorf("%X accepted", a)
		}
	}
}

func TestDeleteAccessRuleNamesTheRulesREFDO(t *testing.T) {
	r := AccessRule{AID: []byte{0xF0, 1, 2, 3, 4, 5, 1}, DeviceAppID: bytes.Repeat([]byte{0xAB}, 20), APDU: []byte{1}}
	c := DeleteAccessRule(r)
	want := append([]byte{0xF1, byte(len(r.RefDO()))}, r.RefDO()...)
	if c.INS != 0xE2 || c.P1 != 0x90 || !bytes.Equal(c.Data, want) {
		t.Fatalf("%X, want data %X", c.Bytes(), want)
	}
	parsed, err := ParseAccessRules(r.Bytes())
	if err != nil || len(parsed) != 1 || !bytes.Equal(parsed[0].RefDO(), r.RefDO()) {
		t.Fatalf("round trip: %+v %v", parsed, err)
	}
}
