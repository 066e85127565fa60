"""OpenAI request bodies -> job inputs and parameters, checked before anything is queued.

Each parser takes the decoded JSON body and returns what the job needs, or raises a 400
:class:`~gateway.errors.ApiError` naming the field. Fields that change nothing here
(``user``, ``logprobs: false`` ...) are accepted; fields asking for something the engine
cannot do are refused by name rather than silently ignored (the table of
:mod:`gateway.unsupported`). ``stop`` (a string or up to 4 strings) and the non-standard
``repetition_penalty`` (transformers' multiplicative penalty, > 0, 1 = off) go to the job,
and so does every field the job schema names as setting a param (``n``, ``logprobs``,
``top_logprobs``, ``frequency_penalty``, ``presence_penalty``, ``response_format`` -> its
``json_schema``), checked by the schema;
``stream_options.include_usage`` asks for a last chunk with the usage.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from typing import Any

from gateway.errors import bad_request
from gateway.unsupported import CHAT, COMPLETION, EMBEDDINGS, refuse_unsupported
from sw_core.exceptions import JobError
from sw_core.pipeline.job_checks import has_text
from sw_core.schema import PARAM_SPECS, GenerateParams, check_value
from sw_core.utils import is_finite_number, is_int, stop_sequences

#: Roles a chat message may have.
ROLES = ("system", "user", "assistant", "developer", "tool")


@dataclass
class GenerateCall:
    """One generate job: its model, the one input (a prompt or a chat) and its params."""

    model: str
    prompt: str | list[dict[str, str]]
    stream: bool
    params: dict[str, Any] = field(default_factory=dict)
    #: ``stream_options.include_usage``: a last chunk with the usage and no choices.
    include_usage: bool = False


@dataclass
class EmbedCall:
    """One embed job."""

    model: str
    inputs: list[str]
    base64: bool


def parse_chat(body: Any) -> GenerateCall:
    """``POST /v1/chat/completions``."""
    body = _object(body)
    refuse_unsupported(body, CHAT)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' must be a non-empty list of {role, content} messages")
    chat = [_message(i, m) for i, m in enumerate(messages)]
    if not any(has_text(m["content"]) for m in chat):
        raise bad_request("'messages' hold no text: every 'content' is empty", param="messages")
    return _generate_call(body, chat, CHAT)


def _generate_call(body: dict[str, Any], prompt: Any, route: str, **extra: Any) -> GenerateCall:
    stream = _stream(body)
    params = {**_generate_params(body, route), **extra}
    return GenerateCall(_model(body), prompt, stream, params, _include_usage(body, stream))


def _include_usage(body: dict[str, Any], stream: bool) -> bool:
    """``stream_options``: null, or ``{"include_usage": bool}`` with ``stream`` true."""
    options = body.get("stream_options")
    if options is None:
        return False
    if not stream:
        raise bad_request(
            "'stream_options' is only allowed with 'stream': true", param="stream_options"
        )
    if not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool):
        raise bad_request(
            "'stream_options' must be an object like {\"include_usage\": true}",
            param="stream_options",
        )
    return bool(options.get("include_usage", False))


def parse_completion(body: Any) -> GenerateCall:
    """``POST /v1/completions``: one text prompt, completed without the chat template."""
    body = _object(body)
    refuse_unsupported(body, COMPLETION)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str) or not has_text(prompt):
        raise bad_request("'prompt' must be one string with some text", param="prompt")
    return _generate_call(body, prompt, COMPLETION, chat=False)


def parse_embeddings(body: Any) -> EmbedCall:
    """``POST /v1/embeddings``: ``input`` is a string or a list of strings."""
    body = _object(body)
    refuse_unsupported(body, EMBEDDINGS)
    given = body.get("input")
    inputs = [given] if isinstance(given, str) else given
    if not isinstance(inputs, list) or not inputs:
        raise bad_request("'input' must be a non-empty string or list of strings")
    for i, text in enumerate(inputs):
        if not isinstance(text, str) or not has_text(text):
            raise bad_request(
                f"input {i} must be a string with some text (token-id inputs are not supported)",
                param="input",
            )
    fmt = body.get("encoding_format") or "float"
    if fmt not in ("float", "base64"):
        raise bad_request("'encoding_format' must be 'float' or 'base64'")
    return EmbedCall(_model(body), inputs, fmt == "base64")


# ---------------------------------------------------------------------------- pieces
def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    return body


def _model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("'model' is required: one of GET /v1/models")
    return model


def _stream(body: dict[str, Any]) -> bool:
    stream = body.get("stream", False)
    if stream is None:
        return False
    if not isinstance(stream, bool):
        raise bad_request("'stream' must be true or false")
    return stream


def _message(i: int, message: Any) -> dict[str, str]:
    if not isinstance(message, dict) or message.get("role") not in ROLES:
        raise bad_request(f"message {i} must be an object with a 'role' of {', '.join(ROLES)}")
    content = message.get("content")
    if isinstance(content, list):  # content parts: only text ones can be served
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                raise bad_request(f"message {i}: only text content parts are supported")
            texts.append(str(part.get("text", "")))
        content = "".join(texts)
    if content is None:
        content = ""
    if not isinstance(content, str):
        raise bad_request(f"message {i}: 'content' must be a string or a list of text parts")
    return {"role": message["role"], "content": content}


#: Generate params whose OpenAI fields need more than the schema's check (an OpenAI range
#: or default that differs from the job's); handled one by one in :func:`_generate_params`.
#: Every other param with an OpenAI field is mapped from the schema as it is.
_BY_HAND = frozenset(
    {"max_new_tokens", "temperature", "top_p", "seed", "stop", "repetition_penalty"}
)


_DEFAULTS = {f.name: f.default for f in fields(GenerateParams)}


class _NoBounds:
    """Bounds for the schema check of the params mapped here (none reads a setting)."""

    max_new_tokens_limit = 1 << 30


def _schema_params(body: dict[str, Any], route: str) -> dict[str, Any]:
    """Every generate param that an OpenAI field sets (:attr:`ParamSpec.openai`), checked by
    the schema; a field in OpenAI's shape is first turned into the param's (``logprobs`` of a
    completion, ``response_format``)."""
    params: dict[str, Any] = {}
    for name, spec in PARAM_SPECS["generate"].items():
        if name in _BY_HAND:
            continue
        field_name = next((f for f in spec.openai if body.get(f) is not None), None)
        if field_name is None:
            continue
        value = _openai_value(name, body[field_name], route, params)
        if value is None:
            continue
        try:
            checked = check_value(name, value, spec, _NoBounds())
        except JobError as exc:
            raise bad_request(
                f"{exc}".replace(f"'{name}'", f"'{field_name}'", 1), param=field_name
            ) from None
        if checked != _DEFAULTS[name]:  # a value that asks for nothing stays out of the job
            params[name] = checked
    if params.get("top_logprobs") and not params.get("logprobs"):
        raise bad_request("'top_logprobs' needs 'logprobs': true", param="top_logprobs")
    return params


def _openai_value(name: str, value: Any, route: str, params: dict[str, Any]) -> Any:
    """An OpenAI field's value as the job param ``name`` takes it (None: leave it out)."""
    if name == "logprobs" and route == COMPLETION:
        # completions: ``logprobs`` is how many alternatives (0-5), and asks for logprobs
        if not is_int(value) or not 0 <= value <= 5:
            raise bad_request("'logprobs' must be a whole number from 0 to 5", param="logprobs")
        params["top_logprobs"] = value
        return True
    if name == "json_schema":
        return _response_format(value)
    return value


