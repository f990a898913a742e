#!/usr/bin/env bash
# Fails when a Debian package that `go build ./cmd/keyport` or `keyport serve`
# needs is not installed by `make run` (the --build and --runtime lists of
# scripts/install-deps.sh). What is needed is derived from the code, not listed
# by hand:
#   build    the C compiler and the libraries cgo links (-l flags, libc.so),
#            pkg-config and the .pc file of every cgo pkg-config module;
#   runtime  every shared library `ldd` shows in the built binary, the programs
#            the binary's own packages exec (exec.Command and exec.LookPath
#            with a literal name), the absolute *.so paths they name (the
#            PKCS#11 module they dlopen), and the system root certificates when
#            crypto/x509 is linked.
# Each file is mapped to its package with dpkg-query -S. A package counts as
# installed when the list names it or a package of the list depends on it, or
# when it is part of the Debian base (Essential or Priority: required, and what
# those depend on). Runtime needs must be covered by the --runtime list alone,
# since the Dockerfile's image installs only that list.
set -euo pipefail
cd "$(dirname "$0")/.."
GO=${GO:-go}
export PATH="$PATH:/usr/sbin:/sbin"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

list_build=$(./scripts/install-deps.sh --build --list)
list_runtime=$(./scripts/install-deps.sh --runtime --list)

# closure PKG... prints the packages and everything they depend on.
closure() {
	printf '%s\n' "$@"
	apt-cache depends --recurse --important --installed "$@" 2>/dev/null | grep -v '^ ' | grep -v '^<' || true
}
base=$(dpkg-query -W -f='${Package}\t${Essential}\t${Priority}\n' |
	awk -F'\t' '$2 == "yes" || $3 == "required" { print $1 }')
# shellcheck disable=SC2086 # word lists of package names
{
	closure $base >"$tmp/base"
	{ cat "$tmp/base"; closure $list_runtime; } | sort -u >"$tmp/covered.runtime"
	{ cat "$tmp/base"; closure $list_build $list_runtime; } | sort -u >"$tmp/covered.build"
}

# owner FILE prints the package that installed FILE (trying the /usr-merged
# and symlink-resolved spellings), or nothing.
owner() {
	local c d out
	for c in "$1" "$(realpath -s -- "$1")" "$(realpath -- "$1" 2>/dev/null || true)"; do
		for d in "$c" "${c#/usr}" "/usr$c"; do
			[ -n "$d" ] || continue
			out=$(dpkg-query -S -- "$d" 2>/dev/null | grep -v '^diversion' |
				awk -F': ' -v p="$d" '$2 == p { sub(/,.*/, "", $1); sub(/:.*/, "", $1); print $1; exit }') || true
			if [ -n "$out" ]; then
				echo "$out"
				return
			fi
		done
	done
}

: >"$tmp/needs"  # scope<TAB>package<TAB>why
: >"$tmp/errors" # needs whose package cannot be found
need() { # need SCOPE FILE WHY
	local p f
	f=$(realpath -s -- "$2")
	p=$(owner "$f")
	if [ -z "$p" ]; then
		echo "$3: $f belongs to no installed Debian package" >>"$tmp/errors"
		return
	fi
	printf '%s\t%s\t%s\n' "$1" "$p" "$3 ($f)" >>"$tmp/needs"
}

# --- build: cgo ---
deps=$($GO list -deps -f '{{.ImportPath}}' ./cmd/keyport)
cgo_pkgs=$($GO list -deps -f '{{if .CgoFiles}}{{.ImportPath}}{{end}}' ./cmd/keyport)
if [ -n "$cgo_pkgs" ]; then
	cc=$($GO env CC)
	cc=${cc%% *}
	if ccpath=$(command -v "$cc"); then
		need build "$ccpath" "cgo's C compiler"
		libc=$("$ccpath" -print-file-name=libc.so)
		[ "$libc" != libc.so ] && need build "$libc" "cgo links the C library"
		for l in $($GO list -deps -f '{{join .CgoLDFLAGS "\n"}}' ./cmd/keyport | grep '^-l' | sort -u); do
			f=$("$ccpath" -print-file-name="lib${l#-l}.so")
			[ "$f" = "lib${l#-l}.so" ] && f=$("$ccpath" -print-file-name="lib${l#-l}.a")
			if [ "${f#/}" = "$f" ]; then
				echo "cgo links $l: no lib${l#-l}.so or .a found by $cc" >>"$tmp/errors"
			else
				need build "$f" "cgo links $l"
			fi
		done
	else
		echo "cgo ($(echo $cgo_pkgs | tr ' ' ,)) needs the C compiler '$cc': not found" >>"$tmp/errors"
	fi
