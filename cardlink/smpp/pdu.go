package smpp

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// CommandID is an SMPP v3.4 command_id (§5.1.2.1). A response is its
// request's id with the top bit set.
type CommandID uint32

// The commands an ESME in transceiver mode sends or answers.
const (
	GenericNack         CommandID = 0x80000000
	BindTransceiver     CommandID = 0x00000009
	BindTransceiverResp CommandID = 0x80000009
	SubmitSM            CommandID = 0x00000004
	SubmitSMResp        CommandID = 0x80000004
	DeliverSM           CommandID = 0x00000005
	DeliverSMResp       CommandID = 0x80000005
	Unbind              CommandID = 0x00000006
	UnbindResp          CommandID = 0x80000006
	EnquireLink         CommandID = 0x00000015
	EnquireLinkResp     CommandID = 0x80000015
)

// IsResponse reports whether id is a response (or generic_nack).
func (id CommandID) IsResponse() bool { return id&0x80000000 != 0 }

func (id CommandID) String() string {
	switch id {
	case GenericNack:
		return "generic_nack"
	case BindTransceiver:
		return "bind_transceiver"
	case BindTransceiverResp:
		return "bind_transceiver_resp"
	case SubmitSM:
		return "submit_sm"
	case SubmitSMResp:
		return "submit_sm_resp"
	case DeliverSM:
		return "deliver_sm"
	case DeliverSMResp:
		return "deliver_sm_resp"
	case Unbind:
		return "unbind"
	case UnbindResp:
		return "unbind_resp"
	case EnquireLink:
		return "enquire_link"
	case EnquireLinkResp:
		return "enquire_link_resp"
	}
	return fmt.Sprintf("command 0x%08X", uint32(id))
}

// Status is an SMPP command_status (§5.1.3).
type Status uint32

// The statuses keyport sends or acts on.
const (
	StatusOK         Status = 0x00000000 // ESME_ROK
	StatusInvMsgLen  Status = 0x00000001 // ESME_RINVMSGLEN
	StatusInvCmdLen  Status = 0x00000002 // ESME_RINVCMDLEN
	StatusInvCmdID   Status = 0x00000003 // ESME_RINVCMDID
	StatusInvBndSts  Status = 0x00000004 // ESME_RINVBNDSTS
	StatusAlyBnd     Status = 0x00000005 // ESME_RALYBND
	StatusSysErr     Status = 0x00000008 // ESME_RSYSERR
	StatusInvDstAdr  Status = 0x0000000B // ESME_RINVDSTADR
	StatusBindFail   Status = 0x0000000D // ESME_RBINDFAIL
	StatusInvPaswd   Status = 0x0000000E // ESME_RINVPASWD
	StatusInvSysID   Status = 0x0000000F // ESME_RINVSYSID
	StatusMsgQFul    Status = 0x00000014 // ESME_RMSGQFUL
	StatusSubmitFail Status = 0x00000045 // ESME_RSUBMITFAIL
	StatusThrottled  Status = 0x00000058 // ESME_RTHROTTLED
	StatusTempAppErr Status = 0x00000064 // ESME_RX_T_APPN
	StatusPermAppErr Status = 0x00000065 // ESME_RX_P_APPN
	StatusUnknownErr Status = 0x000000FF // ESME_RUNKNOWNERR
)

var statusNames = map[Status]string{
	StatusOK: "ESME_ROK", StatusInvMsgLen: "ESME_RINVMSGLEN", StatusInvCmdLen: "ESME_RINVCMDLEN",
	StatusInvCmdID: "ESME_RINVCMDID", StatusInvBndSts: "ESME_RINVBNDSTS", StatusAlyBnd: "ESME_RALYBND",
	StatusSysErr: "ESME_RSYSERR", StatusInvDstAdr: "ESME_RINVDSTADR", StatusBindFail: "ESME_RBINDFAIL",
	StatusInvPaswd: "ESME_RINVPASWD", StatusInvSysID: "ESME_RINVSYSID", StatusMsgQFul: "ESME_RMSGQFUL",
	StatusSubmitFail: "ESME_RSUBMITFAIL", StatusThrottled: "ESME_RTHROTTLED", StatusTempAppErr: "ESME_RX_T_APPN",
	StatusPermAppErr: "ESME_RX_P_APPN", StatusUnknownErr: "ESME_RUNKNOWNERR",
}

