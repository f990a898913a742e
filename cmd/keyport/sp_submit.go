package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"github.com/keyport/keyport"
)

func domainAPIPath(eid keyport.EID, aid keyport.AID) string {
	return "/domains/" + url.PathEscape(string(eid)) + "/" + url.PathEscape(string(aid))
}

// errResync is what the provider is told while keyport re-reads the
// domain's counter (sequence_counter_state "resynchronizing").
var errResync = errors.New("keyport is re-reading the domain's sequence counter (an answer from the card was lost), so no script can be built on it now; nothing was submitted: retry after the module's next admin session, when the domain reports its counter again")

// resync turns keyport's 409 "resynchronizing" refusal into errResync.
func resync(err error) error {
	if err != nil && strings.Contains(err.Error(), ": 409 ") && strings.Contains(err.Error(), "resynchronizing") {
		return fmt.Errorf("%w (%v)", errResync, err)
	}
	return err
}

// counter reads the domain's SCP03 sequence counter as keyport reports it.
func (pc *portalClient) counter(ctx context.Context, eid keyport.EID, aid keyport.AID) (int, error) {
	var d struct {
		SequenceCounter *int   `json:"sequence_counter"`
		State           string `json:"sequence_counter_state"`
	}
	if err := pc.call(ctx, http.MethodGet, domainAPIPath(eid, aid), nil, &d, http.StatusOK); err != nil {
		return 0, err
	}
	if d.State == "resynchronizing" {
		return 0, errResync
	}
	if d.SequenceCounter == nil {
		return 0, errors.New("the domain's answer has no sequence_counter")
	}
	return *d.SequenceCounter, nil
}

// submit posts the script and returns the job keyport queued.
func (pc *portalClient) submit(ctx context.Context, eid keyport.EID, aid keyport.AID, script []byte) (*keyport.JobView, error) {
	var j keyport.JobView
	if err := pc.call(ctx, http.MethodPost, domainAPIPath(eid, aid)+"/scripts", json.RawMessage(script), &j, http.StatusCreated); err != nil {
		return nil, resync(err)
	}
	if j.ID == "" {
		return nil, errors.New("the answer to the script names no job")
	}
	return &j, nil
}
