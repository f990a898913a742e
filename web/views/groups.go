package views

import (
	"context"
	"html"
	"io"
	"strings"

	"github.com/a-h/templ"

	"github.com/keyport/keyport"
)

// EIDText shows an EID in blocks of four digits that a line may break
// between, never inside: each block is one unbreakable span (.grp).
func EIDText(eid keyport.EID) templ.Component {
	return groupsIn("groups eid", eidGroups(eid), " ", false)
}

// FingerprintText shows a SHA-256 fingerprint in groups of four hex digits
// joined by ':', breakable only after a ':'.
func FingerprintText(hex string) templ.Component {
	return groupsIn("groups fingerprint", fingerprintGroups(hex), "", true)
}

func groupsIn(class string, groups []string, sep string, wbr bool) templ.Component {
	return templ.ComponentFunc(func(ctx context.Context, w io.Writer) error {
		if _, err := io.WriteString(w, `<span class="`+class+`">`); err != nil {
			return err
		}
		if err := groupSpans(groups, sep, wbr).Render(ctx, w); err != nil {
			return err
		}
		_, err := io.WriteString(w, `</span>`)
		return err
	})
}

// groupSpans writes each group as <span class="grp">, separated by sep
// and, with wbr, a <wbr> (a break opportunity without a character). The
// text reads as the groups joined by sep, with no whitespace added.
func groupSpans(groups []string, sep string, wbr bool) templ.Component {
	return templ.ComponentFunc(func(_ context.Context, w io.Writer) error {
		var b strings.Builder
		for i, g := range groups {
			if i > 0 {
				b.WriteString(html.EscapeString(sep))
				if wbr {
					b.WriteString("<wbr>")
				}
			}
			b.WriteString(`<span class="grp">`)
			b.WriteString(html.EscapeString(g))
			b.WriteString(`</span>`)
		}
		_, err := io.WriteString(w, b.String())
		return err
	})
}
