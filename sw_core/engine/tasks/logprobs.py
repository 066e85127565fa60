"""Log-probabilities of generated tokens (``logprobs`` / ``top_logprobs``).

What is returned is the model's own distribution: ``log_softmax`` of the raw logits of the
step, in float32, *before* the penalties, the temperature and top-k/top-p -- vLLM's default
(``logprobs_mode="raw_logprobs"``), and what ``transformers`` gives for
``log_softmax(model(ids).logits)``. The chosen token's entry is its log-probability under
that distribution even when it was sampled from the processed one. Each entry is
msgpack-friendly and in OpenAI's chat shape plus the token id::

    {"token_id": 3681, "token": " Paris", "bytes": [32, 80, 97, 114, 105, 115],
     "logprob": -0.02, "top_logprobs": [{"token_id": ..., "token": ..., "bytes": ...,
     "logprob": ...}, ...]}

``token`` is the token's UTF-8 text; a token that holds part of a character only (byte-level
tokenizers split some characters) shows its bytes as ``\\xe2\\x80`` escapes, and ``bytes``
holds the raw bytes either way, so the bytes of consecutive tokens join into the text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch

from sw_core.engine.tasks.requests import GenerateRequest

_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token: its id, its log-probability and the top alternatives."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


class StepLogprobs:
    """The raw log-softmax of the rows of one step that asked for log-probabilities.

    Build it from the step's logits *before* the penalties change them in place, then
    :meth:`take` the chosen tokens' entries.
    """

    def __init__(self, logits: torch.Tensor, requests: list[GenerateRequest]) -> None:
        self.rows = [i for i, r in enumerate(requests) if r.params.logprobs]
        self.ks = [requests[i].params.top_logprobs for i in self.rows]
        self.values: torch.Tensor | None = None
        if self.rows:
            picked = logits[self.rows] if len(self.rows) < len(requests) else logits
            self.values = torch.log_softmax(picked.float(), dim=-1)

    def take(self, chosen: list[int]) -> dict[int, TokenLogprob]:
        """Row -> the entry of the token ``chosen[row]`` (rows that asked only)."""
        out: dict[int, TokenLogprob] = {}
        if self.values is None:
            return out
        values = self.values
        k_max = max(self.ks)
        if k_max:
            top_values, top_ids = torch.topk(values, min(k_max, values.shape[-1]), dim=-1)
            top_values_l, top_ids_l = top_values.tolist(), top_ids.tolist()
        for j, (row, k) in enumerate(zip(self.rows, self.ks, strict=True)):
            token = int(chosen[row])
            top: tuple[tuple[int, float], ...] = ()
            if k:
                top = tuple(zip(top_ids_l[j][:k], top_values_l[j][:k], strict=True))
            out[row] = TokenLogprob(token, float(values[j, token]), top)
        return out


class TokenText:
    """A token id's text and bytes, as OpenAI's logprobs show them (cached per id)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._byte_level = _is_byte_level(tokenizer)
        self._decoder = _byte_decoder() if self._byte_level else {}
        self._cache: dict[int, tuple[str, list[int]]] = {}

    def __call__(self, token_id: int) -> tuple[str, list[int]]:
        found = self._cache.get(token_id)
        if found is None:
            data = self._bytes(token_id)
            found = (data.decode("utf-8", "backslashreplace"), list(data))
            self._cache[token_id] = found
        return found

    def _bytes(self, token_id: int) -> bytes:
        tok = self.tokenizer
        if tok is None:
            return b""
        piece = tok.convert_ids_to_tokens(token_id)
        if not isinstance(piece, str):
            return b""
        if self._byte_level and all(c in self._decoder for c in piece):
            return bytes(self._decoder[c] for c in piece)
        byte = _BYTE_TOKEN.fullmatch(piece)
        if byte:  # sentencepiece's byte fallback
            return bytes([int(byte[1], 16)])
        if piece.startswith("\u2581"):  # sentencepiece's word boundary: a space
            return (" " + str(tok.convert_tokens_to_string([piece])).lstrip(" ")).encode()
        return str(tok.convert_tokens_to_string([piece])).encode()

    def entries(self, records: list[TokenLogprob]) -> list[dict[str, Any]]:
        """OpenAI-shaped entries (plus ``token_id``) of ``records``."""
        return [self._entry(r.token_id, r.logprob, r.top) for r in records]

    def _entry(
        self, token_id: int, logprob: float, top: tuple[tuple[int, float], ...] | None
    ) -> dict[str, Any]:
        text, data = self(token_id)
        entry: dict[str, Any] = {"token_id": token_id, "token": text, "bytes": data}
        entry["logprob"] = logprob
        if top is not None:
            entry["top_logprobs"] = [self._entry(i, lp, None) for i, lp in top]
        return entry


def _is_byte_level(tokenizer: Any) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    decoder = getattr(backend, "decoder", None)
    return decoder is not None and "ByteLevel" in repr(decoder)


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet: the character that stands for each byte, inverted."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}
