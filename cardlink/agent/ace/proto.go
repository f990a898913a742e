package ace

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"unicode/utf8"
)

// The app socket protocol. Every message, both ways, is one frame: a 4-byte
// big-endian length N (1..MaxFrame) followed by N bytes of one JSON object.
// A connection is one session of one app; it holds at most one logical
// channel at a time.
//
// Requests (app → enforcer):
//
//	{"op":"open","cert":CERT,"aid":"F0010203040501"[,"package":"com.example"]}
//	{"op":"transmit","apdu":"80CA9F7F00"}
//	{"op":"close"}
//
// CERT is the app's signing certificate: PEM text (one CERTIFICATE block)
// or the DER in standard base64. "package" is optional and only matters to
// rules that name a package. APDUs travel in hex.
//
// Replies (enforcer → app), one per request, in order:
//
//	{"ok":true,"channel":1,"select":"6F…9000"}    open: the channel and the SELECT answer
//	{"ok":true,"rapdu":"9F7F2A…9000"}             transmit: the whole R-APDU
//	{"ok":true}                                   close
//	{"ok":false,"code":CODE,"error":"…"}          any request refused
//
// CODE is one of the Code* constants. A refused request leaves the session
// as it was: an app refused an APDU keeps its channel. A frame whose length
// is out of range ends the connection after the error reply (the stream
// cannot be resynchronized); any other malformed request is answered and
// the connection goes on.

// MaxFrame bounds a frame's payload: an extended APDU of 65535 data bytes in
// hex fits, with room for the JSON around it.
const MaxFrame = 1 << 18

// Request operations.
const (
	OpOpen     = "open"
	OpTransmit = "transmit"
	OpClose    = "close"
)

// Reply codes of refused requests.
const (
	CodeBadRequest = "bad-request" // the frame or its JSON is malformed
	CodeDenied     = "denied"      // the access rules refuse this app the applet
	CodeRefused    = "refused"     // the APDU is not allowed (filters, MANAGE CHANNEL, SELECT by name…)
	CodeState      = "state"       // open twice, transmit without a channel…
	CodeCard       = "card"        // the secure element failed or is gone
)

// Request is a parsed app request.
type Request struct {
	Op      string
	CertDER []byte // open: the signing certificate, DER
	AID     []byte // open
	Package string // open, optional
	APDU    []byte // transmit
}

// Reply is the enforcer's answer to one request.
type Reply struct {
	OK      bool   `json:"ok"`
	Channel int    `json:"channel,omitempty"`
	Select  string `json:"select,omitempty"`
	RAPDU   string `json:"rapdu,omitempty"`
	Code    string `json:"code,omitempty"`
	Error   string `json:"error,omitempty"`
}

// AppError is a refusal the enforcer sent: its code and its message.
type AppError struct {
	Code, Message string
}

func (e *AppError) Error() string { return e.Message }

// ErrFrame marks a frame whose length prefix is out of range.
var ErrFrame = errors.New("frame length out of range")

// ReadFrame reads one frame's payload. io.EOF means the peer closed
// cleanly between frames; an error wrapping ErrFrame, a length out of
// 1..MaxFrame.
func ReadFrame(r io.Reader) ([]byte, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, fmt.Errorf("frame header cut short: %w", err)
		}
		return nil, err
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n == 0 || n > MaxFrame {
		return nil, fmt.Errorf("%w: %d bytes (want 1..%d)", ErrFrame, n, MaxFrame)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, fmt.Errorf("frame of %d bytes cut short: %w", n, err)
	}
	return b, nil
}

// WriteFrame writes v as one JSON frame, in one Write.
func WriteFrame(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if len(b) > MaxFrame {
		return fmt.Errorf("%w: %d bytes", ErrFrame, len(b))
	}
	out := binary.BigEndian.AppendUint32(make([]byte, 0, 4+len(b)), uint32(len(b)))
	_, err = w.Write(append(out, b...))
	return err
}

// wireRequest is a request as it travels.
type wireRequest struct {
	Op      string  `json:"op"`
	Cert    *string `json:"cert,omitempty"`
	AID     *string `json:"aid,omitempty"`
	Package *string `json:"package,omitempty"`
	APDU    *string `json:"apdu,omitempty"`
}

