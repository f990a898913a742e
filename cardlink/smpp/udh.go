package smpp

import (
	"errors"
	"fmt"
)

// SIM data download (TS 31.115 §4, TS 23.040 §9.2.3.9/§9.2.3.10): the
// short message carries a secured command packet for the (U)SIM.
const (
	// DCSSIMData is 8-bit data, message class 2 (SIM specific)
	// (TS 23.038 §4: 1111 0110).
	DCSSIMData byte = 0xF6
	// PIDSIMDataDownload is "(U)SIM Data download" (TS 23.040 §9.2.3.9).
	PIDSIMDataDownload byte = 0x7F
	// ESMClassUDHI sets the UDHI bit (§5.2.12 bit 6): the short message
	// begins with a user data header.
	ESMClassUDHI byte = 0x40
	// ESMClassDeliveryReceipt is the message type of an SMSC delivery
	// receipt in deliver_sm (§5.2.12 bits 5-2 = 0001).
	ESMClassDeliveryReceipt byte = 0x04
	esmClassTypeMask        byte = 0x3C
	// esmClassIntermediate is an intermediate delivery notification
	// (§5.2.12 bits 5-2 = 1000), read as a receipt (state ENROUTE…).
	esmClassIntermediate byte = 0x20

	// IEIConcat8 is the concatenation element with an 8-bit reference
	// (TS 23.040 §9.2.3.24.1).
	IEIConcat8 byte = 0x00
	// IEICommandPacket is the Command Packet Identifier (TS 31.115 §6.2,
	// TS 23.040 §9.2.3.24: (U)SIM Toolkit security header); its data is
	// empty, the packet's own header follows the UDH.
	IEICommandPacket byte = 0x70
	// IEIResponsePacket is the Response Packet Identifier of a
	// proof of receipt sent back by the card (TS 31.115 §6.4).
	IEIResponsePacket byte = 0x71

	// maxUserData is a short message's user data in 8-bit coding.
	maxUserData = 140
)

// Single-message and concatenated layouts (TS 31.115 §6.2, §6.3):
//
//	single:        02 70 00 | packet (at most 137 octets)
//	first segment: 07 00 03 ref n 1 70 00 | 132 octets
//	later ones:    05 00 03 ref n i | 134 octets
//
// The Command Packet Identifier goes in the first segment only.
const (
	singleRoom = maxUserData - 3
	firstRoom  = maxUserData - 8
	laterRoom  = maxUserData - 6
	// MaxPacket is the longest command packet Segments accepts: 255
	// segments of an 8-bit-reference concatenation.
	MaxPacket = firstRoom + 254*laterRoom
)

// Segments splits a secured command packet into the user data of the short
// messages that carry it, each with its user data header; ref is the
// concatenation reference, used only when more than one is needed.
func Segments(packet []byte, ref byte) ([][]byte, error) {
	if len(packet) == 0 {
		return nil, errors.New("smpp: empty command packet")
	}
	if len(packet) <= singleRoom {
		return [][]byte{append([]byte{0x02, IEICommandPacket, 0x00}, packet...)}, nil
	}
	if len(packet) > MaxPacket {
		return nil, fmt.Errorf("smpp: command packet of %d octets, at most %d in 255 segments", len(packet), MaxPacket)
	}
	n := 1 + (len(packet)-firstRoom+laterRoom-1)/laterRoom
	segs := make([][]byte, 0, n)
	first := append([]byte{0x07, IEIConcat8, 0x03, ref, byte(n), 1, IEICommandPacket, 0x00}, packet[:firstRoom]...)
	segs = append(segs, first)
	rest := packet[firstRoom:]
	for i := 2; len(rest) > 0; i++ {
		k := min(len(rest), laterRoom)
		segs = append(segs, append([]byte{0x05, IEIConcat8, 0x03, ref, byte(n), byte(i)}, rest[:k]...))
		rest = rest[k:]
	}
	return segs, nil
}

// InfoElement is one information element of a user data header.
type InfoElement struct {
	ID   byte
	Data []byte
}

// SplitUDH parses the user data header at the start of ud (TS 23.040
// §9.2.3.24) and returns its elements and the data after it.
func SplitUDH(ud []byte) ([]InfoElement, []byte, error) {
	if len(ud) == 0 {
		return nil, nil, errors.New("smpp: user data header missing")
	}
	n := int(ud[0])
	if 1+n > len(ud) {
		return nil, nil, fmt.Errorf("smpp: user data header of %d octets in %d", n, len(ud)-1)
	}
	h := ud[1 : 1+n]
	var ies []InfoElement
	for len(h) > 0 {
		if len(h) < 2 || 2+int(h[1]) > len(h) {
			return nil, nil, errors.New("smpp: truncated information element in user data header")
		}
		ies = append(ies, InfoElement{ID: h[0], Data: append([]byte(nil), h[2:2+int(h[1])]...)})
		h = h[2+int(h[1]):]
	}
	return ies, ud[1+n:], nil
}
