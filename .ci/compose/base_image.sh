#!/usr/bin/env bash
# Print the tag of CI's base image, building it first unless this machine has it already:
# Debian bookworm from Debian's own packages (mmdebstrap), with Python 3.11 and its venv
# module (the project's image is built on it) and redis-server (the stack's two Redis
# services run it), imported with `docker import`. No image registry is needed.
# The tag is a digest of this file, so changing the package list builds a new one; older
# tags of the same repository are removed. Progress goes to stderr, the tag to stdout.
set -euo pipefail
cd "$(dirname "$0")"

REPO=sw-ci/debian-base
PACKAGES=python3,python3-venv,redis-server,ca-certificates,passwd
SUITE=bookworm
TAG="$REPO:$SUITE-$(sha256sum base_image.sh | cut -c1-12)"

if docker image inspect "$TAG" >/dev/null 2>&1; then
  echo "base image $TAG: cached" >&2
  echo "$TAG"
  exit 0
fi

# The host's Debian sources when it has them (a mirror or snapshot the machine is set up
# for), else deb.debian.org.
SOURCES=/etc/apt/sources.list.d/debian.sources
if [ ! -r "$SOURCES" ]; then
  SOURCES="deb http://deb.debian.org/debian $SUITE main"
fi
WORK="$(mktemp -d /var/tmp/sw-ci-base.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
start=$SECONDS
echo "base image $TAG: building with mmdebstrap ($PACKAGES) ..." >&2
mmdebstrap --quiet --variant=minbase --include="$PACKAGES" \
  --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' \
  --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  "$SUITE" "$WORK/rootfs.tar" "$SOURCES" >&2
docker import --change 'ENV LANG=C.UTF-8' --change 'CMD ["/bin/bash"]' \
  "$WORK/rootfs.tar" "$TAG" >/dev/null
for old in $(docker images --format '{{.Repository}}:{{.Tag}}' "$REPO"); do
  [ "$old" = "$TAG" ] || docker rmi "$old" >/dev/null
done
echo "base image $TAG: built in $((SECONDS - start)) s ($(docker image inspect -f '{{.Size}}' "$TAG" | awk '{printf "%d MB", $1/1e6}'))" >&2
echo "$TAG"
