#!/usr/bin/env bash
# Builds the bulwark image from a binary compiled on this host (no Rust image, no
# registry needed), on the runtime base RUNTIME_IMAGE (default: the one
# deploy/base-image.sh makes):
#
#   deploy/image.sh target/release/bulwark [TAG]     # default TAG: bulwark:0.1.0
#
# The build context is a directory holding only the binary.
set -euo pipefail

BINARY_FILE="${1:?usage: deploy/image.sh BINARY [TAG]}"
TAG="${2:-bulwark:0.1.0}"
RUNTIME_IMAGE="${RUNTIME_IMAGE:-bulwark-base:bookworm}"
here="$(cd "$(dirname "$0")" && pwd)"

context="$(mktemp -d)"
trap 'rm -rf "$context"' EXIT
cp "$BINARY_FILE" "$context/bulwark"

# BuildKit builds only the stages the image needs. A Docker client without it (23
# and later without the buildx plugin) falls back to the classic builder, which
# builds every stage it reads: it gets the Dockerfile without the source stage, whose
# Rust base may not be reachable.
if docker buildx version >/dev/null 2>&1; then
  export DOCKER_BUILDKIT=1
  cp "$here/Dockerfile" "$context/Dockerfile"
else
  export DOCKER_BUILDKIT=0
  sed '/^# source stage: begin$/,/^# source stage: end$/d' "$here/Dockerfile" >"$context/Dockerfile"
fi
docker build --quiet -f "$context/Dockerfile" \
  --build-arg BINARY=prebuilt --build-arg RUNTIME_IMAGE="$RUNTIME_IMAGE" \
  -t "$TAG" "$context" >/dev/null
echo "image: $TAG built from $BINARY_FILE ($(docker image inspect -f '{{.Size}}' "$TAG" | awk '{printf "%.0f MB", $1/1e6}'))"
