"""Requests in: validation, tokenization and padding, with errors a caller can act on.

Every task takes a list of request dicts (msgpack-friendly). Fields:

- ``embed``: ``text`` (str) or ``input_ids`` (list of int); ``normalize`` (bool, default:
  what the model's sentence-transformers modules say, true without them); ``truncate`` (bool,
  default true: inputs longer than the model's ``max_seq_length`` are cut there, as
  sentence-transformers does; false refuses them); ``details`` (bool, default false: return
  ``{"embedding", "pooling", "tokens", "truncated"}`` instead of the bare vector).
- ``forward``: ``input_ids`` or ``text``; ``output`` ("hidden" or "logits"; default logits
  for models with an LM head, else hidden); ``positions`` ("all" or "last");
  ``decoder_input_ids`` (T5 only; default: the decoder start token).
- ``generate``: ``text``, ``messages`` (chat: list of {role, content}) or ``input_ids``;
  ``max_new_tokens``; ``temperature`` (0 = greedy, the default); ``top_k``; ``top_p``;
  ``seed`` (int, for reproducible sampling); ``chat`` (bool, default true: use the
  tokenizer's chat template when it has one); ``repetition_penalty`` (a finite number > 0,
  default 1.0 = off: transformers' ``RepetitionPenaltyLogitsProcessor`` over the prompt and
  the generated tokens); ``stop`` (a string or a list of up to 4 non-empty strings of at
  most 256 characters: the row ends, finish reason ``stop``, once its text contains one; the
  text is cut before it; needs a tokenizer); ``frequency_penalty`` / ``presence_penalty``,
  ``logprobs`` / ``top_logprobs``, ``n`` and ``json_schema`` (see :mod:`sw_core.schema` and
  ``docs/engine.md``).

Anything wrong -- wrong types, empty text, unknown fields, too many tokens for the model or
for ``max_input_tokens`` -- raises :class:`~sw_core.exceptions.ModelError` naming the field.
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sw_core.context import ContextLimits
from sw_core.engine.tasks.chat import chat_ids, messages_of
from sw_core.exceptions import JobError, ModelError
from sw_core.schema import (
    PARAM_SPECS,
    EmbedParams,
    ForwardParams,
    GenerateParams,
    P,
    Task,
    typed_params,
)
from sw_core.utils import is_int

#: Request fields that describe the job rather than the input; accepted and ignored.
META_FIELDS = frozenset({"model", "task", "id", "job_id"})
#: The fields that give a request's input (its parameters are the task's in the schema).
INPUT_FIELDS: dict[Task, frozenset[str]] = {
    "embed": frozenset({"text", "input_ids"}),
    "forward": frozenset({"text", "input_ids", "decoder_input_ids"}),
    "generate": frozenset({"text", "messages", "input_ids"}),
}
#: Files that make a tokenizer; a chunk set with none of them has no tokenizer.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "vocab.json",
    "tokenizer.model",
    "spiece.model",
)
DEFAULT_MAX_NEW_TOKENS = 32


@dataclass(frozen=True)
class Limits:
    """What one model accepts."""

    model: str
    vocab_size: int
    max_input_tokens: int
    max_new_tokens: int
    #: Positions the model can attend to in total (learned position tables); None if unbounded.
    max_positions: int | None
    #: For generation: the context length (positions and the KV-cache budget).
    context: ContextLimits | None = None

    @property
    def max_new_tokens_limit(self) -> int:
        """The upper bound the schema checks ``max_new_tokens`` against."""
        return self.max_new_tokens


@dataclass
class EmbedRequest:
    ids: list[int]
    params: EmbedParams = field(default_factory=EmbedParams)
    #: The input was cut to ``max_seq_length``.
    truncated: bool = False


@dataclass
class ForwardRequest:
    ids: list[int]
    output: str
    last_only: bool
    decoder_ids: list[int] | None = None


@dataclass
class GenerateRequest:
    ids: list[int]
    #: ``params.max_new_tokens``, or the model's default when the request left it out.
    max_new_tokens: int
    params: GenerateParams = field(default_factory=GenerateParams)
    #: Which of the request's ``n`` completions this is (its seed is derived from it).
    completion: int = 0

    @property
    def seed(self) -> int | None:
        """The seed of this completion's sampling (None: a random one)."""
        return completion_seed(self.params.seed, self.completion)


