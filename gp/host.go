package gp

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
)

// Channel carries command APDUs to one card and brings back its answers: a
// PC/SC reader, a virtual module in process, a relay. Transmit returns the
// whole response APDU, data ‖ SW1 SW2. The ISO 7816-4 transport statuses
// 61xx (GET RESPONSE) and 6Cxx (wrong Le) are the channel's business and
// never reach the caller.
type Channel interface {
	Transmit(ctx context.Context, apdu []byte) ([]byte, error)
}

// ChannelFunc is a Channel made of a function.
type ChannelFunc func(ctx context.Context, apdu []byte) ([]byte, error)

// Transmit implements Channel.
func (f ChannelFunc) Transmit(ctx context.Context, apdu []byte) ([]byte, error) { return f(ctx, apdu) }

// Host is the off-card side of a dialog with one card over a Channel: the
// commands of GPCS chapter 11 sent in order, an SCP03 session opened on the
// selected security domain (AmdD 7.1) and every command after it wrapped and
// every answer unwrapped. The bytes travel through the Channel; Host has no
// I/O of its own. It is not safe for concurrent use.
type Host struct {
	ch      Channel
	sess    *HostSession // the open secure channel, nil if none
	pending *HostSession // INITIALIZE UPDATE answered, EXTERNAL AUTHENTICATE not sent
	sd      []byte       // AID of the selected SD, for errors
	apdus   int
}

// NewHost returns a host talking through ch, with no session open.
func NewHost(ch Channel) *Host { return &Host{ch: ch} }

// APDUs returns how many command APDUs the host has handed to the channel,
// those whose answer was lost included.
func (h *Host) APDUs() int { return h.apdus }

// Session returns the open SCP03 session, nil if there is none.
func (h *Host) Session() *HostSession { return h.sess }

// EndSession forgets the secure channel, as the card does on SELECT or a
// reset (AmdD 5.6): the commands after it go out unwrapped.
func (h *Host) EndSession() { h.sess, h.pending = nil, nil }

// Send transmits cmd, wrapped by the open session if any, and returns the
// card's answer, unwrapped. A status word other than 9000 is not an error
// here; a transport failure or an answer that fails the R-MAC is.
func (h *Host) Send(ctx context.Context, cmd Command) (Response, error) {
	if err := ctx.Err(); err != nil {
		return Response{}, err
	}
	if h.sess != nil {
		w, err := h.sess.Wrap(cmd)
		if err != nil {
			return Response{}, err
		}
		cmd = w
	}
	h.apdus++
	raw, err := h.ch.Transmit(ctx, cmd.Bytes())
	if err != nil {
		return Response{}, err
	}
	resp, err := ParseResponse(raw)
	if err != nil {
		return Response{}, err
	}
	if h.sess != nil {
		// A failed R-MAC closes hs: the next Wrap fails, nothing goes out
		// unprotected.
		if resp, err = h.sess.Unwrap(resp); err != nil {
			return Response{}, err
		}
	}
	return resp, nil
}

// SendOK is Send that fails with an *SWError naming the command (INSName)
// on any status but 9000. It returns the answer's data.
func (h *Host) SendOK(ctx context.Context, cmd Command) ([]byte, error) {
	resp, err := h.Send(ctx, cmd)
	if err != nil {
		return nil, err
	}
	if resp.SW != SWOK {
		return nil, &SWError{SW: resp.SW, Op: INSName(cmd.INS)}
	}
	return resp.Data, nil
}

// Select selects aid (empty: the ISD, GPCS 7.1.1) and reports whether the
// card has it: 6A82 is "not found", and so is an answer whose FCI names a
// longer AID than aid (ISO 7816-4 7.1.1: the card matched a partial AID).
// It returns the FCI of a found application. Selection ends any secure
// channel (AmdD 5.6).
func (h *Host) Select(ctx context.Context, aid []byte) (fci []byte, found bool, err error) {
	h.EndSession()
	h.sd = nil
	resp, err := h.Send(ctx, Select(aid))
	if err != nil {
		return nil, false, err
	}
	switch resp.SW {
	case SWOK:
		name := FCIDFName(resp.Data)
		if len(aid) > 0 && name != nil && !bytes.Equal(name, aid) {
			return nil, false, nil
		}
		h.sd = clone(aid)
		if len(aid) == 0 {
			h.sd = clone(name)
		}
		return resp.Data, true, nil
	case SWNotFound:
		return nil, false, nil
	}
	op := "SELECT"
	if len(aid) > 0 {
		op = fmt.Sprintf("SELECT %X", aid)
	}
	return nil, false, &SWError{SW: resp.SW, Op: op}
}

