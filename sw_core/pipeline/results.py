"""How a job's result is stored: msgpack, float arrays packed as float32, size-capped.

Wire format of the ``result`` field of a job hash: one msgpack value. Every list that holds
only floats -- or only equally shaped such lists (an embedding, a (tokens, hidden) matrix) --
is stored as msgpack ext type :data:`FLOAT32_EXT` (1) whose data is ``ndim`` (one byte), then
``ndim`` dimensions (uint32 little-endian), then the values as float32 little-endian, row-major.
Everything else is plain msgpack. :func:`unpack_result` turns the arrays back into the same
nested lists of Python floats, so callers of ``Producer.result`` and ``sw result`` see the values
the engine computed (the engine computes in float32, so nothing is lost); a float64 value from
another handler is rounded to float32.

A packed result longer than ``max_result_bytes`` (``SW_MAX_RESULT_BYTES``) is refused with a
permanent :class:`ResultTooLargeError` naming its size.
"""

from __future__ import annotations

import struct
import sys
from array import array
from itertools import chain
from typing import Any

import msgpack

from sw_core.exceptions import ResultTooLargeError

#: msgpack ext type code of a packed float32 array.
FLOAT32_EXT = 1
#: Deepest float array packed (a batch of matrices is 3).
_MAX_NDIM = 4


def pack_result(result: Any, max_result_bytes: int) -> bytes:
    """msgpack of ``result`` with float arrays packed as float32.

    Raises:
        ResultTooLargeError: the packed result is over ``max_result_bytes``.
        TypeError, ValueError, OverflowError: ``result`` holds something msgpack cannot store.
    """
    packed = msgpack.packb(_with_arrays(result), use_bin_type=True)
    if len(packed) > max_result_bytes:
        raise ResultTooLargeError(
            f"the job's result is {len(packed):,} bytes, over SW_MAX_RESULT_BYTES="
            f"{max_result_bytes:,}; send fewer or shorter inputs, or for forward ask for "
            "less (positions=last, output=hidden)"
        )
    return packed


def unpack_result(data: bytes) -> Any:
    """The value :func:`pack_result` stored, float arrays as nested lists of floats."""
    return msgpack.unpackb(data, raw=False, ext_hook=_ext_hook, strict_map_key=False)


def _with_arrays(value: Any) -> Any:
    if isinstance(value, list):
        shape = _float_shape(value)
        if shape is not None:
            return msgpack.ExtType(FLOAT32_EXT, _pack_array(value, shape))
        return [_with_arrays(item) for item in value]
    if isinstance(value, dict):
        return {key: _with_arrays(item) for key, item in value.items()}
    return value


def _float_shape(value: list[Any], depth: int = 1) -> tuple[int, ...] | None:
    """The shape of a rectangular list of floats, else None."""
    if not value or depth > _MAX_NDIM:
        return None
    first = value[0]
    if type(first) is float:
        return (len(value),) if all(type(item) is float for item in value) else None
    if not isinstance(first, list):
        return None
    inner = _float_shape(first, depth + 1)
    if inner is None:
        return None
    for item in value[1:]:
        if not isinstance(item, list) or _float_shape(item, depth + 1) != inner:
            return None
    return (len(value), *inner)


def _pack_array(value: list[Any], shape: tuple[int, ...]) -> bytes:
    flat: Any = value
    for _ in range(len(shape) - 1):
        flat = chain.from_iterable(flat)
    values = array("f", flat)
    if sys.byteorder != "little":
        values.byteswap()
    return struct.pack(f"<B{len(shape)}I", len(shape), *shape) + values.tobytes()


def _ext_hook(code: int, data: bytes) -> Any:
    if code != FLOAT32_EXT:
        return msgpack.ExtType(code, data)
    ndim = data[0]
    shape = struct.unpack_from(f"<{ndim}I", data, 1)
    values = array("f")
    values.frombytes(data[1 + 4 * ndim :])
    count = 1
    for size in shape:
        count *= size
    if len(values) != count:
        raise ValueError(f"float32 array of shape {shape} holds {len(values)} values")
    if sys.byteorder != "little":
        values.byteswap()
    return _nest(values.tolist(), shape)


def _nest(flat: list[float], shape: tuple[int, ...]) -> list[Any]:
    rows: list[Any] = flat
    for size in reversed(shape[1:]):
        rows = [rows[i : i + size] for i in range(0, len(rows), size)]
    return rows
