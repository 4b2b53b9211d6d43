#!/usr/bin/env bash
# Makes a Debian bookworm base image from the package mirror, for hosts that reach
# no container registry (the Dockerfile's bases are build arguments; with a registry,
# build from the official debian:bookworm-slim and rust images instead).
#
#   deploy/base-image.sh [TAG]          # default TAG: bulwark-base:bookworm
#   docker build -f deploy/Dockerfile --build-arg RUNTIME_IMAGE=bulwark-base:bookworm ...
#
# debootstrap's minimal variant with the two packages the runtime needs (the CA
# store; libstdc++ for RocksDB), trimmed as Debian's -slim images are: no package
# lists or caches, no manuals, no translations, documentation but its copyright
# files. Needs root and debootstrap (apt-get install debootstrap). An image already
# present under TAG is kept: remove it to make it again.
set -euo pipefail

TAG="${1:-bulwark-base:bookworm}"
SUITE="${SUITE:-bookworm}"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"

if docker image inspect "$TAG" >/dev/null 2>&1; then
  echo "base-image: $TAG exists, kept"
  exit 0
fi
if ! command -v debootstrap >/dev/null; then
  echo "base-image: debootstrap is missing (apt-get install -y debootstrap)" >&2
  exit 1
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
root="$work/rootfs"

debootstrap --variant=minbase --include=ca-certificates,libstdc++6 \
  "$SUITE" "$root" "$MIRROR" >"$work/debootstrap.log" 2>&1 || {
  tail -20 "$work/debootstrap.log" >&2
  exit 1
}

rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/var/cache/debconf/*-old \
       "$root"/var/log/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
       "$root"/usr/share/locale/* "$root"/usr/share/lintian "$root"/tmp/*
find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
# Like the official images: apt keeps no downloaded packages and fetches no translations.
printf 'Dir::Cache::pkgcache "";\nDir::Cache::srcpkgcache "";\n' >"$root/etc/apt/apt.conf.d/docker-clean"
printf 'Acquire::Languages "none";\n' >"$root/etc/apt/apt.conf.d/docker-no-languages"
: >"$root/etc/hostname"
: >"$root/etc/resolv.conf"

tar --numeric-owner -C "$root" -c . \
  | docker import --change 'CMD ["/bin/bash"]' \
      --message "debootstrap --variant=minbase $SUITE from $MIRROR" - "$TAG" >/dev/null
echo "base-image: $TAG made ($(docker image inspect -f '{{.Size}}' "$TAG" | awk '{printf "%.0f MB", $1/1e6}'))"
