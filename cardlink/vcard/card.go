package vcard

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"

	"github.com/keyport/keyport/gp"
)

// DefaultMaxAuthFailures is how many consecutive failed EXTERNAL
// AUTHENTICATEs lock a key set when Config.MaxAuthFailures is 0. GP leaves
// the number to the card issuer; three is a common choice and keeps tests
// short.
const DefaultMaxAuthFailures = 3

// Config tunes a Card.
type Config struct {
	// StatePath is the state file, written atomically after every
	// state-changing command. Empty keeps the card in memory only.
	StatePath string
	// MaxAuthFailures is how many consecutive failed authentications lock a
	// key set (answered 6983 afterwards). 0 means DefaultMaxAuthFailures.
	MaxAuthFailures int
	// Rand supplies random card challenges (key sets whose SD has i without
	// the pseudo-random bit). Nil means crypto/rand.
	Rand io.Reader
	// TestOTAKeys gives a new module's ISD the fixed test OTA key set
	// (DefaultOTAKVN: DefaultOTAKIc, DefaultOTAKID). Without it the ISD
	// has no OTA key set until one is loaded with PUT KEY (KVN 01-0F), as
	// keyport perso does.
	TestOTAKeys bool
}

// Card is a virtual GlobalPlatform UICC. Its methods are safe for concurrent
// use; commands are processed one at a time, as by a real card.
type Card struct {
	mu    sync.Mutex
	cfg   Config
	st    *state
	saved []byte // the state as last persisted, for rollback
	dirty bool   // the current command changed st

	// Volatile card session state, one per open logical channel (ISO
	// 7816-4 5.4.2): chans[0] is the basic channel, always open; ch is the
	// channel of the command being processed. A power off or reset closes
	// every other channel.
	chans [MaxChannels]*logicalChannel
	ch    *logicalChannel
	// cat is the toolkit state (ota.go), also volatile.
	cat catState
}

// MaxChannels is how many logical channels the module offers: the basic
// channel 0 and 1..19 (CLA 0x-03 and 4x/6x/Cx/Ex, ISO 7816-4 5.4.1).
const MaxChannels = 20

// logicalChannel is what a logical channel remembers between commands: its
// own selected application and its own SCP03 session, so that a session
// opened on channel 1 does not protect or disturb channel 2 (GPCS 10.2.1:
// a secure channel session is bound to the logical channel it was opened
// on). SELECT on a channel ends that channel's session only.
type logicalChannel struct {
	selected []byte          // AID of the selected application, nil if none
	sess     *gp.CardSession // SCP03 session of the selected application
	sessKVN  byte            // key set the session authenticates with
	sessDEK  []byte          // static Key-DEK of that key set (AmdD 7.3)
	perso    []byte          // INSTALL [for personalization] target
	block    int             // next STORE DATA block number expected
	pending  []byte          // a DGI 00B9 whose 8113 is in the next block
	statusQ  *statusPaging   // GET STATUS continuation
	araNext  []byte          // ARA-M Get-Next remainder
}

// statusPaging remembers a GET STATUS answer that did not fit (GPCS 11.4.2:
// P2 b1 = next occurrence, same P1 and data).
type statusPaging struct {
	p1      byte
	query   []byte
	entries [][]byte
}

