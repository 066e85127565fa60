"""Strict, zero-copy safetensors parsing for chunks that arrive as bytes (and an aligned
writer for chunks whose tensors a kernel reads in place, :func:`save_aligned`).

``safetensors.torch.load`` copies every byte; this parser checks the header against the
format (bounded size, known dtypes, shapes that match their byte ranges, ranges inside the
buffer that neither overlap nor leave gaps) and then builds tensors with
``torch.frombuffer`` over the caller's buffer, without a copy. Anything off is a
:class:`~sw_core.exceptions.SecurityError`: a chunk is data, never code.
"""

from __future__ import annotations

import json
import math
import struct
from typing import Any

import torch

from sw_core.exceptions import SecurityError

#: Same bound as the safetensors library: a header larger than this is refused unread.
MAX_HEADER_BYTES = 100 << 20

#: Where tensors start in files :func:`save_aligned` writes (bytes from the file's start).
ALIGN_BYTES = 64

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def parse_header(
    data: bytes | bytearray | memoryview, *, prefix: bool = False
) -> tuple[dict[str, dict[str, Any]], int]:
    """Validate a safetensors header; return ``(tensor entries, data start offset)``.

    With ``prefix``, ``data`` is the first bytes of a longer file: the tensors in it must
    fill it exactly, and the others (listed, beyond its end) must follow it without gaps
    or overlaps; a tensor cut by the end is refused."""
    view = memoryview(data)
    if len(view) < 8:
        raise SecurityError("not safetensors: fewer than 8 bytes")
    (header_len,) = struct.unpack("<Q", view[:8])
    if header_len > MAX_HEADER_BYTES:
        raise SecurityError(
            f"safetensors header of {header_len} bytes is over the {MAX_HEADER_BYTES} limit"
        )
    if 8 + header_len > len(view):
        raise SecurityError("not safetensors: header runs past the end of the data")
    try:
        header = json.loads(bytes(view[8 : 8 + header_len]))
    except (UnicodeDecodeError, ValueError):
        raise SecurityError("not safetensors: header is not JSON") from None
    if not isinstance(header, dict):
        raise SecurityError("not safetensors: header is not an object")
    header.pop("__metadata__", None)
    start = 8 + header_len
    body_len = len(view) - start
    spans: list[tuple[int, int, str]] = []
    for name, entry in header.items():
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise SecurityError(f"safetensors entry {name!r} is malformed")
        dtype = DTYPES.get(entry["dtype"])
        if dtype is None:
            raise SecurityError(f"tensor {name!r} has unsupported dtype {entry['dtype']!r}")
        shape, offsets = entry["shape"], entry["data_offsets"]
        if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
            raise SecurityError(f"tensor {name!r} has a malformed shape")
        if not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(isinstance(o, int) for o in offsets)
            and 0 <= offsets[0] <= offsets[1]
            and (prefix or offsets[1] <= body_len)
        ):
            raise SecurityError(f"tensor {name!r} has data offsets outside the data")
        expected = math.prod(shape) * dtype.itemsize
        if offsets[1] - offsets[0] != expected:
            raise SecurityError(
                f"tensor {name!r} claims {offsets[1] - offsets[0]} bytes, its shape needs {expected}"
            )
        if prefix and offsets[0] < body_len < offsets[1]:
            raise SecurityError(f"tensor {name!r} is cut by the end of the bytes read")
        spans.append((offsets[0], offsets[1], name))
    spans.sort()
    cursor = 0
    for begin, end, name in spans:
        if begin != cursor:
            kind = "overlaps another" if begin < cursor else "leaves a gap before it"
            raise SecurityError(f"tensor {name!r} {kind}")
        cursor = end
    if cursor < body_len or (cursor != body_len and not prefix):
        raise SecurityError(f"safetensors data has {body_len - cursor} trailing bytes")
    return header, start


