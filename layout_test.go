package keyport_test

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// The README's "Layout" section is the map of the root package: it must
// name every file in it, no file that is gone, and every port in ports.go.
func TestTheREADMELayoutNamesEveryRootFileAndEveryPort(t *testing.T) {
	b, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	readme := string(b)
	start := strings.Index(readme, "\n## Layout\n")
	if start < 0 {
		t.Fatal("README has no Layout section")
	}
	layout := readme[start+1:]
	if end := strings.Index(layout[3:], "\n## "); end >= 0 {
		layout = layout[:end+3]
	}
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		have[f] = true
		if !strings.Contains(layout, "`"+f+"`") {
			t.Errorf("the README's Layout does not name %s", f)
		}
	}
	if len(have) < 10 {
		t.Fatalf("found %d files of the root package", len(have))
	}
	for _, m := range regexp.MustCompile("\\| `([a-z0-9]+\\.go)`").FindAllStringSubmatch(layout, -1) {
		if !have[m[1]] {
			t.Errorf("the README's Layout names %s, which is not in the root package", m[1])
		}
	}
	row := ""
	for _, l := range strings.Split(layout, "\n") {
		if strings.HasPrefix(l, "| `ports.go` |") {
			row = l
		}
	}
	src, err := os.ReadFile("ports.go")
	if err != nil {
		t.Fatal(err)
	}
	ports := regexp.MustCompile(`(?m)^type ([A-Z][A-Za-z]*) (interface|func)\b`).FindAllStringSubmatch(string(src), -1)
	if len(ports) < 10 {
		t.Fatalf("found %d ports in ports.go", len(ports))
	}
	for _, p := range ports {
		if p[1] == "AuditKeys" { // the function AuditSealer takes, not a port of its own
			continue
		}
		if !strings.Contains(row, "`"+p[1]+"`") {
			t.Errorf("the README's ports.go row does not name %s", p[1])
		}
	}
}
