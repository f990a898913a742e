package keyport_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/internal/fixture"
	"github.com/keyport/keyport/store"
	"github.com/keyport/keyport/store/storetest"
)

func TestImportRejectsTheWholeFileNamingEveryBadLine(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		ctx := context.Background()
		w := fixture.New(t, s, 1, 1)
		lines := []string{
			w.ImportLine(t, fixture.EID(t, 10), 2, ""),
			`{"eid":"123"}`,
			w.ImportLine(t, fixture.EID(t, 11), 1, ""),
			w.ImportLine(t, fixture.EID(t, 12), 1, "000000"), // KCV does not match the key
			"",
			`garbage`,
		}
		_, err := w.Svc.ImportModules(ctx, fixture.Admin, "b1", strings.NewReader(strings.Join(lines, "\n")), keyport.VerifyAll)
		var ie *keyport.ImportErrors
		if !errors.As(err, &ie) {
			t.Fatalf("err = %v, want ImportErrors", err)
		}
		var got []int
		for _, l := range ie.Lines {
			got = append(got, l.Line)
		}
		if fmt.Sprint(got) != "[2 4 6]" || !strings.Contains(err.Error(), "KCV 000000 does not match") {
			t.Errorf("bad lines %v, err %v", got, err)
		}
		for _, n := range []int{10, 11} {
			if _, err := s.GetModule(ctx, fixture.EID(t, n)); !errors.Is(err, keyport.ErrNotFound) {
				t.Errorf("module %d was imported from a rejected file", n)
			}
		}
		// A module already imported rejects the file too, naming its line.
		dup := w.ImportLine(t, fixture.EID(t, 0), 1, "")
		_, err = w.Svc.ImportModules(ctx, fixture.Admin, "b1", strings.NewReader(w.ImportLine(t, fixture.EID(t, 13), 1, "")+"\n"+dup), keyport.VerifyNone)
		var le *keyport.LineError
		if !errors.As(err, &le) || le.Line != 2 || !errors.Is(err, keyport.ErrConflict) {
			t.Errorf("duplicate EID: %v", err)
		}
		if _, err := s.GetModule(ctx, fixture.EID(t, 13)); !errors.Is(err, keyport.ErrNotFound) {
			t.Error("module 13 imported from a file with a duplicate")
		}
	})
}
