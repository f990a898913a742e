package web

import (
	"fmt"
	"net/http"
	"sync"

	"github.com/labstack/echo/v4"

	"github.com/keyport/keyport"
)

// A spooled upload (a module import, a campaign's scripts) may take up to
// an hour and its size in the spool directory. Two rules follow: what
// authenticated it at the start is checked again before it is used
// (stillAuthenticated), and one caller sends only a few at once.

// uploadsPerCaller is how many campaign uploads one provider (or the
// issuer's admins together) may be sending at once.
const uploadsPerCaller = 2

// uploadSlots counts the uploads in flight per caller.
type uploadSlots struct {
	mu sync.Mutex
	n  map[string]int
}

// take reserves one of who's slots; release gives it back. ok is false
// when who has uploadsPerCaller in flight already.
func (u *uploadSlots) take(who string) (release func(), ok bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.n == nil {
		u.n = map[string]int{}
	}
	if u.n[who] >= uploadsPerCaller {
		return nil, false
	}
	u.n[who]++
	return func() {
		u.mu.Lock()
		defer u.mu.Unlock()
		if u.n[who]--; u.n[who] == 0 {
			delete(u.n, who)
		}
	}, true
}

// uploader is whose slots p's upload takes: its provider's, or the
// issuer's.
func uploader(p keyport.Principal) string {
	if p.ProviderID != "" {
		return "provider:" + p.ProviderID
	}
	return "issuer"
}

// errTooManyUploads answers an upload beyond uploadsPerCaller.
var errTooManyUploads = echo.NewHTTPError(http.StatusTooManyRequests,
	fmt.Sprintf("%d uploads of yours are still being received: send this one when one of them has finished", uploadsPerCaller))
