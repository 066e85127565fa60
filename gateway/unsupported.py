"""OpenAI request fields the gateway cannot serve yet, refused by name instead of ignored.

One table, :data:`UNSUPPORTED`: a field, the routes it applies to, when a value asks for
something (``tools: []`` and ``best_of: 1`` ask for nothing and pass) and what to tell the
client. A field the engine learns to serve is one entry
removed here (and handled in :mod:`gateway.requests`). Every refusal is a 400 in OpenAI's
shape with ``param`` set to the field and ``code`` ``unsupported_parameter``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.errors import ApiError, bad_request

CHAT = "chat"
COMPLETION = "completion"
EMBEDDINGS = "embeddings"
GENERATE = (CHAT, COMPLETION)


def _given(value: Any) -> bool:
    """Anything but null, false, an empty list or map."""
    return value is not None and value is not False and value != [] and value != {}


def _not_one(value: Any) -> bool:
    return value is not None and not (type(value) is int and value == 1)


def _tool_choice(value: Any) -> bool:
    return value not in (None, "none", "auto")


@dataclass(frozen=True)
class Unsupported:
    """One field the gateway refuses when a request asks for it."""

    field: str
    routes: tuple[str, ...]
    #: Whether a value asks for something (null, false, [] or 1 often do not).
    asks: Callable[[Any], bool]
    #: The message: names the field and says what to do instead.
    why: str


#: Every field refused, in the order they are checked.
UNSUPPORTED: tuple[Unsupported, ...] = (
    Unsupported("tools", GENERATE, _given, "'tools' is not supported: no tool calling"),
    Unsupported(
        "tool_choice", GENERATE, _tool_choice, "'tool_choice' is not supported: no tool calling"
    ),
    Unsupported("functions", GENERATE, _given, "'functions' is not supported: no function calling"),
    Unsupported(
        "function_call",
        GENERATE,
        _tool_choice,
        "'function_call' is not supported: no function calling",
    ),
    Unsupported("logit_bias", GENERATE, _given, "'logit_bias' is not supported"),
    Unsupported("best_of", (COMPLETION,), _not_one, "'best_of' must be 1"),
    Unsupported("echo", (COMPLETION,), _given, "'echo' is not supported"),
    Unsupported("suffix", (COMPLETION,), _given, "'suffix' is not supported: no insertion"),
    Unsupported("audio", (CHAT,), _given, "'audio' is not supported: text answers only"),
    Unsupported("prediction", (CHAT,), _given, "'prediction' is not supported"),
    Unsupported(
        "dimensions",
        (EMBEDDINGS,),
        _given,
        "'dimensions' is not supported: the model's own size is returned",
    ),
)


def refuse_unsupported(body: dict[str, Any], route: str) -> None:
    """Raise a 400 naming the first field of ``body`` that asks for what ``route`` cannot do.

    Raises:
        ApiError: 400, ``param`` = the field, ``code`` = ``unsupported_parameter``.
    """
    for entry in UNSUPPORTED:
        if route in entry.routes and entry.field in body and entry.asks(body[entry.field]):
            raise unsupported(entry)


def unsupported(entry: Unsupported) -> ApiError:
    """The 400 of one table entry."""
    return bad_request(entry.why, code="unsupported_parameter", param=entry.field)
