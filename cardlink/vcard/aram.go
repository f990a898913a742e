package vcard

import (
	"bytes"
	"crypto/sha256"

	"github.com/keyport/keyport/gp"
)

// araPage bounds one ARA-M GET DATA answer; the rest follows with Get-Next
// (GET DATA FF60).
const araPage = 200

// aram is the Access Rule Application master (GPD SEAC; PROTOCOLS.md §4).
// Reading rules (GET DATA FF40/FF50/FF60/DF20) needs no security: the
// handset's access control enforcer reads them. Changing rules (STORE DATA
// F0/F1/F2) needs an SCP03 session opened, while ARA-M is selected, with
// the keys of its associated SD (the ISD on this module).
func (c *Card) aram(a *app, cmd gp.Command) rsp {
	if cmd.CLA&0x80 == 0 {
		return status(gp.SWCLANotSupported)
	}
	switch cmd.INS {
	case 0xCA:
		return c.aramGetData(cmd)
	case 0xE2:
		if !c.authenticated() {
			return status(gp.SWSecurityNotSatisfied)
		}
		if cmd.P1 != 0x90 || cmd.P2 != 0x00 {
			return status(gp.SWIncorrectP1P2)
		}
		return c.aramStore(cmd.Data)
	}
	return status(gp.SWINSNotSupported)
}

func (c *Card) aramGetData(cmd gp.Command) rsp {
	switch uint16(cmd.P1)<<8 | uint16(cmd.P2) {
	case 0xFF40: // Get-All: FF40 L {E2 …}*, split into pages
		var all []byte
		for _, r := range c.st.Rules {
			all = append(all, r...)
		}
		c.ch.araNext = gp.Encode(0xFF40, all)
		return c.aramPage()
	case 0xFF60: // Get-Next
		if len(c.ch.araNext) == 0 {
			return status(gp.SWConditionsNotSatisfied)
		}
		return c.aramPage()
	case 0xFF50: // Get specific: data is a REF-DO, answer FF50 {AR-DO}
		c.ch.araNext = nil
		ref, rest, err := gp.ParseTLV(cmd.Data)
		if err != nil || len(rest) != 0 || ref.Tag != 0xE1 {
			return status(gp.SWIncorrectData)
		}
		for _, r := range c.st.Rules {
			if rr, ar, found := splitRule(r); found && bytes.Equal(rr, ref.Bytes()) {
				return ok(gp.Encode(0xFF50, ar))
			}
		}
		return ok(gp.Encode(0xFF50, nil))
	case 0xDF20: // refresh tag
		return ok(gp.Encode(0xDF20, c.st.RefreshTag))
	}
	return status(gp.SWReferencedDataNotFound)
}

func (c *Card) aramPage() rsp {
	n := min(len(c.ch.araNext), araPage)
	out := bytes.Clone(c.ch.araNext[:n])
	c.ch.araNext = c.ch.araNext[n:]
	if len(c.ch.araNext) == 0 {
		c.ch.araNext = nil
	}
	return ok(out)
}

// splitRule returns the encoded REF-DO (E1) and AR-DO (E3) of a REF-AR-DO.
func splitRule(rule []byte) (ref, ar []byte, okay bool) {
	t, rest, err := gp.ParseTLV(rule)
	if err != nil || len(rest) != 0 || t.Tag != 0xE2 {
		return nil, nil, false
	}
	kids, err := t.Children()
	if err != nil || len(kids) != 2 || kids[0].Tag != 0xE1 || kids[1].Tag != 0xE3 {
		return nil, nil, false
	}
	return kids[0].Bytes(), kids[1].Bytes(), true
}

// validRule checks a REF-AR-DO: E2 { E1 { 4F 0|5..16 | C0 00, C1 0|20|32,
// [CA] }, E3 { [D0] [D1] [DB 8] } } (GPD SEAC; PROTOCOLS.md §4).
func validRule(rule []byte) bool {
	ref, ar, ok := splitRule(rule)
	if !ok {
		return false
	}
	rt, _, _ := gp.ParseTLV(ref)
	refs, err := rt.Children()
	if err != nil {
		return false
	}
	var haveAID, haveDev bool
	for _, d := range refs {
		switch d.Tag {
		case 0x4F:
			n := len(d.Value)
			haveAID = haveAID || n == 0 || (n >= 5 && n <= 16)
			if n != 0 && (n < 5 || n > 16) {
				return false
			}
		case 0xC0:
			haveAID = true
			if len(d.Value) != 0 {
				return false
			}
		case 0xC1:
			if n := len(d.Value); n != 0 && n != 20 && n != sha256.Size {
				return false
			}
			haveDev = true
		case 0xCA:
		default:
			return false
		}
	}
	if !haveAID || !haveDev {
		return false
	}
	at, _, _ := gp.ParseTLV(ar)
	ars, err := at.Children()
	if err != nil || len(ars) == 0 {
		return false
	}
	for _, d := range ars {
		switch d.Tag {
		case 0xD0:
			if n := len(d.Value); n != 1 && (n == 0 || n%8 != 0) {
				return false
			}
		case 0xD1:
			if len(d.Value) != 1 {
				return false
			}
		case 0xDB:
			if len(d.Value) != 8 {
				return false
			}
		default:
			return false
		}
	}
	return true
}

