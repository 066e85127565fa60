"""What a job may hold: a model name and inputs, checked strictly (the tasks and their
parameters are declared in :mod:`sw_core.schema`).

Used by the producer before a job is enqueued and by :func:`sw_core.pipeline.jobs.decode_entry` on
every entry a worker reads; every refusal is a :class:`~sw_core.exceptions.JobError` naming
the field and the rule.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from sw_core.exceptions import JobError
from sw_core.schema import (
    MAX_CHAT_MESSAGES,
    MAX_TASK_INPUTS,
    MAX_TOKEN_IDS,
    Task,
    check_params,
    check_task,
    short,
)
from sw_core.settings import Settings

#: The one rule for model names (job fields, the registry, SW_MODELS).
MODEL_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/@+-]{0,127}")

_MAX_TOKEN_ID = (1 << 31) - 1


def validate_request(
    model: Any, task: Any, inputs: Any, params: Mapping[str, Any], settings: Settings
) -> tuple[str, Task, list[Any], dict[str, Any]]:
    """Check a job as a producer submits it; returns the cleaned ``(model, task, inputs, params)``.

    Raises:
        JobError: unknown task, bad model name, wrong input types, unknown or ill-typed params.
    """
    model = check_name(model, "model")
    task = check_task(task)
    check_unicode(inputs, "inputs")
    check_unicode(params, "params")
    inputs = check_inputs(task, inputs, settings)
    params = check_params(task, params, settings)
    check_outputs(len(inputs), params)
    return model, task, inputs, params


def check_outputs(inputs: int, params: Mapping[str, Any]) -> None:
    """A generate job's outputs (inputs x ``n``) stay within ``MAX_TASK_INPUTS["generate"]``."""
    n = params.get("n", 1)
    most = MAX_TASK_INPUTS["generate"]
    if isinstance(n, int) and inputs * n > most:
        raise JobError(
            f"{inputs} inputs x n={n} completions make {inputs * n} outputs; at most "
            f"{most} are allowed in one job"
        )


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


def check_inputs(task: Task, inputs: Any, settings: Settings) -> list[Any]:
    if not isinstance(inputs, list) or not inputs:
        raise JobError(f"inputs of a {task} job must be a non-empty list, got {short(inputs)}")
    if len(inputs) > MAX_TASK_INPUTS[task]:
        raise JobError(
            f"{len(inputs)} inputs in one {task} job; at most {MAX_TASK_INPUTS[task]} are allowed"
        )
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
        most = settings.max_input_tokens or MAX_TOKEN_IDS
        if len(seq) > most:
            raise JobError(
                f"input {i} has {len(seq)} tokens; at most {most} are allowed"
                + (" (SW_MAX_INPUT_TOKENS)" if settings.max_input_tokens else "")
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
