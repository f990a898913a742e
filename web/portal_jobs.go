package web

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/web/views"
)

// Card-link pages: a provider sends its second-key script from the domain
// page and follows the job live (server-sent events); the issuer lists jobs.
// They use the card-link use cases (SubmitScript, GetJob, CancelJob,
// ListJobs) exactly as the REST API does.

// maxScriptUpload bounds an uploaded script file.
const maxScriptUpload = 256 << 10

func (s *Server) submitScript(c echo.Context) error {
	ctx := c.Request().Context()
	p := principal(c)
	eid, aid, err := pathDomain(c)
	if err != nil {
		return err
	}
	text := c.FormValue("script")
	data := []byte(text)
	if fh, ferr := c.FormFile("file"); ferr == nil && fh.Size > 0 {
		f, err := fh.Open()
		if err != nil {
			return err
		}
		defer f.Close()
		if data, err = io.ReadAll(io.LimitReader(f, maxScriptUpload+1)); err != nil {
			return err
		}
	}
	var req keyport.ScriptRequest
	switch {
	case len(bytes.TrimSpace(data)) == 0:
		err = keyport.Invalid("script", "paste the script keyport sp script wrote, or choose its file")
	case len(data) > maxScriptUpload:
		err = keyport.Invalid("script", "the script is larger than %d KiB", maxScriptUpload>>10)
	default:
		dec := json.NewDecoder(bytes.NewReader(data))
		dec.DisallowUnknownFields()
		if derr := dec.Decode(&req); derr != nil {
			err = keyport.Invalid("script", "not the JSON keyport sp script writes: %s", keyport.DescribeJSONError(derr))
		}
	}
	if err == nil {
		var j *keyport.Job
		if j, err = s.svc.SubmitScript(ctx, p, eid, aid, req); err == nil {
			s.flash(c, "good", "Script queued: keyport wakes the module and sends it. This page follows the job.")
			return c.Redirect(http.StatusSeeOther, "/portal/jobs/"+j.Ref)
		}
	}
	e, ok := formErrors(err, map[string]string{"apdus": "script", "expect": "script"})
	if !ok {
		return err
	}
	if _, named := e["script"]; !named && e[""] == "" {
		for k, v := range e { // a field of the script: show it by the script box
			e = views.Errors{"script": k + ": " + v}
		}
	}
	d, derr := s.svc.GetDomain(ctx, p, eid, aid)
	if derr != nil {
		return derr
	}
	status := http.StatusUnprocessableEntity
	if errors.Is(err, keyport.ErrConflict) {
		status = http.StatusConflict
	}
	return render(c, status, views.DomainPage(s.meta(c, "Domain "+string(aid), "/portal"), d, text, e))
}

func (s *Server) jobPage(c echo.Context) error {
	j, err := s.svc.GetJob(c.Request().Context(), principal(c), c.Param("id"))
	if err != nil {
		return err
	}
	return render(c, http.StatusOK, views.JobPage(s.meta(c, "Job "+j.Ref, "/portal"), j.View()))
}

// sseInterval is how often the event stream looks at the job.
const sseInterval = 500 * time.Millisecond

// sseMaxAge ends a stream after a while; the browser reconnects by itself.
const sseMaxAge = 5 * time.Minute

// jobEvents streams the job's view as server-sent events ("job" events
// with the JobView JSON) whenever it changes, until it is final. After
// each look at the job it resolves the session again, and ends the stream
// once the session is no longer valid (signed out, expired, ended by a
// password change) or no longer acts as the same provider (suspended
// meanwhile): an open stream shows no more than a new request would.
func (s *Server) jobEvents(c echo.Context) error {
	ctx := c.Request().Context()
	p := principal(c)
	ref := c.Param("id")
	j, err := s.svc.GetJob(ctx, p, ref)
	if err != nil {
		return err
	}
	// The stream outlives the server's WriteTimeout; it ends by itself
	// after sseMaxAge.
	if err := http.NewResponseController(c.Response()).SetWriteDeadline(time.Now().Add(sseMaxAge + time.Minute)); err != nil &&
		!errors.Is(err, http.ErrNotSupported) {
		return err
	}
	w := c.Response()
	w.Header().Set(echo.HeaderContentType, "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	last := ""
	deadline := time.Now().Add(sseMaxAge)
	t := time.NewTicker(sseInterval)
	defer t.Stop()
	for {
		v := j.View()
		b, _ := json.Marshal(v)
		if string(b) != last {
			if _, err := fmt.Fprintf(w, "event: job\ndata: %s\n\n", b); err != nil {
				return nil
			}
			w.Flush()
			last = string(b)
		}
		if jobFinalState(v.State) || time.Now().After(deadline) {
			fmt.Fprint(w, "event: end\ndata: {}\n\n")
			w.Flush()
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		if j, err = s.svc.GetJob(ctx, p, ref); err != nil {
			fmt.Fprint(w, "event: end\ndata: {}\n\n")
			return nil
		}
		// After the read, so that nothing read after sign-out is sent.
		if stillAuthenticated(c) != nil {
			fmt.Fprint(w, "event: end\ndata: {}\n\n")
			return nil
		}
	}
}

func jobFinalState(st keyport.JobState) bool {
	switch st {
	case keyport.JobDone, keyport.JobFailed, keyport.JobCancelled, keyport.JobExpired:
		return true
	}
	return false
}

func (s *Server) cancelJobPage(back string) echo.HandlerFunc {
	return func(c echo.Context) error {
		j, err := s.svc.CancelJob(c.Request().Context(), principal(c), c.Param("id"))
		if errors.Is(err, keyport.ErrConflict) {
			s.flash(c, "bad", "Not cancelled: "+strings.TrimPrefix(conflictMessage(err), "Nothing was changed: "))
		} else if err != nil {
			return err
		} else {
			s.flash(c, "good", "Job "+j.Ref+" cancelled.")
		}
		if back == "" {
			return c.Redirect(http.StatusSeeOther, "/portal/jobs/"+c.Param("id"))
		}
		return c.Redirect(http.StatusSeeOther, back)
	}
}

// retryJobPage queues a failed issuer job again and goes back to the list.
func (s *Server) retryJobPage(c echo.Context) error {
	j, err := s.svc.RetryIssuerJob(c.Request().Context(), principal(c), c.Param("id"))
	switch {
	case errors.Is(err, keyport.ErrConflict) || errors.Is(err, keyport.ErrNotFound):
		s.flash(c, "bad", "Not retried: "+strings.TrimPrefix(conflictMessage(err), "Nothing was changed: "))
	case err != nil:
		return err
	default:
		s.flash(c, "good", "Queued again as job "+j.Ref+".")
	}
	return c.Redirect(http.StatusSeeOther, "/admin/jobs")
}

// adminJobsPage lists the newest 200 card jobs, newest first.
func (s *Server) adminJobsPage(c echo.Context) error {
	f := keyport.JobFilter{Limit: 200, Newest: true}
	state := strings.ToUpper(c.QueryParam("state"))
	if state != "" {
		f.States = []keyport.JobState{keyport.JobState(state)}
	}
	jobs, err := s.svc.ListJobs(c.Request().Context(), principal(c), f)
	if err != nil {
		return err
	}
	rows := make([]views.AdminJobRow, len(jobs))
	for i := range jobs {
		rows[len(jobs)-1-i] = views.AdminJobRow{Row: jobs[i].ID, View: jobs[i].View()} // newest first
	}
	return render(c, http.StatusOK, views.AdminJobsPage(s.meta(c, "Jobs", "/admin/jobs"), state, rows))
}