// New creates a module with the given EID (32 digits, mod 97 == 1), an ISD
// with the default test key set (KVN 30, 40..4F, AES-128, i=70), the ARA-M
// and the ISD-R. With a StatePath it is saved at once; an existing file is
// an error (use Load).
func New(eid string, cfg Config) (*Card, error) {
	digits, err := eidDigits(eid)
	if err != nil {
		return nil, err
	}
	if cfg.StatePath != "" {
		if _, err := os.Stat(cfg.StatePath); err == nil {
			return nil, fmt.Errorf("vcard: new module: %s exists: %w", cfg.StatePath, os.ErrExist)
		}
	}
	st := &state{
		Version: stateFormatVersion,
		EID:     digits,
		CPLC:    testCPLC(digits),
		CardLCS: CardSecured,
	}
	isd := &app{
		AID:        hexBytes(ISDAID),
		LCS:        CardSecured,
		Privileges: hexBytes{0x9E, 0xFE, 0x80}, // SD, card lock/terminate/reset, CVM, AM, global *, receipt
		SD:         hexBytes(ISDAID),
		SCPi:       defaultSCPParameter,
		KeySets:    []*keySet{defaultKeySet()},
	}
	st.Apps = []*app{
		isd,
		{
			AID: hexBytes(ARAMAID), ELF: hexBytes(aramELF), Module: hexBytes(ARAMAID),
			LCS: AppSelectable, Privileges: hexBytes{0, 0, 0}, SD: hexBytes(ISDAID),
		},
		{
			AID: hexBytes(ISDRAID), Module: hexBytes(isdrModule),
			LCS: AppSelectable, Privileges: hexBytes{0, 0, 0}, SD: hexBytes(ISDAID),
		},
	}
	if cfg.TestOTAKeys {
		isd.OTA = []*otaKeySet{defaultOTAKeySet()}
	}
	st.RefreshTag = hexBytes(make([]byte, 8))
	c := newCard(cfg, st)
	b, err := encodeState(st)
	if err != nil {
		return nil, fmt.Errorf("vcard: new module: %w", err)
	}
	if cfg.StatePath != "" {
		if err := writeFileAtomic(cfg.StatePath, b); err != nil {
			return nil, fmt.Errorf("vcard: new module: %w", err)
		}
	}
	c.saved = b
	return c, nil
}

// Load opens the module saved at path; later changes are saved there too
// (cfg.StatePath is set to path). A missing file is an error matching
// fs.ErrNotExist.
func Load(path string, cfg Config) (*Card, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("vcard: load module: %w", err)
	}
	st, err := decodeState(b)
	if err != nil {
		return nil, fmt.Errorf("vcard: load module %s: %w", path, err)
	}
	cfg.StatePath = path
	removeStaleTemps(path)
	c := newCard(cfg, st)
	c.saved = b
	return c, nil
}

func newCard(cfg Config, st *state) *Card {
	c := &Card{cfg: cfg, st: st}
	c.closeChannels()
	return c
}

// closeChannels ends every session and closes every logical channel but
// the basic one, which is left with nothing selected.
func (c *Card) closeChannels() {
	for i, ch := range c.chans {
		if ch != nil && ch.sess != nil {
			ch.sess.Reset()
		}
		c.chans[i] = nil
	}
	c.chans[0] = &logicalChannel{}
	c.ch = c.chans[0]
}

// removeStaleTemps deletes temporary files a killed process left behind
// (see writeFileAtomic); they never hold the module's state. Only one
// process may serve a state file.
func removeStaleTemps(path string) {
	old, _ := filepath.Glob(filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp*"))
	for _, f := range old {
		os.Remove(f)
	}
}

func defaultKeySet() *keySet {
	ks := &keySet{KVN: DefaultKVN}
	for id := byte(1); id <= 3; id++ {
		ks.Keys = append(ks.Keys, &key{ID: id, Type: keyTypeAES, Value: hexBytes(bytes.Clone(DefaultKey))})
	}
	return ks
}

// eidDigits checks an EID: 32 decimal digits whose value mod 97 is 1
// (SGP.29 §10, ISO 7064 MOD 97-10; PROTOCOLS.md §5).
func eidDigits(eid string) (string, error) {
	if len(eid) != 32 {
		return "", fmt.Errorf("vcard: EID must have 32 digits, got %d characters", len(eid))
	}
	r := 0
	for i := 0; i < len(eid); i++ {
		d := eid[i]
		if d < '0' || d > '9' {
			return "", errors.New("vcard: EID may hold digits only")
		}
		r = (r*10 + int(d-'0')) % 97
	}
	if r != 1 {
		return "", errors.New("vcard: EID check digits are wrong (mod 97 must be 1)")
	}
	return eid, nil
}

// testCPLC builds the 42-byte CPLC (field layout of GPPro CPLC.java,
// PROTOCOLS.md §1.4) of a test module; the IC serial number and the
// personalizer equipment ID come from the EID so modules differ.
func testCPLC(eid string) hexBytes {
	h := sha256.Sum256([]byte(eid))
	var b []byte
	b = append(b, 0x4B, 0x50) // IC fabricator: "KP"
	b = append(b, 0x00, 0x01) // IC type
	b = append(b, 0x4B, 0x50) // OS ID
	b = append(b, 0x62, 0x15) // OS release date (YDDD)
	b = append(b, 0x01, 0x00) // OS release level
	b = append(b, 0x62, 0x15) // IC fabrication date
	b = append(b, h[0:4]...)  // IC serial number
	b = append(b, 0x00, 0x01) // IC batch identifier
	b = append(b, 0x4B, 0x50) // module fabricator
	b = append(b, 0x62, 0x15) // module packaging date
	b = append(b, 0x4B, 0x50) // ICC manufacturer
	b = append(b, 0x62, 0x15) // IC embedding date
	b = append(b, 0x4B, 0x50) // IC pre-personalizer
	b = append(b, 0x62, 0x15) // IC pre-perso equipment date
	b = append(b, h[4:8]...)  // IC pre-perso equipment ID
	b = append(b, 0x4B, 0x50) // IC personalizer
	b = append(b, 0x62, 0x15) // IC personalization date
	b = append(b, h[8:12]...) // IC perso equipment ID
	return b
}

// EID returns the module's EID.
func (c *Card) EID() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.st.EID
}

