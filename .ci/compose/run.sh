#!/usr/bin/env bash
# CI's compose stage: docker-compose.yml built, started, used, broken and torn down for real
# (tests/compose/test_compose_stack.py) on a machine that reaches no image registry. Needs
# root (apt, dockerd) and the project's .venv (make setup). Steps:
#  1. Debian's docker.io (20.10), docker-compose (1.29) and mmdebstrap, unless present;
#  2. a Docker engine: dockerd is started here when none answers (and stopped at the end);
#  3. CI's base image from Debian's packages (.ci/compose/base_image.sh) and the wheelhouse
#     (.ci/compose/wheelhouse.sh), both cached on this machine between runs;
#  4. the wheelhouse served on loopback for `docker build --network host`;
#  5. the test, which builds the images, starts the stack and tears it down.
set -euo pipefail
cd "$(dirname "$0")/../.."
began=$SECONDS
PYTHON="${PYTHON:-.venv/bin/python}"
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

missing=""
for tool in docker dockerd docker-compose mmdebstrap; do
  command -v "$tool" >/dev/null 2>&1 || missing="$missing $tool"
done
dpkg -s python3-venv >/dev/null 2>&1 || missing="$missing python3-venv"
if [ -n "$missing" ]; then
  echo "compose: installing Debian's docker.io, docker-compose, mmdebstrap, python3-venv (missing:$missing)"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends \
    docker.io docker-compose mmdebstrap python3-venv >/dev/null
fi

DOCKERD_PID=""
SERVER_PID=""
cleanup() {
  status=$?
  if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; fi
  if [ -n "$DOCKERD_PID" ]; then
    $SUDO kill "$DOCKERD_PID" 2>/dev/null || true
    for _ in $(seq 30); do $SUDO kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 1; done
  fi
  echo "compose: stage $([ "$status" = 0 ] && echo passed || echo FAILED) in $((SECONDS - began)) s"
}
trap cleanup EXIT

if ! docker info >/dev/null 2>&1; then
  # no init system on CI's machines: the engine runs for this stage only
  $SUDO dockerd >/var/log/sw-ci-dockerd.log 2>&1 &
  DOCKERD_PID=$!
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  if ! docker info >/dev/null 2>&1; then
    tail -20 /var/log/sw-ci-dockerd.log >&2
    echo "compose: FAILED: dockerd did not start (log above)" >&2
    exit 1
  fi
fi
echo "compose: Docker engine $(docker version -f '{{.Server.Version}}'), $(docker info -f '{{.Driver}}, cgroup v{{.CgroupVersion}}'); $(docker-compose version --short 2>/dev/null | sed 's/^/docker-compose /')"

BASE_IMAGE="$(bash .ci/compose/base_image.sh)"
WHEELS="$(bash .ci/compose/wheelhouse.sh "$BASE_IMAGE")"
# A fixed port when it is free: the URL is part of every pip step's build argument, and a
# new one would miss the image's layer cache.
PORT="${SWCI_WHEELS_PORT:-47615}"
if ! "$PYTHON" -c "import socket; socket.create_server(('127.0.0.1', $PORT)).close()" 2>/dev/null; then
  PORT="$("$PYTHON" -c 'from sw_core.local.redis_server import free_port; print(free_port())')"
fi
"$PYTHON" -m http.server --bind 127.0.0.1 --directory "$WHEELS" "$PORT" >/dev/null 2>&1 &
SERVER_PID=$!
for _ in $(seq 50); do
  "$PYTHON" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$PORT/')" \
    2>/dev/null && break
  sleep 0.1
done

SWCI_COMPOSE_STACK=1 SWCI_BASE_IMAGE="$BASE_IMAGE" \
  SWCI_PIP_ARGS="--no-index --find-links http://127.0.0.1:$PORT/" \
  "$PYTHON" -m pytest -s -q -p no:cacheprovider tests/compose
