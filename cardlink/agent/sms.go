package agent

import (
	"bufio"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/keyport/keyport/gp"
	"github.com/keyport/keyport/internal/wait"
)

// The handset's modem and BIP stack, for a module woken by SMS rather than
// by the long poll: an OTA SMS for the module (SIM data download) is handed
// to the card as ENVELOPE (SMS-PP DOWNLOAD, 3GPP TS 31.111 7.1.1); the
// card's proof of receipt goes back as a mobile-originated SMS; the
// proactive OPEN CHANNEL it then asks for (FETCH) is answered by opening
// the TLS-PSK connection to the admin server the command names, a
// TERMINAL RESPONSE, and the Amendment B admin session.

// SMS is one short message delivered to the handset.
type SMS struct {
	From string // originator (the SMSC's source address), digits
	PID  byte
	DCS  byte
	// UserData is the TP-UD with its user data header (UDHI is set).
	UserData []byte
}

// SMSSource yields the SMS for the handset, blocking until one arrives or
// ctx ends.
type SMSSource interface {
	Next(ctx context.Context) (SMS, error)
}

// SMSSink sends the handset's mobile-originated messages (the PoR).
type SMSSink interface {
	SendMO(ctx context.Context, ud []byte) error
}

// HandsetFile reads the messages a test SMSC hands on to handsets: a JSON
// Lines file (cardlink/smpp's test SMSC, --handset) with, per message,
// "to", "protocol_id", "data_coding", the user data header elements in
// "udh" ({"iei", "data" in hex}) and the rest in "data" (hex). It follows
// the file as it grows and yields the messages to MSISDN from its current
// end on; Poll is how often it looks (default 50 ms).
type HandsetFile struct {
	Path   string
	MSISDN string
	Poll   time.Duration
	off    int64
	opened bool
	buf    []byte
}

type handsetLine struct {
	To         string `json:"to"`
	From       string `json:"from"`
	ProtocolID int    `json:"protocol_id"`
	DataCoding int    `json:"data_coding"`
	UDH        []struct {
		IEI  int    `json:"iei"`
		Data string `json:"data"`
	} `json:"udh"`
	Data string `json:"data"`
}

// ParseHandsetLine decodes one line of a handset file into an SMS and the
// MSISDN it is for.
func ParseHandsetLine(b []byte) (to string, m SMS, err error) {
	var l handsetLine
	if err := json.Unmarshal(b, &l); err != nil {
		return "", SMS{}, fmt.Errorf("agent: handset line: %w", err)
	}
	if l.ProtocolID < 0 || l.ProtocolID > 0xFF || l.DataCoding < 0 || l.DataCoding > 0xFF {
		return "", SMS{}, errors.New("agent: handset line: protocol_id and data_coding are octets")
	}
	var udh []byte
	for _, ie := range l.UDH {
		d, err := hex.DecodeString(ie.Data)
		if err != nil || ie.IEI < 0 || ie.IEI > 0xFF || len(d) > 0xFF {
			return "", SMS{}, errors.New("agent: handset line: bad user data header element")
		}
		udh = append(udh, byte(ie.IEI), byte(len(d)))
		udh = append(udh, d...)
	}
	if len(udh) == 0 || len(udh) > 0xFF {
		return "", SMS{}, errors.New("agent: handset line: no user data header (not a SIM data download)")
	}
	data, err := hex.DecodeString(l.Data)
	if err != nil {
		return "", SMS{}, errors.New("agent: handset line: data is not hex")
	}
	ud := append([]byte{byte(len(udh))}, udh...)
	ud = append(ud, data...)
	return l.To, SMS{From: l.From, PID: byte(l.ProtocolID), DCS: byte(l.DataCoding), UserData: ud}, nil
}

// Next implements SMSSource.
func (h *HandsetFile) Next(ctx context.Context) (SMS, error) {
	poll := h.Poll
	if poll <= 0 {
		poll = 50 * time.Millisecond
	}
	for {
		if i := strings.IndexByte(string(h.buf), '\n'); i >= 0 {
			line := h.buf[:i]
			h.buf = h.buf[i+1:]
			to, m, err := ParseHandsetLine(line)
			if err != nil || to != h.MSISDN {
				continue // another handset's, or nothing for a SIM
			}
			return m, nil
		}
		if err := h.read(); err != nil {
			return SMS{}, err
		}
		if i := strings.IndexByte(string(h.buf), '\n'); i >= 0 {
			continue
		}
		if err := wait.Sleep(ctx, poll); err != nil {
			return SMS{}, err
		}
	}
}