// ATR returns the answer-to-reset: a T=0 UICC-style ATR (TS 3B, TA1 96,
// T=0 then T=15 global bytes with TA3 C7 for clock stop and classes A/B/C)
// with 15 historical bytes carrying an LCS/status indicator (ISO 7816-3 §8,
// ISO 7816-4 §8.1.1).
func (c *Card) ATR() []byte { return bytes.Clone(atr) }

var atr = func() []byte {
	a := []byte{0x3B, 0x9F, 0x96, 0x80, 0x1F, 0xC7,
		0x80, 0x31, 0xE0, 0x73, 0xFE, 0x21, 0x1B, 0x63, 0x4B, 0x50, 0x00, 0x83, 0x00, 0x90, 0x00}
	var tck byte
	for _, x := range a[1:] { // TCK: XOR of T0 … last historical byte is 0 with TCK
		tck ^= x
	}
	return append(a, tck)
}()

// Reset ends the card session, as a power cycle or a warm reset does: no
// application selected, no secure channel. Persistent state is kept.
func (c *Card) Reset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closeChannels()
	c.catReset()
}

func (c *Card) resetSession() { c.ch.reset() }

// reset ends the channel's session and forgets its command continuations;
// the selection stays.
func (ch *logicalChannel) reset() {
	if ch.sess != nil {
		ch.sess.Reset()
	}
	ch.sess, ch.sessKVN, ch.sessDEK = nil, 0, nil
	ch.perso, ch.block, ch.pending, ch.statusQ, ch.araNext = nil, 0, nil, nil, nil
}

func (c *Card) maxFailures() int {
	if c.cfg.MaxAuthFailures > 0 {
		return c.cfg.MaxAuthFailures
	}
	return DefaultMaxAuthFailures
}

// rsp is a handler's answer before secure messaging.
type rsp struct {
	data []byte
	sw   gp.SW
}

func status(sw gp.SW) rsp   { return rsp{sw: sw} }
func ok(data []byte) rsp    { return rsp{data: data, sw: gp.SWOK} }
func (r rsp) bytes() []byte { return gp.Response{Data: r.data, SW: r.sw}.Bytes() }
func swOf(err error) gp.SW {
	var se *gp.SWError
	if errors.As(err, &se) {
		return se.SW
	}
	return gp.SWNoPreciseDiagnosis
}

// Process answers one C-APDU with the R-APDU the module returns: data and
// a 2-byte status word, at least the status word. It never panics, whatever
// the input. State changes are saved before the answer is returned; if
// saving fails the change is undone and the answer is 6581 (memory failure).
func (c *Card) Process(apdu []byte) []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	r := c.process(apdu)
	if c.dirty {
		c.dirty = false
		if err := c.commit(); err != nil {
			return status(gp.SWMemoryFailure).bytes()
		}
	}
	return r.bytes()
}

