#!/usr/bin/env bash
# Builds a small local Debian package repository (a "flat" repo: *.deb + Packages.gz)
# holding the given packages and everything they depend on, for tests whose sandboxes
# install packages: the sandboxes cannot reach a real mirror, so the test serves this
# directory from its simulated internet (docs/BUILD-HOSTS.md's network rule) and allows it
# through an approved egress rule. A sandbox uses it with
#   deb [trusted=yes] http://<server>:<port>/ ./
#
# Output: the directory's path on stdout. Cached under FLUID_MIRROR_CACHE (default
# /var/cache/fluid/mirror), keyed by this script and the package list.
#
# Usage: build-apt-mirror.sh [package …]   (default: nginx)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
packages=("$@")
[[ ${#packages[@]} -gt 0 ]] || packages=(nginx)
cache_root=${FLUID_MIRROR_CACHE:-/var/cache/fluid/mirror}
key=$( (cat "$here/build-apt-mirror.sh"; printf '%s\n' "${packages[@]}") | sha256sum | cut -c1-16)
out="$cache_root/$key"

if [[ -f "$out/Packages.gz" ]]; then
  echo "apt mirror cached: $out" >&2
  echo "$out"
  exit 0
fi

command -v dpkg-scanpackages >/dev/null || { echo "missing dpkg-scanpackages (dpkg-dev): run scripts/install-deps.sh" >&2; exit 1; }

work=$(mktemp -d "$cache_root.tmp.XXXXXX" 2>/dev/null || { mkdir -p "$cache_root"; mktemp -d "$cache_root.tmp.XXXXXX"; })
cleanup() { rm -rf "$work"; }
trap cleanup EXIT

# The whole dependency closure (no recommends): a fresh minbase guest may lack any of it.
mapfile -t closure < <(apt-cache depends --recurse --no-recommends --no-suggests \
  --no-conflicts --no-breaks --no-replaces --no-enhances "${packages[@]}" \
  | grep -E '^[a-z0-9]' | sort -u)
# Virtual packages have no candidate; keep what apt can download.
real=()
for p in "${closure[@]}"; do
  if [[ -n $(apt-cache policy "$p" 2>/dev/null | awk '/Candidate:/ {print $2}' | grep -v '(none)') ]]; then
    real+=("$p")
  fi
done
# Every version apt knows of the named packages, with the dependencies bound to their
# version (nginx needs nginx-common of its own version): a test installs an older one and checks
# that the playbook reproduces that version, not the newest.
versions=()
for p in "${packages[@]}"; do
  while read -r v; do
    versions+=("$p=$v")
    # A dependency bound to this very version ("nginx-common (>= 1.22.1-9)"): that one.
    while read -r dep dv; do [[ $dv == "$v" ]] && versions+=("$dep=$dv"); done < <(apt-cache show "$p=$v" 2>/dev/null \
      | sed -n 's/^Depends: //p' | tr ',' '\n' | sed -n 's/^ *\([a-z0-9.+-]*\) ([>=]* *\([^)]*\)).*/\1 \2/p' | sort -u)
  done < <(apt-cache madison "$p" | awk -F'|' '{gsub(/ /, "", $2); print $2}' | sort -u)
done
echo "apt mirror: downloading ${#real[@]} packages for ${packages[*]}, and ${#versions[@]} versions of them" >&2
(cd "$work" && apt-get download -q "${real[@]}" >/dev/null)
(cd "$work" && apt-get download -q "${versions[@]}" >/dev/null)
(cd "$work" && dpkg-scanpackages --multiversion . /dev/null 2>/dev/null > Packages && gzip -9 -k Packages)
chmod -R a+rX "$work"
mkdir -p "$cache_root"
rm -rf "$out"
mv "$work" "$out"
trap - EXIT
# Mirrors of older versions of this script or package lists are no longer used.
find "$cache_root" -mindepth 1 -maxdepth 1 ! -path "$out" -exec rm -rf {} +
echo "apt mirror built: $out ($(ls "$out"/*.deb | wc -l) packages, $(du -sh "$out" | cut -f1))" >&2
echo "$out"