func (h *HandsetFile) read() error {
	f, err := os.Open(h.Path)
	if errors.Is(err, os.ErrNotExist) {
		h.opened = true // a file made later is read from its start
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	if !h.opened {
		// Messages before the agent started were for an earlier handset.
		h.opened = true
		if h.off, err = f.Seek(0, io.SeekEnd); err != nil {
			return err
		}
		return nil
	}
	if _, err := f.Seek(h.off, io.SeekStart); err != nil {
		return err
	}
	b, err := io.ReadAll(bufio.NewReader(f))
	if err != nil {
		return err
	}
	h.off += int64(len(b))
	h.buf = append(h.buf, b...)
	return nil
}

// MOFile appends the handset's mobile-originated messages to a spool the
// test SMSC delivers from (cardlink/smpp's test SMSC, --mo-spool): one
// JSON line a message, {"from": MSISDN, "ud": hex}.
type MOFile struct {
	Path   string
	MSISDN string
}

// SendMO implements SMSSink.
func (m MOFile) SendMO(_ context.Context, ud []byte) error {
	b, err := json.Marshal(map[string]string{"from": m.MSISDN, "ud": hex.EncodeToString(ud)})
	if err != nil {
		return err
	}
	f, err := os.OpenFile(m.Path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(append(b, '\n')); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// smscAddress is the service centre address of the SMS-PP download
// (TON international, E.164; digits 1234): the terminal names the SC it got
// the message from.
var smscAddress = []byte{0x91, 0x21, 0x43}

// SMSReport says what one delivered SMS did.
type SMSReport struct {
	PoR     []byte // the card's proof of receipt (nil: none asked for)
	Opened  bool   // the card asked for OPEN CHANNEL and the session ran
	Server  string // the admin server the OPEN CHANNEL named
	Session Report
}

// DeliverSMS hands one SMS to the card, sends its PoR back through sink,
// and, when the card asks for OPEN CHANNEL, opens the channel: the TLS-PSK
// session to the admin server the command names and the admin dialog.
func (a *Agent) DeliverSMS(ctx context.Context, m SMS, sink SMSSink) (SMSReport, error) {
	var rep SMSReport
	if m.PID != gp.SMSPIDDataDownload {
		return rep, fmt.Errorf("agent: SMS with PID %02X is no SIM data download", m.PID)
	}
	from := m.From
	if from == "" {
		from = "0"
	}
	tpdu, err := gp.OTADeliver(gp.Address{TOA: 0x91, Digits: from}, scts(time.Now()), m.UserData).Bytes()
	if err != nil {
		return rep, fmt.Errorf("agent: SMS-DELIVER: %w", err)
	}
	r, err := a.transmit(ctx, gp.SMSPPDownload{Address: smscAddress, TPDU: tpdu}.Envelope())
	if err != nil {
		return rep, fmt.Errorf("agent: ENVELOPE (SMS-PP DOWNLOAD): %w", err)
	}
	if r.SW != gp.SWOK && r.SW&0xFF00 != 0x9100 {
		return rep, fmt.Errorf("agent: ENVELOPE (SMS-PP DOWNLOAD): the card answered %v", r.SW)
	}
	if len(r.Data) > 0 {
		rep.PoR = r.Data
		if sink != nil {
			if err := sink.SendMO(ctx, r.Data); err != nil {
				a.log.Warn("proof of receipt not sent", "err", err)
			}
		}
	}
	if r.SW&0xFF00 != 0x9100 {
		return rep, nil // nothing proactive pending: no session
	}
	f, err := a.transmit(ctx, gp.FetchCommand(int(r.SW&0xFF)))
	if err != nil || f.SW != gp.SWOK {
		return rep, fmt.Errorf("agent: FETCH: %v %v", f.SW, err)
	}
	pc, err := gp.ParseProactiveCommand(f.Data)
	if err != nil {
		return rep, fmt.Errorf("agent: FETCH: %w", err)
	}
	tr := gp.TerminalResponse{Number: pc.Number, Type: pc.Type, Qualifier: pc.Qualifier}
	if pc.Type != gp.CATTypeOpenChannel {
		tr.Result = []byte{0x30} // command beyond terminal's capabilities
		_, err := a.transmit(ctx, tr.Command())
		return rep, errors.Join(fmt.Errorf("agent: proactive command %02X is not OPEN CHANNEL", pc.Type), err)
	}
	addr, err := gp.ChannelAddress(pc.Objects)
	if err != nil {
		tr.Result = []byte{0x32} // command data not understood
		_, terr := a.transmit(ctx, tr.Command())
		return rep, errors.Join(err, terr)
	}
	rep.Server = addr.String()
	// The link is up (BIP: channel 1, link established), then the dialog.
	tr.Result = []byte{gp.CATResultOK}
	tr.Objects = gp.Encode(0xB8, []byte{0x81, 0x00}) // channel status: channel 1, link established
	if t, err := a.transmit(ctx, tr.Command()); err != nil || (t.SW != gp.SWOK && t.SW&0xFF00 != 0x9100) {
		return rep, fmt.Errorf("agent: TERMINAL RESPONSE: %v %v", t.SW, err)
	}
	cfg := a.cfg
	cfg.Server = rep.Server
	cfg.Dial = nil // to the server the command names
	s := New(cfg, a.card)
	rep.Opened = true
	rep.Session, err = s.Session(ctx)
	return rep, err
}

func (a *Agent) transmit(ctx context.Context, c gp.Command) (gp.Response, error) {
	b, err := a.card.Transmit(ctx, c.Bytes())
	if err != nil {
		return gp.Response{}, err
	}
	return gp.ParseResponse(b)
}

// scts is a TP-SCTS (semi-octets, UTC).
func scts(t time.Time) [7]byte {
	t = t.UTC()
	bcd := func(v int) byte { return byte(v%10<<4 | v/10%10) }
	return [7]byte{bcd(t.Year() % 100), bcd(int(t.Month())), bcd(t.Day()), bcd(t.Hour()), bcd(t.Minute()), bcd(t.Second()), 0}
}

// RunSMS waits for the module's SMS on src and delivers each (DeliverSMS)
// until ctx ends; it never polls the admin server.
func (a *Agent) RunSMS(ctx context.Context, src SMSSource, sink SMSSink) error {
	for {
		m, err := src.Next(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		rep, err := a.DeliverSMS(ctx, m, sink)
		if err != nil && ctx.Err() == nil {
			a.log.Warn("SMS", "err", err, "por", fmt.Sprintf("%X", rep.PoR))
			continue
		}
		a.log.Info("SMS delivered", "por", fmt.Sprintf("%X", rep.PoR), "session", rep.Opened, "server", rep.Server,
			"scripts", rep.Session.Scripts)
	}
}
