package keyport

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"unicode/utf8"

	"github.com/keyport/keyport/gp"
)

// The live data path (DESIGN.md flow 9): the provider's server (`keyport sp
// serve`) runs an SCP03 session at level 33 with its domain, and the
// provider's mobile app (`keyport app relay`) relays the session's APDUs to
// the domain through the handset's access control enforcer, which admits
// the app only if an access rule names its certificate. The app sees
// ciphertext only: the keys stay on the server.
//
// The relay protocol is one HTTPS POST per step, JSON both ways, the app
// asking:
//
//	POST /v1/relay {"session":"","responses":[]}          first step
//	→ {"session":"rs_…","apdus":["8050…",…]}              C-APDUs to send, in order
//	POST /v1/relay {"session":"rs_…","responses":["…9000",…]}
//	                                                      the R-APDUs, one per C-APDU, in order
//	→ {"session":"rs_…","apdus":[…]}                      next step, or
//	→ {"session":"rs_…","done":true,"result":"…"}         the end
//
// The app stops relaying a step at the first R-APDU whose status is not
// 9000 and posts the answers so far. A step carries at most MaxRelayAPDUs
// APDUs of at most 261 bytes (C) or 258 bytes (R) — short APDUs — and a
// body at most MaxRelayBody bytes. Errors are HTTP 4xx with
// {"error":"…"}; a session ends at its first error.

// Bounds of the relay protocol.
const (
	MaxRelayAPDUs = 16
	MaxRelayBody  = 16 << 10
	maxShortCAPDU = 5 + 255 + 1
	maxShortRAPDU = 256 + 2
)

// RelayRequest is what the app posts.
type RelayRequest struct {
	Session   string   `json:"session"`
	Responses []string `json:"responses"`
}

// RelayReply is what the provider's server answers.
type RelayReply struct {
	Session string   `json:"session"`
	APDUs   []string `json:"apdus,omitempty"`
	Done    bool     `json:"done,omitempty"`
	Result  string   `json:"result,omitempty"`
	Error   string   `json:"error,omitempty"`
}

// ParseRelayRequest decodes the app's request body: one JSON object of
// session and responses, nothing else, each response a short R-APDU in hex.
func ParseRelayRequest(b []byte) (RelayRequest, []gp.Response, error) {
	var req RelayRequest
	if err := strictJSON(b, &req); err != nil {
		return req, nil, fmt.Errorf("relay request: %w", err)
	}
	if len(req.Session) > 64 {
		return req, nil, errors.New("relay request: session id longer than 64 characters")
	}
	if len(req.Responses) > MaxRelayAPDUs {
		return req, nil, fmt.Errorf("relay request: %d responses; at most %d", len(req.Responses), MaxRelayAPDUs)
	}
	out := make([]gp.Response, 0, len(req.Responses))
	for i, s := range req.Responses {
		raw, err := hex.DecodeString(s)
		if err != nil || len(raw) < 2 || len(raw) > maxShortRAPDU {
			return req, nil, fmt.Errorf("relay request: responses[%d] is not an R-APDU of 2 to %d bytes in hex", i, maxShortRAPDU)
		}
		r, err := gp.ParseResponse(raw)
		if err != nil {
			return req, nil, fmt.Errorf("relay request: responses[%d]: %v", i, err)
		}
		out = append(out, r)
	}
	return req, out, nil
}

// ParseRelayReply decodes the server's reply (the app's side): each APDU a
// short C-APDU in hex.
func ParseRelayReply(b []byte) (RelayReply, []gp.Command, error) {
	var rep RelayReply
	if err := strictJSON(b, &rep); err != nil {
		return rep, nil, fmt.Errorf("relay reply: %w", err)
	}
	if len(rep.APDUs) > MaxRelayAPDUs {
		return rep, nil, fmt.Errorf("relay reply: %d APDUs; at most %d", len(rep.APDUs), MaxRelayAPDUs)
	}
	if rep.Done && len(rep.APDUs) > 0 {
		return rep, nil, errors.New("relay reply: done, yet with APDUs")
	}
	if len(rep.Result) > 1024 || len(rep.Error) > 1024 || len(rep.Session) > 64 {
		return rep, nil, errors.New("relay reply: a field is too long")
	}
	out := make([]gp.Command, 0, len(rep.APDUs))
	for i, s := range rep.APDUs {
		raw, err := hex.DecodeString(s)
		if err != nil || len(raw) < 4 || len(raw) > maxShortCAPDU {
			return rep, nil, fmt.Errorf("relay reply: apdus[%d] is not a C-APDU of 4 to %d bytes in hex", i, maxShortCAPDU)
		}
		c, err := gp.ParseCommand(raw)
		if err != nil || c.Extended() {
			return rep, nil, fmt.Errorf("relay reply: apdus[%d] is not a short C-APDU", i)
		}
		out = append(out, c)
	}
	return rep, out, nil
}

