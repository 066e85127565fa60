"""Writing a chunk set: each planned chunk saved atomically as safetensors, then the manifest
with every chunk's and side file's size and digests.

A tensor source may hand a :class:`~sw_core.quant.weights.QuantizedWeight` instead of a
tensor: the chunk then stores its packed parts (``<name>:q``, ``<name>:scales``...) and the
manifest records its format. That is all a synthetic writer needs to produce packed chunk
sets without a real model: plan the chunks (:func:`~sw_core.chunks.plan.plan_chunks`), give
:func:`write_chunks` a source whose ``get`` returns ``QuantizedWeight.int4(...)`` for the
packed weights, and :func:`finish_manifest` with the formats it returns.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from sw_core.chunks.manifest import PACKED_FORMAT_VERSION, ChunkInfo, FileInfo, Manifest
from sw_core.chunks.plan import ChunkPlan
from sw_core.chunks.safetensors_io import save_aligned
from sw_core.chunks.tensor_sources import TensorSource
from sw_core.exceptions import ModelError
from sw_core.hashing import file_digests
from sw_core.progress import Progress
from sw_core.quant.formats import PackedFormat, exact_scale_parts, part_name
from sw_core.quant.weights import QuantizedWeight


def write_chunks(
    plans: list[ChunkPlan],
    source: TensorSource,
    shapes: dict[str, tuple[list[int], torch.dtype]],
    out: Path,
    progress: Progress | None,
    packed: dict[str, PackedFormat] | None = None,
) -> list[ChunkInfo]:
    """Write every planned chunk; returns their manifest entries.

    ``packed`` (filled in when given): the format of every tensor the source handed as a
    :class:`~sw_core.quant.weights.QuantizedWeight`, for :func:`finish_manifest`.
    """
    chunks: list[ChunkInfo] = []
    formats = packed if packed is not None else {}
    for plan in plans:
        tensors = dict(_plan_tensors(plan, source, formats))
        param_bytes = sum(t.numel() * t.element_size() for t in tensors.values())
        target = out / plan.file
        tail = exact_scale_parts(plan.tensors, formats)
        kernel_bytes = _atomic_save(
            tensors, target, aligned=any(":" in n for n in tensors), tail=tail
        )
        del tensors
        sha256, blake3_hex = file_digests(target)
        kernel: dict[str, Any] = {}
        if tail:
            kernel_sha256, kernel_blake3 = file_digests(target, length=kernel_bytes)
            kernel = {
                "kernel_bytes": kernel_bytes,
                "kernel_sha256": kernel_sha256,
                "kernel_blake3": kernel_blake3,
            }
        chunks.append(
            ChunkInfo(
                name=plan.name,
                file=plan.file,
                size_bytes=target.stat().st_size,
                sha256=sha256,
                blake3=blake3_hex,
                tensors=list(plan.tensors),
                role=plan.role,
                stack=plan.stack,
                index=plan.index,
                param_bytes=param_bytes,
                rows=plan.rows,
                **kernel,
            )
        )
        if progress is not None:
            progress.advance(1)
    return chunks


def _plan_tensors(
    plan: ChunkPlan, source: TensorSource, formats: dict[str, PackedFormat]
) -> Iterator[tuple[str, torch.Tensor]]:
    for key in plan.tensors:
        tensor = source.get_rows(key, *plan.rows) if plan.rows else source.get(key)
        if isinstance(tensor, QuantizedWeight):
            known = formats.setdefault(key, tensor.fmt)
            if known != tensor.fmt:
                raise ModelError(f"{key}: its chunks disagree on its packed format")
            for part, data in tensor.parts().items():
                yield part_name(key, part), data
            continue
        yield key, tensor.detach().to("cpu").contiguous()


def _atomic_save(
    tensors: dict[str, torch.Tensor], target: Path, *, aligned: bool, tail: frozenset[str]
) -> int:
    """Save atomically; chunks with packed parts through :func:`save_aligned` (the packed
    kernels read them in place), the ``tail`` parts last. Returns where the tail starts."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    os.close(fd)
    try:
        if aligned:
            kernel_bytes = save_aligned(tensors, tmp, tail=tail)
        else:
            save_file(tensors, tmp)
            kernel_bytes = Path(tmp).stat().st_size
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return kernel_bytes


def _file_info(out: Path, rel: str) -> FileInfo:
    sha256, blake3_hex = file_digests(out / rel)
    return FileInfo(
        file=rel, size_bytes=(out / rel).stat().st_size, sha256=sha256, blake3=blake3_hex
    )


def finish_manifest(
    out: Path,
    name: str,
    config: Any,
    model_class: str,
    chunks: list[ChunkInfo],
    tied: dict[str, str],
    source_label: str,
    gguf_file: str | None,
    dtype: str,
    packed: dict[str, PackedFormat] | None = None,
    synthetic: dict[str, Any] | None = None,
) -> Manifest:
    chunk_files = {c.file for c in chunks}
    extra = {}
    if packed:
        extra = {
            "packed": {name: fmt.to_dict() for name, fmt in packed.items()},
            "format_version": PACKED_FORMAT_VERSION,
        }
    files = [_file_info(out, rel) for rel in _side_files(out) if rel not in chunk_files]
    manifest = Manifest(
        name=name,
        architecture=str(config.model_type),
        model_class=model_class,
        dtype=dtype,
        chunks=chunks,
        files=files,
        tied=tied,
        source=source_label,
        gguf_file=gguf_file,
        **extra,  # type: ignore[arg-type]
        synthetic=synthetic,
    )
    tmp = out / ".manifest.json.tmp"
    tmp.write_text(manifest.to_json())
    os.replace(tmp, out / "manifest.json")
    return manifest


def _side_files(out: Path) -> list[str]:
    names = []
    for path in sorted(out.rglob("*")):
        rel = path.relative_to(out).as_posix()
        if (
            path.is_file()
            and not (rel.endswith(".safetensors") and "/" not in rel)  # chunks are top-level
            and rel != "manifest.json"
            and not path.name.startswith(".")
        ):
            names.append(rel)
    return names
