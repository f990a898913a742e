package smpp

import "testing"

func TestParseReceiptTextReadsAppendixBFields(t *testing.T) {
	r, err := ParseReceiptText("id:0123456789 sub:001 dlvrd:001 submit date:2612011410 done date:2612011411 stat:DELIVRD err:000 Text:hello there")
	if err != nil {
		t.Fatal(err)
	}
	want := Receipt{MessageID: "0123456789", State: "DELIVRD", Err: "000", SubmitDate: "2612011410", DoneDate: "2612011411"}
	if r != want || !r.Delivered() {
		t.Fatalf("%+v, want %+v", r, want)
	}
}

func TestParseReceiptTextNeedsIDAndStat(t *testing.T) {
	for _, s := range []string{"", "hello", "id:1 err:000", "stat:DELIVRD", "xid:1 stat:DELIVRD"} {
		if _, err := ParseReceiptText(s); err == nil {
			t.Errorf("%q accepted", s)
		}
	}
}

func TestReceiptPrefersTheOptionalParameters(t *testing.T) {
	m := ShortMessage{Source: "4917", ESMClass: ESMClassDeliveryReceipt, ShortMessage: []byte("id:AB stat:DELIVRD err:000"),
		TLVs: []TLV{{Tag: TagReceiptedMessageID, Value: []byte("ab-long\x00")}, {Tag: TagMessageState, Value: []byte{8}}}}
	r, err := receiptFrom(m)
	if err != nil || r.MessageID != "ab-long" || r.State != "REJECTD" {
		t.Fatalf("%+v %v", r, err)
	}
}
