"""The chunk-set manifest: what a chunked model is made of, with a sha256 per chunk (its id)
and, when written by this version or upgraded with ``sw rehash``, a BLAKE3 digest that
readers check instead (:mod:`sw_core.hashing`).

A chunk set is a folder (or an S3 prefix) holding ``manifest.json``, one safetensors file
per chunk, and the model's config and tokenizer files. Tensor names inside chunks are the
``state_dict`` names of ``model_class`` built from the config, so a skeleton of that class
can take them as they are.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from sw_core.exceptions import ModelError
from sw_core.quant.formats import PackedFormat, stored_names

#: Chunk sets with packed tensors are version 4 (a reader that predates packed weights
#: refuses them); the others stay version 1, readable by every version. Version 3 (packed,
#: read as before) records no kernel prefixes (:attr:`ChunkInfo.kernel_bytes`). Version 2
#: stored int4 offsets as a part of their own and no kernel table: re-chunk such a set.
FORMAT_VERSION = 1
PACKED_FORMAT_VERSION = 4
PACKED_VERSIONS = (3, PACKED_FORMAT_VERSION)
RETIRED_PACKED_VERSION = 2
#: ChunkInfo fields written only when set (so that version 1 manifests stay as they were).
_OPTIONAL_FIELDS = ("kernel_bytes", "kernel_sha256", "kernel_blake3", "file_bytes")
MANIFEST_FILE = "manifest.json"
#: Larger manifests are refused before parsing.
MAX_MANIFEST_BYTES = 16 << 20
#: Largest non-chunk file of a chunk set (config, tokenizer) a reader accepts.
MAX_FILE_BYTES = 64 << 20

#: ``expert``: one expert of a mixture-of-experts block (its rows of the fused expert tensors).
Role = Literal["embeddings", "block", "head", "expert"]


@dataclass(frozen=True)
class ChunkInfo:
    """One safetensors chunk of a model."""

    name: str
    file: str
    size_bytes: int
    sha256: str
    tensors: list[str]
    role: Role
    #: For blocks: module path of the block list (``encoder.layer``) and the index in it.
    stack: str | None = None
    index: int | None = None
    #: Bytes of the tensors' data (what materializing the chunk costs in memory).
    param_bytes: int = 0
    #: Row shard of one large 2-D tensor (embedding matrix, untied head): the chunk holds
    #: rows ``[rows[0], rows[1])`` of its single tensor, under the tensor's full name.
    #: For an ``expert`` chunk: experts ``[rows[0], rows[1])`` of every fused expert tensor
    #: it lists (dim 0 is the expert index); ``stack``/``index`` name its block.
    rows: list[int] | None = None
    #: BLAKE3-256 hex digest of the file; readers verify it instead of the sha256 when set.
    blake3: str | None = None
    #: A packed chunk whose file holds the exact scales of its int4 tensors last: its first
    #: ``kernel_bytes`` bytes (header, 4-bit planes, kernel tables, float tensors) are all
    #: that computing with the stored tables needs, and these are their digests. Widening
    #: (float32 compute, row lookups) needs the whole file.
    kernel_bytes: int | None = None
    kernel_sha256: str | None = None
    kernel_blake3: str | None = None
    #: Set only on a kernel view (:meth:`kernel_view`), never in a manifest: the size of
    #: the whole file, of which the view is the first ``size_bytes``.
    file_bytes: int | None = None

    def kernel_view(self) -> ChunkInfo | None:
        """This chunk as its kernel prefix: ``size_bytes`` and digests of the file's first
        ``kernel_bytes`` (read and verified as a chunk of its own), or None without one."""
        if self.kernel_bytes is None or self.kernel_sha256 is None:
            return None
        return replace(
            self,
            size_bytes=self.kernel_bytes,
            sha256=self.kernel_sha256,
            blake3=self.kernel_blake3,
            param_bytes=max(self.param_bytes - (self.size_bytes - self.kernel_bytes), 0),
            kernel_bytes=None,
            kernel_sha256=None,
            kernel_blake3=None,
            file_bytes=self.size_bytes,
        )

    @property
    def is_prefix(self) -> bool:
        """Whether this reads only the first ``size_bytes`` of a longer file."""
        return self.file_bytes is not None


def _check_kernel_prefix(chunk: ChunkInfo) -> None:
    """Refuse a manifest entry whose kernel prefix fields cannot describe its file."""
    if chunk.file_bytes is not None:
        raise ModelError("malformed manifest: 'file_bytes' is not a manifest field")
    fields = (chunk.kernel_bytes, chunk.kernel_sha256)
    if fields == (None, None) and chunk.kernel_blake3 is None:
        return
    if None in fields or not 8 < (chunk.kernel_bytes or 0) <= chunk.size_bytes:
        raise ModelError(
            f"malformed manifest: chunk {chunk.name!r} has a kernel prefix of "
            f"{chunk.kernel_bytes} bytes (sha256 {chunk.kernel_sha256!r}) in a file of "
            f"{chunk.size_bytes}"
        )


@dataclass(frozen=True)
class FileInfo:
    """A non-weight file of the chunk set (config, tokenizer)."""

    file: str
    size_bytes: int
    sha256: str
    #: BLAKE3-256 hex digest of the file; readers verify it instead of the sha256 when set.
    blake3: str | None = None


@dataclass(frozen=True)
class Manifest:
    """A chunked model."""

    name: str
    architecture: str
    model_class: str
    dtype: str
    chunks: list[ChunkInfo]
    files: list[FileInfo] = field(default_factory=list)
    #: Tied parameters: name -> the name whose tensor it shares (stored once).
    tied: dict[str, str] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    source: str = ""
    gguf_file: str | None = None
    #: Packed (quantized) tensors: canonical name -> its format
    #: (:class:`~sw_core.quant.formats.PackedFormat` as a dict). A chunk holding one stores
    #: its parts (``<name>:q``, ``<name>:scales``...) instead of the tensor.
    packed: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Set for chunk sets of random weights (``sw synth``): the shape, seed and generator.
    #: Such a model computes at the real model's cost and answers nonsense.
    synthetic: dict[str, Any] | None = None

    # ---------------------------------------------------------------- lookups
    def chunk(self, name: str) -> ChunkInfo:
        for chunk in self.chunks:
            if chunk.name == name:
                return chunk
        raise ModelError(f"model {self.name!r} has no chunk {name!r}")

    def blocks(self, stack: str | None = None) -> list[ChunkInfo]:
        """Block chunks in execution order (optionally of one stack)."""
        return [c for c in self.chunks if c.role == "block" and (stack is None or c.stack == stack)]

    def stacks(self) -> list[str]:
        """Block-list paths in the order they first appear."""
        seen: list[str] = []
        for c in self.chunks:
            if c.role == "block" and c.stack not in seen:
                seen.append(c.stack or "")
        return seen

    def by_role(self, role: Role) -> Iterator[ChunkInfo]:
        return (c for c in self.chunks if c.role == role)

    @cached_property
    def formats(self) -> dict[str, PackedFormat]:
        """The packed tensors' formats (checked when the manifest is read)."""
        return {name: PackedFormat.from_dict(dict(data)) for name, data in self.packed.items()}

    def stored_tensors(self, chunk: ChunkInfo) -> list[str]:
        """The names a chunk's safetensors file holds: its tensors, packed ones as parts."""
        formats = self.formats
        return [n for t in chunk.tensors for n in stored_names(t, formats.get(t))]

    @property
    def has_blake3(self) -> bool:
        """Whether every chunk and file records a BLAKE3 digest."""
        return all(c.blake3 for c in self.chunks) and all(f.blake3 for f in self.files)

    @property
    def total_bytes(self) -> int:
        return sum(c.size_bytes for c in self.chunks)

    @property
    def total_param_bytes(self) -> int:
        return sum(c.param_bytes for c in self.chunks)

    # ---------------------------------------------------------------- (de)serialisation
    def to_json(self) -> str:
        data = asdict(self)
        if data["synthetic"] is None:  # manifests of real models stay as they were
            del data["synthetic"]
        for chunk in data["chunks"]:
            for key in _OPTIONAL_FIELDS:
                if chunk[key] is None:
                    del chunk[key]
        return json.dumps(data, indent=2, sort_keys=False) + "\n"

    def describe_synthetic(self) -> str | None:
        """``"synthetic: random weights of the llama-3-8b shape (seed 0)"``, or None."""
        if not self.synthetic:
            return None
        shape = self.synthetic.get("shape", "?")
        seed = self.synthetic.get("seed", "?")
        return f"synthetic: random weights of the {shape} shape (seed {seed})"

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / MANIFEST_FILE
        path.write_text(self.to_json())
        return path

    @classmethod
    def from_json(cls, raw: str | bytes) -> Manifest:
        if len(raw) > MAX_MANIFEST_BYTES:
            raise ModelError(f"manifest is {len(raw)} bytes, over the {MAX_MANIFEST_BYTES} limit")
        try:
            data: dict[str, Any] = json.loads(raw)
            version = data.get("format_version")
            if version == RETIRED_PACKED_VERSION:
                raise ModelError(
                    f"manifest format_version {version}: packed weights in an earlier layout "
                    "(offsets apart, no kernel table); chunk the model again with this version"
                )
            if version not in (FORMAT_VERSION, *PACKED_VERSIONS):
                raise ModelError(
                    f"manifest format_version {version!r} is not supported (expected "
                    f"{FORMAT_VERSION} or one of {PACKED_VERSIONS})"
                )
            if bool(data.get("packed")) != (version in PACKED_VERSIONS):
                raise ModelError(
                    f"manifest format_version {version} does not match its packed tensors"
                )
            if not isinstance(data.get("synthetic") or {}, dict):
                raise ModelError("malformed manifest: 'synthetic' is not an object")
            chunks = [ChunkInfo(**c) for c in data.pop("chunks")]
            for chunk in chunks:
                _check_kernel_prefix(chunk)
            files = [FileInfo(**f) for f in data.pop("files", [])]
            manifest = cls(chunks=chunks, files=files, **data)
            for name, fmt in manifest.formats.items():
                fmt.check(name)
            return manifest
        except ModelError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ModelError(f"malformed manifest: {exc}") from None

    @classmethod
    def load(cls, folder: str | Path) -> Manifest:
        path = Path(folder) / MANIFEST_FILE
        if not path.is_file():
            raise ModelError(f"{folder} is not a chunk set: no {MANIFEST_FILE}")
        return cls.from_json(path.read_bytes())
