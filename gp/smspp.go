package gp

import (
	"fmt"
	"strings"
)

// SMS-PP framing of SCP80 packets (3GPP TS 23.040 9.2, TS 31.115 6): the
// SMS-DELIVER TPDU, its user data header with the command packet
// identifier (IEI 70) and, for packets longer than one SMS, the
// concatenation element (IEI 00).

// SMS-PP data download coding of an OTA SMS (TS 31.115 6, TS 23.038 4).
const (
	SMSPIDDataDownload byte = 0x7F // TP-PID: (U)SIM data download
	SMSDCSClass2Data   byte = 0xF6 // TP-DCS: 8-bit data, class 2 (SIM specific)
)

// User data header information element identifiers.
const (
	IEIConcat8        byte = 0x00 // concatenated SM, 8-bit reference (TS 23.040 9.2.3.24.1)
	IEICommandPacket  byte = 0x70 // command packet identifier, CPI (TS 31.115)
	IEIResponsePacket byte = 0x71 // response packet identifier, RPI (TS 31.115)
)

// MaxUserData is the user data of one SMS: 140 octets (TS 23.040 9.2.3.16,
// 8-bit data).
const MaxUserData = 140

// IE is one user data header information element.
type IE struct {
	ID   byte
	Data []byte
}

// UserData is SMS user data split into its header elements and the rest.
type UserData struct {
	Header  []IE // nil when there is no header
	Payload []byte
}

// Find returns the first element with the identifier.
func (u UserData) Find(id byte) (IE, bool) {
	for _, ie := range u.Header {
		if ie.ID == id {
			return ie, true
		}
	}
	return IE{}, false
}

// Concat returns the 8-bit concatenation element: reference, total number
// of segments and this segment's number (1-based).
func (u UserData) Concat() (ref, total, seq byte, ok bool) {
	ie, found := u.Find(IEIConcat8)
	if !found || len(ie.Data) != 3 {
		return 0, 0, 0, false
	}
	return ie.Data[0], ie.Data[1], ie.Data[2], true
}

// Bytes encodes the user data with its header (UDHL first) when Header is
// not nil.
func (u UserData) Bytes() []byte {
	if u.Header == nil {
		return append([]byte(nil), u.Payload...)
	}
	h := []byte{0}
	for _, ie := range u.Header {
		h = append(h, ie.ID, byte(len(ie.Data)))
		h = append(h, ie.Data...)
	}
	h[0] = byte(len(h) - 1)
	return append(h, u.Payload...)
}

// ParseUserData splits user data sent with TP-UDHI set into its header
// elements and payload.
func ParseUserData(ud []byte) (UserData, error) {
	if len(ud) == 0 {
		return UserData{}, truncated("user data header: no UDHL")
	}
	n := int(ud[0])
	if 1+n > len(ud) {
		return UserData{}, truncated("user data header: UDHL %d, %d bytes", n, len(ud)-1)
	}
	h := ud[1 : 1+n]
	u := UserData{Header: []IE{}, Payload: ud[1+n:]}
	for len(h) > 0 {
		if len(h) < 2 || 2+int(h[1]) > len(h) {
			return UserData{}, truncated("user data header element %X", h)
		}
		u.Header = append(u.Header, IE{ID: h[0], Data: h[2 : 2+int(h[1])]})
		h = h[2+int(h[1]):]
	}
	if ie, ok := u.Find(IEIConcat8); ok && len(ie.Data) != 3 {
		return UserData{}, malformed("concatenation element of %d bytes", len(ie.Data))
	}
	if ref, total, seq, ok := u.Concat(); ok && (total == 0 || seq == 0 || seq > total) {
		return UserData{}, malformed("concatenation element ref %d: segment %d of %d", ref, seq, total)
	}
	return u, nil
}

