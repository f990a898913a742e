#!/usr/bin/env bash
# The Debian packages keyport needs, in one place, and their installation.
#
#   install-deps.sh [--build | --runtime | --run | --all] [--list]
#
#   --build    what `go build ./cmd/keyport` needs (cgo: C compiler, PC/SC and OpenSSL headers)
#   --runtime  what the built binary needs to run `keyport serve` (shared libraries, SoftHSM)
#   --run      --build and --runtime: what `make run` needs
#   --all      --run and what the tests need (the default; `make test`)
#   --list     print the set's packages, one a line, and install nothing
#
# scripts/check-deps.sh (run by `make test`) derives what the binary needs from
# the code and fails when the --build or --runtime list does not cover it.
# The Dockerfile installs --build in its build stage and --runtime in its image.
#
# As root it installs what is missing with apt-get; otherwise it prints the
# exact apt-get line to run and fails.
set -euo pipefail

# cgo (github.com/ebfe/scard, github.com/miekg/pkcs11, cardlink/tlspsk).
build=(gcc libc6-dev pkg-config libpcsclite-dev libssl-dev)
# libpcsclite.so.1 and libssl.so.3/libcrypto.so.3 are linked; serve execs
# softhsm2-util and dlopens libsofthsm2.so for its default token; webhooks and
# SMTP over TLS verify against the system roots.
runtime=(libpcsclite1 libssl3 softhsm2 ca-certificates)
# Tests: pkcs11-tool and openssl as independent checks, pcscd + vpcd and the
# PC/SC tools, PostgreSQL, Chromium, unshare/setsid from util-linux, Net::SMPP
# (the SMSC the cardlink/smpp tests talk to).
tests=(opensc openssl pcscd vsmartcard-vpcd pcsc-tools postgresql chromium util-linux libnet-smpp-perl)

set_name=all list=0
for a in "$@"; do
	case "$a" in
	--build | --runtime | --run | --all) set_name=${a#--} ;;
	--list) list=1 ;;
	*)
		echo "usage: $0 [--build | --runtime | --run | --all] [--list]" >&2
		exit 2
		;;
	esac
done
case "$set_name" in
build) pkgs=("${build[@]}") ;;
runtime) pkgs=("${runtime[@]}") ;;
run) pkgs=("${build[@]}" "${runtime[@]}") ;;
all) pkgs=("${build[@]}" "${runtime[@]}" "${tests[@]}") ;;
esac
if [ "$list" = 1 ]; then
	printf '%s\n' "${pkgs[@]}"
	exit 0
fi

missing=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
line="apt-get update && apt-get install -y --no-install-recommends ${missing[*]}"
if [ "$(id -u)" -ne 0 ]; then
	echo "keyport needs these Debian packages: ${missing[*]}" >&2
	echo "run as root:  $line" >&2
	exit 1
fi
echo "installing: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
