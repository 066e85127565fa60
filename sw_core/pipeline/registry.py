"""The models registry: model name -> where its chunk set lives.

Two sources: the Redis hash ``Keys.models`` (``sw register NAME LOCATION``) and the setting
``models`` (``SW_MODELS="minilm=s3://bucket/minilm,smol=/srv/chunks/smol"``). A name
registered in Redis wins over the same name in the settings.
"""

from __future__ import annotations

import re
from pathlib import Path

from redis.asyncio import Redis

from sw_core.chunks.pin import PIN_MARK, split_pin
from sw_core.exceptions import ConfigError, ModelError
from sw_core.keys import Keys
from sw_core.settings import Settings

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/@+-]{0,127}")
_S3_RE = re.compile(r"s3://(?P<bucket>[a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(?:/(?P<prefix>.*))?")


def check_location(location: str, *, must_exist: bool = False) -> str:
    """Normalize a chunk-set location: ``s3://BUCKET[/PREFIX]`` or a folder (made absolute),
    keeping a manifest pin ``#sha256=<hex>`` (:mod:`sw_core.chunks.pin`) when it has one.

    Raises:
        ConfigError: not an S3 URL nor a folder path (or a missing folder with ``must_exist``),
            or a malformed pin.
    """
    location, pin = split_pin(location)
    suffix = f"{PIN_MARK}{pin}" if pin else ""
    if location.startswith("s3://"):
        match = _S3_RE.fullmatch(location)
        if not match:
            raise ConfigError(f"{location!r} is not a valid s3://BUCKET/PREFIX location")
        return location.rstrip("/") + suffix
    if not location or "://" in location:
        raise ConfigError(f"{location!r} is neither s3://BUCKET/PREFIX nor a folder path")
    path = Path(location).expanduser().resolve()
    if must_exist and not path.is_dir():
        raise ConfigError(f"folder {str(path)!r} does not exist")
    return str(path) + suffix


def parse_models_setting(text: str) -> dict[str, str]:
    """``"a=s3://b/a, c=/srv/c"`` -> ``{"a": "s3://b/a", "c": "/srv/c"}``.

    Raises:
        ConfigError: an item is not ``name=location``.
    """
    out: dict[str, str] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, location = item.partition("=")
        name = name.strip()
        if not sep or not _NAME_RE.fullmatch(name):
            raise ConfigError(f"SW_MODELS item {item!r} is not name=location")
        out[name] = check_location(location)
    return out


class ModelRegistry:
    """Looks up and registers model locations."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.redis = redis
        self.keys = Keys(settings.key_prefix)
        self.configured = parse_models_setting(settings.models)

    async def resolve(self, name: str) -> str:
        """Location of model ``name``.

        Raises:
            ModelError: the model is not registered anywhere.
        """
        raw = await self.redis.hget(self.keys.models, name)
        if raw is not None:
            return raw.decode() if isinstance(raw, bytes) else str(raw)
        if name in self.configured:
            return self.configured[name]
        raise ModelError(
            f"model {name!r} is not registered: run `sw register {name} LOCATION` "
            "or add it to SW_MODELS"
        )

    async def register(self, name: str, location: str, *, must_exist: bool = False) -> str:
        """Register (or move) model ``name``; returns the normalized location."""
        if not _NAME_RE.fullmatch(name):
            raise ConfigError(f"model name {name!r} may hold letters, digits and '_.:/@+-' only")
        location = check_location(location, must_exist=must_exist)
        await self.redis.hset(self.keys.models, name, location)
        return location

    async def all(self) -> dict[str, str]:
        """Every model name -> location (settings first, Redis on top)."""
        out = dict(self.configured)
        for name, location in (await self.redis.hgetall(self.keys.models)).items():
            key = name.decode() if isinstance(name, bytes) else str(name)
            out[key] = location.decode() if isinstance(location, bytes) else str(location)
        return dict(sorted(out.items()))
