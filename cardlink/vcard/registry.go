package vcard

import (
	"bytes"
	"encoding/binary"

	"github.com/keyport/keyport/gp"
)

// Built-in executable load files and modules (PROTOCOLS.md §1.4, §4).
var (
	// ssdELF / ssdModule: the SD package GP cards instantiate SSDs from
	// (GPPro GPTool --domain); the legacy A0000000035350 pair is accepted too.
	ssdELF          = mustHex("A0000001515350")
	ssdModule       = mustHex("A000000151535041")
	ssdELFLegacy    = mustHex("A0000000035350")
	ssdModuleLegacy = mustHex("A000000003535041")
	aramELF         = mustHex("A00000015141434C")
	// isdrModule marks the built-in ISD-R, which has no load file here.
	isdrModule = ISDRAID
)

func isSSDModule(elf, module []byte) bool {
	return (bytes.Equal(elf, ssdELF) && bytes.Equal(module, ssdModule)) ||
		(bytes.Equal(elf, ssdELFLegacy) && bytes.Equal(module, ssdModuleLegacy))
}

// manages reports whether sd may manage a: the ISD manages everything but
// itself, any SD manages what is associated with it (GPCS 9.1.3).
func (c *Card) manages(sd, a *app) bool {
	if a == c.st.isd() {
		return false
	}
	return sd == c.st.isd() || bytes.Equal(a.SD, sd.AID)
}

// getData answers GET DATA (GPCS 11.3) for a security domain. Objects that
// describe the card need no security; data objects stored with STORE DATA
// need the SD's secure channel.
func (c *Card) getData(sd *app, cmd gp.Command) rsp {
	if cmd.INS != 0xCA {
		return status(gp.SWINSNotSupported)
	}
	tag := gp.Tag(binary.BigEndian.Uint16([]byte{cmd.P1, cmd.P2}))
	switch tag {
	case 0x9F7F: // CPLC (GPPro CPLC.java)
		return ok(gp.Encode(0x9F7F, c.st.CPLC))
	case 0x00E0: // Key Information Template (GPCS 11.3.3.1)
		var v []byte
		for _, ks := range sd.KeySets {
			for _, k := range ks.Keys {
				v = append(v, gp.Encode(0xC0, []byte{k.ID, ks.KVN, k.Type, byte(len(k.Value))})...)
			}
		}
		for _, ks := range sd.OTA { // SCP80 key sets (KVN 01-0F): KIc, KID, DEK
			for _, k := range ks.keys() {
				v = append(v, gp.Encode(0xC0, []byte{k.ID, ks.KVN, k.Type, byte(len(k.Value))})...)
			}
		}
		return ok(gp.Encode(0xE0, v))
	case 0x0066: // Card Recognition Data (GPCS H.2)
		return ok(cardRecognitionData(sd.SCPi))
	case 0x0067: // Card Capability Information (GPCS H.4): SCP03, i, AES-128/192/256
		return ok(gp.Encode(0x67, gp.Encode(0xA0,
			gp.Encode(0x80, []byte{0x03}), gp.Encode(0x81, []byte{sd.SCPi}), gp.Encode(0x82, []byte{0x07}))))
	case 0x00C1: // sequence counter of the default key set (GPCS 11.3.2.1)
		for _, ks := range sd.KeySets {
			if ks.complete() {
				return ok(gp.Encode(0xC1, []byte{byte(ks.Counter >> 16), byte(ks.Counter >> 8), byte(ks.Counter)}))
			}
		}
		return status(gp.SWReferencedDataNotFound)
	case 0x0045: // CIN: the module's EID in BCD
		return ok(gp.Encode(0x45, eidBCD(c.st.EID)))
	case 0xFF21: // Extended card resources (TS 102 226 8.2.1.7.2)
		n := uint16(len(c.st.Apps))
		return ok(gp.Encode(0xFF21,
			gp.Encode(0x81, binary.BigEndian.AppendUint16(nil, n)),
			gp.Encode(0x82, binary.BigEndian.AppendUint32(nil, 512*1024-uint32(n)*2048)),
			gp.Encode(0x83, []byte{0x08, 0x00})))
	}
	if gp.IsDataObject(uint16(tag)) {
		return c.getProviderData(sd, uint16(tag))
	}
	if v, found := sd.Data[tag.String()]; found {
		if !c.authenticated() {
			return status(gp.SWSecurityNotSatisfied)
		}
		return ok(gp.Encode(tag, v))
	}
	return status(gp.SWReferencedDataNotFound)
}

