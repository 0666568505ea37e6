#!/usr/bin/env bash
# Installs the Debian packages named on the command line (each provides a command of the same
# name) when they are missing and this machine lets us (root + apt-get). Usage:
#   tools/system-deps.sh chromium [dcm2niix ...]
# Never fails the build by itself: tests that need a missing component skip with a reason,
# or fail under CI=true.
set -u
need=()
for pkg in "$@"; do
  command -v "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "system-deps: cannot install ${need[*]} (not root or no apt-get); tests that need them will skip." >&2
  exit 0
fi
echo "system-deps: installing ${need[*]} from Debian packages"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null 2>&1 || true
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null 2>&1 \
  || echo "system-deps: apt-get install ${need[*]} failed; tests that need them will skip (fail under CI)." >&2
exit 0