def completion_seed(seed: int | None, completion: int) -> int | None:
    """The seed of completion ``completion`` of a request seeded with ``seed``: completion 0
    uses ``seed`` itself (so ``n=1`` and the first of ``n=2`` agree), the others a 63-bit
    BLAKE2b of ``"seed:completion"``."""
    if seed is None or completion == 0:
        return seed
    digest = hashlib.blake2b(f"{seed}:{completion}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def request_of(task: Task, item: Any, params: dict[str, Any]) -> dict[str, Any]:
    """The engine request of one job input: a text, a chat (a list of messages) or a list of
    token ids, with the job's params."""
    if task == "generate" and isinstance(item, list):
        key = "messages"
    elif task == "forward" or (isinstance(item, list) and task != "generate"):
        key = "input_ids"
    else:
        key = "text"
    return {key: item, **params}


def load_tokenizer(files: dict[str, bytes]) -> Any:
    """A tokenizer from the chunk set's files, or None when it ships none."""
    if not any(name in files for name in TOKENIZER_FILES):
        return None
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory(prefix="sw-tokenizer-") as folder:
        for name, data in files.items():
            path = Path(folder, name)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        try:
            return AutoTokenizer.from_pretrained(folder)
        except (OSError, ValueError, TypeError) as exc:
            raise ModelError(f"the chunk set's tokenizer files cannot be loaded: {exc}") from exc


class RequestParser:
    """Turns request dicts into validated token-id requests for one model."""

    def __init__(
        self,
        limits: Limits,
        tokenizer: Any,
        *,
        has_lm_head: bool,
        seq2seq: bool,
        embed_max_tokens: int | None = None,
    ):
        self.limits = limits
        self.tokenizer = tokenizer
        self.has_lm_head = has_lm_head
        self.seq2seq = seq2seq
        #: sentence-transformers' ``max_seq_length``: embed inputs are cut there by default.
        self.embed_max_tokens = embed_max_tokens

    # ---------------------------------------------------------------- tasks
    def embed(self, req: Any) -> EmbedRequest:
        req, params = self._split("embed", req, EmbedParams)
        cut = self.embed_max_tokens if params.truncate else None
        if cut is None:
            return EmbedRequest(self._ids(req, chat=False), params)
        cut = min(cut, self.limits.max_input_tokens)
        ids = self._ids(req, chat=False, max_length=cut)
        if len(ids) <= cut:
            return EmbedRequest(ids, params)
        if "text" in req:  # as sentence-transformers: the tokenizer cuts, special tokens stay
            ids = list(self.tokenizer(req["text"], truncation=True, max_length=cut)["input_ids"])
        return EmbedRequest(ids[:cut], params, truncated=True)

    def forward(self, req: Any) -> ForwardRequest:
        req, params = self._split("forward", req, ForwardParams)
        ids = self._ids(req, chat=False)
        output = params.output or ("logits" if self.has_lm_head else "hidden")
        if output == "logits" and not self.has_lm_head:
            raise ModelError(
                f"model {self.limits.model!r} has no LM head, so no logits; use output='hidden'"
            )
        decoder_ids = None
        if "decoder_input_ids" in req:
            if not self.seq2seq:
                raise ModelError(
                    f"'decoder_input_ids' is for encoder-decoder models; {self.limits.model!r} "
                    "is not one"
                )
            decoder_ids = self._id_list(req["decoder_input_ids"], "decoder_input_ids")
        return ForwardRequest(ids, output, params.positions == "last", decoder_ids)

    def generate(self, req: Any) -> GenerateRequest:
        req, params = self._split("generate", req, GenerateParams)
        if not self.has_lm_head:
            raise ModelError(f"model {self.limits.model!r} has no LM head: it cannot generate")
        context = self.limits.context
        limit = self.limits.max_input_tokens
        if context is not None and context.max_input_tokens is not None:
            limit = min(limit, context.max_input_tokens)
        ids = self._ids(req, chat=params.chat, limit=limit)
        # the context length (positions and KV cache) when known, else the positions
        positions = self.limits.max_positions if not self.seq2seq else None
        total = context.context_length if context is not None else positions
        bound = f"{total} positions model {self.limits.model!r} supports"
        if total is not None and total != positions:
            bound = (
                f"{total} tokens one sequence's KV cache may hold under SW_MAX_KV_CACHE_MB "
                f"(the context length of {self.limits.model!r} on this worker)"
            )
        max_new = params.max_new_tokens
        if max_new is None:
            max_new = min(DEFAULT_MAX_NEW_TOKENS, self.limits.max_new_tokens)
            if total is not None:
                max_new = max(1, min(max_new, total - len(ids)))
        if total is not None and len(ids) + max_new > total:
            raise ModelError(
                f"prompt of {len(ids)} tokens plus max_new_tokens={max_new} exceeds the "
                f"{bound}; shorten the prompt or lower max_new_tokens"
            )
        if params.json_schema is not None and not hasattr(self.tokenizer, "backend_tokenizer"):
            raise ModelError(
                f"model {self.limits.model!r} ships no fast (tokenizer.json) tokenizer, which "
                "'json_schema' needs; leave it out"
            )
        if params.stop and self.tokenizer is None:
            raise ModelError(
                f"model {self.limits.model!r} ships no tokenizer, so its output has no text to "
                "search for 'stop' sequences; leave 'stop' out"
            )
        return GenerateRequest(ids, max_new, params)

    def generate_all(self, req: Any) -> list[GenerateRequest]:
        """:meth:`generate`, expanded to the request's ``n`` completions (same prompt, same
        params, each with its own :attr:`GenerateRequest.completion`)."""
        first = self.generate(req)
        return [first] + [
            GenerateRequest(first.ids, first.max_new_tokens, first.params, completion=i)
            for i in range(1, first.params.n)
        ]

    # ---------------------------------------------------------------- pieces
    def _split(self, task: Task, req: Any, cls: type[P]) -> tuple[dict[str, Any], P]:
        """The request checked for unknown fields, and its params (None values: defaults)."""
        if not isinstance(req, dict):
            raise ModelError(f"a {task} request must be a dict, got {type(req).__name__}")
        specs = PARAM_SPECS[task]
        known = INPUT_FIELDS[task] | specs.keys()
        unknown = set(req) - known - META_FIELDS
        if unknown:
            raise ModelError(
                f"unknown field(s) {sorted(unknown)} for task {task!r}; known: {sorted(known)}"
            )
        given = {k: v for k, v in req.items() if k in specs and v is not None}
        try:
            return req, typed_params(cls, given, self.limits)
        except JobError as exc:
            raise ModelError(str(exc)) from None

    def _ids(
        self,
        req: dict[str, Any],
        *,
        chat: bool,
        max_length: int | None = None,
        limit: int | None = None,
    ) -> list[int]:
        """Token ids of the request, at most ``limit`` (default: ``max_input_tokens``); with
        ``max_length`` the limit is not checked (the caller cuts the ids to ``max_length``)."""
        given = [k for k in ("text", "messages", "input_ids") if k in req]
        if len(given) != 1:
            allowed = "'text', 'messages' or 'input_ids'" if chat else "'text' or 'input_ids'"
            raise ModelError(f"give exactly one of {allowed} (got {given or 'none'})")
        key = given[0]
        if key == "input_ids":
            ids = self._id_list(req["input_ids"], "input_ids")
        else:
            ids = self._tokenize(req[key], key, chat=chat)
        limit = self.limits.max_input_tokens if limit is None else limit
        if max_length is not None:
            return ids
        if len(ids) > limit:
            raise ModelError(
                f"input has {len(ids)} tokens; model {self.limits.model!r} accepts at most "
                f"{limit} here (its context length: its own positions and, to generate, the KV "
                "cache SW_MAX_KV_CACHE_MB allows one sequence; SW_MAX_INPUT_TOKENS when set); "
                "shorten the input"
            )
        return ids

    def _id_list(self, value: Any, field: str) -> list[int]:
        if isinstance(value, torch.Tensor):
            value = value.tolist()
        if not isinstance(value, (list, tuple)) or not value:
            raise ModelError(f"'{field}' must be a non-empty list of token ids")
        if not all(is_int(v) for v in value):
            raise ModelError(f"'{field}' must hold integers only")
        vocab = self.limits.vocab_size
        bad = [v for v in value if not 0 <= v < vocab]
        if bad:
            raise ModelError(
                f"'{field}' holds token id {bad[0]} outside the vocabulary [0, {vocab}) of "
                f"model {self.limits.model!r}"
            )
        return [int(v) for v in value]

    def _tokenize(self, value: Any, key: str, *, chat: bool) -> list[int]:
        tok = self.tokenizer
        if tok is None:
            raise ModelError(
                f"model {self.limits.model!r} ships no tokenizer; pass 'input_ids' instead "
                f"of '{key}'"
            )
        if key == "messages":
            messages = messages_of(value)
            if not getattr(tok, "chat_template", None):
                raise ModelError(f"model {self.limits.model!r} has no chat template; use 'text'")
            return chat_ids(tok, messages)
        if not isinstance(value, str):
            raise ModelError(f"'text' must be a string, got {type(value).__name__}")
        if not value.strip():
            raise ModelError("'text' is empty; give some text")
        if chat and getattr(tok, "chat_template", None):
            return chat_ids(tok, [{"role": "user", "content": value}])
        ids = list(tok(value)["input_ids"])
        if not ids:
            raise ModelError("'text' tokenizes to no tokens")
        return ids


def pad(
    rows: list[list[int]], pad_id: int, *, left: bool, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-id rows padded to one length: ``(ids, attention_mask)``, both (B, T) int64."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if left else slice(0, len(row))
        ids[i, span] = torch.tensor(row, dtype=torch.long)
        mask[i, span] = 1
    return ids.to(device), mask.to(device)