// cardRecognitionData is 66 { 73 { GP OID, card management type and
// version (GP 2.3.1), card identification scheme, SCP03 with i } } (GPCS
// H.2, OID 1.2.840.114283).
func cardRecognitionData(i byte) []byte {
	oid := func(arc byte, rest ...byte) []byte {
		return gp.Encode(0x06, append([]byte{0x2A, 0x86, 0x48, 0x86, 0xFC, 0x6B, arc}, rest...))
	}
	return gp.Encode(0x66, gp.Encode(0x73,
		oid(0x01),
		gp.Encode(0x60, oid(0x02, 0x02, 0x03, 0x01)),
		gp.Encode(0x63, oid(0x03)),
		gp.Encode(0x64, oid(0x04, 0x03, i)),
	))
}

// eidBCD packs the 32 EID digits into 16 bytes, first digit in the high
// nibble (SGP.22 EID encoding; PROTOCOLS.md §5).
func eidBCD(eid string) []byte {
	out := make([]byte, len(eid)/2)
	for i := range out {
		out[i] = (eid[2*i]-'0')<<4 | (eid[2*i+1] - '0')
	}
	return out
}

// getStatusPage bounds one GET STATUS answer so that it fits a short
// response with room for R-ENC padding and the R-MAC.
const getStatusPage = 200

// getStatus answers GET STATUS (GPCS 11.4) in the TLV format (P2 b2 = 1):
// P1 80 the ISD, 40 applications and SSDs, 20 ELFs, 10 ELFs with modules.
// Entries that do not fit are returned after 6310 by the same command with
// P2 = 03.
func (c *Card) getStatus(sd *app, cmd gp.Command) rsp {
	if !c.authenticated() {
		return status(gp.SWSecurityNotSatisfied)
	}
	if cmd.P2&0xFE != 0x02 {
		return status(gp.SWIncorrectP1P2)
	}
	if cmd.P2&0x01 != 0 {
		q := c.ch.statusQ
		if q == nil || q.p1 != cmd.P1 || !bytes.Equal(q.query, cmd.Data) {
			c.ch.statusQ = nil
			return status(gp.SWIncorrectP1P2)
		}
		return c.statusPage()
	}
	c.ch.statusQ = nil
	tlvs, err := gp.ParseAllTLV(cmd.Data)
	if err != nil {
		return status(gp.SWIncorrectData)
	}
	search, found := gp.Find(tlvs, 0x4F)
	if !found {
		return status(gp.SWIncorrectData)
	}
	var want []gp.Tag // 5C tag list (GPCS 11.4.2.2)
	if tl, found := gp.Find(tlvs, 0x5C); found {
		for b := tl.Value; len(b) > 0; {
			n := 1
			if b[0]&0x1F == 0x1F && len(b) > 1 {
				n = 2
			}
			var t gp.Tag
			for _, x := range b[:n] {
				t = t<<8 | gp.Tag(x)
			}
			want = append(want, t)
			b = b[n:]
		}
	}
	match := func(aid []byte) bool { return bytes.HasPrefix(aid, search.Value) }
	var entries [][]byte
	isd := c.st.isd()
	visible := func(a *app) bool { return sd == isd || a == sd || bytes.Equal(a.SD, sd.AID) }
	switch cmd.P1 & 0xFE {
	case 0x80:
		if sd == isd && match(isd.AID) {
			entries = append(entries, statusEntry(want, isd.AID, c.st.CardLCS, isd.Privileges, nil, nil, nil))
		}
	case 0x40:
		for _, a := range c.st.Apps[1:] {
			if visible(a) && match(a.AID) {
				entries = append(entries, statusEntry(want, a.AID, a.LCS, a.Privileges, a.ELF, nil, a.SD))
			}
		}
	case 0x20, 0x10:
		seen := map[string]bool{}
		for _, a := range c.st.Apps {
			if len(a.ELF) == 0 || seen[string(a.ELF)] || !visible(a) || !match(a.ELF) {
				continue
			}
			seen[string(a.ELF)] = true
			var mods [][]byte
			if cmd.P1&0xFE == 0x10 {
				for _, b := range c.st.Apps {
					if bytes.Equal(b.ELF, a.ELF) && len(b.Module) > 0 {
						mods = append(mods, b.Module)
					}
				}
			}
			entries = append(entries, statusEntry(want, a.ELF, 0x01, nil, nil, mods, isd.AID))
		}
	default:
		return status(gp.SWIncorrectP1P2)
	}
	if len(entries) == 0 {
		return status(gp.SWReferencedDataNotFound)
	}
	c.ch.statusQ = &statusPaging{p1: cmd.P1, query: bytes.Clone(cmd.Data), entries: entries}
	return c.statusPage()
}