func (s Status) String() string {
	if n, ok := statusNames[s]; ok {
		return fmt.Sprintf("%s (0x%08X)", n, uint32(s))
	}
	return fmt.Sprintf("status 0x%08X", uint32(s))
}

// Temporary reports whether a submit refused with s may succeed when sent
// again later: the SMSC's queue or rate was full, or it failed inside.
// Anything else (a bad address, a bad PDU, a refused bind) is the same
// next time.
func (s Status) Temporary() bool {
	switch s {
	case StatusSysErr, StatusMsgQFul, StatusSubmitFail, StatusThrottled, StatusTempAppErr, StatusUnknownErr:
		return true
	}
	return false
}

// HeaderLen is the length of the PDU header (§3.2: command_length,
// command_id, command_status, sequence_number, four octets each).
const HeaderLen = 16

// MaxPDULen bounds command_length. SMPP sets no limit; the largest PDU
// keyport expects is a deliver_sm with a 64 KiB message_payload TLV.
const MaxPDULen = HeaderLen + 1024 + 0xFFFF

// PDU is one SMPP protocol data unit, its body still encoded.
type PDU struct {
	ID     CommandID
	Status Status
	Seq    uint32
	Body   []byte
}

// ErrPDU marks a malformed PDU.
var ErrPDU = errors.New("smpp: malformed PDU")

// ReadPDU reads one PDU. A command_length below the header or above
// MaxPDULen is an error before anything of the body is read, so a peer
// cannot make keyport allocate at will.
func ReadPDU(r io.Reader) (PDU, error) {
	var h [HeaderLen]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return PDU{}, err
	}
	n := binary.BigEndian.Uint32(h[0:4])
	if n < HeaderLen || n > MaxPDULen {
		return PDU{}, fmt.Errorf("%w: command_length %d", ErrPDU, n)
	}
	p := PDU{
		ID:     CommandID(binary.BigEndian.Uint32(h[4:8])),
		Status: Status(binary.BigEndian.Uint32(h[8:12])),
		Seq:    binary.BigEndian.Uint32(h[12:16]),
	}
	if n > HeaderLen {
		p.Body = make([]byte, n-HeaderLen)
		if _, err := io.ReadFull(r, p.Body); err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return PDU{}, err
		}
	}
	return p, nil
}

// Marshal encodes p with its header.
func (p PDU) Marshal() []byte {
	b := make([]byte, HeaderLen, HeaderLen+len(p.Body))
	binary.BigEndian.PutUint32(b[0:4], uint32(HeaderLen+len(p.Body)))
	binary.BigEndian.PutUint32(b[4:8], uint32(p.ID))
	binary.BigEndian.PutUint32(b[8:12], uint32(p.Status))
	binary.BigEndian.PutUint32(b[12:16], p.Seq)
	return append(b, p.Body...)
}

// TLV is an optional parameter (§5.3).
type TLV struct {
	Tag   uint16
	Value []byte
}

// Optional parameter tags keyport reads (§5.3.2).
const (
	TagReceiptedMessageID uint16 = 0x001E
	TagMessageState       uint16 = 0x0427
	TagMessagePayload     uint16 = 0x0424
)

// Lengths of the C-Octet strings, terminating NUL included (§4).
const (
	maxSystemID   = 16
	maxPassword   = 9
	maxSystemType = 13
	maxService    = 6
	maxAddr       = 21
	maxTime       = 17
	maxMessageID  = 65
	maxShortMsg   = 254
)

// decoder reads a PDU body field by field; the first error sticks.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail(format string, a ...any) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: "+format, append([]any{ErrPDU}, a...)...)
	}
}

// cstring reads a C-Octet string of at most max octets with its NUL.
func (d *decoder) cstring(field string, max int) string {
	if d.err != nil {
		return ""
	}
	for i, c := range d.b {
		if c == 0 {
			if i+1 > max {
				d.fail("%s longer than %d octets", field, max-1)
				return ""
			}
			s := string(d.b[:i])
			d.b = d.b[i+1:]
			return s
		}
		if i+1 >= max {
			break
		}
	}
	d.fail("%s: no NUL within %d octets", field, max)
	return ""
}