// commit saves the state. On failure it restores the last saved state and
// ends the session, whose objects may have been part of the undone change.
func (c *Card) commit() error {
	b, err := encodeState(c.st)
	if err == nil && c.cfg.StatePath != "" {
		err = writeFileAtomic(c.cfg.StatePath, b)
	}
	if err != nil {
		if st, derr := decodeState(c.saved); derr == nil {
			c.st = st
		}
		for _, ch := range c.chans {
			if ch != nil {
				ch.reset()
			}
		}
		return err
	}
	c.saved = b
	return nil
}

func (c *Card) process(apdu []byte) rsp {
	cmd, err := gp.ParseCommand(apdu)
	if err != nil {
		if errors.Is(err, gp.ErrTruncated) || errors.Is(err, gp.ErrMalformed) {
			return status(gp.SWWrongLength)
		}
		return status(gp.SWNoPreciseDiagnosis)
	}
	cla, n, sw := decodeCLA(cmd.CLA)
	if sw != gp.SWOK {
		return status(sw)
	}
	if c.chans[n] == nil {
		return status(gp.SWChannelNotSupported) // ISO 7816-4 5.4.2: the channel is not open
	}
	c.ch = c.chans[n]
	// The handlers see the class as on the basic channel; SCP03 sees it as
	// sent, for its MAC covers the class coding (AmdD 6.2.4).
	wire := cmd.CLA
	cmd.CLA = cla
	if c.st.CardLCS == CardTerminated && cmd.INS != 0xA4 && cmd.INS != 0xCA {
		// GPCS 5.1.1.5: a terminated card offers nothing but GET DATA.
		return status(gp.SWFunctionNotSupported)
	}
	switch {
	case cla == 0x80 && n == 0 && (cmd.INS == 0xC2 || cmd.INS == 0x12 || cmd.INS == 0x14):
		// Toolkit commands (ENVELOPE, FETCH, TERMINAL RESPONSE) go to the
		// card, not to the selected application (ota.go).
		return c.catCommand(cmd)
	case cmd.INS == 0x70 && cla&0x80 == 0:
		return c.manageChannel(n, cmd)
	case cmd.INS == 0xA4 && cla&0x80 == 0:
		// SELECT is interindustry (GPCS 11.9, CLA 00-03 or 40-4F): in a
		// proprietary class INS A4 is the selected applet's own command,
		// as a Java Card runtime routes it.
		return c.selectApp(cmd)
	}
	sel := c.selectedApp()
	if sel == nil {
		return status(gp.SWConditionsNotSatisfied)
	}
	if sel.locked() {
		// GPCS 5.3.2: a LOCKED SD rejects every command.
		return status(gp.SWConditionsNotSatisfied)
	}
	// Secure channel handshake (AmdD 7.1) goes to the session directly.
	switch cmd.INS {
	case 0x50:
		return c.initializeUpdate(sel, cmd)
	case 0x82:
		cmd.CLA = wire
		return c.externalAuthenticate(cmd)
	}
	wrapped := false
	if c.ch.sess != nil {
		cmd.CLA = wire
		plain, err := c.ch.sess.Unwrap(cmd)
		if err != nil {
			c.endSession()
			return status(swOf(err))
		}
		wrapped = c.ch.sess.Authenticated()
		cmd = plain
		cmd.CLA = cla &^ 0x04
	} else if cmd.CLA&0x04 != 0 {
		// Secure messaging without a session (GPCS 10.2.3).
		return status(gp.SWSecurityNotSatisfied)
	}
	r := c.dispatch(sel, cmd)
	if wrapped && c.ch.sess != nil && c.ch.sess.Authenticated() {
		out, err := c.ch.sess.Wrap(gp.Response{Data: r.data, SW: r.sw})
		if err != nil {
			return status(gp.SWNoPreciseDiagnosis)
		}
		return rsp{data: out.Data, sw: out.SW}
	}
	return r
}