func (c *Card) statusPage() rsp {
	q := c.ch.statusQ
	var out []byte
	n := 0
	for n < len(q.entries) && (n == 0 || len(out)+len(q.entries[n]) <= getStatusPage) {
		out = append(out, q.entries[n]...)
		n++
	}
	q.entries = q.entries[n:]
	if len(q.entries) > 0 {
		return rsp{data: out, sw: gp.SWMoreData}
	}
	c.ch.statusQ = nil
	return ok(out)
}

// statusEntry encodes one GET STATUS entry: E3 { 4F AID, 9F70 LCS, C5
// privileges, C4 ELF, 84 modules, CC associated SD } (GPCS Table 11-36),
// restricted to the tags in want when that list is not empty.
func statusEntry(want []gp.Tag, aid []byte, lcs byte, priv, elf []byte, modules [][]byte, sd []byte) []byte {
	keep := func(t gp.Tag) bool {
		if len(want) == 0 {
			return true
		}
		for _, w := range want {
			if w == t {
				return true
			}
		}
		return false
	}
	var v []byte
	if keep(0x4F) {
		v = append(v, gp.Encode(0x4F, aid)...)
	}
	if keep(0x9F70) {
		v = append(v, gp.Encode(0x9F70, []byte{lcs})...)
	}
	if priv != nil && keep(0xC5) {
		v = append(v, gp.Encode(0xC5, priv)...)
	}
	if elf != nil && keep(0xC4) {
		v = append(v, gp.Encode(0xC4, elf)...)
	}
	for _, m := range modules {
		if keep(0x84) {
			v = append(v, gp.Encode(0x84, m)...)
		}
	}
	if sd != nil && keep(0xCC) {
		v = append(v, gp.Encode(0xCC, sd)...)
	}
	return gp.Encode(0xE3, v)
}

// install answers INSTALL (GPCS 11.5): [for install] (04), [for make
// selectable] (08), both (0C), [for personalization] (20) and [for
// extradition] (10). The SD must have Authorized Management or be the ISD;
// Delegated Management needs tokens, which this module does not verify.
func (c *Card) install(sd *app, cmd gp.Command) rsp {
	if !c.authenticated() {
		return status(gp.SWSecurityNotSatisfied)
	}
	if cmd.P2 != 0x00 {
		return status(gp.SWIncorrectP1P2)
	}
	if sd != c.st.isd() && !sd.priv(1, privAuthorizedMgmt) {
		return status(gp.SWConditionsNotSatisfied)
	}
	switch cmd.P1 & 0x7F {
	case 0x04, 0x0C:
		return c.installForInstall(sd, cmd.Data, cmd.P1&0x08 != 0)
	case 0x08:
		return c.installMakeSelectable(sd, cmd.Data)
	case 0x20:
		return c.installForPerso(sd, cmd.Data)
	case 0x10:
		return c.installForExtradition(sd, cmd.Data)
	}
	return status(gp.SWIncorrectP1P2)
}

