"""What a job may ask for: tasks, inputs and per-task parameters, checked strictly.

Used by the producer before a job is enqueued and by :func:`sw_core.pipeline.jobs.decode_entry` on
every entry a worker reads; every refusal is a :class:`~sw_core.exceptions.JobError` naming
the field and the rule.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sw_core.exceptions import JobError
from sw_core.settings import Settings
from sw_core.utils import stop_sequences

#: The one rule for model names (job fields, the registry, SW_MODELS).
MODEL_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/@+-]{0,127}")

#: Tasks a worker can run.
TASKS: tuple[str, ...] = ("embed", "generate", "forward")
#: Most inputs (texts or token sequences) in one job.
MAX_INPUTS = 256
#: Most fields in one stream entry and most entries in a params map.
MAX_FIELDS = 32
#: Most messages in one chat input of a generate job.
MAX_CHAT_MESSAGES = 64

_MAX_TOKEN_ID = (1 << 31) - 1


@dataclass(frozen=True)
class ParamSpec:
    """Type and range of one task parameter (``list``: stop sequences, one string or a list of
    strings, see :func:`sw_core.utils.stop_sequences`)."""

    kind: type
    low: float | None = None
    high: float | None = None
    #: Name of a Settings field holding the upper bound (e.g. ``max_new_tokens_limit``).
    high_setting: str | None = None
    #: ``low`` is exclusive (``temperature > 0``).
    low_exclusive: bool = False
    choices: tuple[str, ...] = ()


#: Parameters each task accepts; anything else is refused.
PARAM_SCHEMAS: dict[str, dict[str, ParamSpec]] = {
    "embed": {
        "normalize": ParamSpec(bool),
        "truncate": ParamSpec(bool),
        "details": ParamSpec(bool),
    },
    "generate": {
        "max_new_tokens": ParamSpec(int, low=1, high_setting="max_new_tokens_limit"),
        "do_sample": ParamSpec(bool),
        "temperature": ParamSpec(float, low=0, high=100, low_exclusive=True),
        "top_p": ParamSpec(float, low=0, high=1, low_exclusive=True),
        "top_k": ParamSpec(int, low=0, high=1 << 20),
        "seed": ParamSpec(int, low=0, high=(1 << 63) - 1),
        "chat": ParamSpec(bool),
        "stop": ParamSpec(list),
        "repetition_penalty": ParamSpec(float, low=0, low_exclusive=True),
    },
    "forward": {
        "output": ParamSpec(str, choices=("hidden", "logits")),
        "positions": ParamSpec(str, choices=("all", "last")),
    },
}


def validate_request(
    model: Any, task: Any, inputs: Any, params: Mapping[str, Any], settings: Settings
) -> tuple[str, str, list[Any], dict[str, Any]]:
    """Check a job as a producer submits it; returns the cleaned ``(model, task, inputs, params)``.

    Raises:
        JobError: unknown task, bad model name, wrong input types, unknown or ill-typed params.
    """
    model = check_name(model, "model")
    task = check_task(task)
    check_unicode(inputs, "inputs")
    check_unicode(params, "params")
    return model, task, check_inputs(task, inputs, settings), check_params(task, params, settings)


def check_unicode(value: Any, where: str) -> None:
    """Refuse text that cannot be encoded as UTF-8 (a lone surrogate, such as ``"\\ud800"``
    from JSON or an undecodable byte of a command line), anywhere in ``value``.

    Raises:
        JobError: naming where the text is and the position of the bad character.
    """
    stack: list[tuple[Any, str]] = [(value, where)]
    while stack:
        item, path = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise JobError(
                    f"{path} is not valid Unicode text: character {exc.start} is "
                    f"{item[exc.start]!r} (a lone surrogate or an undecodable byte)"
                ) from None
        elif isinstance(item, Mapping):
            stack += [(k, f"{path} key") for k in item] + [
                (v, f"{path}[{k!r}]") for k, v in item.items()
            ]
        elif isinstance(item, (list, tuple)):
            stack += [(v, f"{path}[{i}]") for i, v in enumerate(item)]


def has_text(text: str) -> bool:
    """Whether ``text`` holds something other than whitespace (the engine refuses a prompt
    or a chat without any)."""
    return bool(text.strip())


def coerce_params(task: str, text_params: Mapping[str, Any], settings: Settings) -> dict[str, Any]:
    """Params given as text (``--param k=v``, hand-added fields) -> typed, checked values.

    Raises:
        JobError: unknown task or param, or a value of the wrong type or out of range.
    """
    return check_params(check_task(task), text_params, settings, from_text=True)


def check_name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not MODEL_NAME_RE.fullmatch(value):
        raise JobError(
            f"{what} must be a name of 1-128 letters, digits or '_.:/@+-', got {short(value)}"
        )
    return value


def check_task(task: Any) -> str:
    if task not in TASKS:
        raise JobError(f"unknown task {short(task)}; tasks are {', '.join(TASKS)}")
    return str(task)


def check_inputs(task: str, inputs: Any, settings: Settings) -> list[Any]:
    if not isinstance(inputs, list) or not inputs:
        raise JobError(f"inputs of a {task} job must be a non-empty list, got {short(inputs)}")
    if len(inputs) > MAX_INPUTS:
        raise JobError(f"{len(inputs)} inputs in one job; at most {MAX_INPUTS} are allowed")
    if task == "generate":
        return [_check_generate_input(i, item) for i, item in enumerate(inputs)]
    if task == "embed":
        for i, text in enumerate(inputs):
            if not isinstance(text, str) or not has_text(text):
                raise JobError(
                    f"input {i} of an embed job must be a non-empty string (not only whitespace)"
                )
        return list(inputs)
    for i, seq in enumerate(inputs):
        if not isinstance(seq, list) or not seq:
            raise JobError(f"input {i} of a forward job must be a non-empty list of token ids")
        if len(seq) > settings.max_input_tokens:
            raise JobError(
                f"input {i} has {len(seq)} tokens; max_input_tokens is {settings.max_input_tokens}"
            )
        for token in seq:
            if type(token) is not int or not 0 <= token <= _MAX_TOKEN_ID:
                raise JobError(
                    f"input {i} of a forward job holds {short(token)}: token ids are ints >= 0"
                )
    return [list(seq) for seq in inputs]


def _check_generate_input(i: int, item: Any) -> Any:
    """A prompt (non-empty text) or a chat: a list of ``{role, content}`` texts."""
    if isinstance(item, str) and has_text(item):
        return item
    if isinstance(item, list):
        _check_chat(i, item)
        if not any(has_text(message["content"]) for message in item):
            raise JobError(f"input {i}: the chat holds no text (every 'content' is empty)")
        return [dict(message) for message in item]
    raise JobError(
        f"input {i} of a generate job must be a non-empty string (not only whitespace) or a "
        "chat (a list of {role, content} maps)"
    )


def _check_chat(i: int, messages: list[Any]) -> None:
    """A generate input given as chat messages (the tokenizer's chat template formats it)."""
    if not messages or len(messages) > MAX_CHAT_MESSAGES:
        raise JobError(f"input {i}: a chat holds 1 to {MAX_CHAT_MESSAGES} messages")
    for message in messages:
        if (
            not isinstance(message, dict)
            or set(message) != {"role", "content"}
            or not all(isinstance(v, str) for v in message.values())
        ):
            raise JobError(
                f"input {i}: each chat message is a map of 'role' and 'content' (text), "
                f"got {short(message)}"
            )


def check_params(
    task: str, params: Mapping[str, Any], settings: Settings, *, from_text: bool = False
) -> dict[str, Any]:
    schema = PARAM_SCHEMAS[task]
    if not isinstance(params, Mapping):
        raise JobError(f"params must be a map, got {short(params)}")
    if len(params) > MAX_FIELDS:
        raise JobError(f"{len(params)} params; at most {MAX_FIELDS} are allowed")
    out: dict[str, Any] = {}
    for name, value in params.items():
        spec = schema.get(name) if isinstance(name, str) else None
        if spec is None:
            known = ", ".join(sorted(schema)) or "none"
            raise JobError(f"unknown param {short(name)} for task {task}; known: {known}")
        if from_text:
            value = _coerce_text(name, value, spec)
        out[name] = _check_value(name, value, spec, settings)
    return out


def _coerce_text(name: str, raw: Any, spec: ParamSpec) -> Any:
    """A param given as text (hand-added entry, CLI ``--param k=v``) -> its type."""
    text = raw.decode("utf-8", "replace") if isinstance(raw, (bytes, bytearray)) else str(raw)
    if spec.kind is list:  # one stop sequence, as given: spaces and newlines count
        return [text]
    text = text.strip()
    try:
        if spec.kind is bool:
            lowered = text.lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected true/false")
        if spec.kind is int:
            return int(text)
        if spec.kind is float:
            return float(text)
    except ValueError:
        raise JobError(f"param {name}={short(text)} is not a valid {spec.kind.__name__}") from None
    return text


def _check_value(name: str, value: Any, spec: ParamSpec, settings: Settings) -> Any:
    kind = spec.kind
    if kind is list:
        try:
            return stop_sequences(value)
        except ValueError as exc:
            raise JobError(f"param {name} {exc}") from None
    if kind is float and type(value) is int:
        value = float(value)
    if type(value) is not kind:
        raise JobError(f"param {name} must be {kind.__name__}, got {short(value)}")
    if kind is str:
        if spec.choices and value not in spec.choices:
            raise JobError(f"param {name} must be one of {', '.join(spec.choices)}")
        return value
    if kind is float and not math.isfinite(value):
        raise JobError(f"param {name} must be a finite number, got {value}")
    if kind in (int, float):
        high = getattr(settings, spec.high_setting) if spec.high_setting else spec.high
        low = spec.low
        too_low = low is not None and (value <= low if spec.low_exclusive else value < low)
        if too_low or (high is not None and value > high):
            lo = "" if low is None else f"{'>' if spec.low_exclusive else '>='} {low:g}"
            hi = "" if high is None else f"<= {high:g}"
            bound = " and ".join(b for b in (lo, hi) if b)
            raise JobError(f"param {name}={value} is out of range: must be {bound}")
    return value


def short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
