package main

import (
	"context"

	"github.com/keyport/keyport/cardlink/vcard"
)

// cmdVCard runs a virtual secure module attached to vpcd (issue: the card side).
func cmdVCard(ctx context.Context, args []string) error { return vcard.Main(ctx, args) }
