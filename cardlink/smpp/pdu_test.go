package smpp

import (
	"bytes"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"reflect"
	"strings"
	"testing"
)

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// The submit_sm of a 3-octet command packet, field by field from SMPP v3.4
// §4.4.1: service_type "", source 0/0 "1234", dest 1/1 "4917", esm_class 40,
// protocol_id 7F, priority 0, schedule "", validity "", registered_delivery
// 01, replace 0, data_coding F6, default_msg_id 0, sm_length 6, UDH 027000.
const submitVector = "0000002F 00000004 00000000 00000002" +
	"00 0000 3132333400 0101 3439313700 40 7F 00 00 00 01 00 F6 00 06 027000 AABBCC"

func TestSubmitSMEncodesFieldByFieldAsSMPP34Section441(t *testing.T) {
	body, err := ShortMessage{
		Source: "1234", DestTON: 1, DestNPI: 1, Dest: "4917",
		ESMClass: ESMClassUDHI, ProtocolID: PIDSIMDataDownload, RegisteredDelivery: 1, DataCoding: DCSSIMData,
		ShortMessage: unhex(t, "027000AABBCC"),
	}.Encode()
	if err != nil {
		t.Fatal(err)
	}
	got := PDU{ID: SubmitSM, Seq: 2, Body: body}.Marshal()
	if want := unhex(t, submitVector); !bytes.Equal(got, want) {
		t.Fatalf("submit_sm\n got %X\nwant %X", got, want)
	}
	p, err := ReadPDU(bytes.NewReader(got))
	if err != nil || p.ID != SubmitSM || p.Seq != 2 {
		t.Fatalf("ReadPDU: %+v %v", p, err)
	}
	m, err := DecodeShortMessage(p.Body)
	if err != nil || m.Dest != "4917" || m.DataCoding != 0xF6 || !bytes.Equal(m.ShortMessage, unhex(t, "027000AABBCC")) {
		t.Fatalf("decoded %+v %v", m, err)
	}
}

func TestBindTransceiverEncodesInterfaceVersion34(t *testing.T) {
	body, err := Bind{SystemID: "keyport", Password: "secret"}.Encode()
	if err != nil {
		t.Fatal(err)
	}
	// system_id, password, system_type "", interface_version 34, ton, npi, address_range "".
	if want := unhex(t, "6B6579706F727400 73656372657400 00 34 00 00 00"); !bytes.Equal(body, want) {
		t.Fatalf("bind body %X, want %X", body, want)
	}
}

func TestFieldsLongerThanSMPPAllowsAreRefusedWithoutQuotingThem(t *testing.T) {
	if _, err := (Bind{SystemID: "keyport", Password: "ninechars"}).Encode(); err == nil ||
		strings.Contains(err.Error(), "ninechars") {
		t.Fatalf("9-octet password: %v", err)
	}
	if _, err := (ShortMessage{Dest: strings.Repeat("1", 21)}).Encode(); err == nil {
		t.Fatal("21-digit destination accepted")
	}
	if _, err := (ShortMessage{Dest: "1", ShortMessage: make([]byte, 255)}).Encode(); err == nil {
		t.Fatal("255-octet short_message accepted")
	}
}

func TestReadPDURefusesLengthsOutsideTheHeaderAndTheLimit(t *testing.T) {
	for _, h := range []string{"0000000F000000040000000000000001", "7FFFFFFF000000040000000000000001"} {
		if _, err := ReadPDU(bytes.NewReader(unhex(t, h))); !errors.Is(err, ErrPDU) {
			t.Errorf("%s: %v, want ErrPDU", h, err)
		}
	}
	if _, err := ReadPDU(bytes.NewReader(unhex(t, "00000014000000040000000000000001AABB"))); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("truncated body: %v", err)
	}
}

func TestDecodeShortMessageRefusesTruncatedAndUnterminatedFields(t *testing.T) {
	full := unhex(t, submitVector)[HeaderLen:]
	for n := range len(full) {
		if _, err := DecodeShortMessage(full[:n]); err == nil {
			t.Errorf("body cut to %d of %d octets decoded", n, len(full))
		}
	}
	if _, err := DecodeShortMessage(bytes.Repeat([]byte("1"), 40)); !errors.Is(err, ErrPDU) {
		t.Errorf("no NUL: %v", err)
	}
}

func TestDeliverSMOptionalParametersAndMessagePayload(t *testing.T) {
	m := ShortMessage{Source: "4917", Dest: "1234", ESMClass: ESMClassDeliveryReceipt, TLVs: []TLV{
		{Tag: TagReceiptedMessageID, Value: []byte("abc\x00")},
		{Tag: TagMessageState, Value: []byte{5}},
		{Tag: TagMessagePayload, Value: []byte("id:abc stat:UNDELIV err:012")},
	}}
	body, err := m.Encode()
	if err != nil {
		t.Fatal(err)
	}
	d, err := DecodeShortMessage(body)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(d.TLVs, m.TLVs) {
		t.Fatalf("TLVs %+v", d.TLVs)
	}
	r, err := receiptFrom(d)
	if err != nil || r.MessageID != "abc" || r.State != "UNDELIV" || r.Err != "012" || r.Handset != "4917" {
		t.Fatalf("receipt %+v %v", r, err)
	}
}

func TestStatusTemporaryOnlyForQueueRateAndSMSCFailures(t *testing.T) {
	for s, want := range map[Status]bool{
		StatusThrottled: true, StatusMsgQFul: true, StatusSysErr: true,
		StatusInvDstAdr: false, StatusInvPaswd: false, StatusInvCmdID: false, StatusOK: false,
	} {
		if s.Temporary() != want {
			t.Errorf("%v.Temporary() = %v", s, !want)
		}
	}
	if got := StatusThrottled.String(); got != "ESME_RTHROTTLED (0x00000058)" {
		t.Errorf("String %q", got)
	}
}

func TestIntermediateNotificationIsReadAsAReceipt(t *testing.T) {
	var got []Receipt
	e := &ESME{log: slog.New(slog.DiscardHandler), onReceipt: func(r Receipt) error { got = append(got, r); return nil }}
	body, _ := ShortMessage{Source: "4917", ESMClass: 0x20, ShortMessage: []byte("id:9 stat:ENROUTE err:000")}.Encode()
	if st := e.deliver(PDU{ID: DeliverSM, Body: body}); st != StatusOK || len(got) != 1 || got[0].State != "ENROUTE" {
		t.Fatalf("%v %+v", st, got)
	}
	if st := e.deliver(PDU{ID: DeliverSM, Body: []byte{1, 2}}); st != StatusPermAppErr {
		t.Fatalf("a malformed deliver_sm answered %v", st)
	}
}
