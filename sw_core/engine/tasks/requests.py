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
  text is cut before it; needs a tokenizer).

Anything wrong -- wrong types, empty text, unknown fields, too many tokens for the model or
for ``max_input_tokens`` -- raises :class:`~sw_core.exceptions.ModelError` naming the field.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sw_core.exceptions import ModelError
from sw_core.utils import is_finite_number, is_int, stop_sequences

TASKS = ("embed", "forward", "generate")
#: Request fields that describe the job rather than the input; accepted and ignored.
META_FIELDS = frozenset({"model", "task", "id", "job_id"})
_FIELDS: dict[str, frozenset[str]] = {
    "embed": frozenset({"text", "input_ids", "normalize", "truncate", "details"}),
    "forward": frozenset({"text", "input_ids", "output", "positions", "decoder_input_ids"}),
    "generate": frozenset(
        {"text", "messages", "input_ids", "max_new_tokens", "temperature", "top_k", "top_p"}
        | {"seed", "chat", "stop", "repetition_penalty"}
    ),
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


@dataclass
class EmbedRequest:
    ids: list[int]
    #: None: as the model's modules say.
    normalize: bool | None = None
    details: bool = False
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
    max_new_tokens: int
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    #: Stop sequences: the row ends once its decoded text contains one (cut before it).
    stop: tuple[str, ...] = ()
    #: transformers' repetition penalty (1.0: off).
    repetition_penalty: float = 1.0


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
        req = self._fields("embed", req)
        normalize = _bool(req, "normalize", True) if "normalize" in req else None
        details = _bool(req, "details", False)
        cut = self.embed_max_tokens if _bool(req, "truncate", True) else None
        if cut is None:
            return EmbedRequest(self._ids(req, chat=False), normalize, details)
        cut = min(cut, self.limits.max_input_tokens)
        ids = self._ids(req, chat=False, max_length=cut)
        if len(ids) <= cut:
            return EmbedRequest(ids, normalize, details)
        if "text" in req:  # as sentence-transformers: the tokenizer cuts, special tokens stay
            ids = list(self.tokenizer(req["text"], truncation=True, max_length=cut)["input_ids"])
        return EmbedRequest(ids[:cut], normalize, details, truncated=True)

    def forward(self, req: Any) -> ForwardRequest:
        req = self._fields("forward", req)
        ids = self._ids(req, chat=False)
        output = req.get("output", "logits" if self.has_lm_head else "hidden")
        if output not in ("hidden", "logits"):
            raise ModelError(f"'output' must be 'hidden' or 'logits', got {output!r}")
        if output == "logits" and not self.has_lm_head:
            raise ModelError(
                f"model {self.limits.model!r} has no LM head, so no logits; use output='hidden'"
            )
        positions = req.get("positions", "all")
        if positions not in ("all", "last"):
            raise ModelError(f"'positions' must be 'all' or 'last', got {positions!r}")
        decoder_ids = None
        if "decoder_input_ids" in req:
            if not self.seq2seq:
                raise ModelError(
                    f"'decoder_input_ids' is for encoder-decoder models; {self.limits.model!r} "
                    "is not one"
                )
            decoder_ids = self._id_list(req["decoder_input_ids"], "decoder_input_ids")
        return ForwardRequest(ids, output, positions == "last", decoder_ids)

    def generate(self, req: Any) -> GenerateRequest:
        req = self._fields("generate", req)
        if not self.has_lm_head:
            raise ModelError(f"model {self.limits.model!r} has no LM head: it cannot generate")
        ids = self._ids(req, chat=_bool(req, "chat", True))
        limit = self.limits.max_new_tokens
        positions = self.limits.max_positions if not self.seq2seq else None
        default = min(DEFAULT_MAX_NEW_TOKENS, limit)
        if positions is not None:
            default = max(1, min(default, positions - len(ids)))
        max_new = req.get("max_new_tokens", default)
        if not is_int(max_new) or not 1 <= max_new <= limit:
            raise ModelError(
                f"'max_new_tokens' must be an integer from 1 to {limit} "
                f"(SW_MAX_NEW_TOKENS_LIMIT), got {max_new!r}"
            )
        if positions is not None and len(ids) + max_new > positions:
            raise ModelError(
                f"prompt of {len(ids)} tokens plus max_new_tokens={max_new} exceeds the "
                f"{positions} positions model {self.limits.model!r} supports; shorten the prompt "
                "or lower max_new_tokens"
            )
        temperature, top_k, top_p, seed = _sampling(req)
        return GenerateRequest(
            ids,
            int(max_new),
            temperature,
            top_k,
            top_p,
            seed,
            stop=self._stop(req),
            repetition_penalty=_penalty(req),
        )

    # ---------------------------------------------------------------- pieces
    def _stop(self, req: dict[str, Any]) -> tuple[str, ...]:
        if req.get("stop") is None:
            return ()
        try:
            stops = stop_sequences(req["stop"])
        except ValueError as exc:
            raise ModelError(f"'stop' {exc}") from None
        if stops and self.tokenizer is None:
            raise ModelError(
                f"model {self.limits.model!r} ships no tokenizer, so its output has no text to "
                "search for 'stop' sequences; leave 'stop' out"
            )
        return tuple(stops)

    def _fields(self, task: str, req: Any) -> dict[str, Any]:
        if not isinstance(req, dict):
            raise ModelError(f"a {task} request must be a dict, got {type(req).__name__}")
        unknown = set(req) - _FIELDS[task] - META_FIELDS
        if unknown:
            raise ModelError(
                f"unknown field(s) {sorted(unknown)} for task {task!r}; "
                f"known: {sorted(_FIELDS[task])}"
            )
        return req

    def _ids(self, req: dict[str, Any], *, chat: bool, max_length: int | None = None) -> list[int]:
        """Token ids of the request; with ``max_length`` the input limit is not checked (the
        caller cuts the ids to ``max_length``)."""
        given = [k for k in ("text", "messages", "input_ids") if k in req]
        if len(given) != 1:
            allowed = "'text', 'messages' or 'input_ids'" if chat else "'text' or 'input_ids'"
            raise ModelError(f"give exactly one of {allowed} (got {given or 'none'})")
        key = given[0]
        if key == "input_ids":
            ids = self._id_list(req["input_ids"], "input_ids")
        else:
            ids = self._tokenize(req[key], key, chat=chat)
        limit = self.limits.max_input_tokens
        if max_length is not None:
            return ids
        if len(ids) > limit:
            raise ModelError(
                f"input has {len(ids)} tokens; model {self.limits.model!r} accepts at most "
                f"{limit} (the smaller of SW_MAX_INPUT_TOKENS and the model's own limit); "
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
            messages = _messages(value)
            if not getattr(tok, "chat_template", None):
                raise ModelError(f"model {self.limits.model!r} has no chat template; use 'text'")
            prompt = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            return list(tok(prompt, add_special_tokens=False)["input_ids"])
        if not isinstance(value, str):
            raise ModelError(f"'text' must be a string, got {type(value).__name__}")
        if not value.strip():
            raise ModelError("'text' is empty; give some text")
        if chat and getattr(tok, "chat_template", None):
            messages = [{"role": "user", "content": value}]
            prompt = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            return list(tok(prompt, add_special_tokens=False)["input_ids"])
        ids = list(tok(value)["input_ids"])
        if not ids:
            raise ModelError("'text' tokenizes to no tokens")
        return ids


def _messages(value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise ModelError("'messages' must be a non-empty list of {role, content} dicts")
    out = []
    for item in value:
        if (
            not isinstance(item, dict)
            or not isinstance(item.get("role"), str)
            or not isinstance(item.get("content"), str)
        ):
            raise ModelError("each message must be a dict with string 'role' and 'content'")
        out.append({"role": item["role"], "content": item["content"]})
    if not any(m["content"].strip() for m in out):
        raise ModelError("'messages' hold no text")
    return out


def _sampling(req: dict[str, Any]) -> tuple[float, int, float, int | None]:
    """``(temperature, top_k, top_p, seed)`` of a generate request."""
    temperature = req.get("temperature", 0.0)
    if not is_finite_number(temperature) or temperature < 0:
        raise ModelError(f"'temperature' must be a number >= 0, got {temperature!r}")
    top_k = req.get("top_k", 0)
    if not is_int(top_k) or top_k < 0:
        raise ModelError(f"'top_k' must be an integer >= 0, got {top_k!r}")
    top_p = req.get("top_p", 1.0)
    if not is_finite_number(top_p) or not 0 < top_p <= 1:
        raise ModelError(f"'top_p' must be a number in (0, 1], got {top_p!r}")
    seed = req.get("seed")
    if seed is not None and not is_int(seed):
        raise ModelError(f"'seed' must be an integer, got {seed!r}")
    return float(temperature), int(top_k), float(top_p), seed


def _penalty(req: dict[str, Any]) -> float:
    penalty = req.get("repetition_penalty", 1.0)
    if not is_finite_number(penalty) or penalty <= 0:
        raise ModelError(f"'repetition_penalty' must be a number > 0 (1.0: off), got {penalty!r}")
    return float(penalty)


def _bool(req: dict[str, Any], key: str, default: bool) -> bool:
    value = req.get(key, default)
    if not isinstance(value, bool):
        raise ModelError(f"'{key}' must be true or false, got {value!r}")
    return value


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