// SMSPPSegments frames a command packet (from CPL on) as the user data of
// one SMS, 02 70 00 packet, or when it does not fit, of concatenated SMS
// with reference ref: the first carries IEI 00 and IEI 70, the others IEI
// 00 only.
func SMSPPSegments(packet []byte, ref byte) ([][]byte, error) {
	if len(packet) == 0 {
		return nil, malformed("empty command packet")
	}
	cpi := IE{ID: IEICommandPacket, Data: []byte{}}
	if 3+len(packet) <= MaxUserData {
		return [][]byte{UserData{Header: []IE{cpi}, Payload: packet}.Bytes()}, nil
	}
	const first, next = MaxUserData - 8, MaxUserData - 6
	n := 1 + (len(packet)-first+next-1)/next
	if n > 255 {
		return nil, malformed("command packet of %d bytes needs more than 255 SMS", len(packet))
	}
	out := make([][]byte, 0, n)
	for i, rest := 1, packet; len(rest) > 0; i++ {
		size := next
		hdr := []IE{{ID: IEIConcat8, Data: []byte{ref, byte(n), byte(i)}}}
		if i == 1 {
			size = first
			hdr = append(hdr, cpi)
		}
		size = min(size, len(rest))
		out = append(out, UserData{Header: hdr, Payload: rest[:size]}.Bytes())
		rest = rest[size:]
	}
	return out, nil
}

// JoinSMSPP reassembles a command packet from the user data of its SMS, in
// any order: one SMS with IEI 70, or a complete set of concatenated SMS of
// one reference whose first segment has IEI 70.
func JoinSMSPP(uds [][]byte) ([]byte, error) {
	if len(uds) == 0 {
		return nil, truncated("no SMS")
	}
	parts := make([][]byte, len(uds))
	var ref0, total0 byte
	for i, ud := range uds {
		u, err := ParseUserData(ud)
		if err != nil {
			return nil, err
		}
		ref, total, seq, concat := u.Concat()
		_, cpi := u.Find(IEICommandPacket)
		if !concat {
			if len(uds) != 1 || !cpi {
				return nil, malformed("SMS %d: neither a command packet nor a segment of one", i)
			}
			return append([]byte(nil), u.Payload...), nil
		}
		if i == 0 {
			ref0, total0 = ref, total
		}
		if ref != ref0 || total != total0 {
			return nil, malformed("SMS %d: segment of reference %d/%d, want %d/%d", i, ref, total, ref0, total0)
		}
		if int(total) != len(uds) {
			return nil, truncated("%d of %d segments", len(uds), total)
		}
		if parts[seq-1] != nil {
			return nil, malformed("segment %d twice", seq)
		}
		if cpi != (seq == 1) {
			return nil, malformed("segment %d: command packet identifier must be in segment 1 only", seq)
		}
		parts[seq-1] = u.Payload
	}
	var out []byte
	for _, p := range parts {
		out = append(out, p...)
	}
	return out, nil
}

// Address is a TS 23.040 9.1.2.5 address: type of address and digits
// (0-9, *, #, a, b, c). Alphanumeric addresses are not supported.
type Address struct {
	TOA    byte // e.g. 0x91 international ISDN, 0x81 unknown ISDN
	Digits string
}

const bcdDigits = "0123456789*#abc"

func (a Address) semiOctets() ([]byte, error) {
	if a.TOA&0x80 == 0 || a.TOA&0x70 == 0x50 {
		return nil, malformed("address type %02X not supported", a.TOA)
	}
	if len(a.Digits) > 20 {
		return nil, malformed("address of %d digits", len(a.Digits))
	}
	out := make([]byte, (len(a.Digits)+1)/2)
	for i := range out {
		out[i] = 0xFF
	}
	for i, r := range strings.ToLower(a.Digits) {
		d := strings.IndexRune(bcdDigits, r)
		if d < 0 {
			return nil, malformed("address digit %q", r)
		}
		if i%2 == 0 {
			out[i/2] = out[i/2]&0xF0 | byte(d)
		} else {
			out[i/2] = out[i/2]&0x0F | byte(d)<<4
		}
	}
	return out, nil
}