func (c *Card) installForInstall(sd *app, data []byte, selectable bool) rsp {
	in, err := gp.ParseInstall(gp.InstallForInstall, data)
	if err != nil {
		return status(gp.SWIncorrectData)
	}
	// The install token is not verified: Delegated Management is refused.
	aid, priv := in.AID, in.Privileges
	if len(aid) < 5 || len(aid) > 16 || (len(priv) != 1 && len(priv) != 3) {
		return status(gp.SWIncorrectData)
	}
	if !isSSDModule(in.LoadFileAID, in.ModuleAID) {
		return status(gp.SWReferencedDataNotFound) // only the SD package is loaded
	}
	p := []byte{priv[0], 0, 0}
	if len(priv) == 3 {
		copy(p, priv)
	}
	if p[0]&privSecurityDomain == 0 {
		return status(gp.SWIncorrectData) // the SD module only makes SDs
	}
	// GPCS 6.6.2: AM and DM exclude each other; DM needs tokens (refused).
	if p[0]&0xA0 == 0xA0 {
		return status(gp.SWConditionsNotSatisfied)
	}
	if c.st.find(aid) != nil {
		return status(gp.SWIncorrectData)
	}
	i, personalize, sw := sdInstallParams(in.Params)
	if sw != gp.SWOK {
		return status(sw)
	}
	a := &app{
		AID: hexBytes(bytes.Clone(aid)), ELF: hexBytes(bytes.Clone(in.LoadFileAID)), Module: hexBytes(bytes.Clone(in.ModuleAID)),
		LCS: AppInstalled, Privileges: hexBytes(p), SD: hexBytes(bytes.Clone(sd.AID)),
		InstallParams: hexBytes(bytes.Clone(in.Params)), SCPi: i,
	}
	if selectable {
		a.LCS = AppSelectable
		if personalize {
			a.LCS = SDPersonalized
		}
	}
	c.st.Apps = append(c.st.Apps, a)
	c.dirty = true
	return ok([]byte{0x00})
}

// sdInstallParams reads the install parameters of an SD: they must hold
// C9 whose content is BER-TLV (GPCS Table 11-49); inside it 81 02 03 i
// selects SCP03 and its i, and 84 asks for PERSONALIZED (GP UICC
// Configuration 4.3.2, PROTOCOLS.md §1.4).
func sdInstallParams(params []byte) (i byte, personalize bool, sw gp.SW) {
	p, err := gp.ParseInstallParams(params)
	if err != nil {
		return 0, false, gp.SWIncorrectData
	}
	inner, err := gp.ParseAllTLV(p.AppSpecific)
	if err != nil {
		return 0, false, gp.SWIncorrectData
	}
	i = defaultSCPParameter
	if scp, found := gp.Find(inner, 0x81); found {
		if len(scp.Value) != 2 || scp.Value[0] != 0x03 {
			return 0, false, gp.SWIncorrectData // only SCP03
		}
		i = scp.Value[1]
	}
	_, personalize = gp.Find(inner, 0x84)
	return i, personalize, gp.SWOK
}

func (c *Card) installMakeSelectable(sd *app, data []byte) rsp {
	in, err := gp.ParseInstall(gp.InstallForMakeSelectable, data)
	if err != nil || len(in.LoadFileAID) != 0 || len(in.ModuleAID) != 0 {
		return status(gp.SWIncorrectData)
	}
	a := c.st.find(in.AID)
	if a == nil {
		return status(gp.SWReferencedDataNotFound)
	}
	if !c.manages(sd, a) || a.LCS != AppInstalled {
		return status(gp.SWConditionsNotSatisfied)
	}
	a.LCS = AppSelectable
	c.dirty = true
	return ok([]byte{0x00})
}

