"""The job schema, in one place: tasks, their parameters, job statuses and stream events.

Every side reads it: the producer and ``sw submit`` check a job's parameters against it
before anything is queued, workers check every entry they read against it again, the
gateway maps OpenAI request fields onto it, and the engine builds its typed requests from
it. A task's parameters are the fields of its dataclass (:class:`EmbedParams`,
:class:`GenerateParams`, :class:`ForwardParams`); each field carries its :class:`ParamSpec`
(type, range, the OpenAI field that sets it, a line of docs). Adding a parameter means adding
a field here and using it in the engine.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any, Literal, Protocol, TypeVar, cast

from sw_core.exceptions import JobError
from sw_core.json_schema import check_json_schema
from sw_core.utils import stop_sequences

Task = Literal["embed", "generate", "forward"]
#: Tasks a worker can run.
TASKS: tuple[Task, ...] = ("embed", "generate", "forward")

#: Most inputs (texts, chats or token sequences) in one job, per task: OpenAI's 2,048
#: embedding inputs; for generate, inputs times ``n`` (the outputs), for forward, sequences.
MAX_TASK_INPUTS: dict[Task, int] = {"embed": 2048, "generate": 256, "forward": 256}
#: Most inputs in one job of any task (the bound of a payload's arrays).
MAX_INPUTS = max(MAX_TASK_INPUTS.values())
#: Most fields in one stream entry and most entries in a params map.
MAX_FIELDS = 32
#: Most messages in one chat input of a generate job.
MAX_CHAT_MESSAGES = 64
#: Most token ids in one input, whatever the model (its own context length is smaller).
MAX_TOKEN_IDS = 1 << 17
#: Most alternatives per token a generate job may ask for (``top_logprobs``, as OpenAI).
MAX_TOP_LOGPROBS = 20
#: Most completions of one input (``n``).
MAX_COMPLETIONS = 16


class JobStatus(StrEnum):
    """The ``status`` field of a job's hash (``Keys.job``)."""

    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    DONE = "done"
    DEAD = "dead"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


#: Statuses a job never leaves.
FINAL_STATUSES = frozenset({JobStatus.DONE, JobStatus.DEAD, JobStatus.CANCELLED, JobStatus.EXPIRED})
#: Final statuses without a result that are not errors (never dead-lettered).
ENDED_STATUSES = (JobStatus.CANCELLED, JobStatus.EXPIRED)


class StreamEvent(StrEnum):
    """The ``type`` of an event in a generate job's token stream (``Keys.job_tokens``)."""

    #: The job joined a decode batch (``attempt``, ``deliveries``, ``inputs``).
    START = "start"
    #: Text for one input (``index``, ``text``, ``step``).
    TOKEN = "token"
    #: One input finished (``index``, ``finish_reason``, token counts).
    END = "end"
    #: The job ended (``status``; with ``done``: finish reasons and token counts).
    FINAL = "final"
    #: An earlier attempt's text is void: a retry starts over.
    RESTART = "restart"


@dataclass(frozen=True)
class ParamSpec:
    """Type and range of one task parameter.

    ``kind`` ``list`` is a stop-sequence list (one string or up to 4, see
    :func:`sw_core.utils.stop_sequences`).
    """

    kind: type
    doc: str
    low: float | None = None
    high: float | None = None
    #: Name of a :class:`~sw_core.settings.Settings` field holding the upper bound.
    high_setting: str | None = None
    #: ``low`` is exclusive (``top_p > 0``).
    low_exclusive: bool = False
    choices: tuple[str, ...] = ()
    #: OpenAI request fields that set this parameter, first one wins (the gateway maps them).
    openai: tuple[str, ...] = ()
    #: A further check of a value of the right type (raises :class:`JobError`).
    check: Callable[[str, Any], None] | None = None


def _param(default: Any, kind: type, doc: str, **spec: Any) -> Any:
    return field(default=default, metadata={"spec": ParamSpec(kind, doc, **spec)})


@dataclass(frozen=True)
class EmbedParams:
    """Parameters of an ``embed`` job."""

    normalize: bool | None = _param(
        None, bool, "L2-normalize (default: as the model's sentence-transformers modules say)"
    )
    truncate: bool = _param(
        True, bool, "cut inputs at the model's max_seq_length (false: refuse longer inputs)"
    )
    details: bool = _param(
        False, bool, "return {embedding, pooling, tokens, truncated} instead of the vector"
    )