func digitsOf(b []byte, n int) (string, error) {
	var sb strings.Builder
	for i := 0; i < n; i++ {
		d := b[i/2] & 0x0F
		if i%2 == 1 {
			d = b[i/2] >> 4
		}
		if int(d) >= len(bcdDigits) {
			return "", malformed("address digit %X", d)
		}
		sb.WriteByte(bcdDigits[d])
	}
	if n%2 == 1 && b[n/2]>>4 != 0x0F {
		return "", malformed("address fill %X, want F", b[n/2]>>4)
	}
	return sb.String(), nil
}

// SMSDeliver is an SMS-DELIVER TPDU (TS 23.040 9.2.2.1) with 8-bit user
// data.
type SMSDeliver struct {
	// MoreMessages clears TP-MMS: more messages are waiting in the SC.
	MoreMessages bool
	ReplyPath    bool
	// Flags holds b5-b3 of the first octet as received (TP-SRI, TP-LP).
	Flags      byte
	Originator Address
	PID, DCS   byte
	SCTS       [7]byte // service centre time stamp, semi-octets as sent
	UDHI       bool    // user data starts with a header
	UserData   []byte
}

// OTADeliver returns the SMS-DELIVER carrying one SMS's user data of an OTA
// command packet (PID 7F, DCS F6, header present).
func OTADeliver(from Address, scts [7]byte, ud []byte) SMSDeliver {
	return SMSDeliver{Originator: from, PID: SMSPIDDataDownload, DCS: SMSDCSClass2Data, SCTS: scts, UDHI: true, UserData: ud}
}

func eightBit(dcs byte) bool {
	switch {
	case dcs&0xF0 == 0xF0:
		return dcs&0x04 != 0
	case dcs&0xC0 == 0x00 || dcs&0xC0 == 0x40:
		return dcs&0x0C == 0x04
	}
	return false
}

// Bytes encodes the TPDU.
func (d SMSDeliver) Bytes() ([]byte, error) {
	if !eightBit(d.DCS) {
		return nil, malformed("DCS %02X is not 8-bit data", d.DCS)
	}
	if len(d.UserData) > MaxUserData {
		return nil, malformed("user data of %d bytes exceeds %d", len(d.UserData), MaxUserData)
	}
	oa, err := d.Originator.semiOctets()
	if err != nil {
		return nil, err
	}
	fo := byte(0x00) // TP-MTI SMS-DELIVER
	if !d.MoreMessages {
		fo |= 0x04
	}
	if d.UDHI {
		fo |= 0x40
	}
	if d.ReplyPath {
		fo |= 0x80
	}
	fo |= d.Flags & 0x38
	out := []byte{fo, byte(len(d.Originator.Digits)), d.Originator.TOA}
	out = append(out, oa...)
	out = append(out, d.PID, d.DCS)
	out = append(out, d.SCTS[:]...)
	out = append(out, byte(len(d.UserData)))
	return append(out, d.UserData...), nil
}