def _response_format(value: Any) -> str | None:
    """``response_format`` -> the job's ``json_schema`` (a JSON text; None for plain text)."""
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return '{"type": "object"}'
    if kind == "json_schema":
        spec = value.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if isinstance(schema, dict):
            return json.dumps(schema)
        raise bad_request(
            "'response_format' of type json_schema needs 'json_schema': {\"name\": ..., "
            '"schema": {...}}',
            param="response_format",
        )
    raise bad_request(
        '\'response_format\' must be {"type": "text"}, {"type": "json_object"} or '
        '{"type": "json_schema", "json_schema": {...}}',
        param="response_format",
    )


def _generate_params(body: dict[str, Any], route: str) -> dict[str, Any]:
    params: dict[str, Any] = {**_repetition_penalty(body), **_schema_params(body, route)}
    stop = body.get("stop")
    if stop is not None:
        try:
            stops = stop_sequences(stop)
        except ValueError as exc:
            raise bad_request(f"'stop' {exc}") from None
        if stops:
            params["stop"] = stops
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    if limit is not None:
        if not is_int(limit) or limit < 1:
            raise bad_request("'max_tokens' must be a whole number >= 1")
        params["max_new_tokens"] = limit
    temperature = body.get("temperature")
    if temperature is not None:
        if not is_finite_number(temperature) or not 0 <= temperature <= 2:
            raise bad_request("'temperature' must be a number from 0 to 2")
        if temperature > 0:
            params["do_sample"] = True
            params["temperature"] = float(temperature)
    top_p = body.get("top_p")
    if top_p is not None:
        if not is_finite_number(top_p) or not 0 < top_p <= 1:
            raise bad_request("'top_p' must be a number in (0, 1]")
        if top_p < 1:
            params["top_p"] = float(top_p)
    seed = body.get("seed")
    if seed is not None:
        if not is_int(seed) or seed < 0:
            raise bad_request("'seed' must be a whole number >= 0")
        params["seed"] = seed
    return params


def _repetition_penalty(body: dict[str, Any]) -> dict[str, Any]:
    """``repetition_penalty`` for the job (transformers' multiplicative penalty; OpenAI's
    additive ``frequency_penalty`` / ``presence_penalty`` are mapped from the schema)."""
    penalty = body.get("repetition_penalty")
    if penalty is None:
        return {}
    if not is_finite_number(penalty) or penalty <= 0:
        raise bad_request("'repetition_penalty' must be a number > 0 (1 = off)")
    return {"repetition_penalty": float(penalty)} if penalty != 1 else {}
