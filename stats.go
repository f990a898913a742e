package keyport

import (
	"context"
	"fmt"
	"time"
)

// StatsDays is the window of the claims-per-day chart.
const StatsDays = 30

// Stats returns the admin dashboard's numbers (admins only).
func (s *Service) Stats(ctx context.Context, p Principal) (*PortalStats, error) {
	if !p.Admin {
		return nil, ErrForbidden
	}
	today := s.now().UTC().Truncate(24 * time.Hour)
	since := today.AddDate(0, 0, -(StatsDays - 1))
	st, err := s.Store.PortalStats(ctx, since)
	if err != nil {
		return nil, fmt.Errorf("keyport: stats: %w", err)
	}
	// One bar per day, zero days included.
	byDay := map[time.Time]int64{}
	for _, d := range st.ClaimsPerDay {
		byDay[d.Day.UTC().Truncate(24*time.Hour)] += d.Count
	}
	st.ClaimsPerDay = st.ClaimsPerDay[:0]
	for d := since; !d.After(today); d = d.AddDate(0, 0, 1) {
		st.ClaimsPerDay = append(st.ClaimsPerDay, DayCount{Day: d, Count: byDay[d]})
	}
	if st.Imports, err = s.importsUnderWay(ctx); err != nil {
		return nil, fmt.Errorf("keyport: stats: %w", err)
	}
	return st, nil
}

// ImportProgress is an import not finished, as the console shows it.
type ImportProgress struct {
	Import
	Batch string
}

// maxListedImports bounds the imports the dashboard lists.
const maxListedImports = 20

// importsUnderWay lists the unfinished imports with their batch names.
func (s *Service) importsUnderWay(ctx context.Context) ([]ImportProgress, error) {
	imps, err := s.unfinishedImports(ctx, maxListedImports)
	if err != nil || len(imps) == 0 {
		return nil, err
	}
	batches, err := s.Store.ListBatches(ctx)
	if err != nil {
		return nil, err
	}
	names := map[int64]string{}
	for _, b := range batches {
		names[b.ID] = b.Name
	}
	out := make([]ImportProgress, len(imps))
	for i, imp := range imps {
		out[i] = ImportProgress{Import: imp, Batch: names[imp.BatchID]}
	}
	return out, nil
}

// PortalStats is what the admin dashboard shows.
type PortalStats struct {
	Modules int64
	// ModulesImporting counts modules stored by imports still loading:
	// not in Modules or DomainsByState, and seen by no lookup yet.
	ModulesImporting int64
	// Imports lists the imports not finished, oldest first (Stats fills
	// it; the store leaves it empty).
	Imports        []ImportProgress
	DomainsByState map[DomainState]int64
	// ClaimsPerDay counts claims per UTC day, oldest first, one entry per
	// day of the window (zero days included).
	ClaimsPerDay []DayCount
	// JobsByState counts card-link jobs; empty when there are none.
	JobsByState map[string]int64
}

// DayCount is one bar of a per-day chart.
type DayCount struct {
	Day   time.Time
	Count int64
}
