"""``sw synth``: a chunk set of random weights in the shape of a real model, written chunk by
chunk (and tensor by tensor) without the model ever being in memory.

The model's skeleton is built on the ``meta`` device from the shape's config (names and
shapes, no memory), planned into chunks exactly as ``sw chunk`` plans a real checkpoint
(one chunk per block, one per expert, row shards of the embeddings and the head), and each
chunk is streamed to disk by :func:`~sw_core.synth.writer.write_chunk` with values from
:class:`~sw_core.synth.values.PlausibleBF16`. The manifest carries ``synthetic`` (shape,
seed, generator), so ``sw register``, the gateway's model list and the engine's log say
that its weights are random: it costs what the real model costs and answers nonsense.

A folder is written in place; an ``s3://`` destination is written through a temporary
folder one chunk at a time (uploaded, then deleted), manifest last.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sw_core.chunks.chunker import DEFAULT_MAX_CHUNK_MB, SIDE_FILES
from sw_core.chunks.manifest import MANIFEST_FILE, ChunkInfo, Manifest
from sw_core.chunks.plan import ChunkPlan, block_stacks, plan_chunks, tied_parameters
from sw_core.chunks.writer import finish_manifest
from sw_core.exceptions import ConfigError, PermanentStorageError
from sw_core.progress import Progress
from sw_core.quant.formats import PART_SEP, exact_scale_parts, part_name
from sw_core.settings import Settings
from sw_core.storage.location import parse_location
from sw_core.synth.shapes import shape_config
from sw_core.synth.values import PlausibleBF16, is_norm
from sw_core.synth.writer import Sinks, TensorSpec, aligned_order, header_bytes, write_chunk

#: Stored formats ``sw synth`` writes: bfloat16 weights, or the linear layers of the blocks
#: packed to int4 (the output head to int8; embeddings and norms in bfloat16), as
#: ``sw chunk --quantize int4`` stores them.
DTYPES = ("bfloat16", "int4")
#: int4 values per scale and offset (``--group-size``): 128 gives 0.53 bytes per weight.
DEFAULT_GROUP_SIZE = 128
#: Free disk left over after writing a folder.
DISK_MARGIN_BYTES = 1 << 30
GENERATOR = "plausible-bf16-v1"


def planned_chunks(
    shape: str,
    *,
    layers: int | None = None,
    max_chunk_mb: float = DEFAULT_MAX_CHUNK_MB,
    dtype: str = "bfloat16",
    group_size: int = DEFAULT_GROUP_SIZE,
) -> tuple[Any, type[torch.nn.Module], list[tuple[ChunkPlan, list[TensorSpec]]]]:
    """The shape's config, model class and chunks (each with its tensors as stored: packed
    weights as their parts); the packed formats are in ``config.sw_packed``."""
    import transformers

    config = shape_config(shape, layers=layers)
    model_class = getattr(transformers, config.architectures[0])
    with torch.device("meta"):
        skeleton = model_class(config)
    stacks = block_stacks(skeleton)
    tied = tied_parameters(skeleton)
    state = {k: v for k, v in skeleton.state_dict().items() if k not in tied}
    shapes = {k: (list(v.shape), torch.bfloat16) for k, v in state.items()}
    plans = plan_chunks(list(state), shapes, stacks, int(max_chunk_mb * (1 << 20)))
    formats: dict[str, Any] = {}
    if dtype == "int4":
        from sw_core.chunks.quantize import plan_quantization

        formats = plan_quantization(skeleton, list(state), stacks, tied, "int4", group_size)
    config.sw_packed = formats
    out = []
    for plan in plans:
        specs = []
        rows = tuple(plan.rows) if plan.rows is not None else None
        for key in plan.tensors:
            fmt = formats.get(key)
            if fmt is not None:
                for part, (dims, part_dtype) in fmt.part_specs(rows).items():
                    specs.append(TensorSpec(part_name(key, part), tuple(dims), part_dtype))
                continue
            dims = tuple(shapes[key][0])
            if rows is not None:
                dims = (rows[1] - rows[0], *dims[1:])
            specs.append(TensorSpec(key, dims))
        tail = exact_scale_parts(plan.tensors, formats)
        out.append((plan, aligned_order(specs, tail) if formats else specs))
    return config, model_class, out


def planned_bytes(chunks: list[tuple[ChunkPlan, list[TensorSpec]]]) -> int:
    """Bytes of every chunk file, headers included."""
    return sum(len(header_bytes(specs)) + sum(s.nbytes for s in specs) for _, specs in chunks)


@dataclass
class _Job:
    """What one ``sw synth`` run writes."""

    config: Any
    model_class: type[torch.nn.Module]
    chunks: list[tuple[ChunkPlan, list[TensorSpec]]]
    name: str
    seed: int
    synthetic: dict[str, Any]
    tokenizer: str | Path | None
    progress: Progress | None


def synth_chunk_set(
    shape: str,
    destination: str,
    *,
    settings: Settings | None = None,
    dtype: str = "bfloat16",
    seed: int = 0,
    layers: int | None = None,
    name: str | None = None,
    max_chunk_mb: float = DEFAULT_MAX_CHUNK_MB,
    tokenizer: str | Path | None = None,
    progress: Progress | None = None,
    group_size: int = DEFAULT_GROUP_SIZE,
) -> Manifest:
    """Write a synthetic chunk set of ``shape`` to a folder or ``s3://bucket/prefix``
    (``dtype`` ``bfloat16``, or ``int4``: packed linear layers, ``group_size`` per scale).

    Raises:
        ConfigError: unknown shape or dtype, bad layer count, a destination that is not a
            folder or an S3 location.
        PermanentStorageError: the folder's disk has no room for the chunk set.
    """
    if dtype not in DTYPES:
        raise ConfigError(f"sw synth writes {', '.join(DTYPES)} weights, not {dtype!r}")
    config, model_class, chunks = planned_chunks(
        shape, layers=layers, max_chunk_mb=max_chunk_mb, dtype=dtype, group_size=group_size
    )
    location = parse_location(destination)
    synthetic: dict[str, Any] = {"shape": shape, "seed": seed, "generator": GENERATOR}
    if dtype != "bfloat16":
        synthetic.update(dtype=dtype, group_size=group_size)
    if layers is not None:
        synthetic["layers"] = layers
    name = name or (shape if layers is None else f"{shape}-{layers}l")
    job = _Job(config, model_class, chunks, name, seed, synthetic, tokenizer, progress)
    if location.is_s3:
        return _to_s3(destination, settings or Settings.from_env(), job)
    out = Path(location.path or destination)
    _check_room(out, planned_bytes(chunks))
    return _write(out, job)


def _write(out: Path, job: _Job, after_chunk: Callable[[Path], None] | None = None) -> Manifest:
    out.mkdir(parents=True, exist_ok=True)
    values = PlausibleBF16(job.seed)
    norms = {s.name for _, specs in job.chunks for s in specs if is_norm(s.name, s.shape)}

    def fill(tensor: str, first: int, raw: Any) -> None:
        if PART_SEP in tensor:
            values.fill_part(tensor, first, raw)
        else:
            values.fill(tensor, first, raw, norm=tensor in norms)

    advance = job.progress.advance if job.progress is not None else None
    formats = job.config.sw_packed or {}
    meta = {"format": "pt", "synthetic": GENERATOR}
    written: list[ChunkInfo] = []
    with Sinks() as sinks:
        for plan, specs in job.chunks:
            path = out / plan.file
            tail = exact_scale_parts(plan.tensors, formats)
            done = write_chunk(
                path, specs, fill, sinks=sinks, metadata=meta, on_bytes=advance, tail=tail
            )
            written.append(
                ChunkInfo(
                    name=plan.name,
                    file=plan.file,
                    size_bytes=done.size_bytes,
                    sha256=done.sha256,
                    blake3=done.blake3,
                    tensors=list(plan.tensors),
                    role=plan.role,
                    stack=plan.stack,
                    index=plan.index,
                    param_bytes=done.param_bytes,
                    rows=plan.rows,
                    **done.kernel,  # type: ignore[arg-type]
                )
            )
            if after_chunk is not None:
                after_chunk(path)
    packed = job.config.sw_packed
    del job.config.sw_packed
    job.config.save_pretrained(out)
    if job.tokenizer is not None:
        _copy_tokenizer(Path(job.tokenizer), out, int(job.config.vocab_size))
    label = f"synthetic:{job.synthetic['shape']}"
    cls = job.model_class.__name__
    return finish_manifest(
        out,
        job.name,
        job.config,
        cls,
        written,
        {},
        label,
        None,
        "bfloat16",
        packed=packed or None,
        synthetic=job.synthetic,
    )


def _to_s3(destination: str, settings: Settings, job: _Job) -> Manifest:
    """Write through a temporary folder, uploading (then deleting) each chunk as it is
    done; the side files, then the manifest, last."""
    from sw_core.storage import backend_from_location

    backend: Any = backend_from_location(destination, settings)
    try:
        with tempfile.TemporaryDirectory(prefix="sw-synth-") as tmp:
            folder = Path(tmp)

            def upload(path: Path) -> None:
                _run(backend.save_file(path.name, path))
                path.unlink()

            manifest = _write(folder, job, after_chunk=upload)
            for path in sorted(folder.rglob("*")):
                rel = path.relative_to(folder).as_posix()
                if path.is_file() and rel != MANIFEST_FILE:
                    _run(backend.save_file(rel, path))
            _run(backend.save_file(MANIFEST_FILE, folder / MANIFEST_FILE))
        return manifest
    finally:
        _run(backend.close())


def _run(coro: Any) -> Any:
    """Run ``coro`` to its end on a loop of its own in another thread: works whether or not
    the caller runs an event loop."""
    with ThreadPoolExecutor(1, thread_name_prefix="sw-synth-upload") as pool:
        return pool.submit(asyncio.run, coro).result()


def _check_room(out: Path, total: int) -> None:
    probe = out
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if total + DISK_MARGIN_BYTES > free:
        raise PermanentStorageError(
            f"not enough disk for the chunk set: it needs {total / 1e9:.1f} GB and "
            f"{probe} has {free / 1e9:.1f} GB free (keeping {DISK_MARGIN_BYTES >> 20} MiB); "
            "use --layers to write fewer blocks, or another folder"
        )


def _copy_tokenizer(source: Path, out: Path, vocab_size: int) -> None:
    """Copy a tokenizer (a folder of tokenizer files) beside the chunks, so jobs can send
    text; refused when it has more tokens than the model's vocabulary."""
    from transformers import AutoTokenizer

    if not source.is_dir():
        raise ConfigError(f"--tokenizer {source} is not a folder of tokenizer files")
    tok = AutoTokenizer.from_pretrained(source)
    if len(tok) > vocab_size:
        raise ConfigError(
            f"the tokenizer in {source} has {len(tok)} tokens, more than the shape's "
            f"vocabulary of {vocab_size}"
        )
    for side in SIDE_FILES:
        if side != "config.json" and (source / side).is_file():
            (out / side).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / side, out / side)
