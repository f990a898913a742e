package main

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"

	"github.com/keyport/keyport"
)

func domainAPIPath(eid keyport.EID, aid keyport.AID) string {
	return "/domains/" + url.PathEscape(string(eid)) + "/" + url.PathEscape(string(aid))
}

// counter reads the domain's SCP03 sequence counter as keyport reports it.
func (pc *portalClient) counter(ctx context.Context, eid keyport.EID, aid keyport.AID) (int, error) {
	var d struct {
		SequenceCounter *int `json:"sequence_counter"`
	}
	if err := pc.call(ctx, http.MethodGet, domainAPIPath(eid, aid), nil, &d, http.StatusOK); err != nil {
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
	if err := pc.call(ctx, http.MethodPost, domainAPIPath(eid, aid)+"/scripts", json.RawMessage(script), &j, http.StatusCreated); err != nil {
		return nil, err
	}
	if j.ID == "" {
		return nil, errors.New("the answer to the script names no job")
	}
	return &j, nil
}
