"""The parts of :class:`~sw_core.engine.memory.residency.Residency` that hold no logic: a chunk's
slot, a load whose digest check is still to run, the counters, the cancellation error, and
load errors named after their chunk."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import torch

from sw_core.chunks.manifest import ChunkInfo
from sw_core.exceptions import ModelError, SurfingError, WeightServerError, is_transient

#: A chunk's tensors by name.
Tensors = dict[str, torch.Tensor]


class Cancelled(SurfingError):
    """The run was cancelled while it waited for a chunk."""


@dataclass(frozen=True)
class Unverified:
    """A loaded chunk whose bytes were not checked against their digest yet: ``check()``
    hashes them and says whether they match; the tensors must not be used before it said
    True (:class:`~sw_core.engine.io.fetching.ChunkMaterializer`)."""

    tensors: Tensors
    check: Callable[[], bool]


#: What a chunk's load gives: its tensors, or tensors whose digest check is still to run.
Loaded = Tensors | Unverified
#: Runs a load's coroutine on the run's event loop (:meth:`Residency.begin`'s ``submit``).
Submit = Callable[[Coroutine[Any, Any, Tensors]], "concurrent.futures.Future[Loaded]"]


@dataclass
class Slot:
    """One chunk's place in the residency: its reservation, its fetch and its users."""

    chunk: ChunkInfo
    reserved_bytes: int
    future: concurrent.futures.Future[Loaded] | None = None
    tensors: Tensors | None = None
    users: int = 0
    used: bool = False
    bound: bool = False
    prefetched: bool = False


@dataclass
class ResidencyStats:
    """Counts since the last :meth:`Residency.reset_stats`."""

    #: Acquires served from memory without a fetch for this use.
    hits: int = 0
    #: Acquires that needed a fetch (``prefetched`` of them were started ahead).
    misses: int = 0
    prefetched: int = 0
    #: Chunks fetched and the bytes they held.
    loads: int = 0
    loaded_bytes: int = 0
    #: Seconds spent inside loads (fetch + deserialize), summed over loads.
    load_s: float = 0.0
    #: Seconds the compute thread spent blocked waiting for chunks.
    wait_s: float = 0.0
    #: Prefetched chunks dropped unused.
    wasted: int = 0
    #: Chunks whose deferred digest check failed, read again verified.
    refetched: int = 0


def named_error(exc: BaseException, model: str, chunk: ChunkInfo) -> SurfingError:
    """``exc`` as a Surfing error of the same kind whose message names model and chunk."""
    text = f"model {model!r}: chunk {chunk.name!r} ({chunk.file}) cannot be loaded: {exc}"
    if isinstance(exc, SurfingError):
        try:
            return type(exc)(text)
        except TypeError:
            return SurfingError(text)
    if is_transient(exc):
        return WeightServerError(text)
    return ModelError(f"{text} ({type(exc).__name__})")
