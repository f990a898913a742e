// Package views holds the portal's templ components: one layout, the
// account pages, the provider's pages and the issuer admin console. Views
// only display what handlers give them; they never call the service.
package views

import (
	"fmt"
	"strings"
	"time"

	"github.com/keyport/keyport"
)

// Role is who is looking at a page; it picks the navigation.
type Role int

// Roles.
const (
	Anonymous Role = iota
	ProviderRole
	PendingProvider
	AdminRole
)

// Meta is what every page needs besides its content.
type Meta struct {
	Title string
	Role  Role
	Email string
	// CSRF is the token every form carries (see web/auth.go).
	CSRF string
	// Flash is a one-time notice from the previous request (POST-redirect-GET).
	Flash     string
	FlashKind string // "good", "bad" or "info"
	// Active is the path of the current section, for aria-current.
	Active string
	// Demo shows the demo-data banner (keyport demo).
	Demo bool
	// Sandbox links the provider sandbox's page (keyport serve --sandbox).
	Sandbox bool
}

// Errors maps a form field name to the message shown next to it; "" is a
// message about the whole form.
type Errors map[string]string

// Has reports whether field has an error.
func (e Errors) Has(field string) bool { _, ok := e[field]; return ok }

func invalidAttr(e Errors, field string) string {
	if e.Has(field) {
		return "true"
	}
	return "false"
}

func describedBy(field string) string { return field + "-error " + field + "-hint" }

func when(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format("2006-01-02 15:04 UTC")
}

func whenPtr(t *time.Time) string {
	if t == nil {
		return "—"
	}
	return when(*t)
}

// GroupEID spaces an EID in blocks of four digits for reading.
func GroupEID(eid keyport.EID) string {
	s := string(eid)
	var b strings.Builder
	for i := 0; i < len(s); i += 4 {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(s[i:min(i+4, len(s))])
	}
	return b.String()
}

// Fingerprint spaces a hex SHA-256 in pairs of bytes, as users compare it.
func Fingerprint(hex string) string {
	var b strings.Builder
	for i := 0; i < len(hex); i += 4 {
		if i > 0 {
			b.WriteByte(':')
		}
		b.WriteString(hex[i:min(i+4, len(hex))])
	}
	return b.String()
}

func domainURL(d keyport.Domain) string {
	return "/portal/domains/" + string(d.EID) + "/" + string(d.AID)
}

// adminDomainURL is where the issuer's forms for domain d post.
func adminDomainURL(d keyport.Domain) string {
	return "/admin/domains/" + string(d.EID) + "/" + string(d.AID)
}

func itoa(n int64) string { return fmt.Sprint(n) }

func kinds() []keyport.ProviderKind {
	return []keyport.ProviderKind{keyport.KindBank, keyport.KindRetailer, keyport.KindTransit, keyport.KindOther}
}

func flashClass(kind string) string {
	if kind == "" {
		kind = "info"
	}
	return "flash " + kind
}

func current(m Meta, path string) string {
	if m.Active == path {
		return "page"
	}
	return "false"
}

// outboxState is "sent <time>" or "not sent".
func outboxState(o keyport.OutboxMessage) string {
	if o.SentAt == nil {
		return "not sent"
	}
	return "sent " + when(*o.SentAt)
}
