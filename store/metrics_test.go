package store_test

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/store"
	"github.com/keyport/keyport/store/storetest"
)

func gatherStore(t *testing.T, reg *prometheus.Registry) map[string]*dto.MetricFamily {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*dto.MetricFamily{}
	for _, mf := range mfs {
		out[mf.GetName()] = mf
	}
	return out
}

func labelled(mf *dto.MetricFamily, want map[string]string) *dto.Metric {
	for _, m := range mf.GetMetric() {
		n := 0
		for _, l := range m.GetLabel() {
			if want[l.GetName()] == l.GetValue() {
				n++
			}
		}
		if n == len(want) {
			return m
		}
	}
	return nil
}

func TestCollectorTimesStatementsByOperationAndCountsJobsAtScrapeTime(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		m := jobModule(t, s, 1)
		reg := prometheus.NewPedanticRegistry()
		reg.MustRegister(s.Collector())
		queued := func() float64 {
			t.Helper()
			mf := gatherStore(t, reg)["keyport_jobs"]
			if len(mf.GetMetric()) != 24 {
				t.Fatalf("%d keyport_jobs series, want every kind × state (4 × 6)", len(mf.GetMetric()))
			}
			return labelled(mf, map[string]string{"kind": string(keyport.JobSecondKey), "state": string(keyport.JobQueued)}).GetGauge().GetValue()
		}
		if n := queued(); n != 0 {
			t.Fatalf("%v queued second-key jobs before any was made", n)
		}
		// Data and issuer jobs are counted under their own kinds.
		data, issuer := newJob(m, 0, "job_md"), newJob(m, 1, "job_mi")
		data.Kind, data.SecondKey, data.Data = keyport.JobData, nil, &keyport.DataPayload{EID: m.EID, AID: m.Domains[0].AID, APDUs: []string{"8050300008"}}
		issuer.Kind, issuer.SecondKey, issuer.Issuer = keyport.JobIssuer, nil, &keyport.IssuerPayload{Op: keyport.OpLock, EID: m.EID, AID: m.Domains[1].AID}
		for _, j := range []*keyport.Job{data, issuer} {
			if err := s.CreateJob(ctx, j); err != nil {
				t.Fatal(err)
			}
		}
		for _, k := range []keyport.JobKind{keyport.JobData, keyport.JobIssuer} {
			mf := gatherStore(t, reg)["keyport_jobs"]
			if n := labelled(mf, map[string]string{"kind": string(k), "state": string(keyport.JobQueued)}).GetGauge().GetValue(); n != 1 {
				t.Fatalf("%v queued %s jobs, want 1", n, k)
			}
		}
		before := gatherStore(t, reg)["keyport_db_query_seconds"]
		creates := func(mf *dto.MetricFamily) uint64 {
			if m := labelled(mf, map[string]string{"operation": "create"}); m != nil {
				return m.GetHistogram().GetSampleCount()
			}
			return 0
		}
		for i, ref := range []string{"job_m1", "job_m2"} {
			if err := s.CreateJob(ctx, newJob(m, i, ref)); err != nil {
				t.Fatal(err)
			}
		}
		if n := queued(); n != 2 {
			t.Fatalf("%v queued second-key jobs after two were made, want 2", n)
		}
		// A statement sent past gorm (direct.go) is timed as well.
		if err := s.AddOutbox(ctx, &keyport.OutboxMessage{Topic: "t", Payload: "{}"}); err != nil {
			t.Fatal(err)
		}
		after := gatherStore(t, reg)["keyport_db_query_seconds"]
		if d := creates(after) - creates(before); d != 3 {
			t.Errorf("create statements timed: %d, want 3 (two jobs through gorm, one outbox row past it)", d)
		}
		for _, m := range after.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() != "operation" {
					t.Errorf("unexpected label %s=%s", l.GetName(), l.GetValue())
				}
			}
		}
		if err := s.Ping(ctx); err != nil {
			t.Errorf("ping: %v", err)
		}
		if err := s.CheckSchema(ctx); err != nil {
			t.Errorf("schema: %v", err)
		}
	})
}

func TestPingAndCheckSchemaFailOnAClosedOrOldDatabase(t *testing.T) {
	storetest.EachDSN(t, func(t *testing.T, dsn string) {
		s, err := store.OpenOptions{Migrate: true}.Open(ctx, dsn)
		if err != nil {
			t.Fatal(err)
		}
		storetest.ExecSQL(t, dsn, `DELETE FROM schema_migrations WHERE version = (SELECT MAX(version) FROM schema_migrations)`)
		if err := s.CheckSchema(ctx); err == nil {
			t.Error("CheckSchema after the newest migration row went: nil")
		}
		s.Close()
		if err := s.Ping(ctx); err == nil {
			t.Error("Ping of a closed store: nil")
		}
	})
}