#: One tensor of a parsed header: ``(name, dtype, shape, begin, end)``, byte offsets from
#: the buffer's start.
Entry = tuple[str, torch.dtype, tuple[int, ...], int, int]


def parse_layout(
    data: bytes | bytearray | memoryview, *, prefix: bool = False
) -> tuple[int, list[Entry]]:
    """The checked header of a safetensors blob as ``(blob size, entries)``: what
    :func:`tensors_at` needs to build its tensors again without parsing. With ``prefix``
    (``data`` is a file's first bytes, :func:`parse_header`), the entries of the tensors
    beyond its end are left out: :func:`beyond` names them."""
    header, start = parse_header(data, prefix=prefix)
    size = len(memoryview(data))
    entries = [
        (
            name,
            DTYPES[entry["dtype"]],
            tuple(entry["shape"]),
            start + entry["data_offsets"][0],
            start + entry["data_offsets"][1],
        )
        for name, entry in header.items()
    ]
    return size, [e for e in entries if e[4] <= size]


def beyond(data: bytes | bytearray | memoryview) -> list[str]:
    """Names of the tensors a file's first bytes (``data``) list but do not hold."""
    header, start = parse_header(data, prefix=True)
    size = len(memoryview(data))
    return sorted(n for n, e in header.items() if start + e["data_offsets"][1] > size)


def tensors_at(entries: list[Entry], data: bytearray | memoryview) -> dict[str, torch.Tensor]:
    """Tensors over writable ``data`` at the places :func:`parse_layout` found (zero-copy)."""
    view = memoryview(data)
    tensors: dict[str, torch.Tensor] = {}
    for name, dtype, shape, begin, end in entries:
        if end == begin:
            tensors[name] = torch.empty(shape, dtype=dtype)
        else:
            tensors[name] = torch.frombuffer(view[begin:end], dtype=dtype).view(shape)
    return tensors


def load_tensors(data: bytes | bytearray | memoryview) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors blob, sharing memory with ``data`` where possible.

    Pass a ``bytearray`` (writable) to get zero-copy tensors; read-only ``bytes`` are copied
    once into a bytearray first, since torch tensors must be writable.
    """
    if isinstance(data, bytes) or (isinstance(data, memoryview) and data.readonly):
        data = bytearray(data)
    return tensors_at(parse_layout(data)[1], data)


def save_aligned(
    tensors: dict[str, torch.Tensor], path: str, *, tail: frozenset[str] = frozenset()
) -> int:
    """Write ``tensors`` as safetensors with the data section starting on a multiple of
    :data:`ALIGN_BYTES` (the header is padded with spaces, as the format allows) and the
    tensors whose size is a multiple of 16 first: each of those starts 16-byte aligned in a
    buffer the file is read into at an aligned address (torch's int8 packed kernel needs
    that of its weight). The others follow, widest dtype first. The ``tail`` tensors come
    after all others (in the same order among themselves); returns the offset where they
    start (the file's size without a tail): a reader that needs none of them reads only
    the file's first bytes (:func:`parse_layout` with ``prefix``)."""
    names = {v: k for k, v in DTYPES.items()}
    items = [(n, t.detach().contiguous().cpu()) for n, t in tensors.items()]
    items.sort(key=lambda it: (it[0] in tail, it[1].nbytes % 16 != 0, -it[1].element_size(), it[0]))
    header: dict[str, Any] = {}
    offset = 0
    tail_offset: int | None = None
    for name, tensor in items:
        if name in tail and tail_offset is None:
            tail_offset = offset
        header[name] = {
            "dtype": names[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + tensor.nbytes],
        }
        offset += tensor.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-(8 + len(raw)) % ALIGN_BYTES)
    with open(path, "wb") as out:
        out.write(struct.pack("<Q", len(raw)))
        out.write(raw)
        for _, tensor in items:
            if tensor.nbytes:
                out.write(tensor.view(-1).view(torch.uint8).numpy().tobytes())
    return 8 + len(raw) + (offset if tail_offset is None else tail_offset)