// decodeCLA reads a class byte (ISO 7816-4 5.4.1, GPCS 11.1.4): the first
// interindustry coding 0x (GP: 8x) with channels 0..3 in b2-b1, the further
// coding 4x/6x (GP: Cx/Ex) with channels 4..19 in b4-b1 and secure
// messaging in b6. It returns the class as the basic channel codes it (b8
// proprietary, b3 GP secure messaging) and the channel number. Command
// chaining and ISO secure messaging (b4 in the first coding) are refused.
func decodeCLA(cla byte) (basic byte, n int, sw gp.SW) {
	if cla == 0xFF {
		return 0, 0, gp.SWCLANotSupported
	}
	if cla&0x40 == 0 {
		switch {
		case cla&0x10 != 0:
			return 0, 0, gp.SW(0x6884) // command chaining not supported
		case cla&0x08 != 0:
			return 0, 0, gp.SW(0x6882) // ISO secure messaging not supported
		case cla&0x20 != 0:
			return 0, 0, gp.SWCLANotSupported // 2x, 3x, Ax, Bx are RFU
		}
		return cla &^ 0x03, gp.ChannelOf(cla), gp.SWOK
	}
	if cla&0x10 != 0 {
		return 0, 0, gp.SW(0x6884)
	}
	basic = cla & 0x80
	if cla&0x20 != 0 {
		basic |= 0x04
	}
	return basic, gp.ChannelOf(cla), gp.SWOK
}

// manageChannel opens and closes logical channels (ISO 7816-4 7.1.2), an
// interindustry command the card's runtime answers whatever is selected
// (INS 70 in the proprietary class goes to the selected application):
//
//   - P1 00 opens a channel: P2 00 lets the card choose the lowest free
//     number and answers it in one byte; P2 01..13 opens that number
//     (no data). Opened from the basic channel a channel starts with
//     nothing selected, as the basic channel does after a reset; opened
//     from channel k it starts with k's application selected, without
//     k's session.
//   - P1 80 closes channel P2, or the channel the command came on when P2
//     is 00. The basic channel cannot be closed.
//
// MANAGE CHANNEL itself is never under secure messaging.
func (c *Card) manageChannel(n int, cmd gp.Command) rsp {
	if cmd.CLA&0x04 != 0 {
		return status(gp.SW(0x6882))
	}
	if len(cmd.Data) != 0 {
		return status(gp.SWWrongLength)
	}
	switch cmd.P1 {
	case 0x00:
		m := int(cmd.P2)
		if m == 0 {
			for m = 1; m < MaxChannels && c.chans[m] != nil; m++ {
			}
			if m == MaxChannels {
				return status(gp.SWFunctionNotSupported) // no channel left
			}
		} else if m >= MaxChannels || c.chans[m] != nil {
			return status(gp.SWIncorrectP1P2)
		}
		ch := &logicalChannel{}
		if n != 0 {
			ch.selected = bytes.Clone(c.ch.selected)
		}
		c.chans[m] = ch
		if cmd.P2 != 0 {
			return ok(nil)
		}
		return ok([]byte{byte(m)})
	case 0x80:
		m := int(cmd.P2)
		if m == 0 {
			m = n
		}
		if m == 0 || m >= MaxChannels {
			return status(gp.SWIncorrectP1P2)
		}
		if c.chans[m] == nil {
			return status(gp.SWReferencedDataNotFound)
		}
		c.chans[m].reset()
		c.chans[m] = nil
		return ok(nil)
	}
	return status(gp.SWIncorrectP1P2)
}

func (c *Card) endSession() {
	if c.ch.sess != nil {
		c.ch.sess.Reset()
	}
	c.ch.sess, c.ch.sessKVN, c.ch.sessDEK = nil, 0, nil
}

func (c *Card) selectedApp() *app {
	if c.ch.selected == nil {
		return nil
	}
	return c.st.find(c.ch.selected)
}

