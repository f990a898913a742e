package gp

import "fmt"

// Tags of the ETSI TS 102 226 expanded remote APDU format (TS 102 226 5.2.1,
// 5.2.2; PROTOCOLS.md §3.4).
const (
	tagCommandScriptIndef   Tag = 0xAE // command scripting template, indefinite
	tagCommandScriptDef     Tag = 0xAA // command scripting template, definite
	tagResponseScriptIndef  Tag = 0xAF
	tagResponseScriptDef    Tag = 0xAB
	tagCAPDU                Tag = 0x22
	tagCAPDUCR              Tag = 0xA2 // comprehension-required variant
	tagRAPDU                Tag = 0x23
	tagRAPDUCR              Tag = 0xA3
	tagImmediateAction      Tag = 0x81
	tagErrorAction          Tag = 0x82
	tagScriptChaining       Tag = 0x83
	tagExecutedCount        Tag = 0x80
	tagBadFormat            Tag = 0x90
	tagImmediateActionReply Tag = 0x81
)

// ScriptOptions choose the variant of a command script.
type ScriptOptions struct {
	// Definite selects AA L … instead of AE 80 … 00 00.
	Definite bool
	// ComprehensionRequired tags each C-APDU A2 instead of 22; some cards
	// want it (PROTOCOLS.md §3.4).
	ComprehensionRequired bool
}

// CommandScript is a TS 102 226 command script: C-APDUs and optional
// immediate-action, error-action and script-chaining values (their codings
// are not in keyport's sources; they are carried as bytes).
type CommandScript struct {
	Commands        []Command
	ImmediateAction []byte
	ErrorAction     []byte
	ScriptChaining  []byte
	Options         ScriptOptions
}

// EncodeCommandScript returns the script for cmds with the default options
// of opts: AE 80 { 22 L C-APDU }… 00 00, every length BER-coded.
func EncodeCommandScript(cmds []Command, opts ScriptOptions) []byte {
	return CommandScript{Commands: cmds, Options: opts}.Bytes()
}

// Bytes encodes the script.
func (s CommandScript) Bytes() []byte {
	tag := tagCAPDU
	if s.Options.ComprehensionRequired {
		tag = tagCAPDUCR
	}
	var v []byte
	for _, c := range s.Commands {
		v = append(v, Encode(tag, c.Bytes())...)
	}
	for _, o := range []struct {
		t Tag
		v []byte
	}{{tagImmediateAction, s.ImmediateAction}, {tagErrorAction, s.ErrorAction}, {tagScriptChaining, s.ScriptChaining}} {
		if o.v != nil {
			v = append(v, Encode(o.t, o.v)...)
		}
	}
	if s.Options.Definite {
		return Encode(tagCommandScriptDef, v)
	}
	return TLV{Tag: tagCommandScriptIndef, Value: v, Indefinite: true}.Bytes()
}

// ParseCommandScript decodes an AE or AA command script, as a card does.
// Unknown tags are skipped.
func ParseCommandScript(b []byte) (CommandScript, error) {
	t, rest, err := ParseTLV(b)
	if err != nil {
		return CommandScript{}, fmt.Errorf("gp: command script: %w", err)
	}
	if t.Tag != tagCommandScriptIndef && t.Tag != tagCommandScriptDef {
		return CommandScript{}, malformed("command script tag %s, want AE or AA", t.Tag)
	}
	if len(rest) != 0 {
		return CommandScript{}, malformed("command script followed by %d bytes", len(rest))
	}
	items, err := ParseAllTLV(t.Value)
	if err != nil {
		return CommandScript{}, fmt.Errorf("gp: command script: %w", err)
	}
	s := CommandScript{Options: ScriptOptions{Definite: t.Tag == tagCommandScriptDef}}
	for i, it := range items {
		switch it.Tag {
		case tagCAPDU, tagCAPDUCR:
			c, err := ParseCommand(it.Value)
			if err != nil {
				return CommandScript{}, fmt.Errorf("gp: command script C-APDU %d: %w", i, err)
			}
			s.Commands = append(s.Commands, c)
			s.Options.ComprehensionRequired = it.Tag == tagCAPDUCR
		case tagImmediateAction:
			s.ImmediateAction = it.Value
		case tagErrorAction:
			s.ErrorAction = it.Value
		case tagScriptChaining:
			s.ScriptChaining = it.Value
		}
	}
	return s, nil
}

// ResponseScript is a TS 102 226 response script: AF 80 [80 01 n] { 23 L
// R-APDU }… [81 …] [90 …] 00 00, or AB L with the same content.
type ResponseScript struct {
	// Executed is the number of executed C-APDUs (80); HasExecuted is false
	// when the card left it out, as the real trace's card did.
	Executed    int
	HasExecuted bool
	Responses   []Response
	// ImmediateActionResponse (81) and BadFormat (90) are kept as bytes.
	ImmediateActionResponse []byte
	BadFormat               []byte
	Definite                bool
}

// ParseResponseScript decodes a response script tolerantly: AF or AB, the
// count optional, R-APDUs tagged 23 or A3, unknown tags skipped
// (PROTOCOLS.md §7.5).
func ParseResponseScript(b []byte) (ResponseScript, error) {
	t, rest, err := ParseTLV(b)
	if err != nil {
		return ResponseScript{}, fmt.Errorf("gp: response script: %w", err)
	}
	if t.Tag != tagResponseScriptIndef && t.Tag != tagResponseScriptDef {
		return ResponseScript{}, malformed("response script tag %s, want AF or AB", t.Tag)
	}
	if len(rest) != 0 {
		return ResponseScript{}, malformed("response script followed by %d bytes", len(rest))
	}
	items, err := ParseAllTLV(t.Value)
	if err != nil {
		return ResponseScript{}, fmt.Errorf("gp: response script: %w", err)
	}
	s := ResponseScript{Definite: t.Tag == tagResponseScriptDef}
	for i, it := range items {
		switch it.Tag {
		case tagExecutedCount:
			if len(it.Value) == 0 || len(it.Value) > 2 {
				return ResponseScript{}, malformed("response script count of %d bytes", len(it.Value))
			}
			s.Executed, s.HasExecuted = 0, true
			for _, x := range it.Value {
				s.Executed = s.Executed<<8 | int(x)
			}
		case tagRAPDU, tagRAPDUCR:
			r, err := ParseResponse(it.Value)
			if err != nil {
				return ResponseScript{}, fmt.Errorf("gp: response script R-APDU %d: %w", i, err)
			}
			s.Responses = append(s.Responses, r)
		case tagImmediateActionReply:
			s.ImmediateActionResponse = it.Value
		case tagBadFormat:
			s.BadFormat = it.Value
		}
	}
	return s, nil
}

// Bytes encodes the response script, as a card does.
func (s ResponseScript) Bytes() []byte {
	var v []byte
	if s.HasExecuted {
		v = append(v, Encode(tagExecutedCount, []byte{byte(s.Executed)})...)
	}
	for _, r := range s.Responses {
		v = append(v, Encode(tagRAPDU, r.Bytes())...)
	}
	if s.ImmediateActionResponse != nil {
		v = append(v, Encode(tagImmediateActionReply, s.ImmediateActionResponse)...)
	}
	if s.BadFormat != nil {
		v = append(v, Encode(tagBadFormat, s.BadFormat)...)
	}
	if s.Definite {
		return Encode(tagResponseScriptDef, v)
	}
	return TLV{Tag: tagResponseScriptIndef, Value: v, Indefinite: true}.Bytes()
}