// installForPerso directs the following STORE DATA commands to an
// application associated with the SD (GPCS 11.5.2.3.5).
func (c *Card) installForPerso(sd *app, data []byte) rsp {
	in, err := gp.ParseInstall(gp.InstallForPersonalization, data)
	if err != nil || len(in.LoadFileAID) != 0 || len(in.ModuleAID) != 0 {
		return status(gp.SWIncorrectData)
	}
	a := c.st.find(in.AID)
	if a == nil {
		return status(gp.SWReferencedDataNotFound)
	}
	if !c.manages(sd, a) || a.locked() {
		return status(gp.SWConditionsNotSatisfied)
	}
	c.ch.perso = bytes.Clone(a.AID)
	c.ch.block, c.ch.pending = 0, nil
	return ok([]byte{0x00})
}

// installForExtradition associates an application or SD with another SD
// (GPCS 11.5.2.3.4, 7.2); an SD extradited to itself becomes independent.
// The target must be PERSONALIZED or the ISD.
func (c *Card) installForExtradition(sd *app, data []byte) rsp {
	in, err := gp.ParseInstall(gp.InstallForExtradition, data)
	if err != nil || len(in.ModuleAID) != 0 {
		return status(gp.SWIncorrectData)
	}
	a, to := c.st.find(in.AID), c.st.find(in.LoadFileAID)
	if a == nil || to == nil || !to.isSD() {
		return status(gp.SWReferencedDataNotFound)
	}
	if !c.manages(sd, a) {
		return status(gp.SWConditionsNotSatisfied)
	}
	if to.locked() || (to != c.st.isd() && to.LCS != SDPersonalized) {
		return status(gp.SWConditionsNotSatisfied)
	}
	a.SD = hexBytes(bytes.Clone(to.AID))
	c.dirty = true
	return ok([]byte{0x00})
}

// setStatus answers SET STATUS (GPCS 11.10). P1 80: the card life cycle,
// by the ISD. P1 40: an application or SD; an SD may set itself to
// PERSONALIZED (from SELECTABLE) or LOCKED, its managing SD may lock and
// unlock it. P1 60: an SD and its associated applications, lock or unlock.
func (c *Card) setStatus(sd *app, cmd gp.Command) rsp {
	if !c.authenticated() {
		return status(gp.SWSecurityNotSatisfied)
	}
	switch cmd.P1 {
	case 0x80:
		return c.setCardStatus(sd, cmd.P2)
	case 0x40, 0x60:
	default:
		return status(gp.SWIncorrectP1P2)
	}
	if len(cmd.Data) < 5 || len(cmd.Data) > 16 {
		return status(gp.SWIncorrectData)
	}
	a := c.st.find(cmd.Data)
	if a == nil {
		return status(gp.SWReferencedDataNotFound)
	}
	if a == c.st.isd() {
		return status(gp.SWIncorrectData) // the ISD follows the card life cycle (P1 80)
	}
	lock := cmd.P2&LockedBit != 0
	if cmd.P1 == 0x60 {
		if !a.isSD() || !c.manages(sd, a) && !sd.priv(1, privGlobalLock) {
			return status(gp.SWConditionsNotSatisfied)
		}
		setLock(a, lock)
		for _, b := range c.st.Apps {
			if bytes.Equal(b.SD, a.AID) && b != a {
				setLock(b, lock)
			}
		}
		c.dirty = true
		return ok(nil)
	}
	if a == sd {
		switch {
		case lock:
			setLock(a, true)
		case cmd.P2 == SDPersonalized && a.LCS == AppSelectable:
			a.LCS = SDPersonalized // GPCS 5.3.2: irreversible, by the SD itself
		default:
			return status(gp.SWConditionsNotSatisfied)
		}
		c.dirty = true
		return ok(nil)
	}
	if !c.manages(sd, a) && !sd.priv(1, privGlobalLock) {
		return status(gp.SWConditionsNotSatisfied)
	}
	if lock == a.locked() {
		return status(gp.SWConditionsNotSatisfied)
	}
	setLock(a, lock)
	c.dirty = true
	return ok(nil)
}

