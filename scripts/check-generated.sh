#!/usr/bin/env bash
# Regenerates the templ views (as `make generate` does) and fails when that
# changed web/views/*_templ.go: the committed output was stale.
set -euo pipefail
cd "$(dirname "$0")/.."
GO=${GO:-go}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir "$tmp/before"
cp web/views/*_templ.go "$tmp/before/" 2>/dev/null || true
"$GO" tool templ generate -path web/views >"$tmp/log" 2>&1 || {
	cat "$tmp/log" >&2
	exit 1
}
mkdir "$tmp/after"
cp web/views/*_templ.go "$tmp/after/" 2>/dev/null || true
if ! diff -r "$tmp/before" "$tmp/after" >"$tmp/diff"; then
	sed -e "s|$tmp/before|web/views (before)|g" -e "s|$tmp/after|web/views (regenerated)|g" "$tmp/diff" | head -40 >&2
	echo "check-generated: web/views/*_templ.go did not match their .templ sources (now regenerated): run \`make generate\` and commit the result" >&2
	exit 1
fi
echo "check-generated: web/views/*_templ.go match their .templ sources"
