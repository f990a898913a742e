package web

import (
	"net/http"
	"strconv"
	"strings"

	"github.com/labstack/echo/v4"

	"github.com/keyport/keyport"
)

// jobRoutes registers card-link's REST API (DESIGN.md, "REST API"): a
// provider submits its second-key script and follows the job; the issuer
// lists jobs.
func (s *Server) jobRoutes(api, admin *echo.Group) {
	api.POST("/domains/:eid/:aid/scripts", s.postScript)
	api.GET("/jobs/:id", s.getJob)
	api.POST("/jobs/:id/cancel", s.cancelJob)
	admin.GET("/jobs", s.listJobs)
}

// postScript accepts {"apdus":[hex…],"expect":{"kvn":49,"kcv":{…}}}: a
// precomputed SCP03 script (keyport sp script) and the PUT KEY answer the
// provider expects. The portal never sees the provider's new keys.
func (s *Server) postScript(c echo.Context) error {
	eid, aid, err := pathDomain(c)
	if err != nil {
		return err
	}
	var req keyport.ScriptRequest
	if err := readJSON(c, &req); err != nil {
		return err
	}
	j, err := s.svc.SubmitScript(c.Request().Context(), principal(c), eid, aid, req)
	if err != nil {
		return err
	}
	c.Response().Header().Set("Location", "/api/v1/jobs/"+j.Ref)
	return c.JSON(http.StatusCreated, j.View())
}

// getJob returns the job's state and, once the module answered, its R-APDUs.
func (s *Server) getJob(c echo.Context) error {
	j, err := s.svc.GetJob(c.Request().Context(), principal(c), c.Param("id"))
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, j.View())
}

func (s *Server) cancelJob(c echo.Context) error {
	j, err := s.svc.CancelJob(c.Request().Context(), principal(c), c.Param("id"))
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, j.View())
}

// listJobs lists second-key jobs for the issuer: ?state=QUEUED,SENT
// &after=<row id> &limit=n (at most 500).
func (s *Server) listJobs(c echo.Context) error {
	f := keyport.JobFilter{Limit: 100}
	if v := c.QueryParam("state"); v != "" {
		for _, st := range strings.Split(v, ",") {
			js := keyport.JobState(strings.ToUpper(strings.TrimSpace(st)))
			switch js {
			case keyport.JobQueued, keyport.JobSent, keyport.JobDone, keyport.JobFailed, keyport.JobCancelled, keyport.JobExpired:
				f.States = append(f.States, js)
			default:
				return keyport.Invalid("state", "unknown job state %q", st)
			}
		}
	}
	if v := c.QueryParam("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 500 {
			return keyport.Invalid("limit", "a number from 1 to 500")
		}
		f.Limit = n
	}
	if v := c.QueryParam("after"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			return keyport.Invalid("after", "a job row number")
		}
		f.AfterID = n
	}
	jobs, err := s.svc.ListJobs(c.Request().Context(), principal(c), f)
	if err != nil {
		return err
	}
	type row struct {
		Row int64 `json:"row"`
		keyport.JobView
	}
	out := make([]row, len(jobs))
	for i := range jobs {
		out[i] = row{Row: jobs[i].ID, JobView: jobs[i].View()}
	}
	return c.JSON(http.StatusOK, map[string]any{"jobs": out})
}
