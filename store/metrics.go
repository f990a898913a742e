package store

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"gorm.io/gorm"

	"github.com/keyport/keyport"
)

// Statement timing. A gorm callback pair around each of gorm's processors
// times every statement by operation (create, query, update, delete, row,
// raw: which processor ran it), never by its SQL text or table, so that no
// value or identifier reaches a label. The callbacks are registered at open
// and do nothing but one atomic load until Collector turns them on.

const startKey = "keyport:metrics_start"

// instrument registers the timing callbacks on every gorm handle of s.
func (s *Store) instrument() error {
	dbs := []*gorm.DB{s.w}
	if s.r != s.w {
		dbs = append(dbs, s.r)
	}
	type register func(name string, fn func(*gorm.DB)) error
	for _, db := range dbs {
		cb := db.Callback()
		for _, p := range []struct {
			op            string
			before, after register
		}{
			{"create", cb.Create().Before("*").Register, cb.Create().After("*").Register},
			{"query", cb.Query().Before("*").Register, cb.Query().After("*").Register},
			{"update", cb.Update().Before("*").Register, cb.Update().After("*").Register},
			{"delete", cb.Delete().Before("*").Register, cb.Delete().After("*").Register},
			{"row", cb.Row().Before("*").Register, cb.Row().After("*").Register},
			{"raw", cb.Raw().Before("*").Register, cb.Raw().After("*").Register},
		} {
			if err := p.before("keyport:metrics_before_"+p.op, s.statementStart); err != nil {
				return fmt.Errorf("store: register statement timing: %w", err)
			}
			if err := p.after("keyport:metrics_after_"+p.op, s.statementEnd(p.op)); err != nil {
				return fmt.Errorf("store: register statement timing: %w", err)
			}
		}
	}
	return nil
}

func (s *Store) statementStart(db *gorm.DB) {
	if s.timing.Load() != nil {
		db.InstanceSet(startKey, time.Now())
	}
}

func (s *Store) statementEnd(op string) func(*gorm.DB) {
	return func(db *gorm.DB) {
		h := s.timing.Load()
		if h == nil {
			return
		}
		if v, ok := db.InstanceGet(startKey); ok {
			h.WithLabelValues(op).Observe(time.Since(v.(time.Time)).Seconds())
		}
	}
}

// observe times what the store sent without gorm since start, under op
// ("pipeline": one round trip of pipelined statements, pipelineClaims).
func (s *Store) observe(op string, start time.Time) {
	if h := s.timing.Load(); h != nil {
		h.WithLabelValues(op).Observe(time.Since(start).Seconds())
	}
}

// jobsScrapeTimeout bounds the query a scrape runs for keyport_jobs.
const jobsScrapeTimeout = 5 * time.Second

var (
	jobsDesc = prometheus.NewDesc("keyport_jobs", "Card-link jobs by kind and state, counted in the database at scrape time (every replica reports the same totals).",
		[]string{"kind", "state"}, nil)
	jobsScrapeErrorsDesc = prometheus.NewDesc("keyport_jobs_scrape_errors_total", "Scrapes whose count of jobs failed or timed out (keyport_jobs is then left out).", nil, nil)
	walFramesDesc        = prometheus.NewDesc("keyport_db_wal_checkpointed_frames_total", "SQLite: WAL frames the background checkpointer copied into the database file.", nil, nil)
	walFailuresDesc      = prometheus.NewDesc("keyport_db_wal_checkpoint_failures_total", "SQLite: background checkpoints that failed (the WAL then grows until one succeeds).", nil, nil)
	// jobKinds is every kind of job: those an admin session delivers and
	// the webhook deliveries.
	jobKinds  = append(slices.Clone(keyport.CardJobKinds), keyport.JobWebhook)
	jobStates = []keyport.JobState{keyport.JobQueued, keyport.JobSent, keyport.JobDone, keyport.JobFailed, keyport.JobCancelled, keyport.JobExpired}
)

// Collector returns the store's Prometheus metrics and turns statement
// timing on (keyport_db_query_seconds, by operation). Each scrape also
// counts the jobs by kind and state in one GROUP BY query, bounded by
// jobsScrapeTimeout; a kind or state outside the known sets is not exported.
func (s *Store) Collector() prometheus.Collector {
	s.timingOnce.Do(func() {
		s.timing.Store(prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "keyport_db_query_seconds",
			Help:    "Latency of database statements by gorm operation (create, query, update, delete, row, raw), and of pipelined round trips (pipeline); never by SQL text.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}, []string{"operation"}))
	})
	return &collector{s: s, h: s.timing.Load()}
}

type collector struct {
	s *Store
	h *prometheus.HistogramVec
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- jobsDesc
	ch <- jobsScrapeErrorsDesc
	ch <- walFramesDesc
	ch <- walFailuresDesc
	c.h.Describe(ch)
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	c.h.Collect(ch)
	if ck := c.s.checkpoints; ck != nil {
		ch <- prometheus.MustNewConstMetric(walFramesDesc, prometheus.CounterValue, float64(ck.frames.Load()))
		ch <- prometheus.MustNewConstMetric(walFailuresDesc, prometheus.CounterValue, float64(ck.fails.Load()))
	}
	counts, err := c.s.jobCounts()
	if err != nil {
		c.s.jobScrapeErrs.Add(1)
	}
	ch <- prometheus.MustNewConstMetric(jobsScrapeErrorsDesc, prometheus.CounterValue, float64(c.s.jobScrapeErrs.Load()))
	if err != nil {
		return
	}
	for _, k := range jobKinds {
		for _, st := range jobStates {
			ch <- prometheus.MustNewConstMetric(jobsDesc, prometheus.GaugeValue, float64(counts[string(k)+"/"+string(st)]), string(k), string(st))
		}
	}
}

// jobCounts counts the jobs by "kind/state".
func (s *Store) jobCounts() (map[string]int64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), jobsScrapeTimeout)
	defer cancel()
	var rows []struct {
		Kind, State string
		N           int64
	}
	if err := s.r.WithContext(ctx).Raw(`SELECT kind, state, COUNT(*) AS n FROM jobs GROUP BY kind, state`).Scan(&rows).Error; err != nil {
		return nil, wrap("count jobs", err)
	}
	out := make(map[string]int64, len(rows))
	for _, r := range rows {
		out[r.Kind+"/"+r.State] = r.N
	}
	return out, nil
}

// Ping checks that every connection pool of the store reaches the database.
func (s *Store) Ping(ctx context.Context) error {
	for _, p := range s.pools {
		if err := p.PingContext(ctx); err != nil {
			return wrap("ping", err)
		}
	}
	return nil
}

// CheckSchema reports whether the database is at the schema version this
// code serves (LatestVersion): ErrSchemaTooOld or ErrSchemaTooNew if not.
func (s *Store) CheckSchema(ctx context.Context) error {
	v, err := s.SchemaVersion(ctx)
	if err != nil {
		return err
	}
	switch {
	case v > LatestVersion():
		return fmt.Errorf("store: version %d, code knows %d: %w", v, LatestVersion(), ErrSchemaTooNew)
	case v < LatestVersion():
		return fmt.Errorf("store: version %d, code needs %d: %w", v, LatestVersion(), ErrSchemaTooOld)
	}
	return nil
}
