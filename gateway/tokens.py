"""Prompt-token counts for embedding requests, with the model's own tokenizer.

An embed job returns vectors only, so the gateway counts the tokens itself: it reads the
chunk set's ``tokenizer.json`` (checked against its sha256 in the manifest) once per model
and tokenizes with the light ``tokenizers`` library -- no torch, no transformers -- adding
special tokens as the engine does. A model without a ``tokenizer.json`` counts 0.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from sw_core.chunks.chunk_set import ChunkSet
from sw_core.exceptions import SecurityError
from sw_core.settings import Settings
from sw_core.utils import calculate_chunk_hash

log = logging.getLogger(__name__)
TOKENIZER_FILE = "tokenizer.json"


class TokenCounter:
    """Counts tokens per model; tokenizers are loaded on first use and kept."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._tokenizers: dict[str, Any] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def count(self, model: str, location: str, texts: list[str]) -> int:
        """Tokens of ``texts`` under ``model``'s tokenizer (0 when it has none)."""
        tokenizer = await self._tokenizer(model, location)
        if tokenizer is None:
            return 0
        encodings = await asyncio.to_thread(tokenizer.encode_batch, texts)
        return sum(len(e.ids) for e in encodings)

    async def _tokenizer(self, model: str, location: str) -> Any:
        key = f"{model}={location}"
        if key in self._tokenizers:
            return self._tokenizers[key]
        async with self._locks.setdefault(key, asyncio.Lock()):
            if key not in self._tokenizers:
                try:
                    self._tokenizers[key] = await self._load(model, location)
                except SecurityError:
                    raise
                except Exception as exc:  # usage is informative: never fail a request for it
                    log.warning("no token counts for %s: %s", model, exc)
                    self._tokenizers[key] = None
        return self._tokenizers[key]

    async def _load(self, model: str, location: str) -> Any:
        from tokenizers import Tokenizer

        async with await ChunkSet.open(location, self.settings, model=model) as chunk_set:
            info = next((f for f in chunk_set.manifest.files if f.file == TOKENIZER_FILE), None)
            if info is None:
                return None
            data = await chunk_set.read_file(TOKENIZER_FILE)
        if calculate_chunk_hash(data) != info.sha256.lower():
            raise SecurityError(
                f"model {model!r}: {TOKENIZER_FILE} does not match its sha256 in the manifest"
            )
        tokenizer = Tokenizer.from_str(data.decode("utf-8"))
        tokenizer.no_truncation()
        tokenizer.no_padding()
        return tokenizer