fi
modules=$($GO list -deps -f '{{join .CgoPkgConfig "\n"}}' ./cmd/keyport | grep -v '^-' | sort -u || true)
if [ -n "$modules" ]; then
	pc=$($GO env PKG_CONFIG)
	pc=${pc:-pkg-config}
	if pcpath=$(command -v "$pc"); then
		need build "$pcpath" "cgo runs $pc"
		for m in $modules; do
			if dir=$("$pcpath" --variable=pcfiledir "$m" 2>/dev/null) && [ -f "$dir/$m.pc" ]; then
				need build "$dir/$m.pc" "cgo pkg-config module $m"
			else
				echo "cgo pkg-config module $m: no $m.pc found (install the -dev package that has it)" >>"$tmp/errors"
			fi
		done
	else
		echo "cgo pkg-config modules ($(echo $modules)) need '$pc': not found" >>"$tmp/errors"
	fi
fi

# --- runtime: linked libraries ---
$GO build -o "$tmp/keyport" ./cmd/keyport
if ldd "$tmp/keyport" >"$tmp/ldd" 2>&1; then
	while read -r name arrow path _; do
		if [ "$arrow" = "=>" ]; then
			if [ "$path" = "not" ]; then
				echo "the binary links $name: not found on this machine" >>"$tmp/errors"
			else
				need runtime "$path" "the binary links $name"
			fi
		elif [ "${name#/}" != "$name" ]; then
			need runtime "$name" "the binary's dynamic loader"
		fi
	done <"$tmp/ldd"
fi

# --- runtime: what the binary's own packages exec and dlopen ---
$GO list -deps -f '{{with .Module}}{{if .Main}}{{range $.GoFiles}}{{$.Dir}}/{{.}}{{"\n"}}{{end}}{{range $.CgoFiles}}{{$.Dir}}/{{.}}{{"\n"}}{{end}}{{end}}{{end}}' ./cmd/keyport |
	grep . >"$tmp/sources"
while IFS=: read -r file line text; do
	prog=$(sed -nE 's/.*exec\.(Command|LookPath)\("([^"]+)".*/\2/p; s/.*exec\.CommandContext\([^,]+, *"([^"]+)".*/\1/p' <<<"$text")
	if [[ "$text" == *"deps: optional"* ]]; then
		# A tool only some deployments use (named in the comment), which the
		# code looks up on PATH and explains when it is missing.
		echo "  optional   ${file#"$PWD"/}:$line: ${text##*deps: optional}"
	elif [ -z "$prog" ]; then
		echo "${file#"$PWD"/}:$line runs a program whose name is not a literal; cannot tell its package" >>"$tmp/errors"
	elif path=$(command -v "$prog"); then
		need runtime "$path" "${file#"$PWD"/}:$line runs $prog"
	else
		echo "${file#"$PWD"/}:$line runs $prog: not found on this machine" >>"$tmp/errors"
	fi
done < <(xargs grep -nHE 'exec\.(Command|CommandContext|LookPath)\(|os\.StartProcess\(|syscall\.Exec\(' <"$tmp/sources" || true)
sopaths=$(xargs grep -ohE '"/[^" ]+\.so(\.[0-9]+)*"' <"$tmp/sources" | tr -d '"' | sort -u || true)
if [ -n "$sopaths" ]; then
	found=0
	for f in $sopaths; do
		if [ -e "$f" ]; then
			found=1
			need runtime "$f" "a module path in the code (dlopen)"
		fi
	done
	[ "$found" = 1 ] || echo "none of the module paths in the code exists: $(echo $sopaths)" >>"$tmp/errors"
fi
if grep -qx 'crypto/x509' <<<"$deps"; then
	# crypto/x509 reads the system roots that update-ca-certificates writes.
	need runtime /usr/share/ca-certificates "crypto/x509's system roots (webhooks, SMTP over TLS)"
fi

# --- verdict ---
missing=0
while IFS=$'\t' read -r scope pkg why; do
	if grep -qxF "$pkg" "$tmp/covered.$scope"; then
		printf '  ok       %-18s %s\n' "$pkg" "$why"
	else
		printf '  MISSING  %-18s %s\n' "$pkg" "$why"
		if [ "$scope" = build ]; then
			echo "missing $pkg, needed to build: $why. \`make run\` does not install it: add it to build=(...) in scripts/install-deps.sh" >>"$tmp/missing"
		else
			echo "missing $pkg, needed to run: $why. The --runtime list (\`make run\`, the Docker image) does not install it: add it to runtime=(...) in scripts/install-deps.sh" >>"$tmp/missing"
		fi
		missing=1
	fi
done < <(sort -u "$tmp/needs")
if [ -s "$tmp/errors" ]; then
	sed 's/^/check-deps: /' "$tmp/errors" >&2
	missing=1
fi
if [ -s "$tmp/missing" ]; then
	sort -u "$tmp/missing" | sed 's/^/check-deps: /' >&2
fi
[ "$missing" = 0 ] && echo "check-deps: everything go build ./cmd/keyport and keyport serve need is in the --build/--runtime lists"
exit "$missing"
