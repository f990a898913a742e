package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/keyport/keyport"
)

// portalClient is the provider's side of keyport's REST API, for `sp
// script --submit`: a base URL and an API token read from a file.
type portalClient struct {
	base  string
	token string
}

func newPortalClient(base, tokenFile string) (*portalClient, error) {
	u, err := url.Parse(base)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, exitError{2, fmt.Errorf("--submit %q: give the portal's URL, e.g. http://localhost:8080", base)}
	}
	if tokenFile == "" {
		return nil, exitError{2, errors.New("--submit needs --token-file: a file holding your API token")}
	}
	b, err := os.ReadFile(tokenFile)
	if err != nil {
		return nil, err
	}
	token := strings.TrimSpace(string(b))
	if token == "" || strings.ContainsAny(token, " \t\r\n") {
		return nil, fmt.Errorf("%s: the token file must hold one API token", tokenFile)
	}
	return &portalClient{base: strings.TrimSuffix(base, "/"), token: token}, nil
}

// call sends one request and decodes a 2xx JSON answer into out; other
// answers are errors that carry the problem's detail.
func (pc *portalClient) call(ctx context.Context, method, path string, body []byte, out any) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, pc.base+path, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+pc.token)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	rb, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode/100 != 2 {
		var p struct {
			Title  string `json:"title"`
			Detail string `json:"detail"`
		}
		json.Unmarshal(rb, &p)
		msg := strings.TrimSpace(p.Title + ": " + p.Detail)
		if p.Title == "" && p.Detail == "" {
			msg = resp.Status
		}
		return fmt.Errorf("%s %s: %d %s", method, path, resp.StatusCode, strings.Trim(msg, ": "))
	}
	if err := json.Unmarshal(rb, out); err != nil {
		return fmt.Errorf("%s %s: the answer is not JSON: %w", method, path, err)
	}
	return nil
}

func domainAPIPath(eid keyport.EID, aid keyport.AID) string {
	return "/api/v1/domains/" + url.PathEscape(string(eid)) + "/" + url.PathEscape(string(aid))
}

// counter reads the domain's SCP03 sequence counter as keyport reports it.
func (pc *portalClient) counter(ctx context.Context, eid keyport.EID, aid keyport.AID) (int, error) {
	var d struct {
		SequenceCounter *int `json:"sequence_counter"`
	}
	if err := pc.call(ctx, http.MethodGet, domainAPIPath(eid, aid), nil, &d); err != nil {
		return 0, err
	}
	if d.SequenceCounter == nil {
		return 0, errors.New("the domain's answer has no sequence_counter")
	}
	return *d.SequenceCounter, nil
}

// submit posts the script and returns the job keyport queued.
func (pc *portalClient) submit(ctx context.Context, eid keyport.EID, aid keyport.AID, script []byte) (*keyport.JobView, error) {
	var j keyport.JobView
	if err := pc.call(ctx, http.MethodPost, domainAPIPath(eid, aid)+"/scripts", script, &j); err != nil {
		return nil, err
	}
	if j.ID == "" {
		return nil, errors.New("the answer to the script names no job")
	}
	return &j, nil
}