// FCIDFName returns the DF name (84) of a SELECT answer's FCI template (6F),
// nil if there is none (GPCS 11.9.3.1).
func FCIDFName(fci []byte) []byte {
	t, _, err := ParseTLV(fci)
	if err != nil || t.Tag != 0x6F {
		return nil
	}
	kids, err := t.Children()
	if err != nil {
		return nil
	}
	if n, ok := Find(kids, 0x84); ok {
		return n.Value
	}
	return nil
}

// InitializeUpdate starts SCP03 with the selected security domain (AmdD
// 7.1.1): it sends hs's INITIALIZE UPDATE and checks the card cryptogram.
// Only then may ExternalAuthenticate be sent, so a key set that is not the
// card's fails here with an error wrapping ErrCryptogram, before anything
// that counts toward the key set's lock has gone out. The card's answer is
// returned in that case too (a test host may go on regardless). A status
// other than 9000 is an *SWError: 6A88 means the SD has no such key set.
func (h *Host) InitializeUpdate(ctx context.Context, hs *HostSession) (InitUpdateResponse, error) {
	h.EndSession()
	cmd := hs.InitializeUpdate()
	resp, err := h.Send(ctx, cmd)
	if err != nil {
		return InitUpdateResponse{}, err
	}
	if resp.SW != SWOK {
		return InitUpdateResponse{}, &SWError{SW: resp.SW, Op: fmt.Sprintf("INITIALIZE UPDATE key set %02X", cmd.P1)}
	}
	if err := hs.OnInitUpdateResponse(resp); err != nil {
		iu, perr := ParseInitUpdateResponse(resp.Data)
		if perr != nil || !errors.Is(err, ErrCryptogram) {
			return InitUpdateResponse{}, err
		}
		return iu, fmt.Errorf("gp: %X key set %02X is not the expected one (card cryptogram mismatch; EXTERNAL AUTHENTICATE not sent, nothing counts toward its lock): %w",
			h.sd, cmd.P1, err)
	}
	h.pending = hs
	return hs.Card(), nil
}

// ExternalAuthenticate ends the handshake InitializeUpdate began (AmdD
// 7.1.2) at level, which the card's i parameter must allow (StrongestLevel
// gives the most it does). On 9000 the session is open and Send wraps every
// command after it; any other status is an *SWError and leaves no session.
func (h *Host) ExternalAuthenticate(ctx context.Context, level SecurityLevel) error {
	hs := h.pending
	h.pending = nil
	if hs == nil {
		return fmt.Errorf("gp: EXTERNAL AUTHENTICATE without a verified INITIALIZE UPDATE: %w", ErrState)
	}
	cmd, err := hs.ExternalAuthenticate(level)
	if err != nil {
		return err
	}
	resp, err := h.Send(ctx, cmd)
	if err != nil {
		return err
	}
	if resp.SW != SWOK {
		return &SWError{SW: resp.SW, Op: INSName(cmd.INS)}
	}
	h.sess = hs
	return nil
}

// Open runs the SCP03 handshake with the selected security domain at level:
// InitializeUpdate with a new session on ks (random host challenge), then
// ExternalAuthenticate. It returns the card's INITIALIZE UPDATE data (with
// the sequence counter in pseudo-random mode).
func (h *Host) Open(ctx context.Context, ks KeySet, level SecurityLevel) (InitUpdateResponse, error) {
	hs, err := NewHostSession(ks, nil)
	if err != nil {
		return InitUpdateResponse{}, err
	}
	iu, err := h.InitializeUpdate(ctx, hs)
	if err != nil {
		return iu, err
	}
	return iu, h.ExternalAuthenticate(ctx, level)
}

