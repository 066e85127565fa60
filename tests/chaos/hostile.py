"""Hypothesis strategies for hostile job-stream entries (scenario 7).

An entry is a ``{field: value}`` map as ``XADD`` takes it: field names and values are bytes.
The strategies mix near-valid jobs (so the checks past the first one are reached) with
random field sets, wrong types, huge and deeply nested msgpack, length headers that claim
gigabytes, invalid UTF-8, unicode edge cases and giant texts. Large values are built from
a drawn size, not drawn byte by byte, so a case stays cheap to generate.
"""

from __future__ import annotations

import json
from typing import Any

import msgpack
from hypothesis import strategies as st

from sw_core.pipeline.jobs import META_FIELDS
from sw_core.schema import TASKS

#: Models the fuzzed worker knows (``SW_MODELS``); others dead-letter as ModelError.
KNOWN_MODELS = ("m1", "m2")
#: Field names worth hitting: the meaningful ones, the hand-entry ones and some params.
FIELD_NAMES = (
    *sorted(META_FIELDS),
    "text",
    "inputs",
    "normalize",
    "max_new_tokens",
    "temperature",
    "top_p",
    "seed",
    "output",
    "do_sample",
)

UNICODE_EDGES = (
    "",
    "\x00",
    "\u202e",  # right-to-left override
    "\ufeff",  # byte-order mark
    "e\u0301" * 50,  # combining accents
    "\U0001f600" * 100,  # astral plane
    "\u0000model",
    "m1\x00",
    "m1\n",
    " m1",
    "../../etc/passwd",
    "%s%n%x",
    "${jndi:ldap://x}",
)

INVALID_UTF8 = (b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"m1\xfe", b"\x80" * 10)


def nested_array_bytes(depth: int) -> bytes:
    """msgpack of ``[[[...[nil]...]]]`` nested ``depth`` times, built without recursion."""
    return b"\x91" * depth + b"\xc0"


def nested_map_payload(depth: int) -> bytes:
    """``{"inputs": [[[...]]]}`` with the inputs nested ``depth`` deep."""
    return b"\x81\xa6inputs" + nested_array_bytes(depth)


#: Length headers that claim far more than follows (array32, map32, str32, bin32, ext32).
CLAIMING_HEADERS = (
    b"\xdd\xff\xff\xff\xff",
    b"\xdf\xff\xff\xff\xff",
    b"\xdb\xff\xff\xff\xff" + b"a" * 16,
    b"\xc6\xff\xff\xff\xff" + b"a" * 16,
    b"\xc9\xff\xff\xff\xff\x01",
    b"\x81\xa6inputs\xdd\x7f\xff\xff\xff",
)

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.binary(max_size=20),
)
_structures = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.dictionaries(st.one_of(st.text(max_size=8), st.binary(max_size=8)), inner, max_size=5),
    ),
    max_leaves=20,
)