// ParseSMSDeliver decodes an SMS-DELIVER TPDU with 8-bit user data.
func ParseSMSDeliver(b []byte) (SMSDeliver, error) {
	if len(b) < 3 {
		return SMSDeliver{}, truncated("SMS-DELIVER of %d bytes", len(b))
	}
	if b[0]&0x03 != 0x00 {
		return SMSDeliver{}, malformed("TP-MTI %d is not SMS-DELIVER", b[0]&3)
	}
	d := SMSDeliver{MoreMessages: b[0]&0x04 == 0, UDHI: b[0]&0x40 != 0, ReplyPath: b[0]&0x80 != 0, Flags: b[0] & 0x38}
	n := int(b[1])
	d.Originator.TOA = b[2]
	if d.Originator.TOA&0x80 == 0 || d.Originator.TOA&0x70 == 0x50 {
		return SMSDeliver{}, malformed("originator address type %02X not supported", d.Originator.TOA)
	}
	if n > 20 {
		return SMSDeliver{}, malformed("originator address of %d digits", n)
	}
	rest := b[3:]
	if len(rest) < (n+1)/2+10 {
		return SMSDeliver{}, truncated("SMS-DELIVER of %d bytes", len(b))
	}
	var err error
	if d.Originator.Digits, err = digitsOf(rest, n); err != nil {
		return SMSDeliver{}, err
	}
	rest = rest[(n+1)/2:]
	d.PID, d.DCS = rest[0], rest[1]
	copy(d.SCTS[:], rest[2:9])
	if !eightBit(d.DCS) {
		return SMSDeliver{}, malformed("DCS %02X is not 8-bit data", d.DCS)
	}
	udl := int(rest[9])
	ud := rest[10:]
	if udl > MaxUserData {
		return SMSDeliver{}, malformed("UDL %d exceeds %d", udl, MaxUserData)
	}
	if len(ud) != udl {
		if len(ud) < udl {
			return SMSDeliver{}, truncated("UDL %d, %d bytes", udl, len(ud))
		}
		return SMSDeliver{}, malformed("UDL %d, %d bytes", udl, len(ud))
	}
	d.UserData = append([]byte(nil), ud...)
	return d, nil
}

// CAT (ETSI TS 102 223) objects around SMS-PP download and the proactive
// commands a card answers with. COMPREHENSION-TLV tags are accepted with
// or without the comprehension-required bit (b8).

// CAT tags (TS 102 223 9.3, without the CR bit; BER tags for the
// templates).
const (
	CATProactiveCommand Tag  = 0xD0
	CATSMSPPDownload    Tag  = 0xD1
	CATCommandDetails   byte = 0x01
	CATDeviceIdentities byte = 0x02
	CATResult           byte = 0x03
	CATAddress          byte = 0x06
	CATSMSTPDU          byte = 0x0B
	CATTypeOpenChannel  byte = 0x40 // type of command (TS 102 223 9.4)
	CATDeviceUICC       byte = 0x81
	CATDeviceTerminal   byte = 0x82
	CATDeviceNetwork    byte = 0x83
	CATResultOK         byte = 0x00
)

func simpleTag(t Tag) byte { return byte(t) &^ 0x80 }

func ctlv(tag byte, v []byte) []byte { return Encode(Tag(tag|0x80), v) }

// SMSPPDownload is the ENVELOPE (SMS-PP DOWNLOAD) data object (TS 31.111
// 7.1.1, TS 102 223 8): device identities network to UICC, the
// service centre address, and the SMS-DELIVER TPDU.
type SMSPPDownload struct {
	Address []byte // TON/NPI and BCD digits of the SC, nil if absent
	TPDU    []byte
}

// Bytes encodes the D1 object.
func (e SMSPPDownload) Bytes() []byte {
	v := ctlv(CATDeviceIdentities, []byte{CATDeviceNetwork, CATDeviceUICC})
	if e.Address != nil {
		v = append(v, ctlv(CATAddress, e.Address)...)
	}
	v = append(v, ctlv(CATSMSTPDU, e.TPDU)...)
	return Encode(CATSMSPPDownload, v)
}

// Envelope wraps it in ENVELOPE (INS C2).
func (e SMSPPDownload) Envelope() Command {
	return Command{CLA: 0x80, INS: 0xC2, Data: e.Bytes(), Ne: 256}
}

