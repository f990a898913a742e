package store_test

import (
	"errors"
	"testing"
	"time"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/store"
	"github.com/keyport/keyport/store/storetest"
)

func TestApprovalsUpdateOnlyOverTheVersionTheyRead(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		now := time.Now().UTC().Truncate(time.Microsecond)
		r := &keyport.ApprovalRequest{ID: "apr_1", Action: keyport.ActionPSKExport, Target: "8904", Params: map[string]string{"k": "v"},
			RequestedBy: "admin:a", Required: 2, State: keyport.ApprovalPending, CreatedAt: now, ExpiresAt: now.Add(time.Hour)}
		if err := s.CreateApproval(ctx, r); err != nil {
			t.Fatal(err)
		}
		a, _ := s.GetApproval(ctx, "apr_1")
		b, _ := s.GetApproval(ctx, "apr_1")
		a.Approvers, a.State = []string{"admin:b"}, keyport.ApprovalApproved
		if err := s.UpdateApproval(ctx, a, 0); err != nil {
			t.Fatal(err)
		}
		b.Approvers = []string{"admin:c"}
		if err := s.UpdateApproval(ctx, b, 0); !errors.Is(err, keyport.ErrConflict) {
			t.Fatalf("an update over a stale version: %v, want ErrConflict", err)
		}
		got, err := s.GetApproval(ctx, "apr_1")
		if err != nil || got.Version != 1 || got.State != keyport.ApprovalApproved || len(got.Approvers) != 1 || got.Approvers[0] != "admin:b" ||
			got.Params["k"] != "v" || !got.ExpiresAt.Equal(now.Add(time.Hour)) {
			t.Fatalf("read back %+v, %v", got, err)
		}
		if _, err := s.GetApproval(ctx, "apr_nope"); !errors.Is(err, keyport.ErrNotFound) {
			t.Fatalf("unknown: %v", err)
		}
		if list, err := s.ListApprovals(ctx, 10); err != nil || len(list) != 1 {
			t.Fatalf("list %v %v", list, err)
		}
	})
}
