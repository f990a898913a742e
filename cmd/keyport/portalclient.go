package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"
)

// portalClient is the provider's side of keyport's REST API (`sp script
// --submit`, `sp data --portal`): the portal's base URL and an API token,
// read from a file or KEYPORT_API_TOKEN.
type portalClient struct {
	base, token string
}

// newPortalClient checks the base URL and reads the token; flag names the
// option that gave the URL, for the error.
func newPortalClient(base, tokenFile, flag string) (*portalClient, error) {
	u, err := url.Parse(base)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, exitError{2, fmt.Errorf("%s %q: give the portal's URL, e.g. http://localhost:8080", flag, base)}
	}
	token := os.Getenv("KEYPORT_API_TOKEN")
	if tokenFile != "" {
		b, err := os.ReadFile(tokenFile)
		if err != nil {
			return nil, err
		}
		token = strings.TrimSpace(string(b))
		if token == "" || strings.ContainsAny(token, " \t\r\n") {
			return nil, fmt.Errorf("%s: the token file must hold one API token", tokenFile)
		}
	}
	if token == "" {
		return nil, exitError{2, fmt.Errorf("%s needs an API token: --token-file FILE or KEYPORT_API_TOKEN", flag)}
	}
	return &portalClient{base: strings.TrimSuffix(base, "/"), token: token}, nil
}

// call sends one request to /api/v1+path with body as JSON (a
// json.RawMessage goes as it is) and decodes the answer into out (if not
// nil). A status other than want is an error carrying the problem's title
// and detail.
func (pc *portalClient) call(ctx context.Context, method, path string, body, out any, want int) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, pc.base+"/api/v1"+path, rd)
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
	if resp.StatusCode != want {
		var p struct {
			Title  string `json:"title"`
			Detail string `json:"detail"`
		}
		_ = json.Unmarshal(rb, &p)
		msg := strings.Trim(strings.TrimSpace(p.Title+": "+p.Detail), ": ")
		if msg == "" {
			msg = resp.Status
		}
		return fmt.Errorf("%s %s: %d %s", method, path, resp.StatusCode, msg)
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(rb, out); err != nil {
		return fmt.Errorf("%s %s: the answer is not JSON: %w", method, path, err)
	}
	return nil
}
