package keyport_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/internal/fixture"
	"github.com/keyport/keyport/store/storetest"
)

func TestParseFaultReadsEveryKindAndRefusesWhatItDoesNotTake(t *testing.T) {
	good := map[string]keyport.Fault{
		`{"fault":"none"}`:                       {Kind: keyport.FaultNone},
		`{"fault":"offline"}`:                    {Kind: keyport.FaultOffline},
		`{"fault":"lost"}`:                       {Kind: keyport.FaultLost},
		`{"fault":"drop","command":2}`:           {Kind: keyport.FaultDrop, Command: 2},
		`{"fault":"sw","command":3,"sw":"6a88"}`: {Kind: keyport.FaultSW, Command: 3, SW: "6A88"},
		`{"fault":"slow","delay_ms":250}`:        {Kind: keyport.FaultSlow, Delay: 250 * time.Millisecond},
		`{"fault":"drift","drift":5}`:            {Kind: keyport.FaultDrift, Drift: 5},
	}
	for in, want := range good {
		f, err := keyport.ParseFault([]byte(in))
		if err != nil || f != want {
			t.Errorf("%s: %+v %v, want %+v", in, f, err, want)
		}
		// What the API answers reads back as the same fault, once its
		// description is left out.
		b, _ := json.Marshal(f)
		var m map[string]any
		json.Unmarshal(b, &m)
		if m["description"] == "" {
			t.Errorf("%s: no description in %s", in, b)
		}
		delete(m, "description")
		b, _ = json.Marshal(m)
		if back, err := keyport.ParseFault(b); err != nil || back != f {
			t.Errorf("%s: round trip %s: %+v %v", in, b, back, err)
		}
	}
	bad := []string{
		``, `null`, `[]`, `{}`, `{"fault":""}`, `{"fault":"melt"}`, `{"fault":"none","command":1}`,
		`{"fault":"offline","sw":"6A88"}`, `{"fault":"drop"}`, `{"fault":"drop","command":0}`, `{"fault":"drop","command":256}`,
		`{"fault":"sw","command":1}`, `{"fault":"sw","command":1,"sw":"9000"}`, `{"fault":"sw","command":1,"sw":"6110"}`,
		`{"fault":"sw","command":1,"sw":"6A8"}`, `{"fault":"sw","command":1,"sw":"ZZZZ"}`, `{"fault":"slow"}`,
		`{"fault":"slow","delay_ms":30001}`, `{"fault":"slow","delay_ms":-1}`, `{"fault":"drift","drift":0}`,
		`{"fault":"drift","drift":1001}`, `{"fault":"lost","extra":1}`, `{"fault":"lost"} {"fault":"lost"}`,
		`{"fault":"drop","command":1.5}`,
	}
	for _, in := range bad {
		if f, err := keyport.ParseFault([]byte(in)); !errors.Is(err, keyport.ErrInvalid) {
			t.Errorf("%s: %+v %v, want ErrInvalid", in, f, err)
		}
	}
}

func FuzzParseFault(f *testing.F) {
	for _, s := range []string{`{"fault":"sw","command":3,"sw":"6A88"}`, `{"fault":"slow","delay_ms":200}`,
		`{"fault":"drift","drift":5}`, `{"fault":"drop","command":2}`, `{"fault":"offline"}`, `{"fault":"lost"}`, `{"fault":"none"}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		fault, err := keyport.ParseFault(b)
		if err != nil {
			if !errors.Is(err, keyport.ErrInvalid) {
				t.Fatalf("%q: error %v is not ErrInvalid", b, err)
			}
			return
		}
		// A parsed fault is within bounds and says so in words.
		if fault.Command < 0 || fault.Command > keyport.MaxFaultCommand || fault.Delay < 0 || fault.Delay > keyport.MaxFaultDelay ||
			fault.Drift < 0 || fault.Drift > keyport.MaxFaultDrift || fault.String() == "" {
			t.Fatalf("%q: %+v", b, fault)
		}
		out, err := json.Marshal(fault)
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]any
		json.Unmarshal(out, &m)
		delete(m, "description")
		again, _ := json.Marshal(m)
		if back, err := keyport.ParseFault(again); err != nil || back != fault {
			t.Fatalf("%q: %+v does not read back from %s: %+v %v", b, fault, again, back, err)
		}
	})
}

// TestSandboxListsItsNewest200JobsNotItsOldest: with more jobs than the
// list shows, a provider's sandbox list (the page's and the API's) holds
// its newest 200, oldest first, and an admin's the newest 200 of all; it
// used to be the oldest 200, so a busy provider never saw its new jobs.
func TestSandboxListsItsNewest200JobsNotItsOldest(t *testing.T) {
	ctx := context.Background()
	w := fixture.New(t, storetest.Open(t, storetest.SQLitePath(t)), 1, 1)
	a, _, _ := w.Provider(t, "Bank A", fixture.RSAKeys()[0])
	b, _, _ := w.Provider(t, "Bank B", fixture.RSAKeys()[0])
	m, err := w.Store.GetModule(ctx, fixture.EID(t, 0))
	if err != nil {
		t.Fatal(err)
	}
	add := func(p keyport.Principal, ref string) {
		t.Helper()
		j := &keyport.Job{Ref: ref, Kind: keyport.JobSecondKey, DomainID: m.Domains[0].ID, ModuleID: m.ID, ProviderID: p.ProviderID,
			State: keyport.JobDone, NextRunAt: time.Now(), SecondKey: &keyport.SecondKeyPayload{EID: m.EID, AID: m.Domains[0].AID, APDUs: []string{"84820000"}}}
		if err := w.Store.CreateJob(ctx, j); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 205 {
		add(a, fmt.Sprintf("job_a%03d", i))
	}
	for i := range 3 { // the newest jobs of all are another provider's
		add(b, fmt.Sprintf("job_b%03d", i))
	}
	sb := &keyport.Sandbox{Prod: w.Svc, Box: w.Svc}
	for _, c := range []struct {
		who         string
		p           keyport.Principal
		first, last string
	}{{"provider", a, "job_a005", "job_a204"}, {"admin", fixture.Admin, "job_a008", "job_b002"}} {
		jobs, err := sb.ListJobs(ctx, c.p)
		if err != nil {
			t.Fatal(err)
		}
		if len(jobs) != 200 || jobs[0].Ref != c.first || jobs[199].Ref != c.last {
			t.Fatalf("%s: %d jobs, %s … %s, want 200, %s … %s", c.who, len(jobs), jobs[0].Ref, jobs[len(jobs)-1].Ref, c.first, c.last)
		}
		for i := 1; i < len(jobs); i++ {
			if jobs[i].ID <= jobs[i-1].ID {
				t.Fatalf("%s: job %d (%s) is not newer than the one before it (%s)", c.who, i, jobs[i].Ref, jobs[i-1].Ref)
			}
			if c.p.ProviderID != "" && jobs[i].ProviderID != c.p.ProviderID {
				t.Fatalf("%s: lists %s, another provider's job", c.who, jobs[i].Ref)
			}
		}
	}
}
