"""Getting an engine ready: the device, the chunk source, the chunk set's small files, and
the memory the chunks stream through."""

from __future__ import annotations

import json
from os import PathLike
from typing import TYPE_CHECKING, Any, TypeAlias

import torch

from sw_core.chunks.manifest import MANIFEST_FILE, Manifest
from sw_core.engine.io.fetching import ChunkMaterializer, pool_bytes
from sw_core.engine.io.sources import CachedChunkSource, ChunkSource, StoreChunkSource
from sw_core.engine.memory.budget import ResidencyPlan, plan_residency
from sw_core.engine.memory.buffers import BufferPool
from sw_core.engine.memory.residency import Residency
from sw_core.engine.model.dtypes import Packing, expansion
from sw_core.engine.model.footprint import chunk_sizes
from sw_core.engine.model.kernels import kernels_for
from sw_core.engine.model.skeleton import Skeleton
from sw_core.engine.tasks.generation import eos_ids
from sw_core.exceptions import ConfigError, ModelError, SecurityError, StorageError
from sw_core.hashing import Expected, hex_digest
from sw_core.settings import Settings

if TYPE_CHECKING:
    from sw_core.cache import ChunkCache
    from sw_core.storage import StorageBackend

#: Where an engine reads a model: a folder or ``s3://`` location, a storage backend, a source.
Where: TypeAlias = "str | PathLike[str] | StorageBackend | ChunkSource"


def resolve_device(name: str) -> torch.device:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; explicit names are checked."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as exc:
        raise ConfigError(f"SW_DEVICE={name!r} is not a torch device: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"SW_DEVICE={name!r} but no CUDA device is available; use 'auto'")
    return device


def make_source(where: Where, settings: Settings, cache: ChunkCache | None = None) -> ChunkSource:
    """A chunk source from a location (folder or ``s3://``), a storage backend or a source."""
    from sw_core.chunks.chunk_set import open_store
    from sw_core.storage import StorageBackend

    if isinstance(where, ChunkSource):
        return where
    pin: str | None = None
    if isinstance(where, str | PathLike):
        store, location = open_store(str(where), settings)
        pin = location.manifest_sha256
    elif isinstance(where, StorageBackend):
        store = where
    else:
        raise ConfigError(
            f"cannot read chunks from {where!r}: give a folder, an s3:// location, "
            "a storage backend or a ChunkSource"
        )
    if cache is not None:
        return CachedChunkSource(cache, store, manifest_sha256=pin)
    return StoreChunkSource(store, manifest_sha256=pin)


async def read_chunk_set(source: ChunkSource) -> tuple[Manifest, dict[str, bytes]]:
    """The manifest and every file it lists (config, tokenizer...), each checked against
    its digest (BLAKE3 when the manifest has it, else sha256)."""
    manifest = Manifest.from_json(await _file(source, MANIFEST_FILE))
    files: dict[str, bytes] = {}
    for info in manifest.files:
        data = await _file(source, info.file)
        expected = Expected.for_entry(info)
        if not expected.matches(hex_digest(expected.algorithm, data)):
            raise SecurityError(
                f"model {manifest.name!r}: file {info.file!r} from {source.describe()} "
                f"does not match its {expected.algorithm} in the manifest"
            )
        files[info.file] = data
    if "config.json" not in files:
        raise ModelError(f"model {manifest.name!r}: the chunk set lists no config.json")
    return manifest, files


async def _file(source: ChunkSource, name: str) -> bytes:
    from sw_core.storage import check_key

    check_key(name)
    try:
        return await source.fetch_file(name)
    except StorageError as exc:
        raise type(exc)(
            f"cannot read {name!r} of the chunk set at {source.describe()}: {exc}"
        ) from exc


def load_generation_config(raw: bytes | None, config: Any) -> Any:
    from transformers import GenerationConfig

    if raw is not None:
        try:
            return GenerationConfig.from_dict(json.loads(raw))
        except (ValueError, TypeError) as exc:
            raise ModelError(f"generation_config.json is malformed: {exc}") from None
    return GenerationConfig.from_model_config(config)


def pad_token_id(tokenizer: Any, gen_config: Any, config: Any) -> int:
    for source in (tokenizer, gen_config, config):
        value = getattr(source, "pad_token_id", None)
        if isinstance(value, int):
            return value
    eos = eos_ids(gen_config, config)
    return min(eos) if eos else 0


def build_memory(
    manifest: Manifest,
    skeleton: Skeleton,
    source: ChunkSource,
    device: torch.device,
    settings: Settings,
    dtype: torch.dtype | None,
) -> tuple[ResidencyPlan, BufferPool, Residency]:
    """The residency plan of ``manifest`` under the memory budget, the pool its streamed
    chunks land in, and the residency that binds them into ``skeleton`` (packed tensors
    the skeleton keeps packed computed with this device's kernels)."""
    expand = expansion(manifest, dtype)
    packing = sizes = None
    if manifest.packed:
        kept = skeleton.kept_packed
        sizes = chunk_sizes(manifest, dtype, kept)
        if kept:
            assert dtype is not None
            packing = Packing(kept, dtype, kernels_for(device))
    plan = plan_residency(
        manifest,
        settings.memory_budget_bytes,
        settings.prefetch_count,
        lookup_only=skeleton.lookup_only,
        expand=expand,
        sizes=sizes,
    )
    buffers = BufferPool(pool_bytes(manifest, plan, expand, settings.prefetch_count, sizes))
    residency = Residency(
        model_name=manifest.name,
        budget_bytes=settings.memory_budget_bytes,
        keep=plan.keep,
        prefetch_count=settings.prefetch_count,
        loader=ChunkMaterializer(
            source,
            skeleton,
            device,
            buffers,
            plan.keep,
            dtype,
            packing,
            loader_threads=settings.loader_threads,
        ),
        expand=expand,
        sizes=sizes,
        bind=skeleton.bind,
        unbind=skeleton.unbind,
        timeout_s=settings.timeout_seconds,
    )
    return plan, buffers, residency
