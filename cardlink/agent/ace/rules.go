package ace

import (
	"bytes"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/hex"
	"fmt"

	"github.com/keyport/keyport/gp"
)

// AppID identifies a device application to the access rules: the hashes of
// its signing certificate (DER) that a DeviceAppID-REF-DO (C1) may hold,
// SHA-1 (20 bytes) or SHA-256 (32 bytes), and its package name, which only
// rules naming one (PKG-REF-DO CA, an Android extension) look at.
type AppID struct {
	SHA1    [sha1.Size]byte
	SHA256  [sha256.Size]byte
	Package string
}

// NewAppID hashes a signing certificate's DER encoding.
func NewAppID(certDER []byte, pkg string) AppID {
	return AppID{SHA1: sha1.Sum(certDER), SHA256: sha256.Sum256(certDER), Package: pkg}
}

// String is the SHA-256 hash in hex, as rules are usually written.
func (a AppID) String() string { return hex.EncodeToString(a.SHA256[:]) }

// matchesHash reports whether a DeviceAppID-REF-DO value names the app; an
// empty one names every app (GPD SEAC).
func (a AppID) matchesHash(h []byte) bool {
	switch len(h) {
	case sha1.Size:
		return bytes.Equal(h, a.SHA1[:])
	case sha256.Size:
		return bytes.Equal(h, a.SHA256[:])
	}
	return false
}

// APDUFilter is one entry of an APDU-AR-DO filter list: a command passes
// when its header (CLA INS P1 P2, CLA in its basic channel coding) ANDed
// with Mask equals Header (GPD SEAC).
type APDUFilter struct {
	Header, Mask [4]byte
}

func (f APDUFilter) match(hdr [4]byte) bool {
	for i := range hdr {
		if hdr[i]&f.Mask[i] != f.Header[i] {
			return false
		}
	}
	return true
}

func (f APDUFilter) String() string { return fmt.Sprintf("%X/%X", f.Header, f.Mask) }

// Access is what the rules grant one app on one applet.
type Access struct {
	// Allowed is false when the app may not open a channel; Reason says
	// why, in words an app developer can act on.
	Allowed bool
	Reason  string
	// Always lets every APDU through; otherwise only those that pass one
	// of Filters.
	Always  bool
	Filters []APDUFilter
}

// Permits reports whether a command header may go to the applet.
func (a Access) Permits(hdr [4]byte) bool {
	if !a.Allowed {
		return false
	}
	if a.Always {
		return true
	}
	for _, f := range a.Filters {
		if f.match(hdr) {
			return true
		}
	}
	return false
}

// Decide applies the ARA-M rules to an app that wants a channel to the
// applet aid. The search follows GPD SEAC (ARA rule search, as Android's
// enforcer implements it), stopping at the first step that finds rules:
//
//  1. rules for this AID and this app (its SHA-1 or SHA-256 hash);
//  2. rules for this AID and every app (empty C1);
//  3. if rules exist for this AID but only for other apps, access is denied
//     (the applet's owner listed who may use it);
//  4. rules for every applet (empty 4F) and this app;
//  5. rules for every applet and every app;
//  6. otherwise access is denied.
//
// Several rules found at one step are combined: NEVER (D0 00) in any of
// them wins; otherwise ALWAYS (D0 01) in any of them lets every APDU
// through; otherwise the filters of all of them are allowed. A rule
// without an APDU-AR-DO grants no APDU access (an NFC- or Android
// permission-only rule). Rules for the implicitly selected application
// (C0) are about the basic channel, which apps never get here: they do
// not match. A rule naming a package (CA) matches only an app that
// declares that package.
func Decide(rules []gp.AccessRule, aid []byte, app AppID) Access {
	type step struct {
		anyAID, anyApp bool
	}
	forAID := func(r gp.AccessRule, anyAID bool) bool {
		if r.Implicit || r.AID == nil {
			return false
		}
		if anyAID {
			return len(r.AID) == 0
		}
		return len(r.AID) > 0 && bytes.Equal(r.AID, aid)
	}
	forApp := func(r gp.AccessRule, anyApp bool) bool {
		if r.Package != "" && r.Package != app.Package {
			return false
		}
		if anyApp {
			return r.DeviceAppID != nil && len(r.DeviceAppID) == 0
		}
		return app.matchesHash(r.DeviceAppID)
	}
	find := func(s step) []gp.AccessRule {
		var out []gp.AccessRule
		for _, r := range rules {
			if forAID(r, s.anyAID) && forApp(r, s.anyApp) {
				out = append(out, r)
			}
		}
		return out
	}
	if found := find(step{}); len(found) > 0 {
		return combine(found, fmt.Sprintf("the rule for applet %X and this app", aid))
	}
	if found := find(step{anyApp: true}); len(found) > 0 {
		return combine(found, fmt.Sprintf("the rule for applet %X and every app", aid))
	}
	for _, r := range rules {
		if forAID(r, false) {
			return Access{Reason: fmt.Sprintf("access denied: the ARA-M has access rules for applet %X, none of them for this app (certificate SHA-256 %s)", aid, app)}
		}
	}
	if found := find(step{anyAID: true}); len(found) > 0 {
		return combine(found, "the rule for every applet and this app")
	}
	if found := find(step{anyAID: true, anyApp: true}); len(found) > 0 {
		return combine(found, "the rule for every applet and every app")
	}
	return Access{Reason: fmt.Sprintf("access denied: no access rule of the ARA-M lets this app (certificate SHA-256 %s) use applet %X", app, aid)}
}

// combine merges the APDU access of the rules found at one search step.
func combine(rules []gp.AccessRule, which string) Access {
	var a Access
	granted := false
	for _, r := range rules {
		switch {
		case len(r.APDU) == 0:
			// No APDU-AR-DO: this rule grants no APDU access.
		case len(r.APDU) == 1 && r.APDU[0] == 0x00:
			return Access{Reason: "access denied: " + which + " says NEVER"}
		case len(r.APDU) == 1 && r.APDU[0] == 0x01:
			a.Always, granted = true, true
		case len(r.APDU)%8 == 0:
			for i := 0; i < len(r.APDU); i += 8 {
				var f APDUFilter
				copy(f.Header[:], r.APDU[i:i+4])
				copy(f.Mask[:], r.APDU[i+4:i+8])
				a.Filters = append(a.Filters, f)
			}
			granted = true
		default:
			return Access{Reason: fmt.Sprintf("access denied: %s has a malformed APDU-AR-DO %X", which, r.APDU)}
		}
	}
	if !granted {
		return Access{Reason: "access denied: " + which + " grants no APDU access"}
	}
	if a.Always {
		a.Filters = nil
	}
	a.Allowed = true
	a.Reason = "granted by " + which
	return a
}
