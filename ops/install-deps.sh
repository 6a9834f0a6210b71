#!/usr/bin/env bash
# Install the Debian packages the stack needs, only those missing.
# Usage: ops/install-deps.sh haproxy [memcached postgresql ...]
set -euo pipefail
missing=()
for pkg in "$@"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
echo "installing Debian packages: ${missing[*]}"
# Debian starts a package's own service on install (memcached on :11211, a
# PostgreSQL cluster on :5432, Prometheus on :9090...). The stack runs its own
# instances, so keep the packaged services from starting during the install.
policy=/usr/sbin/policy-rc.d
own_policy=""
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
  $SUDO chmod +x "$policy"
  own_policy=1
fi
trap 'if [ -n "$own_policy" ]; then $SUDO rm -f "$policy"; fi' EXIT
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
