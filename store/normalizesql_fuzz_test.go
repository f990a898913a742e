package store

import (
	"strings"
	"testing"
	"unicode"
)

// normalizeSQL reads the SQL of a backup's schema, which whoever edited the
// backup wrote: it must never fail, and it may change nothing but white
// space outside quotes. Its output is its own fixed point, and removing
// all white space from input and output leaves the same text when the
// input has no quotes (inside quotes white space is kept as it is).
func FuzzNormalizeSQL(f *testing.F) {
	for _, s := range []string{
		"CREATE TABLE users (\n\tid TEXT PRIMARY KEY,\n\tadmin BOOLEAN NOT NULL DEFAULT FALSE\n)",
		"CREATE TRIGGER t AFTER INSERT ON users BEGIN UPDATE users SET admin = 1 WHERE id = NEW.id; END",
		`CREATE INDEX "a  b" ON [x  y] (` + "`c  d`" + `, 'e  f')`,
		"  \t\n", "'unterminated  quote", "[", "\u00a0x\u2003y",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, q string) {
		n := normalizeSQL(q)
		if again := normalizeSQL(n); again != n {
			t.Fatalf("not a fixed point: %q -> %q -> %q", q, n, again)
		}
		if strings.TrimSpace(n) != n {
			t.Fatalf("%q -> %q keeps white space at an end", q, n)
		}
		if !strings.ContainsAny(q, "'\"`[") {
			strip := func(s string) string {
				return strings.Map(func(r rune) rune {
					if unicode.IsSpace(r) {
						return -1
					}
					return r
				}, s)
			}
			if strip(q) != strip(n) {
				t.Fatalf("%q -> %q changed more than white space", q, n)
			}
		}
	})
}
