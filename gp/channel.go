package gp

import (
	"context"
	"fmt"
)

// Logical channels (ISO 7816-4 5.4.1, 5.4.2, 7.1.2; GPCS 11.1.4).
//
// The class byte carries the channel number. The first interindustry coding
// (00-0F, and GP's proprietary 80-8F) has channels 0..3 in b2-b1 and secure
// messaging in b4-b3 (GP uses b3, 04). The further coding (40-7F, and
// C0-FE) has channels 4..19 as n-4 in b4-b1, secure messaging in b6 (20)
// and command chaining in b5 (10).

// SWChannelNotSupported is 6881: the class designates a logical channel the
// card does not offer or that is not open.
const SWChannelNotSupported SW = 0x6881

// MaxLogicalChannel is the highest channel number a class byte can carry.
const MaxLogicalChannel = 19

// ChannelOf returns the logical channel number cla designates.
func ChannelOf(cla byte) int {
	if cla&0x40 == 0 {
		return int(cla & 0x03)
	}
	return 4 + int(cla&0x0F)
}

// OnChannel recodes cla, a class byte for any channel, for logical channel
// n: the channel bits are replaced and, when the coding changes between
// the first (0..3) and the further (4..19) one, the secure messaging and
// chaining indications move with it (SM b4-b3 to b6 and back, as Android's
// OMAPI does); the proprietary bit b8 is kept.
//
// SCP03 MACs the class byte with the channel number cleared (AmdD 6.2.4,
// smCLA), so a session whose commands are recoded among channels 0..3 still
// verifies; recoded to 4..19 the MAC'd class changes with the coding, and
// the host must build its commands with the further class itself.
func OnChannel(cla byte, n int) (byte, error) {
	if n < 0 || n > MaxLogicalChannel {
		return 0, malformed("logical channel %d outside 0..%d", n, MaxLogicalChannel)
	}
	first := cla&0x40 == 0
	if first && n < 4 {
		return cla&^0x03 | byte(n), nil
	}
	sm := cla&0x20 != 0
	if first {
		sm = cla&0x0C != 0
	}
	chain := cla&0x10 != 0
	var out byte
	if n < 4 {
		out = cla&0x80 | byte(n)
		if sm {
			out |= 0x04
		}
	} else {
		out = cla&0x80 | 0x40 | byte(n-4)
		if sm {
			out |= 0x20
		}
	}
	if chain {
		out |= 0x10
	}
	return out, nil
}

// ManageChannelOpen is MANAGE CHANNEL open with the channel number chosen
// by the card (ISO 7816-4 7.1.2): 00 70 00 00 01, answered with one byte,
// the new channel's number. Sent on channel k (OnChannel), the new channel
// starts with k's selected application.
func ManageChannelOpen() Command {
	return Command{CLA: 0x00, INS: 0x70, P1: 0x00, P2: 0x00, Ne: 1}
}

// ManageChannelClose is MANAGE CHANNEL close of channel n, sent on the
// basic channel: 00 70 80 n.
func ManageChannelClose(n int) Command {
	return Command{CLA: 0x00, INS: 0x70, P1: 0x80, P2: byte(n)}
}

// ParseManageChannelOpen returns the channel number of a MANAGE CHANNEL
// open answer (data: one byte, 1..19).
func ParseManageChannelOpen(r Response) (int, error) {
	if r.SW != SWOK {
		return 0, &SWError{SW: r.SW, Op: "MANAGE CHANNEL open"}
	}
	if len(r.Data) != 1 || r.Data[0] == 0 || r.Data[0] > MaxLogicalChannel {
		return 0, malformed("MANAGE CHANNEL open answered %X, want one channel number 01..%02X", r.Data, MaxLogicalChannel)
	}
	return int(r.Data[0]), nil
}

// LogicalChannel is a Channel that sends every command on logical channel
// N of the card behind Ch, recoding the class byte with OnChannel. A Host
// over it selects and opens SCP03 sessions on that channel.
type LogicalChannel struct {
	Ch Channel
	N  int
}

// Transmit implements Channel.
func (l LogicalChannel) Transmit(ctx context.Context, apdu []byte) ([]byte, error) {
	if len(apdu) < 4 {
		return nil, fmt.Errorf("gp: command APDU of %d bytes has no header", len(apdu))
	}
	cla, err := OnChannel(apdu[0], l.N)
	if err != nil {
		return nil, err
	}
	out := append([]byte{cla}, apdu[1:]...)
	return l.Ch.Transmit(ctx, out)
}
