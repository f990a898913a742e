package vcard

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/keyport/keyport/internal/wait"
)

// DefaultVPCDAddr is where vsmartcard's vpcd driver listens for the card of
// reader slot 0 ("Virtual PCD 00 00"); slot 1 is on the next port.
const DefaultVPCDAddr = "127.0.0.1:35963"

// vpcd control codes: a payload of exactly one byte (vsmartcard vpcd protocol).
const (
	vpcdPowerOff = 0
	vpcdPowerOn  = 1
	vpcdReset    = 2
	vpcdGetATR   = 4
)

// Backoff bounds for reconnecting to vpcd.
const (
	minBackoff = 50 * time.Millisecond
	maxBackoff = 2 * time.Second
)

// Serve connects card to the vpcd driver at addr (DefaultVPCDAddr if empty)
// and answers its requests until ctx is cancelled. When vpcd is not up yet or
// drops the connection, Serve reconnects with exponential backoff. It returns
// nil after ctx is cancelled.
//
// The wire protocol is vsmartcard's: every message is a 2-byte big-endian
// length followed by that many bytes. A 1-byte payload is a control code
// (power off, power on, reset, get ATR); anything longer is a C-APDU that is
// answered with the R-APDU.
func Serve(ctx context.Context, card *Card, addr string) error {
	if card == nil {
		return errors.New("vcard: serve: nil card")
	}
	if addr == "" {
		addr = DefaultVPCDAddr
	}
	backoff := minBackoff
	var d net.Dialer
	for {
		conn, err := d.DialContext(ctx, "tcp", addr)
		if err == nil {
			backoff = minBackoff
			err = serveConn(ctx, card, conn)
			// The reader lost its card: a new connection is a new card session.
			card.Reset()
		}
		if ctx.Err() != nil {
			return nil
		}
		_ = err // vpcd not up or connection dropped: retry.
		if wait.Sleep(ctx, backoff) != nil {
			return nil
		}
		backoff = min(backoff*2, maxBackoff)
	}
}

// serveConn runs one vpcd connection until it fails or ctx ends.
func serveConn(ctx context.Context, card *Card, conn net.Conn) error {
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	defer conn.Close()

	var hdr [2]byte
	buf := make([]byte, 0xFFFF)
	out := make([]byte, 0, 2+0x10000)
	for {
		// Debian's vpcd writes the length and the payload in two segments;
		// with Nagle on its side and delayed ACK on ours every APDU stalls
		// ~40 ms. Quick ACK mode is reset by the kernel after a while, so set
		// it before every read (ENVIRONMENT.md, "Latency trap").
		setQuickAck(conn)
		if _, err := io.ReadFull(conn, hdr[:]); err != nil {
			return err
		}
		n := int(binary.BigEndian.Uint16(hdr[:]))
		setQuickAck(conn)
		if _, err := io.ReadFull(conn, buf[:n]); err != nil {
			return err
		}
		var reply []byte
		switch {
		case n == 1:
			switch buf[0] {
			case vpcdPowerOff, vpcdPowerOn, vpcdReset:
				card.Reset()
			case vpcdGetATR:
				reply = card.ATR()
			}
			if reply == nil {
				continue
			}
		case n == 0:
			continue
		default:
			reply = card.Process(buf[:n])
		}
		if len(reply) > 0xFFFF {
			return fmt.Errorf("vcard: response of %d bytes does not fit vpcd framing", len(reply))
		}
		// One write per message keeps length and payload in one segment.
		out = binary.BigEndian.AppendUint16(out[:0], uint16(len(reply)))
		out = append(out, reply...)
		if _, err := conn.Write(out); err != nil {
			return err
		}
	}
}
