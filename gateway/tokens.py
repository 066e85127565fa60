"""What the gateway reads of a model's chunk set: its tokenizer, position limit and chunks.

An embed job returns vectors only, so the gateway counts prompt tokens itself, and it checks
a prompt's length before queueing it. It reads the chunk set's manifest, ``tokenizer.json``
and ``config.json`` (each file checked against its sha256 in the manifest) once per model
and tokenizes with the light ``tokenizers`` library -- no torch, no transformers -- adding
special tokens as the engine does. A model without a ``tokenizer.json`` counts 0 tokens.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from dataclasses import dataclass, field, replace
from typing import Any

from sw_core.chunks.chunk_set import ChunkSet
from sw_core.context import ContextLimits, context_limits
from sw_core.exceptions import SecurityError
from sw_core.pipeline.registry import tasks_of
from sw_core.settings import Settings
from sw_core.utils import calculate_chunk_hash

log = logging.getLogger(__name__)
TOKENIZER_FILE = "tokenizer.json"
#: Seconds before a chunk set that could not be read is read again.
RETRY_S = 30.0
CONFIG_FILE = "config.json"


@dataclass(frozen=True)
class ChunkRef:
    """One chunk of a model, in execution order."""

    name: str
    sha256: str
    size_bytes: int


@dataclass
class ModelFacts:
    """The parts of one chunk set the gateway uses."""

    tokenizer: Any = None
    #: Tokens the model's positions cover (prompt plus answer); None: unbounded or unknown.
    max_positions: int | None = None
    #: The context length under this gateway's settings (the workers' should be the same).
    context: ContextLimits | None = None
    chunks: list[ChunkRef] = field(default_factory=list)
    #: The tasks the model can run (from the manifest's model class); empty: unknown.
    tasks: tuple[str, ...] = ()


def model_context(config: dict[str, Any], tasks: tuple[str, ...], settings: Settings) -> Any:
    """The :class:`~sw_core.context.ContextLimits` of a model from its ``config.json``, as
    the engine judges them (T5's relative positions do not bound it)."""
    limits = context_limits(config, settings, generates="generate" in tasks)
    if config.get("is_encoder_decoder"):
        limits = replace(limits, positions=None)
    return limits


class TokenCounter:
    """Counts tokens per model; chunk sets are read on first use and kept (a chunk set that
    could not be read is tried again after :data:`RETRY_S`)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._facts: dict[str, ModelFacts] = {}
        self._failed: dict[str, float] = {}  # key -> when to try again (monotonic)
        self._locks: dict[str, asyncio.Lock] = {}

    async def count(self, model: str, location: str, texts: list[str]) -> int:
        """Tokens of ``texts`` under ``model``'s tokenizer (0 when it has none)."""
        return sum(await self.lengths(model, location, texts, special=True))

    async def lengths(
        self, model: str, location: str, texts: list[str], *, special: bool
    ) -> list[int]:
        """Tokens of each text (with the tokenizer's special tokens or without); zeros when
        the model has no tokenizer."""
        tokenizer = (await self.facts(model, location)).tokenizer
        if tokenizer is None:
            return [0] * len(texts)
        encodings = await asyncio.to_thread(
            tokenizer.encode_batch, texts, add_special_tokens=special
        )
        return [len(e.ids) for e in encodings]

    async def facts(self, model: str, location: str) -> ModelFacts:
        """The model's tokenizer, position limit and chunks (read once; an unreadable chunk
        set gives empty facts and a warning: counts are informative, never a failure)."""
        key = f"{model}={location}"
        if self._fresh(key):
            return self._facts[key]
        async with self._locks.setdefault(key, asyncio.Lock()):
            if not self._fresh(key):
                try:
                    self._facts[key] = await self._load(model, location)
                    self._failed.pop(key, None)
                except SecurityError:
                    raise
                except Exception as exc:
                    log.warning("no token counts for %s (again in %g s): %s", model, RETRY_S, exc)
                    self._facts[key] = ModelFacts()
                    self._failed[key] = time.monotonic() + RETRY_S
        return self._facts[key]

    def _fresh(self, key: str) -> bool:
        """Read, and not a failed read due for another try."""
        return key in self._facts and time.monotonic() < self._failed.get(key, math.inf)

    async def _load(self, model: str, location: str) -> ModelFacts:
        from tokenizers import Tokenizer

        async with await ChunkSet.open(location, self.settings, model=model) as chunk_set:
            manifest = chunk_set.manifest
            files = {f.file: f for f in manifest.files}
            facts = ModelFacts(
                chunks=[ChunkRef(c.name, c.sha256, c.size_bytes) for c in manifest.chunks],
                tasks=tasks_of(manifest),
            )
            if CONFIG_FILE in files:
                config = json.loads(await _verified(chunk_set, files[CONFIG_FILE], model))
                facts.context = model_context(config, facts.tasks, self.settings)
                facts.max_positions = facts.context.positions
            if TOKENIZER_FILE in files:
                data = await _verified(chunk_set, files[TOKENIZER_FILE], model)
                tokenizer = Tokenizer.from_str(data.decode("utf-8"))
                tokenizer.no_truncation()
                tokenizer.no_padding()
                facts.tokenizer = tokenizer
        return facts


async def _verified(chunk_set: ChunkSet, info: Any, model: str) -> bytes:
    data = await chunk_set.read_file(info.file)
    if calculate_chunk_hash(data) != info.sha256.lower():
        raise SecurityError(
            f"model {model!r}: {info.file} does not match its sha256 in the manifest"
        )
    return data
