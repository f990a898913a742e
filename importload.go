package keyport

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"
)

// Import is an import file being loaded. Its modules are stored a chunk a
// transaction, so that no write of the deployment waits for the whole file
// (on SQLite a transaction holds the one writer), but hidden: no lookup,
// claim, campaign or statistic sees them until the file is in and the
// import is published. A file with a bad line is dropped: what was stored
// of it is deleted.
type Import struct {
	ID      int64
	BatchID int64
	State   ImportState
	// Modules is how many are stored so far.
	Modules   int
	StartedAt time.Time
	UpdatedAt time.Time
}

// ImportState is where an import is.
type ImportState string

// Import states. LOADING → PUBLISHING (the commit point, with the audit
// event) → forgotten once its modules are visible; LOADING → DROPPING →
// forgotten once they are deleted.
const (
	ImportLoading    ImportState = "LOADING"
	ImportPublishing ImportState = "PUBLISHING"
	ImportDropping   ImportState = "DROPPING"
)

// ImportStaleAfter is how long an import may go untouched before the sweep
// takes it over: one still LOADING is taken for dead (its process gone) and
// dropped, one PUBLISHING or DROPPING is finished. A live import touches
// its row with every chunk, a chunk of 500 modules at a time; even
// verifying every KCV, a chunk takes seconds.
const ImportStaleAfter = 10 * time.Minute

// ImportModules imports a manufacturer's output file (JSON Lines) into an
// imported batch. Any bad line rejects the whole file, and the error names
// every bad line (up to 100). It reads the file once, streaming, in bounded
// memory whatever its size; lines are parsed on a second goroutine so that
// parsing overlaps the database's inserts.
//
// The modules are stored as they come, a chunk a transaction, hidden until
// the last line is in (Import): a claim or any other write goes on beside a
// long import, and none sees a module of a file that is then rejected.
func (s *Service) ImportModules(ctx context.Context, p Principal, batch string, file io.Reader, verify VerifyMode) (n int, err error) {
	if !p.Admin {
		return 0, ErrForbidden
	}
	b, err := s.Store.GetBatch(ctx, batch)
	if err != nil {
		return 0, fmt.Errorf("keyport: batch %q: %w", batch, err)
	}
	if b.KeySource != KeyImported {
		return 0, Invalid("batch", "batch %q has key source %s: its modules come from perso, not from a file", batch, b.KeySource)
	}
	link := s.link()
	if link == nil {
		return 0, fmt.Errorf("%w: no link custody configured to seal the modules' PSKs", ErrUnavailable)
	}
	switch verify {
	case VerifyAll, VerifySample, VerifyNone:
	case "":
		verify = VerifySample
	default:
		return 0, Invalid("verify", "must be all, sample or none")
	}
	m := s.metrics()
	m.ImportStarted()
	defer func() { m.ImportEnded(ResultOf(err), n) }()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	imp, err := s.Store.BeginImport(ctx, b.ID)
	if err != nil {
		return 0, err
	}
	committed := false
	defer func() {
		if !committed {
			s.dropImport(ctx, imp)
		}
	}()
	lines := parseAhead(ctx, file)
	var bad ImportErrors
	var seen int
	count, err := s.Store.StageModules(ctx, imp, func() (*ModuleImport, error) {
		for pl := range lines {
			if pl.err == nil && (verify == VerifyAll || verify == VerifySample && seen%997 == 0) {
				pl.err = s.checkImportedKCVs(ctx, batch, pl.m)
			}
			if pl.err == nil {
				// The module's TLS-PSK: keyport's own, made here and
				// sealed by the HSM; the handset agent gets it by export.
				pl.m.PSK, pl.err = link.NewModulePSK(ctx, pl.m.EID)
			}
			seen++
			m.ImportLine()
			var le *LineError
			switch {
			case errors.As(pl.err, &le):
				// The file itself is unreadable past this line.
				bad.Lines = append(bad.Lines, le)
				return nil, &bad
			case pl.err != nil && !errors.Is(pl.err, ErrInvalid):
				return nil, pl.err
			case pl.err != nil && len(bad.Lines) < maxListedImportErrors:
				bad.Lines = append(bad.Lines, &LineError{Line: pl.m.Line, Err: pl.err})
			case pl.err != nil:
				bad.More++
			case len(bad.Lines) == 0:
				return pl.m, nil
			}
			// After a bad line nothing more is stored, but the rest of
			// the file is still checked so that every bad line is named.
		}
		if len(bad.Lines) > 0 {
			return nil, &bad
		}
		return nil, ctx.Err()
	})
	if err != nil {
		return 0, err
	}
	if count == 0 {
		return 0, invalid("file", "the import file holds no module")
	}
	err = s.Store.Tx(ctx, func(tx Repo) error {
		if err := tx.CommitImport(ctx, imp.ID, count); err != nil {
			return err
		}
		return s.audit(ctx, tx, p.Actor(), "import", "batch:"+batch, map[string]any{"modules": count, "verify": verify})
	})
	if err != nil {
		return 0, err
	}
	committed = true
	// Committed: the modules are shown even if the caller has gone. What
	// this cannot show, the sweep does (ImportStaleAfter).
	pctx, pcancel := context.WithTimeout(context.WithoutCancel(ctx), ImportStaleAfter)
	defer pcancel()
	if err := s.Store.PublishImport(pctx, imp.ID); err != nil {
		s.log().Warn("modules imported but not all shown yet; the sweep shows the rest", "batch", batch, "import", imp.ID, "err", err)
	}
	s.log().Info("modules imported", "batch", batch, "modules", count)
	return count, nil
}

// dropImport deletes what a failed import stored, even when ctx ended; what
// it cannot delete, the sweep does.
func (s *Service) dropImport(ctx context.Context, imp *Import) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), ImportStaleAfter)
	defer cancel()
	if err := s.Store.DropImport(ctx, imp.ID); err != nil {
		s.log().Warn("import failed and its rows are left to the sweep", "import", imp.ID, "err", err)
	}
}

// unfinishedImports returns up to limit imports not finished, oldest first:
// every one, also one a replica whose clock runs ahead touched "later".
func (s *Service) unfinishedImports(ctx context.Context, limit int) ([]Import, error) {
	return s.Store.StaleImports(ctx, time.Time{}, limit)
}

// SweepImports finishes up to limit imports untouched since before (a
// replica's sweep: ImportStaleAfter ago, their process gone; a restore: the
// zero time, every one, as no process loads into a database just
// restored). A LOADING or DROPPING one is dropped, a PUBLISHING one
// published. It returns the imports it finished.
func (s *Service) SweepImports(ctx context.Context, before time.Time, limit int) ([]Import, error) {
	imps, err := s.Store.StaleImports(ctx, before, limit)
	if err != nil {
		return nil, err
	}
	for i, imp := range imps {
		if imp.State == ImportPublishing {
			err = s.Store.PublishImport(ctx, imp.ID)
		} else {
			err = s.Store.DropImport(ctx, imp.ID)
		}
		if err != nil {
			return imps[:i], fmt.Errorf("keyport: sweep import %d: %w", imp.ID, err)
		}
		s.log().Warn("import whose process stopped finished by the sweep", "import", imp.ID, "state", imp.State,
			"modules", imp.Modules, "started", imp.StartedAt)
	}
	return imps, nil
}