// ParseSMSPPDownload decodes a D1 object: the device identities must say
// network to UICC and the TPDU must be present.
func ParseSMSPPDownload(b []byte) (SMSPPDownload, error) {
	t, rest, err := ParseTLV(b)
	if err != nil {
		return SMSPPDownload{}, err
	}
	if t.Tag != CATSMSPPDownload || len(rest) != 0 {
		return SMSPPDownload{}, malformed("envelope %v is not one SMS-PP download (D1)", t.Tag)
	}
	items, err := ParseAllTLV(t.Value)
	if err != nil {
		return SMSPPDownload{}, err
	}
	var e SMSPPDownload
	seenDev, seenTPDU := false, false
	for _, it := range items {
		switch simpleTag(it.Tag) {
		case CATDeviceIdentities:
			if len(it.Value) != 2 || it.Value[0] != CATDeviceNetwork || it.Value[1] != CATDeviceUICC {
				return SMSPPDownload{}, malformed("SMS-PP download device identities %X, want 8381", it.Value)
			}
			seenDev = true
		case CATAddress:
			e.Address = append([]byte(nil), it.Value...)
		case CATSMSTPDU:
			e.TPDU = append([]byte(nil), it.Value...)
			seenTPDU = true
		}
	}
	if !seenDev || !seenTPDU {
		return SMSPPDownload{}, malformed("SMS-PP download without device identities or SMS TPDU")
	}
	return e, nil
}

// ProactiveCommand is a proactive UICC command (TS 102 223 6.6): command
// details, device identities (UICC to Dest) and the other objects as sent.
type ProactiveCommand struct {
	Number, Type, Qualifier byte
	Dest                    byte
	Objects                 []byte // the COMPREHENSION-TLVs after the device identities
}

// Bytes encodes the D0 object.
func (p ProactiveCommand) Bytes() []byte {
	v := ctlv(CATCommandDetails, []byte{p.Number, p.Type, p.Qualifier})
	v = append(v, ctlv(CATDeviceIdentities, []byte{CATDeviceUICC, p.Dest})...)
	return Encode(CATProactiveCommand, append(v, p.Objects...))
}

// OpenChannel is the proactive OPEN CHANNEL (TS 102 223 6.6.27) for the
// connection parameters of an Amendment B trigger (the CAT TLVs of tag
// 84: bearer description, buffer size, transport level, destination
// address, ...), with immediate link establishment (qualifier b1).
func OpenChannel(number byte, connection []byte) (ProactiveCommand, error) {
	if _, err := ParseAllTLV(connection); err != nil {
		return ProactiveCommand{}, fmt.Errorf("gp: OPEN CHANNEL parameters: %w", err)
	}
	return ProactiveCommand{Number: number, Type: CATTypeOpenChannel, Qualifier: 0x01,
		Dest: CATDeviceTerminal, Objects: append([]byte(nil), connection...)}, nil
}

// ParseProactiveCommand decodes a D0 object.
func ParseProactiveCommand(b []byte) (ProactiveCommand, error) {
	t, rest, err := ParseTLV(b)
	if err != nil {
		return ProactiveCommand{}, err
	}
	if t.Tag != CATProactiveCommand || len(rest) != 0 {
		return ProactiveCommand{}, malformed("%v is not one proactive command (D0)", t.Tag)
	}
	items, err := ParseAllTLV(t.Value)
	if err != nil {
		return ProactiveCommand{}, err
	}
	if len(items) < 2 || simpleTag(items[0].Tag) != CATCommandDetails || len(items[0].Value) != 3 ||
		simpleTag(items[1].Tag) != CATDeviceIdentities || len(items[1].Value) != 2 || items[1].Value[0] != CATDeviceUICC {
		return ProactiveCommand{}, malformed("proactive command without command details and device identities")
	}
	p := ProactiveCommand{Number: items[0].Value[0], Type: items[0].Value[1], Qualifier: items[0].Value[2], Dest: items[1].Value[1]}
	for _, it := range items[2:] {
		p.Objects = append(p.Objects, it.Bytes()...)
	}
	return p, nil
}

// TerminalResponse is the data of TERMINAL RESPONSE (INS 14, TS 102 223
// 6.8): the command details it answers, the general result and the other
// objects (e.g. channel status, bearer description, buffer size).
type TerminalResponse struct {
	Number, Type, Qualifier byte
	Result                  []byte // general result and additional information
	Objects                 []byte
}

