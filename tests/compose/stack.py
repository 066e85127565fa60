"""docker-compose.yml with CI's override, driven from a test: build, up, health, kill, down.

:class:`Stack` runs ``docker compose`` (the v2 plugin when the client has it, else Debian's
``docker-compose`` 1.29) on ``docker-compose.yml`` and ``.ci/compose/docker-compose.ci.yml``
under a project name of its own, with free loopback ports and fresh random credentials.
Teardown removes every container, volume and network of the project and checks that none is
left, and that no image was left behind other than the ones kept as CI's cache.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sw_core.local.redis_server import free_port

REPO = Path(__file__).resolve().parents[2]
FILES = (REPO / "docker-compose.yml", REPO / ".ci" / "compose" / "docker-compose.ci.yml")
#: Images the stack builds and CI keeps as its cache (the override's tags).
CACHED_IMAGES = ("surfing-weights:ci", "sw-ci/moto:local")
#: Services that keep running and have a health check, in the order they come up.
LONG_RUNNING = (
    "redis", "redis-cache", "minio", "loader", "inference", "inference-2", "metrics", "gateway",
)  # fmt: skip
#: One-shot services that must have ended with status 0.
ONE_SHOTS = ("create-bucket", "publish-model")
#: Hostname of each worker service (the override's), the start of its consumer names.
HOSTNAMES = {"inference": "sw-inference-1", "inference-2": "sw-inference-2"}


def say(message: str) -> None:
    """One progress line of the stage, shown as it happens (pytest runs with ``-s``)."""
    print(f"compose: {message}", flush=True)


def docker(*args: str, timeout_s: float = 120, check: bool = True) -> str:
    """Run the docker client; its stdout."""
    done = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout_s, check=False
    )
    if check and done.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)} failed: {done.stderr.strip()[-2000:]}")
    return done.stdout


def compose_program() -> list[str]:
    """``docker compose`` when the client has the plugin, else ``docker-compose``."""
    plugin = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
    if plugin.returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    raise RuntimeError("neither `docker compose` nor `docker-compose` is installed")


@dataclass
class Stack:
    """One run of the stack: its project name, ports, credentials and environment."""

    project: str = field(default_factory=lambda: f"swci{secrets.token_hex(3)}")
    ports: dict[str, int] = field(default_factory=dict)
    # fresh for each run, and kept out of reprs (pytest prints fixtures of failed tests)
    api_key: str = field(default_factory=lambda: secrets.token_urlsafe(24), repr=False)
    s3_user: str = field(default_factory=lambda: f"ci{secrets.token_hex(6)}", repr=False)
    s3_password: str = field(default_factory=lambda: secrets.token_urlsafe(24), repr=False)

    #: Images :meth:`down` removed (left by a failed build).
    removed_images: int = 0

    def __post_init__(self) -> None:
        for name in ("redis", "cache", "s3", "gateway", "metrics"):
            self.ports.setdefault(name, free_port())
        for needed in ("SWCI_BASE_IMAGE", "SWCI_PIP_ARGS"):
            if not os.environ.get(needed):
                raise RuntimeError(f"{needed} is not set: run this test with .ci/compose/run.sh")
        self.program = compose_program()
        self.images_before = self._image_ids()

    # ------------------------------------------------------------------ settings
    @property
    def env(self) -> dict[str, str]:
        """The environment of every compose command (the override's variables)."""
        return {
            **os.environ,
            "SWCI_REDIS_PORT": str(self.ports["redis"]),
            "SWCI_CACHE_PORT": str(self.ports["cache"]),
            "SWCI_S3_PORT": str(self.ports["s3"]),
            "SWCI_GATEWAY_PORT": str(self.ports["gateway"]),
            "SWCI_METRICS_PORT": str(self.ports["metrics"]),
            "MINIO_ROOT_USER": self.s3_user,
            "MINIO_ROOT_PASSWORD": self.s3_password,
            "SW_API_KEYS": self.api_key,
        }

    def client_env(self) -> dict[str, str]:
        """``SW_*`` settings for a process on the host to use the stack (the ``sw`` CLI)."""
        return {
            **os.environ,
            "SW_REDIS_URL": self.redis_url,
            "SW_CACHE_REDIS_URL": f"redis://127.0.0.1:{self.ports['cache']}/0",
            "SW_S3_ENDPOINT": f"http://127.0.0.1:{self.ports['s3']}",
            "SW_S3_ACCESS_KEY": self.s3_user,
            "SW_S3_SECRET_KEY": self.s3_password,
            "SW_S3_BUCKET": "sw-chunks",
        }

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.ports['redis']}/0"

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['gateway']}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['metrics']}/metrics"

    # ------------------------------------------------------------------ compose
    def compose(self, *args: str, timeout_s: float = 300) -> subprocess.CompletedProcess[str]:
        """Run one compose command on the two files; raises with its output on failure."""
        argv = [*self.program, "-p", self.project]
        for path in FILES:
            argv += ["-f", str(path)]
        done = subprocess.run(
            [*argv, *args],
            cwd=REPO,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        if done.returncode != 0:
            output = (done.stdout + done.stderr).strip()
            raise RuntimeError(f"`compose {' '.join(args)}` failed:\n{output[-6000:]}")
        return done

    def build(self) -> None:
        """Build our image and the S3 stand-in's; the images they replace are removed."""
        old = {tag: self._image_id(tag) for tag in CACHED_IMAGES}
        # publish-model stands for every service of our image (one tag, one build)
        self.compose("build", "--force-rm", "publish-model", "minio", timeout_s=1800)
        for tag, image_id in old.items():
            if image_id and image_id != self._image_id(tag):
                docker("rmi", image_id, check=False)  # the previous run's, now untagged

    def up(self) -> None:
        """Start everything but the tools profile (compose waits on the one-shots)."""
        self.compose("up", "-d", timeout_s=900)

    def container(self, service: str) -> str:
        """The id of the service's container."""
        ids = self.compose("ps", "-q", service).stdout.split()
        if len(ids) != 1:
            raise RuntimeError(f"service {service}: {len(ids)} containers, wanted 1")
        return ids[0]

    def state(self, service: str) -> dict[str, object]:
        """``docker inspect``'s State of the service's container."""
        return json.loads(docker("inspect", "-f", "{{json .State}}", self.container(service)))

    def wait_healthy(
        self, services: Sequence[str], timeout_s: float, *, restarted: bool = False
    ) -> None:
        """Wait until every one of ``services`` reports healthy (its own health check);
        fails at once when one of them exits or (unless ``restarted``) restarts, with its
        logs."""
        deadline = time.monotonic() + timeout_s
        while True:
            waiting = {}
            for name in services:
                state = self.state(name)
                health = state.get("Health") or {}
                if not restarted and (
                    state.get("Status") in ("exited", "dead", "restarting")
                    or (state.get("Status") == "running" and self._restarts(name))
                ):
                    raise RuntimeError(
                        f"service {name} {state.get('Status')} (exit code "
                        f"{state.get('ExitCode')}) before it was healthy:\n"
                        f"{self.logs([name], tail=30)}"
                    )
                if health.get("Status") != "healthy":  # type: ignore[union-attr]
                    waiting[name] = health.get("Status", state.get("Status"))  # type: ignore[union-attr]
            if not waiting:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"not healthy after {timeout_s:.0f} s: {waiting}")
            time.sleep(1)

    def _restarts(self, service: str) -> int:
        return int(docker("inspect", "-f", "{{.RestartCount}}", self.container(service)))

    def exit_code(self, service: str) -> int:
        state = self.state(service)
        if state.get("Running"):
            raise RuntimeError(f"one-shot service {service} is still running")
        return int(state["ExitCode"])  # type: ignore[call-overload]

    def logs(self, services: Sequence[str] = (), tail: int = 40) -> str:
        """The last ``tail`` log lines of ``services`` (all when empty)."""
        try:
            return self.compose("logs", "--no-color", f"--tail={tail}", *services).stdout
        except Exception as exc:  # logs are best effort
            return f"(no logs: {exc})"

    def diagnosis(self) -> str:
        """Each service's state, last health-check output and last log lines."""
        out = []
        for service in (*LONG_RUNNING, *ONE_SHOTS):
            try:
                state = self.state(service)
            except Exception as exc:  # not created: say so and go on
                out.append(f"--- {service}: {exc}")
                continue
            checks = (state.get("Health") or {}).get("Log") or []  # type: ignore[union-attr]
            last = checks[-1]["Output"].strip()[-500:] if checks else "-"
            out.append(
                f"--- {service}: {state.get('Status')}, exit code {state.get('ExitCode')}, "
                f"health {(state.get('Health') or {}).get('Status', '-')}; last check: {last}"  # type: ignore[union-attr]
            )
            out.append(self.logs([service], tail=15).rstrip())
        return "\n".join(out)

    # ------------------------------------------------------------------ teardown
    def down(self) -> dict[str, list[str]]:
        """``compose down -v``; what is left of the project (containers, volumes, networks)
        and the images this run left that are not CI's cache."""
        self.compose("down", "-v", "--remove-orphans", "--timeout", "10", timeout_s=300)
        self.removed_images = self._remove_new_images()
        label = f"label=com.docker.compose.project={self.project}"
        left = {
            "containers": docker("ps", "-a", "-q", "--filter", label).split(),
            "volumes": docker("volume", "ls", "-q", "--filter", label).split(),
            "networks": docker("network", "ls", "-q", "--filter", label).split(),
        }
        left["images"] = sorted(self._image_ids() - self.images_before - self._cached_ids())
        return left

    def _remove_new_images(self) -> int:
        """Remove the images this run made that are not CI's cache: the layers a failed
        build leaves behind. Newest first, so each goes before the layer it is built on."""
        new = self._image_ids() - self.images_before - self._cached_ids()
        if not new:
            return 0
        created = {
            image_id: docker("image", "inspect", "-f", "{{.Created}}", image_id).strip()
            for image_id in new
        }
        for image_id in sorted(new, key=created.__getitem__, reverse=True):
            docker("rmi", image_id, check=False)
        return len(new)

    def _cached_ids(self) -> set[str]:
        """CI's cached images and the layers they are built from."""
        ids: set[str] = set()
        for tag in CACHED_IMAGES:
            if self._image_id(tag):
                ids |= set(docker("history", "-q", "--no-trunc", tag).split()) - {"<missing>"}
        return ids

    def _image_id(self, tag: str) -> str:
        return docker("images", "-q", "--no-trunc", tag).strip()

    def _image_ids(self) -> set[str]:
        """Every image on the engine, intermediate layers of builds included."""
        return set(docker("images", "-a", "-q", "--no-trunc").split())