// strictJSON decodes exactly one JSON object without unknown fields.
func strictJSON(b []byte, v any) error {
	if !utf8.Valid(b) {
		return errors.New("not UTF-8 JSON")
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("not the expected JSON object: %v", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("data after the JSON object")
	}
	return nil
}

// DataReadSession is the provider's server's side of one live session: an
// SCP03 session at level 33 on its domain that reads data objects. It
// takes three steps: INITIALIZE UPDATE; then, the card cryptogram checked,
// EXTERNAL AUTHENTICATE and one GET DATA per object; then every answer is
// checked (gp.CheckAnswers: card cryptogram, pseudo-random challenge,
// R-MAC) and decrypted.
type DataReadSession struct {
	keys gp.KeySet
	aid  AID
	dgis []uint16
	hs   *gp.HostSession
	cmds []gp.Command
	resp []gp.Response
	step int
	data []byte
}

// NewDataReadSession starts a session that reads dgis (at most
// MaxRelayAPDUs-1) from domain aid with keys.
func NewDataReadSession(keys gp.KeySet, aid AID, dgis []uint16) (*DataReadSession, error) {
	if len(dgis) == 0 || len(dgis) > MaxRelayAPDUs-1 {
		return nil, fmt.Errorf("keyport: 1 to %d data objects per session", MaxRelayAPDUs-1)
	}
	for _, d := range dgis {
		if !gp.IsDataObject(d) {
			return nil, fmt.Errorf("keyport: DGI %04X is not a data object", d)
		}
	}
	hs, err := gp.NewHostSession(keys, nil)
	if err != nil {
		return nil, err
	}
	return &DataReadSession{keys: keys, aid: aid, dgis: dgis, hs: hs}, nil
}

// Next takes the answers to the previous step's commands (none at first)
// and returns the next commands; done when the data is read (Data).
func (s *DataReadSession) Next(resps []gp.Response) (cmds []gp.Command, done bool, err error) {
	switch s.step {
	case 0:
		if len(resps) != 0 {
			return nil, false, errors.New("keyport: answers before any command")
		}
		s.step = 1
		return s.send(s.hs.InitializeUpdate()), false, nil
	case 1:
		if len(resps) != 1 {
			return nil, false, fmt.Errorf("keyport: %d answers to INITIALIZE UPDATE", len(resps))
		}
		s.resp = append(s.resp, resps[0])
		if resps[0].SW != gp.SWOK {
			return nil, false, fmt.Errorf("keyport: INITIALIZE UPDATE answered %s", resps[0].SW)
		}
		if err := s.hs.OnInitUpdateResponse(resps[0]); err != nil {
			return nil, false, fmt.Errorf("keyport: the domain did not prove our keys: %w", err)
		}
		ea, err := s.hs.ExternalAuthenticate(DataLevel)
		if err != nil {
			return nil, false, err
		}
		out := []gp.Command{ea}
		for _, d := range s.dgis {
			w, err := s.hs.Wrap(gp.GetDataObject(d))
			if err != nil {
				return nil, false, err
			}
			out = append(out, w)
		}
		s.step = 2
		return s.send(out...), false, nil
	case 2:
		want := 1 + len(s.dgis)
		if len(resps) == 0 || len(resps) > want {
			return nil, false, fmt.Errorf("keyport: %d answers to %d commands", len(resps), want)
		}
		s.resp = append(s.resp, resps...)
		s.step = 3
		answers, level, err := gp.CheckAnswers(s.keys, s.aid.Bytes(), s.cmds, s.resp)
		if err != nil {
			return nil, false, fmt.Errorf("keyport: the answers did not come from the domain: %w", err)
		}
		if level != DataLevel {
			return nil, false, fmt.Errorf("keyport: level %02X", byte(level))
		}
		for i, a := range answers {
			if a.SW != gp.SWOK {
				return nil, false, fmt.Errorf("keyport: command %d (%s) answered %s", i+1, gp.INSName(s.cmds[i].INS), a.SW)
			}
		}
		if len(answers) < len(s.cmds) {
			return nil, false, fmt.Errorf("keyport: the app relayed %d of %d commands", len(answers), len(s.cmds))
		}
		for i, d := range s.dgis {
			v, err := gp.ParseDataObject(d, answers[2+i].Data)
			if err != nil {
				return nil, false, err
			}
			s.data = append(s.data, v...)
		}
		return nil, true, nil
	}
	return nil, false, errors.New("keyport: the session is over")
}

func (s *DataReadSession) send(cmds ...gp.Command) []gp.Command {
	s.cmds = append(s.cmds, cmds...)
	return cmds
}

// Data is what the session read, the objects' values in order.
func (s *DataReadSession) Data() []byte { return bytes.Clone(s.data) }

// DGIRange names dgis for messages: "0101" or "0101..0105".
func DGIRange(dgis []uint16) string {
	if len(dgis) == 0 {
		return ""
	}
	if len(dgis) == 1 {
		return fmt.Sprintf("%04X", dgis[0])
	}
	return strings.Join([]string{fmt.Sprintf("%04X", dgis[0]), fmt.Sprintf("%04X", dgis[len(dgis)-1])}, "..")
}
