// Package assets holds the portal's static files (CSS, JavaScript), embedded
// into the binary. Pages work without the JavaScript; it only adds checks as
// you type and an upload progress bar. No script is inline, so the
// Content-Security-Policy can forbid inline script.
package assets

import "embed"

// FS holds every static file, served under /assets/.
//
//go:embed *.css *.js *.svg
var FS embed.FS
