"""The models registry: model name -> where its chunk set lives.

Two sources: the Redis hash ``Keys.models`` (``sw register NAME LOCATION``) and the setting
``models`` (``SW_MODELS="minilm=s3://bucket/minilm,smol=/srv/chunks/smol"``). A name
registered in Redis wins over the same name in the settings.
"""

from __future__ import annotations

from redis.asyncio import Redis

from sw_core.exceptions import ConfigError, ModelError
from sw_core.keys import Keys
from sw_core.pipeline.job_checks import MODEL_NAME_RE
from sw_core.settings import Settings
from sw_core.storage.location import check_location


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
        if not sep or not MODEL_NAME_RE.fullmatch(name):
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
        if not MODEL_NAME_RE.fullmatch(name):
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