// Bytes encodes the response (no template tag: TERMINAL RESPONSE data is a
// list of COMPREHENSION-TLVs).
func (r TerminalResponse) Bytes() []byte {
	v := ctlv(CATCommandDetails, []byte{r.Number, r.Type, r.Qualifier})
	v = append(v, ctlv(CATDeviceIdentities, []byte{CATDeviceTerminal, CATDeviceUICC})...)
	v = append(v, ctlv(CATResult, r.Result)...)
	return append(v, r.Objects...)
}

// Command wraps it in TERMINAL RESPONSE.
func (r TerminalResponse) Command() Command {
	return Command{CLA: 0x80, INS: 0x14, Data: r.Bytes()}
}

// ParseTerminalResponse decodes TERMINAL RESPONSE data.
func ParseTerminalResponse(b []byte) (TerminalResponse, error) {
	items, err := ParseAllTLV(b)
	if err != nil {
		return TerminalResponse{}, err
	}
	if len(items) < 3 || simpleTag(items[0].Tag) != CATCommandDetails || len(items[0].Value) != 3 ||
		simpleTag(items[1].Tag) != CATDeviceIdentities || len(items[1].Value) != 2 ||
		simpleTag(items[2].Tag) != CATResult || len(items[2].Value) == 0 {
		return TerminalResponse{}, malformed("terminal response without command details, device identities and result")
	}
	r := TerminalResponse{Number: items[0].Value[0], Type: items[0].Value[1], Qualifier: items[0].Value[2],
		Result: append([]byte(nil), items[2].Value...)}
	for _, it := range items[3:] {
		r.Objects = append(r.Objects, it.Bytes()...)
	}
	return r, nil
}

// FetchCommand is FETCH (INS 12) of n bytes.
func FetchCommand(n int) Command { return Command{CLA: 0x80, INS: 0x12, Ne: n} }

// AdminTrigger is the Administration Session Triggering parameters TLV
// of GP Amendment B (81 { 83 { 84 .., 85 .., 86 .., 89 { 8A 8B 8C } } }),
// as the secured data of an OTA SMS to the ISD. Values alias the input.
type AdminTrigger struct {
	Connection []byte // 84: CAT TLVs for OPEN CHANNEL
	Security   []byte // 85: PSK identity, KVN, KID
	Retry      []byte // 86, nil if absent
	Host       []byte // 8A
	AgentID    []byte // 8B
	URI        []byte // 8C
}

// ParseAdminTrigger decodes the 81 TLV (alone in b).
func ParseAdminTrigger(b []byte) (AdminTrigger, error) {
	t, rest, err := ParseTLV(b)
	if err != nil {
		return AdminTrigger{}, err
	}
	if t.Tag != 0x81 || len(rest) != 0 {
		return AdminTrigger{}, malformed("%v is not one administration session trigger (81)", t.Tag)
	}
	outer, err := ParseAllTLV(t.Value)
	if err != nil {
		return AdminTrigger{}, err
	}
	params, ok := Find(outer, 0x83)
	if !ok {
		return AdminTrigger{}, malformed("trigger without admin session parameters (83)")
	}
	items, err := ParseAllTLV(params.Value)
	if err != nil {
		return AdminTrigger{}, err
	}
	var a AdminTrigger
	for _, it := range items {
		switch it.Tag {
		case 0x84:
			a.Connection = it.Value
		case 0x85:
			a.Security = it.Value
		case 0x86:
			a.Retry = it.Value
		case 0x89:
			post, err := ParseAllTLV(it.Value)
			if err != nil {
				return AdminTrigger{}, err
			}
			for _, p := range post {
				switch p.Tag {
				case 0x8A:
					a.Host = p.Value
				case 0x8B:
					a.AgentID = p.Value
				case 0x8C:
					a.URI = p.Value
				}
			}
		}
	}
	if a.Connection == nil || a.Security == nil {
		return AdminTrigger{}, malformed("trigger without connection (84) or security (85) parameters")
	}
	if _, err := ParseAllTLV(a.Connection); err != nil {
		return AdminTrigger{}, fmt.Errorf("gp: trigger connection parameters: %w", err)
	}
	return a, nil
}
