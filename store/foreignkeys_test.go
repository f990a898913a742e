package store_test

import (
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/keyport/keyport/store"
	"github.com/keyport/keyport/store/storetest"
)

// TestEveryColumnReferringToARowTheStoreDeletesIsIndexed: for each row
// deleted from a parent table, the database checks that no row still
// refers to it, and without an index on the referring column that check
// scans the whole child table. Dropping an import's 1,000 modules beside
// 100,000 took 88 s on SQLite and 71 s on PostgreSQL when domains.module_id
// had no index. The parents are read from the store's own DELETE
// statements, so that a table the store starts deleting from is checked too.
func TestEveryColumnReferringToARowTheStoreDeletesIsIndexed(t *testing.T) {
	deleted := map[string]bool{}
	files, err := os.ReadDir(".")
	if err != nil {
		t.Fatal(err)
	}
	del := regexp.MustCompile(`DELETE FROM ([a-z_]+)`)
	for _, f := range files {
		if !strings.HasSuffix(f.Name(), ".go") || strings.HasSuffix(f.Name(), "_test.go") {
			continue
		}
		src, err := os.ReadFile(f.Name())
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range del.FindAllStringSubmatch(string(src), -1) {
			deleted[m[1]] = true
		}
	}
	for _, parent := range []string{"modules", "domains", "campaigns"} {
		if !deleted[parent] {
			t.Fatalf("no DELETE FROM %s found in the store's source (parents seen: %v): the scan is broken", parent, deleted)
		}
	}
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		fks, err := store.ForeignKeysForTest(s)
		if err != nil || len(fks) < 10 {
			t.Fatalf("foreign keys: %d, %v", len(fks), err)
		}
		leads, err := store.IndexLeadsForTest(s)
		if err != nil {
			t.Fatal(err)
		}
		indexed := map[string]bool{}
		for _, l := range leads {
			// A partial index serves the check only when "column = ?"
			// implies its WHERE clause.
			w := strings.ToLower(strings.Trim(strings.TrimSpace(l.Where), "()"))
			if w == "" || w == strings.ToLower(l.Column)+" is not null" {
				indexed[l.Table+"."+l.Column] = true
			}
		}
		checked := 0
		for _, fk := range fks {
			if !deleted[fk.Parent] {
				continue
			}
			checked++
			if !indexed[fk.Table+"."+fk.Column] {
				t.Errorf("%s.%s refers to %s, whose rows the store deletes, and leads no index: each delete scans %s",
					fk.Table, fk.Column, fk.Parent, fk.Table)
			}
		}
		if checked < 5 {
			t.Fatalf("only %d foreign keys to deleted parents checked", checked)
		}
	})
}
