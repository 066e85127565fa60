"""Constrained generation: ``json_schema`` (OpenAI's ``response_format``) through llguidance.

Each row that has a ``json_schema`` gets its own ``llguidance.LLMatcher`` (compiled from
the schema against the model's tokenizer; JSON written without free whitespace, see
:data:`sw_core.json_schema.JSON_STYLE`). At every step, after the penalties and before
the temperature and the greedy or sampled choice, the logits of every token the grammar
does not allow next are set to ``-inf``; the chosen token then advances the matcher. Once
the JSON is complete the grammar allows only the end-of-sequence token, so the row ends
with finish reason ``eos`` (or ``length`` when ``max_new_tokens`` comes first: the JSON is
then cut, as OpenAI's is). ``logprobs`` stay the model's own distribution, unconstrained.
"""

from __future__ import annotations

from typing import Any

import torch

from sw_core.engine.tasks.requests import GenerateRequest
from sw_core.exceptions import ModelError
from sw_core.json_schema import json_grammar

_BITS = torch.arange(8, dtype=torch.uint8)


class Grammars:
    """Compiles the ``json_schema`` of requests into matchers for one model's tokenizer (the
    llguidance tokenizer is built on first use, about a second, and kept)."""

    def __init__(self, tokenizer: Any, vocab_size: int, eos: set[int]) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.eos = sorted(eos)
        self._lltokenizer: Any = None

    def matcher(self, request: GenerateRequest) -> Any:
        """The matcher of ``request`` (None without a ``json_schema``).

        Raises:
            ModelError: no fast tokenizer, or a schema llguidance cannot compile.
        """
        schema = request.params.json_schema
        if schema is None:
            return None
        import llguidance

        matcher = llguidance.LLMatcher(self._tokenizer(), json_grammar(schema), log_level=0)
        if matcher.is_error():
            raise ModelError(f"'json_schema' cannot be used: {matcher.get_error()[:200]}")
        return matcher

    def _tokenizer(self) -> Any:
        if self._lltokenizer is None:
            import llguidance.hf

            if self.tokenizer is None or not hasattr(self.tokenizer, "backend_tokenizer"):
                raise ModelError(
                    "'json_schema' needs the model's fast (tokenizer.json) tokenizer; this "
                    "model has none"
                )
            eos = self.eos or None
            try:
                self._lltokenizer = llguidance.hf.from_tokenizer(
                    self.tokenizer, n_vocab=self.vocab_size, eos_token=eos
                )
            except (ValueError, TypeError) as exc:  # e.g. WordPiece: no byte decoding
                self._lltokenizer = ModelError(
                    f"'json_schema' cannot be used with this model's tokenizer: {exc}"
                )
        if isinstance(self._lltokenizer, ModelError):
            raise self._lltokenizer
        return self._lltokenizer


def constrain(logits: torch.Tensor, matchers: list[Any]) -> None:
    """Mask, in place, the tokens each row's matcher does not allow next (rows without one,
    or whose matcher failed, are left alone)."""
    width = logits.shape[-1]
    for i, matcher in enumerate(matchers):
        if matcher is None or matcher.is_error():
            continue
        bits = torch.frombuffer(bytearray(matcher.compute_bitmask()), dtype=torch.uint8)
        allowed = ((bits.unsqueeze(-1) >> _BITS) & 1).flatten().bool()[:width]
        if len(allowed) < width:
            allowed = torch.cat([allowed, allowed.new_zeros(width - len(allowed))])
        if bool(allowed.any()):
            logits[i].masked_fill_(~allowed.to(logits.device), float("-inf"))


def advance(matchers: list[Any], chosen: list[int], rows: list[int] | None = None) -> None:
    """Feed each row's chosen token to its matcher (``rows``: only those rows)."""
    for i in range(len(matchers)) if rows is None else rows:
        matcher = matchers[i]
        if matcher is not None and not matcher.is_stopped():
            matcher.consume_token(int(chosen[i]))
