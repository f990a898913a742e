package gp

import (
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// loadVectors decodes testdata/<name> (a copy of /work/shared/vectors) into v.
func loadVectors(t testing.TB, name string, v any) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
}

// unhex decodes vector hex; spaces are ignored.
func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		t.Fatalf("bad hex %q: %v", s, err)
	}
	return b
}

// coverage records which vector keys a test used, so that a test fails when
// a vector file grows an entry no test looks at.
type coverage struct {
	t    testing.TB
	file string
	seen map[string]bool
}

func newCoverage(t testing.TB, file string) *coverage {
	return &coverage{t: t, file: file, seen: map[string]bool{}}
}

func (c *coverage) use(key string) { c.seen[key] = true }

// check fails for every key in all that was not used.
func (c *coverage) check(all []string) {
	c.t.Helper()
	for _, k := range all {
		if !c.seen[k] {
			c.t.Errorf("%s: vector entry %q is not covered by any test", c.file, k)
		}
	}
}

func keysOf[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}
