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
	return st, nil
}

// PortalStats is what the admin dashboard shows.
type PortalStats struct {
	Modules int64
	// ModulesImporting counts modules stored by imports still loading:
	// not in Modules or DomainsByState, and seen by no lookup yet.
	ModulesImporting int64
	DomainsByState   map[DomainState]int64
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
