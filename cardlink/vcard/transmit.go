package vcard

import (
	"context"

	"github.com/keyport/keyport/gp"
)

var _ gp.Channel = (*Card)(nil)

// Transmit sends one C-APDU to the module in this process and returns its
// R-APDU: a Card is a gp.Channel without PC/SC, so the personalization
// station and the handset agent can talk to it directly (keyport demo). It
// answers as Process does; a cancelled ctx sends nothing.
func (c *Card) Transmit(ctx context.Context, apdu []byte) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return c.Process(apdu), nil
}