// Authenticate selects aid and opens SCP03 on it with ks at level (Select,
// then Open). An aid the card does not have is an *SWError with 6A82.
func (h *Host) Authenticate(ctx context.Context, aid []byte, ks KeySet, level SecurityLevel) (InitUpdateResponse, error) {
	_, found, err := h.Select(ctx, aid)
	if err != nil {
		return InitUpdateResponse{}, err
	}
	if !found {
		return InitUpdateResponse{}, &SWError{SW: SWNotFound, Op: fmt.Sprintf("SELECT %X", aid)}
	}
	return h.Open(ctx, ks, level)
}

// StrongestLevel is the strongest security level an SD whose SCP03 i
// parameter is i allows (AmdD Table 7-3, 5-1): C-MAC and C-DEC always,
// R-MAC and R-ENC when i offers them.
func StrongestLevel(i byte) SecurityLevel {
	switch {
	case i&IRMACRENC == IRMACRENC:
		return LevelCMAC | LevelCDEC | LevelRMAC | LevelRENC
	case i&IRMAC != 0:
		return LevelCMAC | LevelCDEC | LevelRMAC
	}
	return LevelCMAC | LevelCDEC
}

// KeyVersions returns the KVNs of the selected SD's key sets, each once, in
// the card's order (GET DATA 00E0, which needs no secure channel; GPCS
// 11.3.3.1, H.4).
func (h *Host) KeyVersions(ctx context.Context) ([]byte, error) {
	data, err := h.SendOK(ctx, GetData(DataKeyInformation))
	if err != nil {
		return nil, err
	}
	info, err := ParseKeyInformation(data)
	if err != nil {
		return nil, err
	}
	var kvns []byte
	for _, k := range info {
		if !slices.Contains(kvns, k.KVN) {
			kvns = append(kvns, k.KVN)
		}
	}
	return kvns, nil
}

// maxStatusPages bounds GET STATUS paging, so that a card that keeps
// answering 6310 cannot hold the host forever.
const maxStatusPages = 64

// GetStatus lists the registry entries of kind p1 (StatusApplications, …;
// GPCS 11.4), following 6310 pages with P2 "next" (GPCS 11.4.3). A card
// with no such entry answers 6A88 to the first page: that is an empty list.
func (h *Host) GetStatus(ctx context.Context, p1 byte) ([]RegistryEntry, error) {
	var out []RegistryEntry
	for page := 0; page < maxStatusPages; page++ {
		resp, err := h.Send(ctx, GetStatus(p1, page > 0, nil))
		if err != nil {
			return nil, err
		}
		if resp.SW == SWReferencedDataNotFound && page == 0 {
			return nil, nil
		}
		if resp.SW != SWOK && resp.SW != SWMoreData {
			return nil, &SWError{SW: resp.SW, Op: INSName(INSGetStatus)}
		}
		entries, err := ParseGetStatus(resp.Data)
		if err != nil {
			return nil, err
		}
		out = append(out, entries...)
		if resp.SW == SWOK {
			return out, nil
		}
	}
	return nil, fmt.Errorf("gp: GET STATUS: the card still answers 6310 after %d pages: %w", maxStatusPages, ErrMalformed)
}

// INSName names a command by its instruction byte (GPCS Table 11-1, AmdD
// 7.1), "INS xx" for one keyport does not send.
func INSName(ins byte) string {
	switch ins {
	case INSDelete:
		return "DELETE"
	case INSExternalAuthenticate:
		return "EXTERNAL AUTHENTICATE"
	case INSGetData:
		return "GET DATA"
	case INSGetStatus:
		return "GET STATUS"
	case INSInitializeUpdate:
		return "INITIALIZE UPDATE"
	case INSInstall:
		return "INSTALL"
	case INSPutKey:
		return "PUT KEY"
	case INSSelect:
		return "SELECT"
	case INSSetStatus:
		return "SET STATUS"
	case INSStoreData:
		return "STORE DATA"
	}
	return fmt.Sprintf("INS %02X", ins)
}
