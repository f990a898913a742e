package gp

import (
	"fmt"
	"net/netip"
)

// Encoding the Amendment B trigger (PROTOCOLS.md §3.2) and reading the
// admin server's address back out of an OPEN CHANNEL's objects (ETSI TS
// 102 223 8.52 bearer description, 8.55 buffer size, 8.59 UICC/terminal
// interface transport level, 8.58 other address).

// CAT object tags of the OPEN CHANNEL parameters (TS 102 223 9.3).
const (
	catBearerDescription byte = 0x35
	catBufferSize        byte = 0x39
	catTransportLevel    byte = 0x3C
	catOtherAddress      byte = 0x3E
)

// Transport level protocol types (TS 102 223 8.59) and address types (8.58).
const (
	transportTCPClient byte = 0x02
	addressIPv4        byte = 0x21
	addressIPv6        byte = 0x57
)

// TCPConnection is the connection parameters (trigger tag 84) of a TCP
// client channel to addr over the default packet bearer (bearer type 03,
// GPRS/packet service, QoS and PDP type IP as in PROTOCOLS.md §3.2's
// example) with a 1400-byte buffer.
func TCPConnection(addr netip.AddrPort) ([]byte, error) {
	a := addr.Addr().Unmap()
	var other []byte
	switch {
	case a.Is4():
		b := a.As4()
		other = append([]byte{addressIPv4}, b[:]...)
	case a.Is6():
		b := a.As16()
		other = append([]byte{addressIPv6}, b[:]...)
	default:
		return nil, malformed("admin server address %v is not an IP address", addr)
	}
	if addr.Port() == 0 {
		return nil, malformed("admin server address %v has no port", addr)
	}
	out := Encode(Tag(catBearerDescription), []byte{0x02, 0x01, 0x03, 0x04, 0x02, 0x00, 0x03})
	out = append(out, Encode(Tag(catBufferSize), []byte{0x05, 0x78})...)
	out = append(out, Encode(Tag(catTransportLevel), []byte{transportTCPClient, byte(addr.Port() >> 8), byte(addr.Port())})...)
	return append(out, Encode(Tag(catOtherAddress), other)...), nil
}

// Bytes encodes the trigger as the 81 TLV (84, 85, 86 when set, 89 with
// 8A, 8B, 8C), the secured data of the OTA SMS.
func (a AdminTrigger) Bytes() []byte {
	params := Encode(0x84, a.Connection)
	params = append(params, Encode(0x85, a.Security)...)
	if a.Retry != nil {
		params = append(params, Encode(0x86, a.Retry)...)
	}
	params = append(params, Encode(0x89, Encode(0x8A, a.Host), Encode(0x8B, a.AgentID), Encode(0x8C, a.URI))...)
	return Encode(0x81, Encode(0x83, params))
}

// PSKSecurity is the trigger's security parameters (85): the TLS-PSK
// identity, then 02, the PSK's KVN and key ID.
func PSKSecurity(identity string, kvn, kid byte) ([]byte, error) {
	if len(identity) == 0 || len(identity) > 0x7F {
		return nil, malformed("PSK identity of %d bytes", len(identity))
	}
	out := append([]byte{byte(len(identity))}, identity...)
	return append(out, 0x02, kvn, kid), nil
}

// ChannelAddress returns the TCP address an OPEN CHANNEL's objects name:
// the transport level (TCP client, port) and the other address (IPv4 or
// IPv6).
func ChannelAddress(objects []byte) (netip.AddrPort, error) {
	items, err := ParseAllTLV(objects)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("gp: OPEN CHANNEL objects: %w", err)
	}
	var port uint16
	var addr netip.Addr
	var havePort, haveAddr bool
	for _, it := range items {
		switch simpleTag(it.Tag) {
		case catTransportLevel:
			if len(it.Value) != 3 || it.Value[0] != transportTCPClient {
				return netip.AddrPort{}, malformed("OPEN CHANNEL transport level %X is not a TCP client port", it.Value)
			}
			port, havePort = uint16(it.Value[1])<<8|uint16(it.Value[2]), true
		case catOtherAddress:
			switch {
			case len(it.Value) == 5 && it.Value[0] == addressIPv4:
				addr = netip.AddrFrom4([4]byte(it.Value[1:5]))
			case len(it.Value) == 17 && it.Value[0] == addressIPv6:
				addr = netip.AddrFrom16([16]byte(it.Value[1:17]))
			default:
				return netip.AddrPort{}, malformed("OPEN CHANNEL address %X is no IPv4 or IPv6 address", it.Value)
			}
			haveAddr = true
		}
	}
	if !havePort || !haveAddr || port == 0 {
		return netip.AddrPort{}, malformed("OPEN CHANNEL without a TCP port and an IP address")
	}
	return netip.AddrPortFrom(addr, port), nil
}
