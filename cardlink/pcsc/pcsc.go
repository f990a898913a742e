// Package pcsc talks to secure modules in PC/SC readers through
// github.com/ebfe/scard (libpcsclite → pcscd): Open connects to the card in a
// named reader and returns a *Reader, which is a gp.Channel.
//
// The Reader hides the ISO 7816-4 transport statuses from its callers: 61xx
// is followed by GET RESPONSE until the whole answer is read, and 6Cxx is
// answered by sending the command again with the exact Le. A card that was
// reset or removed and put back is reconnected once; since a reset ends the
// card's session (selection, secure channel), the command is then sent to a
// fresh card session and the caller sees how the card answers it there.
package pcsc

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/ebfe/scard"

	"github.com/keyport/keyport/gp"
)

var _ gp.Channel = (*Reader)(nil)

// Errors a caller may test for with errors.Is.
var (
	// ErrNoReader: no reader of that name is attached (or none at all).
	ErrNoReader = errors.New("pcsc: no such reader")
	// ErrNoCard: the reader is there but holds no card (or the card is mute).
	ErrNoCard = errors.New("pcsc: no card in the reader")
	// ErrNoService: pcscd is not running or cannot be reached.
	ErrNoService = errors.New("pcsc: the PC/SC service (pcscd) is not available")
)

// maxGetResponse bounds the GET RESPONSE rounds of one command, so that a
// card that keeps answering 61xx cannot hold the reader forever.
const maxGetResponse = 256

// Reader is a connection to the card in one PC/SC reader. It is safe for
// concurrent use; commands are sent one at a time.
type Reader struct {
	name string

	mu   sync.Mutex
	ctx  *scard.Context
	card *scard.Card
}

// Readers lists the names of the attached PC/SC readers.
func Readers() ([]string, error) {
	ctx, err := scard.EstablishContext()
	if err != nil {
		return nil, classify("establish context", err)
	}
	defer ctx.Release()
	names, err := ctx.ListReaders()
	if errors.Is(err, scard.ErrNoReadersAvailable) {
		return nil, nil
	}
	if err != nil {
		return nil, classify("list readers", err)
	}
	return names, nil
}

// Open connects to the card in the reader named name (shared mode, T=0 or
// T=1). A name that is not a reader's full name but the start of exactly one
// is accepted, so "Virtual PCD" finds "Virtual PCD 00 00". The error matches
// ErrNoReader, ErrNoCard or ErrNoService when that is the cause.
func Open(ctx context.Context, name string) (*Reader, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	sc, err := scard.EstablishContext()
	if err != nil {
		return nil, classify("establish context", err)
	}
	full, err := findReader(sc, name)
	if err != nil {
		sc.Release()
		return nil, err
	}
	r := &Reader{name: full, ctx: sc}
	if err := r.connect(); err != nil {
		sc.Release()
		return nil, err
	}
	return r, nil
}

func findReader(sc *scard.Context, name string) (string, error) {
	names, err := sc.ListReaders()
	if errors.Is(err, scard.ErrNoReadersAvailable) {
		return "", fmt.Errorf("%w: %q (no reader is attached)", ErrNoReader, name)
	}
	if err != nil {
		return "", classify("list readers", err)
	}
	var prefixed []string
	for _, n := range names {
		if n == name {
			return n, nil
		}
		if name != "" && strings.HasPrefix(n, name) {
			prefixed = append(prefixed, n)
		}
	}
	if len(prefixed) == 1 {
		return prefixed[0], nil
	}
	if len(prefixed) > 1 {
		return "", fmt.Errorf("%w: %q names several readers: %q", ErrNoReader, name, prefixed)
	}
	return "", fmt.Errorf("%w: %q (readers: %q)", ErrNoReader, name, names)
}

// connect opens the card handle. Callers hold r.mu or own r alone.
func (r *Reader) connect() error {
	c, err := r.ctx.Connect(r.name, scard.ShareShared, scard.ProtocolT0|scard.ProtocolT1)
	if err != nil {
		return classify(fmt.Sprintf("connect to the card in %q", r.name), err)
	}
	r.card = c
	return nil
}

// Name is the reader's full PC/SC name.
func (r *Reader) Name() string { return r.name }

// Close disconnects from the card (leaving it powered) and releases the
// PC/SC context.
func (r *Reader) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.card != nil {
		r.card.Disconnect(scard.LeaveCard)
		r.card = nil
	}
	if r.ctx != nil {
		err := r.ctx.Release()
		r.ctx = nil
		if err != nil {
			return classify("release context", err)
		}
	}
	return nil
}