func (d *decoder) octet(field string) byte {
	if d.err != nil {
		return 0
	}
	if len(d.b) < 1 {
		d.fail("%s missing", field)
		return 0
	}
	c := d.b[0]
	d.b = d.b[1:]
	return c
}

func (d *decoder) octets(field string, n int) []byte {
	if d.err != nil {
		return nil
	}
	if len(d.b) < n {
		d.fail("%s: %d octets announced, %d left", field, n, len(d.b))
		return nil
	}
	v := append([]byte(nil), d.b[:n]...)
	d.b = d.b[n:]
	return v
}

// tlvs reads the optional parameters that end a body.
func (d *decoder) tlvs() []TLV {
	var ts []TLV
	for d.err == nil && len(d.b) > 0 {
		if len(d.b) < 4 {
			d.fail("truncated optional parameter header")
			return nil
		}
		tag := binary.BigEndian.Uint16(d.b[0:2])
		n := int(binary.BigEndian.Uint16(d.b[2:4]))
		d.b = d.b[4:]
		v := d.octets(fmt.Sprintf("optional parameter 0x%04X", tag), n)
		ts = append(ts, TLV{Tag: tag, Value: v})
	}
	return ts
}

// encoder writes a body; a string too long for its field is an error.
type encoder struct {
	b   []byte
	err error
}

func (e *encoder) cstring(field, s string, max int) {
	if e.err != nil {
		return
	}
	if len(s)+1 > max {
		e.err = fmt.Errorf("smpp: %s longer than %d octets", field, max-1)
		return
	}
	for i := 0; i < len(s); i++ {
		if s[i] == 0 {
			e.err = fmt.Errorf("smpp: %s contains NUL", field)
			return
		}
	}
	e.b = append(append(e.b, s...), 0)
}

func (e *encoder) octet(c byte) { e.b = append(e.b, c) }

func (e *encoder) tlvs(ts []TLV) {
	for _, t := range ts {
		if e.err != nil {
			return
		}
		if len(t.Value) > 0xFFFF {
			e.err = fmt.Errorf("smpp: optional parameter 0x%04X longer than 65535 octets", t.Tag)
			return
		}
		e.b = binary.BigEndian.AppendUint16(e.b, t.Tag)
		e.b = binary.BigEndian.AppendUint16(e.b, uint16(len(t.Value)))
		e.b = append(e.b, t.Value...)
	}
}

// Bind is the body of bind_transceiver (§4.1.5).
type Bind struct {
	SystemID     string
	Password     string
	SystemType   string
	AddrTON      byte
	AddrNPI      byte
	AddressRange string
}

// interfaceVersion is SMPP 3.4 (§5.2.4).
const interfaceVersion = 0x34

// Encode returns the body.
func (b Bind) Encode() ([]byte, error) {
	var e encoder
	e.cstring("system_id", b.SystemID, maxSystemID)
	// The password's length is checked without naming it.
	e.cstring("password", b.Password, maxPassword)
	e.cstring("system_type", b.SystemType, maxSystemType)
	e.octet(interfaceVersion)
	e.octet(b.AddrTON)
	e.octet(b.AddrNPI)
	e.cstring("address_range", b.AddressRange, 41)
	return e.b, e.err
}

// DecodeBindResp returns the SMSC's system_id from a bind_*_resp body. An
// error status may come with an empty body (§4.1.6).
func DecodeBindResp(body []byte) (string, error) {
	if len(body) == 0 {
		return "", nil
	}
	d := decoder{b: body}
	id := d.cstring("system_id", maxSystemID)
	d.tlvs()
	return id, d.err
}

// ShortMessage is the body of submit_sm (§4.4.1); deliver_sm has the same
// fields (§4.6.1).
type ShortMessage struct {
	ServiceType          string
	SourceTON, SourceNPI byte
	Source               string
	DestTON, DestNPI     byte
	Dest                 string
	ESMClass             byte
	ProtocolID           byte
	PriorityFlag         byte
	ScheduleDeliveryTime string
	ValidityPeriod       string
	RegisteredDelivery   byte
	ReplaceIfPresent     byte
	DataCoding           byte
	DefaultMsgID         byte
	ShortMessage         []byte
	TLVs                 []TLV
}

