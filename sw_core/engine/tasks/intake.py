"""A model's request intake: what it accepts (its :class:`Limits`, context length included),
the parser of its requests, the compiler of its ``json_schema`` grammars and the text of its
tokens for ``logprobs``; and how parsed requests are cut into batches."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, TypeVar

from sw_core.context import context_limits, model_positions
from sw_core.engine.tasks.grammar import Grammars
from sw_core.engine.tasks.logprobs import TokenText
from sw_core.engine.tasks.requests import Limits, RequestParser
from sw_core.schema import MAX_TOKEN_IDS
from sw_core.settings import Settings


@dataclass(frozen=True)
class Intake:
    """What :func:`request_intake` builds for one model."""

    limits: Limits
    parser: RequestParser
    grammars: Grammars
    token_text: TokenText


def request_intake(
    name: str,
    config: Any,
    tokenizer: Any,
    settings: Settings,
    *,
    eos: set[int],
    has_head: bool,
    seq2seq: bool,
    kv_itemsize: int,
    embed_max_tokens: int | None,
) -> Intake:
    """The intake of model ``name`` (``config`` a transformers config): its context length
    from its positions and the KV cache one sequence may hold (``kv_itemsize`` bytes per
    value), bounded by ``settings``."""
    positions = model_positions(config)
    context = context_limits(config, settings, generates=has_head, itemsize=kv_itemsize)
    if seq2seq:  # T5's positions are relative: only the KV cache bounds
        context = replace(context, positions=None)
    embed_bounds = [b for b in (positions, settings.max_input_tokens) if b]
    limits = Limits(
        model=name,
        vocab_size=int(config.vocab_size),
        max_input_tokens=min(embed_bounds, default=MAX_TOKEN_IDS),
        max_new_tokens=settings.max_new_tokens_limit,
        max_positions=positions,
        context=context if has_head else None,
    )
    parser = RequestParser(
        limits,
        tokenizer,
        has_lm_head=has_head,
        seq2seq=seq2seq,
        embed_max_tokens=embed_max_tokens,
    )
    grammars = Grammars(tokenizer, int(config.vocab_size), eos)
    return Intake(limits, parser, grammars, TokenText(tokenizer))


Row = TypeVar("Row", bound=tuple[int, Any])


def batches(
    task: str, rows: list[Row], settings: Settings, *, kv_bytes_per_token: int
) -> list[list[Row]]:
    """``rows`` (request index, parsed row) in order, cut into batches of at most
    ``max_batch_size``; generate batches also within the KV-cache budget (rows x the padded
    prompt plus the most new tokens; one row alone always fits, the parser saw to that)."""
    size = settings.max_batch_size
    if task != "generate":
        return [rows[i : i + size] for i in range(0, len(rows), size)]
    budget = settings.kv_cache_bytes
    cut: list[list[Row]] = []
    current: list[Row] = []
    for row in rows:
        grown = [*current, row]
        width = max(len(r.ids) for _, r in grown) + max(r.max_new_tokens for _, r in grown)
        if current and (len(grown) > size or len(grown) * width * kv_bytes_per_token > budget):
            cut.append(current)
            grown = [row]
        current = grown
    return [*cut, current] if current else cut
