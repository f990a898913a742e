package smpp

import (
	"errors"
	"fmt"
	"strings"
)

// Receipt is an SMSC delivery receipt for one submitted short message: a
// deliver_sm whose esm_class says so (§5.2.12), its text in the de-facto
// format of SMPP v3.4 Appendix B, its receipted_message_id and
// message_state parameters preferred where the SMSC sends them.
type Receipt struct {
	MessageID string // the submit_sm_resp's message_id
	// State is the final state: DELIVRD, EXPIRED, DELETED, UNDELIV,
	// ACCEPTD, UNKNOWN or REJECTD (Appendix B).
	State string
	Err   string // network-specific error code, "000" when none
	// Handset is the MSISDN the message was for (the receipt's source).
	Handset    string
	SubmitDate string // YYMMDDhhmm as sent
	DoneDate   string
}

// Delivered reports whether the message reached the handset.
func (r Receipt) Delivered() bool { return r.State == "DELIVRD" }

// message_state values (§5.2.28) and their Appendix B names.
var messageStates = map[byte]string{
	1: "ENROUTE", 2: "DELIVRD", 3: "EXPIRED", 4: "DELETED", 5: "UNDELIV", 6: "ACCEPTD", 7: "UNKNOWN", 8: "REJECTD",
}

// receiptKeys are the fields of the Appendix B text, in their order.
var receiptKeys = []string{"id:", "sub:", "dlvrd:", "submit date:", "done date:", "stat:", "err:", "text:"}

// ParseReceiptText reads the fields of a delivery receipt's text. Fields
// may be missing (SMSCs differ); a text without id and stat is not a
// receipt.
func ParseReceiptText(text string) (Receipt, error) {
	// ASCII only, octet for octet: strings.ToLower can change a UTF-8
	// sequence's length, and the offsets are used on text.
	lower := []byte(text)
	for i, c := range lower {
		if 'A' <= c && c <= 'Z' {
			lower[i] = c + 'a' - 'A'
		}
	}
	fields := map[string]string{}
	for _, k := range receiptKeys {
		i := indexKey(string(lower), k)
		if i < 0 {
			continue
		}
		v := text[i+len(k):]
		if k != "text:" {
			if j := strings.IndexByte(v, ' '); j >= 0 {
				v = v[:j]
			}
		}
		fields[k] = v
	}
	r := Receipt{
		MessageID:  fields["id:"],
		State:      strings.ToUpper(fields["stat:"]),
		Err:        fields["err:"],
		SubmitDate: fields["submit date:"],
		DoneDate:   fields["done date:"],
	}
	if r.MessageID == "" || r.State == "" {
		return Receipt{}, errors.New("smpp: delivery receipt without id or stat")
	}
	if len(r.MessageID) > maxMessageID-1 {
		return Receipt{}, fmt.Errorf("smpp: delivery receipt id longer than %d octets", maxMessageID-1)
	}
	return r, nil
}

// indexKey finds k at the start of text or after a space.
func indexKey(text, k string) int {
	for off := 0; off < len(text); {
		i := strings.Index(text[off:], k)
		if i < 0 {
			return -1
		}
		i += off
		if i == 0 || text[i-1] == ' ' {
			return i
		}
		off = i + 1
	}
	return -1
}

// receiptFrom reads the receipt in a deliver_sm.
func receiptFrom(m ShortMessage) (Receipt, error) {
	r, err := ParseReceiptText(string(m.UserData()))
	if v, ok := m.Optional(TagReceiptedMessageID); ok {
		id := strings.TrimRight(string(v), "\x00")
		if err != nil {
			r, err = Receipt{}, nil
		}
		r.MessageID = id
	}
	if v, ok := m.Optional(TagMessageState); ok && len(v) == 1 {
		if s, known := messageStates[v[0]]; known {
			r.State = s
		}
	}
	if err == nil && (r.MessageID == "" || r.State == "") {
		err = errors.New("smpp: delivery receipt without message id or state")
	}
	if err != nil {
		return Receipt{}, err
	}
	r.Handset = m.Source
	return r, nil
}

// MO is a mobile-originated short message, such as the card's proof of
// receipt for a command packet.
type MO struct {
	From, To   string
	ESMClass   byte
	ProtocolID byte
	DataCoding byte
	// UserData is the short message as delivered, its user data header
	// (when ESMClass has the UDHI bit) included.
	UserData []byte
}

// ResponsePacket returns the response packet of a proof of receipt: the
// data after a user data header holding the Response Packet Identifier
// (TS 31.115 §6.4). A concatenated response is not reassembled.
func (m MO) ResponsePacket() ([]byte, bool) {
	if m.ESMClass&ESMClassUDHI == 0 {
		return nil, false
	}
	ies, rest, err := SplitUDH(m.UserData)
	if err != nil {
		return nil, false
	}
	for _, ie := range ies {
		if ie.ID == IEIResponsePacket {
			return rest, true
		}
	}
	return nil, false
}
