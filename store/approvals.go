package store

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"gorm.io/gorm"

	"github.com/keyport/keyport"
)

type approvalRow struct {
	ID          string     `gorm:"column:id;primaryKey"`
	Action      string     `gorm:"column:action"`
	Target      string     `gorm:"column:target"`
	Params      string     `gorm:"column:params"`
	Reason      string     `gorm:"column:reason"`
	RequestedBy string     `gorm:"column:requested_by"`
	Approvers   string     `gorm:"column:approvers"`
	Required    int        `gorm:"column:required"`
	State       string     `gorm:"column:state"`
	Error       string     `gorm:"column:error"`
	CreatedAt   time.Time  `gorm:"column:created_at"`
	ExpiresAt   time.Time  `gorm:"column:expires_at"`
	DoneAt      *time.Time `gorm:"column:done_at"`
	Version     int        `gorm:"column:version"`
}

func (approvalRow) TableName() string { return "approvals" }

func (a approvalRow) model() (*keyport.ApprovalRequest, error) {
	r := &keyport.ApprovalRequest{ID: a.ID, Action: keyport.ApprovalAction(a.Action), Target: a.Target, Reason: a.Reason,
		RequestedBy: a.RequestedBy, Required: a.Required, State: keyport.ApprovalState(a.State), Error: a.Error,
		CreatedAt: a.CreatedAt.UTC(), ExpiresAt: a.ExpiresAt.UTC(), DoneAt: utcPtr(a.DoneAt), Version: a.Version}
	if err := json.Unmarshal([]byte(a.Params), &r.Params); err != nil {
		return nil, fmt.Errorf("store: approval %s: params are not JSON", a.ID)
	}
	if err := json.Unmarshal([]byte(a.Approvers), &r.Approvers); err != nil {
		return nil, fmt.Errorf("store: approval %s: approvers are not JSON", a.ID)
	}
	return r, nil
}

func jsonText(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// CreateApproval inserts r.
func (r *repo) CreateApproval(ctx context.Context, a *keyport.ApprovalRequest) error {
	if a.Params == nil {
		a.Params = map[string]string{}
	}
	if a.Approvers == nil {
		a.Approvers = []string{}
	}
	row := approvalRow{ID: a.ID, Action: string(a.Action), Target: a.Target, Params: jsonText(a.Params), Reason: a.Reason,
		RequestedBy: a.RequestedBy, Approvers: jsonText(a.Approvers), Required: a.Required, State: string(a.State),
		Error: a.Error, CreatedAt: dbTime(a.CreatedAt), ExpiresAt: dbTime(a.ExpiresAt), DoneAt: dbTimePtr(a.DoneAt)}
	a.Version = 0
	return wrap("create approval", r.w.WithContext(ctx).Create(&row).Error)
}

// GetApproval returns request id.
func (r *repo) GetApproval(ctx context.Context, id string) (*keyport.ApprovalRequest, error) {
	var row approvalRow
	if err := r.r.WithContext(ctx).Where("id = ?", id).Take(&row).Error; err != nil {
		return nil, wrap("get approval", err)
	}
	return row.model()
}

// ListApprovals returns the newest limit requests.
func (r *repo) ListApprovals(ctx context.Context, limit int) ([]keyport.ApprovalRequest, error) {
	var rows []approvalRow
	if err := r.r.WithContext(ctx).Order("created_at DESC, id DESC").Limit(limit).Find(&rows).Error; err != nil {
		return nil, wrap("list approvals", err)
	}
	out := make([]keyport.ApprovalRequest, 0, len(rows))
	for _, row := range rows {
		m, err := row.model()
		if err != nil {
			return nil, err
		}
		out = append(out, *m)
	}
	return out, nil
}

// UpdateApproval writes a's mutable columns over version from.
func (r *repo) UpdateApproval(ctx context.Context, a *keyport.ApprovalRequest, from int) error {
	return r.writeTx(ctx, "update approval", func(db *gorm.DB) error {
		res := db.Table("approvals").Where("id = ? AND version = ?", a.ID, from).Updates(map[string]any{
			"approvers": jsonText(a.Approvers), "state": string(a.State), "error": a.Error,
			"done_at": dbTimePtr(a.DoneAt), "version": from + 1})
		if res.Error != nil {
			return wrap("update approval", res.Error)
		}
		if res.RowsAffected != 1 {
			return fmt.Errorf("store: approval %s changed meanwhile: %w", a.ID, keyport.ErrConflict)
		}
		a.Version = from + 1
		return nil
	})
}