// Transmit sends one command APDU and returns the complete response APDU
// (data ‖ SW1 SW2), after any GET RESPONSE rounds (61xx) and a resend with
// the right Le (6Cxx) (ISO 7816-4 5.1.3, 7.6.1; ISO 7816-3 T=0 case 2 and 4).
// ctx is checked between exchanges; an exchange in progress is not
// interrupted.
func (r *Reader) Transmit(ctx context.Context, apdu []byte) ([]byte, error) {
	if len(apdu) < 4 {
		return nil, fmt.Errorf("pcsc: command APDU of %d bytes has no header", len(apdu))
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ctx == nil {
		return nil, errors.New("pcsc: reader is closed")
	}
	rsp, err := r.exchange(ctx, apdu)
	if err != nil {
		return nil, err
	}
	sw1, sw2 := rsp[len(rsp)-2], rsp[len(rsp)-1]
	if sw1 == 0x6C {
		// Wrong Le: send the same command again with Le = SW2.
		if rsp, err = r.exchange(ctx, withLe(apdu, sw2)); err != nil {
			return nil, err
		}
		sw1, sw2 = rsp[len(rsp)-2], rsp[len(rsp)-1]
	}
	data := append([]byte(nil), rsp[:len(rsp)-2]...)
	for round := 0; sw1 == 0x61; round++ {
		if round == maxGetResponse {
			return nil, fmt.Errorf("pcsc: %q: the card still answers 61xx after %d GET RESPONSE", r.name, round)
		}
		// GET RESPONSE on the command's logical channel (ISO 7816-4 7.6.1),
		// in either class coding (channels 0..3 and 4..19).
		cla, _ := gp.OnChannel(0x00, gp.ChannelOf(apdu[0]))
		get := []byte{cla, 0xC0, 0x00, 0x00, sw2}
		if rsp, err = r.exchange(ctx, get); err != nil {
			return nil, err
		}
		data = append(data, rsp[:len(rsp)-2]...)
		sw1, sw2 = rsp[len(rsp)-2], rsp[len(rsp)-1]
	}
	return append(data, sw1, sw2), nil
}

// exchange is one SCardTransmit. A card that was reset, or removed and put
// back, is reconnected once and the command sent again. Callers hold r.mu.
func (r *Reader) exchange(ctx context.Context, apdu []byte) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if r.card == nil {
		if err := r.connect(); err != nil {
			return nil, err
		}
	}
	rsp, err := r.card.Transmit(apdu)
	if errors.Is(err, scard.ErrResetCard) || errors.Is(err, scard.ErrRemovedCard) {
		if err = r.reconnect(err); err != nil {
			return nil, err
		}
		rsp, err = r.card.Transmit(apdu)
	}
	if err != nil {
		// The handle may be stale (card pulled mid-command): start afresh
		// next time.
		r.card.Disconnect(scard.LeaveCard)
		r.card = nil
		return nil, classify(fmt.Sprintf("transmit to %q", r.name), err)
	}
	if len(rsp) < 2 {
		return nil, fmt.Errorf("pcsc: %q answered %d bytes, no status word", r.name, len(rsp))
	}
	return rsp, nil
}

// reconnect re-establishes the card handle after cause (reset or removal).
func (r *Reader) reconnect(cause error) error {
	if errors.Is(cause, scard.ErrResetCard) {
		if err := r.card.Reconnect(scard.ShareShared, scard.ProtocolT0|scard.ProtocolT1, scard.LeaveCard); err == nil {
			return nil
		}
	}
	r.card.Disconnect(scard.LeaveCard)
	r.card = nil
	if err := r.connect(); err != nil {
		return fmt.Errorf("pcsc: %q: reconnect after %v: %w", r.name, cause, err)
	}
	return nil
}

// withLe returns apdu with its Le field replaced by le (short APDUs, ISO
// 7816-4 5.1: case 2 is header ‖ Le, case 4 header ‖ Lc ‖ data ‖ Le).
func withLe(apdu []byte, le byte) []byte {
	out := append([]byte(nil), apdu...)
	switch {
	case len(out) == 4: // case 1
		return append(out, le)
	case len(out) == 5: // case 2: the only body byte is Le
		out[4] = le
		return out
	case len(out) == 5+int(out[4]): // case 3
		return append(out, le)
	default: // case 4
		out[len(out)-1] = le
		return out
	}
}

// classify wraps a PC/SC error with op and, where it says so, with
// ErrNoReader, ErrNoCard or ErrNoService.
func classify(op string, err error) error {
	var kind error
	switch {
	case errors.Is(err, scard.ErrNoService), errors.Is(err, scard.ErrServiceStopped):
		kind = ErrNoService
	case errors.Is(err, scard.ErrUnknownReader), errors.Is(err, scard.ErrReaderUnavailable), errors.Is(err, scard.ErrNoReadersAvailable):
		kind = ErrNoReader
	case errors.Is(err, scard.ErrNoSmartcard), errors.Is(err, scard.ErrRemovedCard), errors.Is(err, scard.ErrUnresponsiveCard),
		errors.Is(err, scard.ErrUnpoweredCard):
		kind = ErrNoCard
	}
	if kind != nil {
		return fmt.Errorf("pcsc: %s: %w (%w)", op, kind, err)
	}
	return fmt.Errorf("pcsc: %s: %w", op, err)
}
