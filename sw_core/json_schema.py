"""JSON schemas of the ``json_schema`` generate param (OpenAI's ``response_format``): how
constrained JSON is written and the check that a schema compiles with llguidance, so that a
schema llguidance refuses is refused before anything is queued."""

from __future__ import annotations

import json

from sw_core.exceptions import JobError


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


#: How constrained JSON is written: no free whitespace (a model could pad with it forever),
#: items and keys separated as Python's ``json.dumps`` does.
JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def json_grammar(schema: str) -> str:
    """The llguidance grammar of a JSON schema (a JSON text), in :data:`JSON_STYLE`."""
    from llguidance import LLMatcher

    return LLMatcher.grammar_from_json_schema(schema, overrides=JSON_STYLE)  # type: ignore[arg-type]


def check_json_schema(name: str, value: str) -> None:
    """A ``json_schema`` param: a JSON schema that llguidance can compile.

    Raises:
        JobError: not JSON, or a schema llguidance refuses (its reason).
    """
    try:
        from llguidance import LLMatcher
    except ImportError:  # pragma: no cover - a dependency of the package
        raise JobError(f"'{name}' needs the llguidance package on this host") from None
    try:
        if not isinstance(json.loads(value), dict):
            raise JobError(f"'{name}' must be a JSON object (a JSON schema)")
    except ValueError as exc:
        raise JobError(f"'{name}' is not valid JSON: {exc}") from None
    try:
        error = LLMatcher.validate_grammar(json_grammar(value))
    except (ValueError, TypeError) as exc:
        error = str(exc) or type(exc).__name__
    if error:
        raise JobError(f"'{name}' is not a usable JSON schema: {_short(error)}")