@st.composite
def payloads(draw: st.DrawFn) -> bytes:
    """A ``payload`` field: sometimes valid, mostly subtly or grossly wrong."""
    kind = draw(
        st.sampled_from(
            [
                "valid",
                "valid-params",
                "random",
                "wrong-inputs",
                "mixed-keys",
                "deep",
                "claims",
                "huge-text",
                "huge-bytes",
                "many-inputs",
                "trailing",
                "not-msgpack",
            ]
        )
    )
    if kind == "valid":
        texts = draw(st.lists(st.text(min_size=1, max_size=30), min_size=1, max_size=4))
        return msgpack.packb({"inputs": texts, "params": {}}, use_bin_type=True)
    if kind == "valid-params":
        params = draw(st.dictionaries(st.sampled_from(FIELD_NAMES), _scalars, max_size=4))
        inputs = draw(
            st.one_of(
                st.lists(st.text(min_size=1, max_size=10), min_size=1, max_size=3),
                st.lists(st.lists(st.integers(-5, 2**40), min_size=1, max_size=5), max_size=3),
            )
        )
        return msgpack.packb({"inputs": inputs, "params": params}, use_bin_type=True)
    if kind == "random":
        return msgpack.packb(draw(_structures), use_bin_type=True)
    if kind == "wrong-inputs":
        inputs = draw(_structures)
        return msgpack.packb({"inputs": inputs, "params": draw(_structures)}, use_bin_type=True)
    if kind == "mixed-keys":
        # text and binary map keys side by side (msgpack allows both as map keys)
        keys = draw(st.lists(st.text(max_size=6), min_size=1, max_size=3))
        keys += draw(st.lists(st.binary(max_size=6), min_size=1, max_size=3))
        body: dict[Any, Any] = {"inputs": ["x"], **{k: 1 for k in keys}}
        if draw(st.booleans()):
            body = {"inputs": ["x"], "params": {k: 1 for k in keys}}
        return msgpack.packb(body, use_bin_type=True)
    if kind == "deep":
        depth = draw(st.sampled_from([5, 6, 50, 600, 5_000, 100_000]))
        return draw(st.sampled_from([nested_array_bytes(depth), nested_map_payload(depth)]))
    if kind == "claims":
        return draw(st.sampled_from(CLAIMING_HEADERS))
    if kind == "huge-text":
        size = draw(st.sampled_from([64 << 10, (1 << 20) - 64, (1 << 20) + 1, 3 << 20]))
        char = draw(st.sampled_from(["a", "\u00e9", "\U0001f600"]))
        text = char * (size // len(char.encode()))
        return msgpack.packb({"inputs": [text]}, use_bin_type=True)
    if kind == "huge-bytes":
        size = draw(st.sampled_from([(1 << 20) + 1, 2 << 20]))
        return msgpack.packb({"inputs": [b"\0" * size]}, use_bin_type=True)
    if kind == "many-inputs":
        count = draw(st.sampled_from([257, 5_000, 70_000]))
        return msgpack.packb({"inputs": ["x"] * count}, use_bin_type=True)
    if kind == "trailing":
        return msgpack.packb({"inputs": ["x"]}, use_bin_type=True) + draw(st.binary(max_size=8))
    return draw(st.binary(max_size=64))


@st.composite
def values(draw: st.DrawFn, name: bytes) -> bytes:
    """A field value fitting (or mis-fitting) its name."""
    text_name = name.decode("utf-8", "replace")
    roll = draw(st.integers(0, 9))
    if text_name == "payload" and roll < 7:
        return draw(payloads())
    if text_name == "model" and roll < 6:
        return draw(st.sampled_from([*KNOWN_MODELS, "unknown-model", "x" * 200])).encode()
    if text_name == "task" and roll < 6:
        return draw(st.sampled_from([*TASKS, "EMBED", "embed ", "rm -rf"])).encode()
    if text_name == "inputs" and roll < 6:
        value = draw(st.one_of(_structures, st.just([[1, 2, 3]]), st.just(["a"])))
        try:
            return json.dumps(value).encode()
        except (TypeError, ValueError):
            return b"[1,"
    if roll == 0:
        return draw(st.sampled_from(INVALID_UTF8))
    if roll == 1:
        return draw(st.sampled_from(UNICODE_EDGES)).encode("utf-8")
    if roll == 2:
        size = draw(st.sampled_from([10_000, (1 << 20) + 10, 2 << 20]))
        return b"a" * size
    if roll == 3:
        return draw(
            st.sampled_from(
                [b"-1", b"0", b"1e9", b"nan", b"inf", b"9" * 5000, b"\xd9\xa1", b"1_000", b" 2 "]
            )
        )
    if roll == 4:
        return draw(payloads())
    return draw(st.text(max_size=40)).encode("utf-8")


@st.composite
def entries(draw: st.DrawFn) -> dict[bytes, bytes]:
    """A hostile stream entry (at least one field: XADD needs one)."""
    base = draw(st.sampled_from(["near-valid", "hand", "random", "many-fields"]))
    names: list[bytes]
    if base == "near-valid":
        names = [b"model", b"task", b"payload"]
        names += [n.encode() for n in draw(st.lists(st.sampled_from(FIELD_NAMES), max_size=4))]
    elif base == "hand":
        names = [b"model", b"task", draw(st.sampled_from([b"text", b"inputs"]))]
        names += [n.encode() for n in draw(st.lists(st.sampled_from(FIELD_NAMES), max_size=3))]
    elif base == "many-fields":
        count = draw(st.sampled_from([33, 200, 2_000]))
        names = [b"model", b"task"] + [f"f{i}".encode() for i in range(count)]
    else:
        names = draw(
            st.lists(
                st.one_of(
                    st.sampled_from(FIELD_NAMES).map(str.encode), st.binary(min_size=1, max_size=12)
                ),
                min_size=1,
                max_size=8,
            )
        )
    entry: dict[bytes, bytes] = {}
    for name in names:
        if base == "many-fields" and name.startswith(b"f"):
            entry[name] = b"1"
        else:
            entry[name] = draw(values(name))
    if base in ("near-valid", "hand") and draw(st.integers(0, 9)) < 8:
        # mostly a valid model and task, so the checks behind them are reached
        entry[b"model"] = draw(st.sampled_from(KNOWN_MODELS)).encode()
        entry[b"task"] = draw(st.sampled_from(TASKS)).encode()
    return entry


def entry_size_bytes(entry: dict[bytes, bytes]) -> int:
    return sum(len(k) + len(v) for k, v in entry.items())