@dataclass(frozen=True)
class GenerateParams:
    """Parameters of a ``generate`` job."""

    max_new_tokens: int | None = _param(
        None,
        int,
        "most tokens to generate (default: the model's generation config, else 32)",
        low=1,
        high_setting="max_new_tokens_limit",
        openai=("max_completion_tokens", "max_tokens"),
    )
    do_sample: bool | None = _param(
        None, bool, "sample (default: when a temperature above 0 is given); false: greedy"
    )
    temperature: float | None = _param(
        None,
        float,
        "sampling temperature; 0 is greedy (greedy unless given or do_sample is true)",
        low=0,
        high=100,
        openai=("temperature",),
    )
    top_p: float = _param(
        1.0, float, "nucleus sampling mass", low=0, high=1, low_exclusive=True, openai=("top_p",)
    )
    top_k: int = _param(0, int, "sample among the k likeliest tokens (0: all)", low=0, high=1 << 20)
    min_p: float = _param(
        0.0,
        float,
        "sample among tokens at least this times as likely as the likeliest (0: all)",
        low=0,
        high=1,
        openai=("min_p",),
    )
    seed: int | None = _param(
        None, int, "seed of this input's sampling", low=0, high=(1 << 63) - 1, openai=("seed",)
    )
    chat: bool = _param(True, bool, "format a text prompt with the model's chat template")
    stop: tuple[str, ...] = _param(
        (), list, "up to 4 strings; the text ends before the first one", openai=("stop",)
    )
    repetition_penalty: float = _param(
        1.0,
        float,
        "transformers' multiplicative penalty on seen tokens (1: off)",
        low=0,
        low_exclusive=True,
        openai=("repetition_penalty",),
    )
    frequency_penalty: float = _param(
        0.0,
        float,
        "OpenAI's additive penalty: a logit minus this times the token's count in the output",
        low=-2,
        high=2,
        openai=("frequency_penalty",),
    )
    presence_penalty: float = _param(
        0.0,
        float,
        "OpenAI's additive penalty: a logit minus this once the token is in the output",
        low=-2,
        high=2,
        openai=("presence_penalty",),
    )
    logprobs: bool = _param(
        False,
        bool,
        "return each generated token's log-probability (the model's log-softmax, before any "
        "penalty or temperature)",
        openai=("logprobs",),
    )
    top_logprobs: int = _param(
        0,
        int,
        "with logprobs: the k likeliest tokens at each step, with their log-probabilities",
        low=0,
        high=MAX_TOP_LOGPROBS,
        openai=("top_logprobs",),
    )
    json_schema: str | None = _param(
        None,
        str,
        "constrain the output to JSON valid under this JSON schema (a JSON text; "
        '\'{"type": "object"}\' for any object); the engine masks every other token',
        openai=("response_format",),
        check=check_json_schema,
    )
    n: int = _param(
        1,
        int,
        "completions of each input (completion i>0 of a seeded input samples with a seed "
        "derived from the seed and i); results hold inputs x n outputs, input-major",
        low=1,
        high=MAX_COMPLETIONS,
        openai=("n",),
    )

    @property
    def sampling_temperature(self) -> float:
        """The temperature to sample at; 0.0 means greedy."""
        if self.do_sample is False or self.temperature == 0:
            return 0.0
        if self.do_sample or self.temperature is not None:
            return self.temperature if self.temperature is not None else 1.0
        return 0.0


@dataclass(frozen=True)
class ForwardParams:
    """Parameters of a ``forward`` job."""

    output: str | None = _param(
        None,
        str,
        "hidden states or logits (default: logits when the model has an LM head)",
        choices=("hidden", "logits"),
    )
    positions: str = _param("all", str, "every position, or the last only", choices=("all", "last"))


TaskParams = EmbedParams | GenerateParams | ForwardParams
P = TypeVar("P", EmbedParams, GenerateParams, ForwardParams)
#: The parameter dataclass of each task.
PARAM_TYPES: dict[Task, type[TaskParams]] = {
    "embed": EmbedParams,
    "generate": GenerateParams,
    "forward": ForwardParams,
}
#: Parameters each task accepts; anything else is refused.
PARAM_SPECS: dict[Task, dict[str, ParamSpec]] = {
    task: {f.name: f.metadata["spec"] for f in fields(cls)} for task, cls in PARAM_TYPES.items()
}


