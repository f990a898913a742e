package views

import (
	"fmt"
	"strings"

	"github.com/keyport/keyport"
)

// KVN shows a key version number as the CLI, the README and GlobalPlatform
// write it: hex, here with the 0x that keeps it from reading as decimal.
func KVN(kvn int) string { return fmt.Sprintf("0x%02X", kvn) }

// Plural is "1 domain", "2 domains": n with the noun in the right number.
func Plural(n int64, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return fmt.Sprintf("%d %s", n, many)
}

// Noun is one or many, by n: the noun alone, for text around a number
// shown apart.
func Noun(n int64, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

// KindLabel names a provider kind for people.
func KindLabel(k keyport.ProviderKind) string {
	switch k {
	case keyport.KindBank:
		return "Bank"
	case keyport.KindRetailer:
		return "Retailer"
	case keyport.KindTransit:
		return "Transit operator"
	case keyport.KindOther:
		return "Other"
	}
	return string(k)
}

// eidGroups splits an EID into the blocks of four digits GroupEID spaces.
func eidGroups(eid keyport.EID) []string { return chunks(string(eid), 4) }

// fingerprintGroups splits a hex SHA-256 into the groups Fingerprint
// separates with ':', each but the last ending in its ':'.
func fingerprintGroups(hex string) []string {
	g := chunks(hex, 4)
	for i := 0; i < len(g)-1; i++ {
		g[i] += ":"
	}
	return g
}

func chunks(s string, n int) []string {
	var out []string
	for i := 0; i < len(s); i += n {
		out = append(out, s[i:min(i+n, len(s))])
	}
	return out
}

// commandWords splits a command line at its spaces.
func commandWords(cmd string) []string { return strings.Fields(cmd) }

// ProviderLabel is how the console names a provider: its name, or the ID
// when the provider is unknown to the page.
func ProviderLabel(names map[string]string, id string) string {
	if n := names[id]; n != "" {
		return n
	}
	return id
}

func emailStateText(c keyport.EmailConfirmation) string {
	switch c {
	case keyport.EmailConfirmed:
		return "confirmed"
	case keyport.EmailUnconfirmed:
		return "not confirmed yet"
	case keyport.EmailByAdmin:
		return "given by an admin"
	}
	return "unknown"
}

func emailStateClass(c keyport.EmailConfirmation) string {
	switch c {
	case keyport.EmailConfirmed:
		return "confirmed"
	case keyport.EmailUnconfirmed:
		return "unconfirmed"
	}
	return "by-admin"
}

// importState says in words where an import is.
func importState(st keyport.ImportState) string {
	switch st {
	case keyport.ImportLoading:
		return "loading"
	case keyport.ImportPublishing:
		return "committed, being shown"
	case keyport.ImportDropping:
		return "rejected, being deleted"
	}
	return string(st)
}

// importSweepHint says what becomes of an import whose process stopped.
func importSweepHint() string {
	return fmt.Sprintf("An import untouched for %.0f minutes is taken for one whose process stopped: "+
		"a loading one is then dropped (import its file again), a committed one shown.", keyport.ImportStaleAfter.Minutes())
}
