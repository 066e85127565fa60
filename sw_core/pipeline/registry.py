"""The models registry: model name -> where its chunk set lives.

Two sources: the Redis hash ``Keys.models`` (``sw register NAME LOCATION``) and the setting
``models`` (``SW_MODELS="minilm=s3://bucket/minilm,smol=/srv/chunks/smol"``). A name
registered in Redis wins over the same name in the settings.

Registering from a manifest also records the tasks the model can run (``Keys.model_tasks``,
see :func:`tasks_of`), so producers refuse a ``generate`` job for an encoder at submit time.
"""

from __future__ import annotations

import re

from redis.asyncio import Redis

from sw_core.exceptions import ConfigError, ModelError
from sw_core.keys import Keys
from sw_core.pipeline.job_checks import MODEL_NAME_RE
from sw_core.settings import Settings
from sw_core.storage.location import check_location

#: Model classes with a language-model head: they can generate.
_GENERATES_RE = re.compile(r".*(ForCausalLM|LMHeadModel|ForConditionalGeneration|ForSeq2SeqLM)")


def tasks_of(manifest: object) -> tuple[str, ...]:
    """The tasks a chunk set's model can run, from its manifest's ``model_class``."""
    if _GENERATES_RE.fullmatch(str(getattr(manifest, "model_class", ""))):
        return ("embed", "generate", "forward")
    return ("embed", "forward")


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
        # redis-py types the async client's hash replies as sync|async unions (redis-py #2399)
        raw = await self.redis.hget(self.keys.models, name)  # type: ignore[misc]
        if raw is not None:
            return raw.decode() if isinstance(raw, bytes) else str(raw)
        if name in self.configured:
            return self.configured[name]
        raise ModelError(
            f"model {name!r} is not registered: run `sw register {name} LOCATION` "
            "or add it to SW_MODELS"
        )

    async def register(
        self,
        name: str,
        location: str,
        *,
        must_exist: bool = False,
        tasks: tuple[str, ...] | None = None,
        synthetic: str | None = None,
    ) -> str:
        """Register (or move) model ``name``; returns the normalized location.

        ``tasks`` (see :func:`tasks_of`) lets producers refuse a task the model cannot run;
        without it, whatever was recorded for the name before is dropped. ``synthetic``
        (:meth:`Manifest.describe_synthetic`) marks a chunk set of random weights, so the
        gateway's model list says so; without it the mark is dropped.
        """
        if not MODEL_NAME_RE.fullmatch(name):
            raise ConfigError(f"model name {name!r} may hold letters, digits and '_.:/@+-' only")
        location = check_location(location, must_exist=must_exist)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self.keys.models, name, location)
            if tasks:
                pipe.hset(self.keys.model_tasks, name, ",".join(tasks))
            else:
                pipe.hdel(self.keys.model_tasks, name)
            if synthetic:
                pipe.hset(self.keys.model_synthetic, name, synthetic)
            else:
                pipe.hdel(self.keys.model_synthetic, name)
            await pipe.execute()
        return location

    async def synthetic(self) -> dict[str, str]:
        """Registered models whose weights are random (``sw synth``) -> what they imitate."""
        raw = await self.redis.hgetall(self.keys.model_synthetic)  # type: ignore[misc]
        return {
            (k.decode() if isinstance(k, bytes) else str(k)): (
                v.decode() if isinstance(v, bytes) else str(v)
            )
            for k, v in raw.items()
        }

    async def tasks(self, name: str) -> tuple[str, ...] | None:
        """The tasks recorded for ``name`` at registration; None when nothing was recorded."""
        # redis-py types the async client's hash replies as sync|async unions (redis-py #2399)
        raw = await self.redis.hget(self.keys.model_tasks, name)  # type: ignore[misc]
        if not raw:
            return None
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        return tuple(t for t in text.split(",") if t)

    async def check(self, name: str, task: str) -> None:
        """Refuse a model nobody registered, or a task it cannot run.

        Raises:
            ModelError: the model is not registered, or its manifest says it cannot ``task``.
        """
        await self.resolve(name)
        tasks = await self.tasks(name)
        if tasks is not None and task not in tasks:
            raise ModelError(
                f"model {name!r} cannot run {task!r} jobs (it has no language-model head); "
                f"its tasks: {', '.join(tasks)}"
            )

    async def all(self) -> dict[str, str]:
        """Every model name -> location (settings first, Redis on top)."""
        out = dict(self.configured)
        # redis-py types the async client's hash replies as sync|async unions (redis-py #2399)
        registered = await self.redis.hgetall(self.keys.models)  # type: ignore[misc]
        for name, location in registered.items():
            key = name.decode() if isinstance(name, bytes) else str(name)
            out[key] = location.decode() if isinstance(location, bytes) else str(location)
        return dict(sorted(out.items()))
