package keyport

import (
	"context"
	"errors"
)

// Result is how a use case ended, as Metrics counts it: one of a fixed set,
// so that a metric never carries anything a request chose.
type Result string

// Results.
const (
	ResultOK              Result = "ok"
	ResultReplayed        Result = "replayed"
	ResultInvalid         Result = "invalid"
	ResultNotFound        Result = "not_found"
	ResultConflict        Result = "conflict"
	ResultForbidden       Result = "forbidden"
	ResultUnauthenticated Result = "unauthenticated"
	ResultUnavailable     Result = "unavailable"
	ResultCanceled        Result = "canceled"
	ResultError           Result = "error"
)

// Results lists every Result, for exporters that want every series present
// from the start.
var Results = []Result{ResultOK, ResultReplayed, ResultInvalid, ResultNotFound, ResultConflict, ResultForbidden,
	ResultUnauthenticated, ResultUnavailable, ResultCanceled, ResultError}

// ResultOf classifies err: nil is ResultOK, the error kinds of errors.go
// their own, anything else ResultError.
func ResultOf(err error) Result {
	switch {
	case err == nil:
		return ResultOK
	case errors.Is(err, ErrInvalid):
		return ResultInvalid
	case errors.Is(err, ErrNotFound):
		return ResultNotFound
	case errors.Is(err, ErrConflict):
		return ResultConflict
	case errors.Is(err, ErrForbidden):
		return ResultForbidden
	case errors.Is(err, ErrUnauthenticated):
		return ResultUnauthenticated
	case errors.Is(err, ErrUnavailable):
		return ResultUnavailable
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return ResultCanceled
	}
	return ResultError
}

// noMetrics is Metrics when Service.Metrics is nil.
type noMetrics struct{}

func (noMetrics) Claimed(Result)          {}
func (noMetrics) KeyPackageServed(Result) {}
func (noMetrics) WebhookDelivered(Result) {}
func (noMetrics) ImportStarted()          {}
func (noMetrics) ImportLine()             {}
func (noMetrics) ImportEnded(Result, int) {}

func (s *Service) metrics() Metrics {
	if s.Metrics != nil {
		return s.Metrics
	}
	return noMetrics{}
}
