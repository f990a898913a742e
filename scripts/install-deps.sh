#!/usr/bin/env bash
# Installs the Debian packages keyport and its tests need, if any is missing.
# As root it runs apt-get itself; otherwise it prints the exact line to run.
set -euo pipefail
pkgs=(softhsm2 opensc openssl libssl-dev pkg-config pcscd libpcsclite-dev vsmartcard-vpcd pcsc-tools postgresql chromium util-linux)
[ "${1:-}" = "--runtime" ] && pkgs=(softhsm2 opensc openssl)
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