// aramStore runs the ARA-M STORE DATA commands: F0 store rules, F1 delete
// (all with F1 00, or by AID-REF-DO, REF-DO or REF-AR-DO), F2 update the
// refresh tag. A stored rule whose REF-DO exists already replaces it, so a
// re-delivered script is harmless.
func (c *Card) aramStore(data []byte) rsp {
	t, rest, err := gp.ParseTLV(data)
	if err != nil || len(rest) != 0 {
		return status(gp.SWIncorrectData)
	}
	switch t.Tag {
	case 0xF0:
		rules, err := gp.ParseAllTLV(t.Value)
		if err != nil || len(rules) == 0 {
			return status(gp.SWIncorrectData)
		}
		for _, r := range rules {
			if !validRule(r.Bytes()) {
				return status(gp.SWIncorrectData)
			}
		}
		for _, r := range rules {
			enc := r.Bytes()
			ref, _, _ := splitRule(enc)
			replaced := false
			for i, old := range c.st.Rules {
				if oref, _, ok := splitRule(old); ok && bytes.Equal(oref, ref) {
					c.st.Rules[i] = hexBytes(bytes.Clone(enc))
					replaced = true
					break
				}
			}
			if !replaced {
				c.st.Rules = append(c.st.Rules, hexBytes(bytes.Clone(enc)))
			}
		}
	case 0xF1:
		if len(t.Value) == 0 { // F1 00: delete all
			c.st.Rules = nil
			break
		}
		sel, rest, err := gp.ParseTLV(t.Value)
		if err != nil || len(rest) != 0 {
			return status(gp.SWIncorrectData)
		}
		kept := c.st.Rules[:0]
		for _, r := range c.st.Rules {
			if !ruleMatches(r, sel) {
				kept = append(kept, r)
			}
		}
		c.st.Rules = kept
	case 0xF2:
	default:
		return status(gp.SWIncorrectData)
	}
	c.bumpRefreshTag()
	c.dirty = true
	return ok(nil)
}

// ruleMatches reports whether a delete selector (4F AID-REF-DO, E1 REF-DO
// or E2 REF-AR-DO) designates the rule.
func ruleMatches(rule []byte, sel gp.TLV) bool {
	ref, _, ok := splitRule(rule)
	if !ok {
		return false
	}
	switch sel.Tag {
	case 0xE2:
		return bytes.Equal(rule, sel.Bytes())
	case 0xE1:
		return bytes.Equal(ref, sel.Bytes())
	case 0x4F:
		rt, _, _ := gp.ParseTLV(ref)
		kids, _ := rt.Children()
		aid, found := gp.Find(kids, 0x4F)
		return found && bytes.Equal(aid.Value, sel.Value)
	}
	return false
}

// bumpRefreshTag changes the 8-byte refresh tag so devices re-read the
// rules (GPD SEAC, DF20).
func (c *Card) bumpRefreshTag() {
	h := sha256.New()
	h.Write(c.st.RefreshTag)
	for _, r := range c.st.Rules {
		h.Write(r)
	}
	c.st.RefreshTag = hexBytes(h.Sum(nil)[:8])
}

// isdr answers the one ISD-R function this UICC offers: the EID request,
// STORE DATA BF3E { 5C 5A } → BF3E { 5A EID } (SGP.22 GetEuiccData;
// PROTOCOLS.md §5). It needs no secure channel.
func (c *Card) isdr(cmd gp.Command) rsp {
	if cmd.CLA&0x80 == 0 {
		return status(gp.SWCLANotSupported)
	}
	if cmd.INS != 0xE2 {
		return status(gp.SWINSNotSupported)
	}
	if cmd.P1&0x90 != 0x90 || cmd.P2 != 0x00 {
		return status(gp.SWIncorrectP1P2)
	}
	t, rest, err := gp.ParseTLV(cmd.Data)
	if err != nil || len(rest) != 0 || t.Tag != 0xBF3E {
		return status(gp.SWIncorrectData)
	}
	kids, err := t.Children()
	if err != nil {
		return status(gp.SWIncorrectData)
	}
	tl, found := gp.Find(kids, 0x5C)
	if !found || !bytes.Equal(tl.Value, []byte{0x5A}) {
		return status(gp.SWIncorrectData)
	}
	return ok(gp.Encode(0xBF3E, gp.Encode(0x5A, eidBCD(c.st.EID))))
}