// Encode returns the body.
func (m ShortMessage) Encode() ([]byte, error) {
	if len(m.ShortMessage) > maxShortMsg {
		return nil, fmt.Errorf("smpp: short_message of %d octets, at most %d", len(m.ShortMessage), maxShortMsg)
	}
	var e encoder
	e.cstring("service_type", m.ServiceType, maxService)
	e.octet(m.SourceTON)
	e.octet(m.SourceNPI)
	e.cstring("source_addr", m.Source, maxAddr)
	e.octet(m.DestTON)
	e.octet(m.DestNPI)
	e.cstring("destination_addr", m.Dest, maxAddr)
	e.octet(m.ESMClass)
	e.octet(m.ProtocolID)
	e.octet(m.PriorityFlag)
	e.cstring("schedule_delivery_time", m.ScheduleDeliveryTime, maxTime)
	e.cstring("validity_period", m.ValidityPeriod, maxTime)
	e.octet(m.RegisteredDelivery)
	e.octet(m.ReplaceIfPresent)
	e.octet(m.DataCoding)
	e.octet(m.DefaultMsgID)
	e.octet(byte(len(m.ShortMessage)))
	e.b = append(e.b, m.ShortMessage...)
	e.tlvs(m.TLVs)
	return e.b, e.err
}

// DecodeShortMessage parses a submit_sm or deliver_sm body.
func DecodeShortMessage(body []byte) (ShortMessage, error) {
	d := decoder{b: body}
	var m ShortMessage
	m.ServiceType = d.cstring("service_type", maxService)
	m.SourceTON = d.octet("source_addr_ton")
	m.SourceNPI = d.octet("source_addr_npi")
	m.Source = d.cstring("source_addr", maxAddr)
	m.DestTON = d.octet("dest_addr_ton")
	m.DestNPI = d.octet("dest_addr_npi")
	m.Dest = d.cstring("destination_addr", maxAddr)
	m.ESMClass = d.octet("esm_class")
	m.ProtocolID = d.octet("protocol_id")
	m.PriorityFlag = d.octet("priority_flag")
	m.ScheduleDeliveryTime = d.cstring("schedule_delivery_time", maxTime)
	m.ValidityPeriod = d.cstring("validity_period", maxTime)
	m.RegisteredDelivery = d.octet("registered_delivery")
	m.ReplaceIfPresent = d.octet("replace_if_present_flag")
	m.DataCoding = d.octet("data_coding")
	m.DefaultMsgID = d.octet("sm_default_msg_id")
	n := d.octet("sm_length")
	m.ShortMessage = d.octets("short_message", int(n))
	m.TLVs = d.tlvs()
	if d.err != nil {
		return ShortMessage{}, d.err
	}
	if n == 0 {
		m.ShortMessage = nil
	}
	return m, nil
}

// Optional returns the value of the first optional parameter tag.
func (m ShortMessage) Optional(tag uint16) ([]byte, bool) {
	for _, t := range m.TLVs {
		if t.Tag == tag {
			return t.Value, true
		}
	}
	return nil, false
}

// UserData returns short_message, or the message_payload parameter when
// short_message is empty (§5.3.2.32: never both).
func (m ShortMessage) UserData() []byte {
	if len(m.ShortMessage) == 0 {
		if v, ok := m.Optional(TagMessagePayload); ok {
			return v
		}
	}
	return m.ShortMessage
}

// DecodeMessageID parses a submit_sm_resp or deliver_sm_resp body. With an
// error status the body may be empty (§4.4.2).
func DecodeMessageID(body []byte) (string, error) {
	if len(body) == 0 {
		return "", nil
	}
	d := decoder{b: body}
	id := d.cstring("message_id", maxMessageID)
	d.tlvs()
	return id, d.err
}

// encodeMessageID returns a submit_sm_resp or deliver_sm_resp body.
func encodeMessageID(id string) []byte {
	var e encoder
	e.cstring("message_id", id, maxMessageID)
	return e.b
}