class ParamBounds(Protocol):
    """Where bounds named by :attr:`ParamSpec.high_setting` are read: the
    :class:`~sw_core.settings.Settings`, or an engine's limits."""

    @property
    def max_new_tokens_limit(self) -> int: ...


def check_task(task: Any) -> Task:
    """``task`` if it is one of :data:`TASKS`; else :class:`JobError`."""
    if task not in TASKS:
        raise JobError(f"unknown task {short(task)}; tasks are {', '.join(TASKS)}")
    return cast(Task, task)


def check_params(
    task: Task, params: Any, bounds: ParamBounds, *, from_text: bool = False
) -> dict[str, Any]:
    """The params of a ``task`` job, checked; ``from_text``: values given as text are coerced
    to their type first (``--param k=v``, hand-added stream fields).

    Raises:
        JobError: not a map, too many, an unknown name, a wrong type or a value out of range.
    """
    specs = PARAM_SPECS[task]
    if not isinstance(params, Mapping):
        raise JobError(f"params must be a map, got {short(params)}")
    if len(params) > MAX_FIELDS:
        raise JobError(f"{len(params)} params; at most {MAX_FIELDS} are allowed")
    out: dict[str, Any] = {}
    for name, value in params.items():
        spec = specs.get(name) if isinstance(name, str) else None
        if spec is None:
            known = ", ".join(sorted(specs)) or "none"
            raise JobError(f"unknown param {short(name)} for task {task}; known: {known}")
        if from_text:
            value = _coerce_text(name, value, spec)
        out[name] = check_value(name, value, spec, bounds)
    return out


def typed_params(cls: type[P], params: Mapping[str, Any], bounds: ParamBounds) -> P:
    """``params`` (a subset of ``cls``'s fields) checked and made into ``cls``."""
    task = next(t for t, c in PARAM_TYPES.items() if c is cls)
    checked = check_params(task, params, bounds)
    if "stop" in checked:
        checked["stop"] = tuple(checked["stop"])
    return cls(**checked)


_KIND_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def check_value(name: str, value: Any, spec: ParamSpec, bounds: ParamBounds) -> Any:
    """One param's value, checked against its spec (an int is accepted as a float)."""
    kind = spec.kind
    if kind is list:
        try:
            return stop_sequences(value)
        except ValueError as exc:
            raise JobError(f"'{name}' {exc}") from None
    if kind is float and type(value) is int:
        value = float(value)
    if type(value) is not kind or (isinstance(value, float) and not math.isfinite(value)):
        raise JobError(f"'{name}' must be {_rule(spec, bounds)}, got {short(value)}")
    if kind is str and spec.choices and value not in spec.choices:
        raise JobError(f"'{name}' must be {_rule(spec, bounds)}, got {short(value)}")
    if spec.check is not None:
        spec.check(name, value)
    if kind in (int, float) and isinstance(value, (int, float)):
        low, high = spec.low, _high(spec, bounds)
        too_low = low is not None and (value <= low if spec.low_exclusive else value < low)
        if too_low or (high is not None and value > high):
            raise JobError(f"'{name}' must be {_rule(spec, bounds)}, got {short(value)}")
    return value


def _high(spec: ParamSpec, bounds: ParamBounds) -> float | None:
    return float(getattr(bounds, spec.high_setting)) if spec.high_setting else spec.high


def _rule(spec: ParamSpec, bounds: ParamBounds) -> str:
    """What a valid value is, in words: ``an integer from 1 to 512 (SW_MAX_NEW_TOKENS_LIMIT)``."""
    if spec.choices:
        return "one of " + ", ".join(repr(c) for c in spec.choices)
    word = _KIND_WORDS[spec.kind]
    low, high = spec.low, _high(spec, bounds)
    if low is not None and high is not None:
        span = f"in ({low:g}, {high:g}]" if spec.low_exclusive else f"from {low:g} to {high:g}"
    elif low is not None:
        span = f"{'>' if spec.low_exclusive else '>='} {low:g}"
    else:
        span = ""
    setting = f" (SW_{spec.high_setting.upper()})" if spec.high_setting else ""
    return f"{word} {span}{setting}".rstrip()


def _coerce_text(name: str, raw: Any, spec: ParamSpec) -> Any:
    """A param given as text -> its type."""
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
        raise JobError(f"'{name}'={short(text)} is not {_KIND_WORDS[spec.kind]}") from None
    return text


def short(value: Any, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
