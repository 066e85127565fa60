"""The chunks an inference worker holds in memory, as one field of its heartbeat hash.

``resident_chunks`` is JSON ``{"model": ["chunk name", ...]}`` of the models the worker has
open, bounded to :data:`MAX_FIELD_BYTES` (whole models are left out past it, and listed in
``"_truncated"``), so the gateway's chunk map can show where each chunk is now.
"""

from __future__ import annotations

import json
from typing import Any

#: The heartbeat hash field.
RESIDENT_FIELD = "resident_chunks"
#: Longest value of the field.
MAX_FIELD_BYTES = 16 << 10


def encode_resident(resident: dict[str, list[str]]) -> str:
    """The field's value for ``{model: chunk names}``, at most :data:`MAX_FIELD_BYTES`."""
    kept: dict[str, Any] = {}
    left_out: list[str] = []
    size = 2
    for model in sorted(resident):
        names = list(resident[model])
        part = len(json.dumps({model: names})) + 1
        if size + part > MAX_FIELD_BYTES - 512:
            left_out.append(model[:128])
            continue
        kept[model], size = names, size + part
    if left_out:
        kept["_truncated"] = left_out[:8]
    return json.dumps(kept, separators=(",", ":"))


def decode_resident(value: Any) -> dict[str, set[str]]:
    """``{model: chunk names}`` of a worker's field (empty when absent or unreadable)."""
    if not isinstance(value, (str, bytes)) or len(value) > MAX_FIELD_BYTES:
        return {}
    try:
        data = json.loads(value)
    except ValueError:
        return {}
    if not isinstance(data, dict):
        return {}
    return {
        str(model): {str(n) for n in names}
        for model, names in data.items()
        if model != "_truncated" and isinstance(names, list)
    }
