package main

import (
	"flag"
	"slices"
	"strings"
	"testing"
)

// splitDemoArgs keeps every argument, in order, on one side or the other,
// and gives the demo only flags it knows.
func FuzzSplitDemoArgs(f *testing.F) {
	f.Add("--modules\x002\x00--addr\x00127.0.0.1:0\x00--pcsc")
	f.Add("-modules=5\x00--\x00--pcsc")
	f.Add("--vpcd\x00--pcsc=false\x00x")
	f.Fuzz(func(t *testing.T, joined string) {
		args := strings.Split(joined, "\x00")
		fset := flag.NewFlagSet("x", flag.ContinueOnError)
		fset.Int("modules", 3, "")
		fset.Bool("pcsc", false, "")
		fset.String("vpcd", "", "")
		own, rest := splitDemoArgs(fset, args)
		if len(own)+len(rest) != len(args) {
			t.Fatalf("%q split into %q and %q", args, own, rest)
		}
		// Both sides are subsequences of args.
		for _, side := range [][]string{own, rest} {
			i := 0
			for _, a := range args {
				if i < len(side) && side[i] == a {
					i++
				}
			}
			if i != len(side) {
				t.Fatalf("%q: %q is not in order", args, side)
			}
		}
		if len(own) > 0 && !strings.HasPrefix(own[0], "-") {
			t.Fatalf("%q: the demo got %q", args, own)
		}
		// From a "--" that is no flag's value on, everything is serve's.
		if j := slices.Index(rest, "--"); j >= 0 && !slices.Equal(rest[j:], args[len(args)-(len(rest)-j):]) {
			t.Fatalf("%q: what follows -- is not serve's: %q", args, rest)
		}
	})
}

// parseDemoMarker never panics and accepts only a consistent marker.
func FuzzParseDemoMarker(f *testing.F) {
	f.Add([]byte(`{"demo":true,"ready":true,"modules":1,"domains":4,"eids":["89049032000000000000000000000163"]}`))
	f.Add([]byte(`{"demo":true,"ready":false,"modules":3,"domains":4}`))
	f.Add([]byte(`{"demo":false}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := parseDemoMarker(b)
		if err != nil {
			return
		}
		if !m.Demo || m.Modules < 1 || m.Domains < 1 || (m.Ready && len(m.EIDs) != m.Modules) {
			t.Fatalf("accepted %q as %+v", b, m)
		}
	})
}