func setLock(a *app, lock bool) {
	if lock {
		a.LCS |= LockedBit
	} else {
		a.LCS &^= LockedBit
	}
}

// setCardStatus changes the card life cycle (GPCS 5.1): OP_READY →
// INITIALIZED → SECURED ↔ CARD_LOCKED, any → TERMINATED.
func (c *Card) setCardStatus(sd *app, to byte) rsp {
	if sd != c.st.isd() {
		return status(gp.SWConditionsNotSatisfied)
	}
	from := c.st.CardLCS
	allowed := false
	switch to {
	case CardInitialized:
		allowed = from == CardOPReady
	case CardSecured:
		allowed = from == CardOPReady || from == CardInitialized || from == CardLocked
	case CardLocked:
		allowed = from == CardSecured
	case CardTerminated:
		allowed = true
	default:
		return status(gp.SWIncorrectP1P2)
	}
	if !allowed {
		return status(gp.SWConditionsNotSatisfied)
	}
	c.st.CardLCS = to
	c.st.isd().LCS = to
	c.dirty = true
	return ok(nil)
}

// deleteCmd answers DELETE (GPCS 11.2): 4F AID deletes an application or
// SD (with P2 80 also everything associated with an SD); D2 KVN deletes a
// key set of the current SD (D0 KID alone is not supported).
func (c *Card) deleteCmd(sd *app, cmd gp.Command) rsp {
	if !c.authenticated() {
		return status(gp.SWSecurityNotSatisfied)
	}
	if cmd.P1&0x7F != 0 || cmd.P2&0x7F != 0 {
		return status(gp.SWIncorrectP1P2)
	}
	tlvs, err := gp.ParseAllTLV(cmd.Data)
	if err != nil || len(tlvs) == 0 {
		return status(gp.SWIncorrectData)
	}
	if t, found := gp.Find(tlvs, 0x4F); found {
		a := c.st.find(t.Value)
		if a == nil {
			return status(gp.SWReferencedDataNotFound)
		}
		if !c.manages(sd, a) && !sd.priv(1, privGlobalDelete) || a == c.st.isd() {
			return status(gp.SWConditionsNotSatisfied)
		}
		var related []*app
		for _, b := range c.st.Apps {
			if b != a && bytes.Equal(b.SD, a.AID) {
				related = append(related, b)
			}
		}
		if len(related) > 0 && cmd.P2&0x80 == 0 {
			return status(gp.SWConditionsNotSatisfied) // GPCS 11.2.2.1: associated content remains
		}
		gone := map[*app]bool{a: true}
		for _, b := range related {
			gone[b] = true
		}
		kept := c.st.Apps[:0]
		for _, b := range c.st.Apps {
			if !gone[b] {
				kept = append(kept, b)
			}
		}
		c.st.Apps = kept
		if c.ch.perso != nil && c.st.find(c.ch.perso) == nil {
			c.ch.perso = nil
		}
		c.dirty = true
		return ok([]byte{0x00})
	}
	if t, found := gp.Find(tlvs, 0xD2); found && len(t.Value) == 1 {
		for i, ks := range sd.KeySets {
			if ks.KVN == t.Value[0] {
				sd.KeySets = append(sd.KeySets[:i], sd.KeySets[i+1:]...)
				c.dirty = true
				return ok([]byte{0x00})
			}
		}
		return status(gp.SWReferencedDataNotFound)
	}
	return status(gp.SWIncorrectData)
}