// sdOf returns the security domain in charge of a: a itself for an SD,
// otherwise its associated SD (GPCS 7.2).
func (c *Card) sdOf(a *app) *app {
	if a.isSD() {
		return a
	}
	if sd := c.st.find(a.SD); sd != nil {
		return sd
	}
	return c.st.isd()
}

// authenticated reports an open SCP03 session (GPCS Table 11-2 minimum for
// management commands is AUTHENTICATED).
func (c *Card) authenticated() bool { return c.ch.sess != nil && c.ch.sess.Authenticated() }

func (c *Card) dispatch(sel *app, cmd gp.Command) rsp {
	switch {
	case bytes.Equal(sel.Module, ARAMAID) || bytes.Equal(sel.AID, ARAMAID):
		return c.aram(sel, cmd)
	case bytes.Equal(sel.Module, isdrModule):
		return c.isdr(cmd)
	case sel.isSD():
		return c.securityDomain(sel, cmd)
	}
	return status(gp.SWINSNotSupported)
}

func (c *Card) securityDomain(sd *app, cmd gp.Command) rsp {
	if cmd.CLA&0x80 == 0 && cmd.INS != 0xCA && cmd.INS != 0xC0 {
		// GP commands use the proprietary class; GET DATA also exists in ISO.
		return status(gp.SWCLANotSupported)
	}
	switch cmd.INS {
	case 0xCA, 0xCB:
		return c.getData(sd, cmd)
	case 0xF2:
		return c.getStatus(sd, cmd)
	case 0xE6:
		return c.install(sd, cmd)
	case 0xE2:
		return c.storeData(sd, cmd)
	case 0xD8:
		return c.putKey(sd, cmd)
	case 0xF0:
		return c.setStatus(sd, cmd)
	case 0xE4:
		return c.deleteCmd(sd, cmd)
	}
	return status(gp.SWINSNotSupported)
}

// selectApp handles SELECT by DF name (ISO 7816-4 7.1.1, GPCS 11.9). No data
// selects the ISD (GPCS 7.1.1). Selection ends the session (AmdD 5.6).
func (c *Card) selectApp(cmd gp.Command) rsp {
	if cmd.CLA&0x04 != 0 {
		return status(gp.SWSecurityNotSatisfied)
	}
	if cmd.P1 != 0x04 {
		// Only selection by AID: this module has no UICC file system.
		if cmd.P1 <= 0x09 {
			return status(gp.SWNotFound)
		}
		return status(gp.SWIncorrectP1P2)
	}
	if cmd.P2&0x03 != 0 {
		// "Next occurrence" selection is not supported.
		return status(gp.SWFunctionNotSupported)
	}
	c.resetSession()
	c.ch.selected = nil
	var a *app
	if len(cmd.Data) == 0 {
		a = c.st.isd()
	} else {
		a = c.st.find(cmd.Data)
		if a == nil && len(cmd.Data) >= 5 {
			// ISO 7816-4 7.1.1: partial DF name, the first match.
			for _, x := range c.st.Apps {
				if bytes.HasPrefix(x.AID, cmd.Data) {
					a = x
					break
				}
			}
		}
	}
	if a == nil {
		return status(gp.SWNotFound)
	}
	isISD := a == c.st.isd()
	if isISD && c.st.CardLCS == CardLocked {
		c.ch.selected = bytes.Clone(a.AID)
		return status(0x6283) // GPCS 11.9.3.2: selected file invalidated (card locked)
	}
	// GPCS 5.1.1.4: while the card is locked only the ISD is selectable.
	if !isISD && (a.LCS == AppInstalled || a.locked() || c.st.CardLCS == CardLocked || c.st.CardLCS == CardTerminated) {
		return status(gp.SWNotFound)
	}
	c.ch.selected = bytes.Clone(a.AID)
	if cmd.P2&0x0C == 0x0C {
		return ok(nil)
	}
	// FCI (GPCS 11.9.3.1): 6F { 84 AID, A5 { proprietary } }.
	var prop []byte
	if a.isSD() {
		prop = gp.Encode(0xA5, gp.Encode(0x9F65, []byte{0xFF})) // max command data length
	}
	return ok(gp.Encode(0x6F, gp.Encode(0x84, a.AID), prop))
}