// ParseRequest decodes one request frame. Unknown fields, fields that do
// not belong to the operation and trailing data are errors, so that a
// mistyped request is refused rather than half understood.
func ParseRequest(b []byte) (Request, error) {
	if !utf8.Valid(b) {
		return Request{}, errors.New("request is not UTF-8 JSON")
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var w wireRequest
	if err := dec.Decode(&w); err != nil {
		return Request{}, fmt.Errorf("request is not a JSON object of op, cert, aid, package, apdu: %v", err)
	}
	if dec.More() {
		return Request{}, errors.New("request has data after its JSON object")
	}
	if _, err := dec.Token(); err != io.EOF {
		return Request{}, errors.New("request has data after its JSON object")
	}
	only := func(allowed ...string) error {
		have := map[string]bool{"cert": w.Cert != nil, "aid": w.AID != nil, "package": w.Package != nil, "apdu": w.APDU != nil}
		for _, a := range allowed {
			delete(have, a)
		}
		for k, v := range have {
			if v {
				return fmt.Errorf("request %q has no %q field", w.Op, k)
			}
		}
		return nil
	}
	switch w.Op {
	case OpOpen:
		if err := only("cert", "aid", "package"); err != nil {
			return Request{}, err
		}
		if w.Cert == nil || w.AID == nil {
			return Request{}, errors.New(`request "open" needs "cert" (the app's signing certificate, PEM or base64 DER) and "aid" (hex)`)
		}
		der, err := parseCert(*w.Cert)
		if err != nil {
			return Request{}, err
		}
		aid, err := hex.DecodeString(*w.AID)
		if err != nil || len(aid) < 5 || len(aid) > 16 {
			return Request{}, fmt.Errorf("open: aid %q must be 5 to 16 bytes in hex", clip(*w.AID))
		}
		r := Request{Op: OpOpen, CertDER: der, AID: aid}
		if w.Package != nil {
			r.Package = *w.Package
		}
		return r, nil
	case OpTransmit:
		if err := only("apdu"); err != nil {
			return Request{}, err
		}
		if w.APDU == nil {
			return Request{}, errors.New(`request "transmit" needs "apdu" (hex)`)
		}
		apdu, err := hex.DecodeString(*w.APDU)
		if err != nil {
			return Request{}, fmt.Errorf("transmit: apdu %q is not hex", clip(*w.APDU))
		}
		return Request{Op: OpTransmit, APDU: apdu}, nil
	case OpClose:
		if err := only(); err != nil {
			return Request{}, err
		}
		return Request{Op: OpClose}, nil
	}
	return Request{}, fmt.Errorf("request op %q is unknown (want open, transmit or close)", clip(w.Op))
}

// parseCert accepts PEM (one CERTIFICATE block) or base64 DER and returns
// the DER of a certificate that parses.
func parseCert(s string) ([]byte, error) {
	var der []byte
	if strings.Contains(s, "-----BEGIN") {
		blk, rest := pem.Decode([]byte(s))
		if blk == nil || blk.Type != "CERTIFICATE" {
			return nil, errors.New("open: cert is PEM but holds no CERTIFICATE block")
		}
		if strings.TrimSpace(string(rest)) != "" {
			return nil, errors.New("open: cert must be one certificate (the app's signing certificate), not a chain")
		}
		der = blk.Bytes
	} else {
		var err error
		if der, err = base64.StdEncoding.DecodeString(strings.TrimSpace(s)); err != nil {
			return nil, errors.New("open: cert is neither PEM nor base64 DER")
		}
	}
	if _, err := x509.ParseCertificate(der); err != nil {
		return nil, fmt.Errorf("open: cert is not an X.509 certificate: %v", err)
	}
	return der, nil
}

func clip(s string) string {
	if len(s) > 40 {
		return s[:40] + "…"
	}
	return s
}

// AppClient is the app's end of the socket (what `keyport app` uses).
type AppClient struct {
	c net.Conn
}

// NewAppClient is the app's end of a connection already open.
func NewAppClient(c net.Conn) *AppClient { return &AppClient{c: c} }

// DialApp connects to the enforcer's socket.
func DialApp(ctx context.Context, path string) (*AppClient, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, err
	}
	return &AppClient{c: c}, nil
}

// Do sends one request as it is and returns the reply. A refusal is an
// *AppError.
func (a *AppClient) Do(req any) (Reply, error) {
	if err := WriteFrame(a.c, req); err != nil {
		return Reply{}, err
	}
	return a.reply()
}

// SendRaw writes b as a frame payload (tests send malformed requests).
func (a *AppClient) SendRaw(b []byte) (Reply, error) {
	out := binary.BigEndian.AppendUint32(nil, uint32(len(b)))
	if _, err := a.c.Write(append(out, b...)); err != nil {
		return Reply{}, err
	}
	return a.reply()
}

// WriteRaw writes bytes to the socket as they are.
func (a *AppClient) WriteRaw(b []byte) error {
	_, err := a.c.Write(b)
	return err
}

// ReadReply reads one reply without sending anything.
func (a *AppClient) ReadReply() (Reply, error) { return a.reply() }

func (a *AppClient) reply() (Reply, error) {
	b, err := ReadFrame(a.c)
	if err != nil {
		return Reply{}, fmt.Errorf("enforcer reply: %w", err)
	}
	var r Reply
	if err := json.Unmarshal(b, &r); err != nil {
		return Reply{}, fmt.Errorf("enforcer reply %q: %w", clip(string(b)), err)
	}
	if !r.OK {
		return r, &AppError{Code: r.Code, Message: r.Error}
	}
	return r, nil
}

// Open asks for a channel to aid. cert is PEM text or DER.
func (a *AppClient) Open(cert, aid []byte, pkg string) (Reply, error) {
	s := string(cert)
	if !bytes.Contains(cert, []byte("-----BEGIN")) {
		s = base64.StdEncoding.EncodeToString(cert)
	}
	req := wireRequest{Op: OpOpen, Cert: &s}
	h := hex.EncodeToString(aid)
	req.AID = &h
	if pkg != "" {
		req.Package = &pkg
	}
	return a.Do(req)
}

// Transmit sends one APDU on the open channel and returns the R-APDU.
func (a *AppClient) Transmit(apdu []byte) ([]byte, error) {
	h := hex.EncodeToString(apdu)
	r, err := a.Do(wireRequest{Op: OpTransmit, APDU: &h})
	if err != nil {
		return nil, err
	}
	b, err := hex.DecodeString(r.RAPDU)
	if err != nil || len(b) < 2 {
		return nil, fmt.Errorf("enforcer reply: R-APDU %q", clip(r.RAPDU))
	}
	return b, nil
}

// CloseChannel closes the open channel; the connection stays.
func (a *AppClient) CloseChannel() error {
	_, err := a.Do(wireRequest{Op: OpClose})
	return err
}

// Close ends the session; the enforcer closes any channel left open.
func (a *AppClient) Close() error { return a.c.Close() }