// kdd returns the 10-byte key diversification data of the module: the last
// ten bytes of the EID in BCD.
func (c *Card) kdd() []byte {
	b, _ := hex.DecodeString(c.st.EID)
	if len(b) < 10 {
		return make([]byte, 10)
	}
	return b[len(b)-10:]
}

// initializeUpdate starts an SCP03 session with a key set of the SD in
// charge of sel (AmdD 7.1.1). The key set's sequence counter is incremented
// and saved before the challenge leaves the card (AmdD 6.2.2.1); a key set
// locked by failed authentications answers 6983.
func (c *Card) initializeUpdate(sel *app, cmd gp.Command) rsp {
	c.endSession()
	if cmd.CLA&0x80 == 0 {
		return status(gp.SWCLANotSupported)
	}
	if cmd.CLA&0x04 != 0 {
		return status(gp.SWSecurityNotSatisfied)
	}
	sd := c.sdOf(sel)
	var ks *keySet
	if cmd.P1 == 0 {
		for _, k := range sd.KeySets {
			if k.complete() {
				ks = k
				break
			}
		}
	} else {
		ks = sd.keySet(cmd.P1)
	}
	if ks == nil || !ks.complete() {
		return status(gp.SWReferencedDataNotFound)
	}
	if ks.Failures >= c.maxFailures() {
		return status(gp.SWAuthMethodBlocked)
	}
	i := sd.SCPi
	sess, err := gp.NewCardSession(gp.CardConfig{
		Keys: gp.KeySet{KVN: ks.KVN, ENC: gp.AESKey(bytes.Clone(ks.key(1).Value)), MAC: gp.AESKey(bytes.Clone(ks.key(2).Value))},
		KDD:  c.kdd(),
		I:    i,
		AID:  sel.AID,
		Rand: c.cfg.Rand,
	})
	if err != nil {
		return status(gp.SWNoPreciseDiagnosis)
	}
	seq := ks.Counter
	if i&gp.IPseudoRandom != 0 {
		if ks.Counter >= maxSequenceCounter {
			return status(gp.SWConditionsNotSatisfied)
		}
		seq = ks.Counter + 1
	}
	if cmd.P1 == 0 {
		cmd.P1 = ks.KVN
	}
	r, err := sess.InitializeUpdate(cmd, seq)
	if err != nil {
		return status(swOf(err))
	}
	if i&gp.IPseudoRandom != 0 {
		ks.Counter = seq
		c.dirty = true
	}
	c.ch.sess, c.ch.sessKVN, c.ch.sessDEK = sess, ks.KVN, bytes.Clone(ks.key(3).Value)
	return ok(r.Data)
}

// externalAuthenticate completes the handshake (AmdD 7.1.2). A wrong host
// cryptogram or C-MAC counts toward the key set's lock; success clears the
// count.
func (c *Card) externalAuthenticate(cmd gp.Command) rsp {
	if c.ch.sess == nil || c.ch.sess.Authenticated() {
		c.endSession()
		return status(gp.SWConditionsNotSatisfied)
	}
	ks := c.sessionKeySet()
	if ks == nil {
		c.endSession()
		return status(gp.SWConditionsNotSatisfied)
	}
	r, err := c.ch.sess.ExternalAuthenticate(cmd)
	if err != nil {
		sw := swOf(err)
		if sw == gp.SWAuthFailed || sw == gp.SWSecurityNotSatisfied {
			ks.Failures++
			c.dirty = true
		}
		c.endSession()
		return status(sw)
	}
	if ks.Failures != 0 {
		ks.Failures = 0
		c.dirty = true
	}
	return rsp{data: r.Data, sw: r.SW}
}

// sessionKeySet returns the key set the session was opened with, nil if it
// has gone (replaced by PUT KEY or deleted).
func (c *Card) sessionKeySet() *keySet {
	sel := c.selectedApp()
	if sel == nil {
		return nil
	}
	return c.sdOf(sel).keySet(c.ch.sessKVN)
}
