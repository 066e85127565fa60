"""Batched generation with a KV cache: the whole batch advances one token per pass.

Decoder-only prompts are left-padded (positions counted from each row's first real token,
as transformers' ``generate`` does); T5 runs its encoder once and then decodes from the
decoder start token. Every step is one pass over the blocks for the whole batch, so each
block is materialized once per step however many requests share it. Each row stops on its
own: at an end-of-sequence token (finish reason ``eos``), once its text contains one of
its ``stop`` sequences (``stop``, see :mod:`sw_core.engine.tasks.stopping`) or at its
``max_new_tokens`` (``length``); finished rows are fed padding until every row is done. A
row's penalties apply to its logits first (as transformers orders its processors), then
its ``json_schema`` mask (see :mod:`sw_core.engine.tasks.grammar`), then rows choose greedily
(temperature 0) or sample with their own seeded generator, so a request's output does not
depend on what else is in its batch. ``logprobs`` are taken before all of that (the model's
own distribution, see :mod:`sw_core.engine.tasks.logprobs`). The ``n`` completions of a
request are rows with the same prompt: identical prompts run once in the first step. The penalty
sees the row's own prompt without padding (for T5: the decoder start token, as transformers
penalizes the decoder's ids) and its generated tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypedDict

import torch

from sw_core.engine.tasks.grammar import Grammars, advance, constrain
from sw_core.engine.tasks.logprobs import StepLogprobs, TokenLogprob, TokenText
from sw_core.engine.tasks.passes import PassContext
from sw_core.engine.tasks.requests import GenerateRequest, pad
from sw_core.engine.tasks.sampling import choose, generator_for, penalize
from sw_core.engine.tasks.stopping import stop_in

Stepper = Callable[[torch.Tensor], torch.Tensor]


class _DecoderState(TypedDict):
    """What a decoder-only stepper carries from one step to the next."""

    mask: torch.Tensor
    positions: torch.Tensor
    first: bool


def eos_ids(generation_config: Any, config: Any) -> set[int]:
    """End-of-sequence token ids (generation config first, then the model config)."""
    for source in (generation_config, config):
        value = getattr(source, "eos_token_id", None)
        if value is None:
            continue
        return {int(v) for v in (value if isinstance(value, (list, tuple)) else [value])}
    return set()


def run_generate(
    ctx: PassContext,
    requests: list[GenerateRequest],
    *,
    eos: set[int],
    decode: Callable[[list[int]], str] | None = None,
    token_text: TokenText | None = None,
    grammars: Grammars | None = None,
) -> list[dict[str, Any]]:
    """Generate for every request; ``decode(ids) -> str`` turns tokens into text (required
    for requests with ``stop`` sequences; the parser refuses those without a tokenizer);
    ``token_text`` describes the tokens of requests that ask for ``logprobs``; ``grammars``
    constrains those with a ``json_schema``."""
    batch = len(requests)
    device = ctx.device
    generators = [generator_for(r, device) for r in requests]
    matchers = [grammars.matcher(r) if grammars else None for r in requests]
    limits = torch.tensor([r.max_new_tokens for r in requests], device=device)
    produced = torch.zeros(batch, dtype=torch.long, device=device)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    reasons = ["length"] * batch
    cuts: list[int | None] = [None] * batch
    tokens: list[list[int]] = [[] for _ in requests]
    logprobs: list[list[TokenLogprob]] = [[] for _ in requests]
    eos_tensor = torch.tensor(sorted(eos) or [-1], device=device)
    if ctx.family == "seq2seq":
        step, current = _seq2seq_stepper(ctx, requests)
        prefixes = [[int(current[0, 0])] for _ in requests]  # the decoder start token
    else:
        step, current = _decoder_stepper(ctx, requests)
        prefixes = [r.ids for r in requests]
    for _ in range(int(limits.max())):
        logits = step(current).float()
        raw = StepLogprobs(logits, requests)  # the model's own distribution, unpenalized
        penalize(logits, requests, prefixes, tokens)
        constrain(logits, matchers)
        chosen = choose(logits, requests, generators)
        chosen = torch.where(finished, torch.full_like(chosen, ctx.pad_id), chosen)
        records = raw.take(chosen.tolist())
        advance(matchers, chosen.tolist(), torch.nonzero(~finished).flatten().tolist())
        for i, (token, done) in enumerate(zip(chosen.tolist(), finished.tolist(), strict=True)):
            if not done:
                tokens[i].append(token)
                if i in records:
                    logprobs[i].append(records[i])
        produced += (~finished).long()
        hit_eos = torch.isin(chosen, eos_tensor) & ~finished
        for i in torch.nonzero(hit_eos).flatten().tolist():
            reasons[i] = "eos"
        finished |= hit_eos
        for i in torch.nonzero(~finished).flatten().tolist():
            if requests[i].params.stop and decode is not None:
                cuts[i] = stop_in(decode, tokens[i], requests[i].params.stop)
                if cuts[i] is not None:
                    reasons[i] = "stop"
                    finished[i] = True
        finished |= produced >= limits
        if bool(finished.all()):
            break
        current = chosen.unsqueeze(-1)
    results = []
    for i, req in enumerate(requests):
        new, why, cut = tokens[i], reasons[i], cuts[i]
        shown = new[:-1] if why == "eos" else new
        result: dict[str, Any] = {
            "text": decode(shown)[:cut] if decode is not None else None,
            "token_ids": new,
            "finish_reason": why,
            "prompt_tokens": len(req.ids),
        }
        if req.params.logprobs:
            describe = token_text or TokenText(None)
            result["logprobs"] = describe.entries(logprobs[i][: len(shown)])
        results.append(result)
    return results


def shared_prompts(prompts: list[list[int]]) -> tuple[list[int], list[int]]:
    """Identical prompts run once: ``(first, expand)`` where ``first`` are the indices of the
    distinct prompts and ``expand[i]`` is the index among them of prompt ``i``."""
    seen: dict[tuple[int, ...], int] = {}
    first: list[int] = []
    expand: list[int] = []
    for i, ids in enumerate(prompts):
        key = tuple(ids)
        if key not in seen:
            seen[key] = len(first)
            first.append(i)
        expand.append(seen[key])
    return first, expand


def take_cache_rows(cache: Any, index: torch.Tensor) -> None:
    """Keep (and repeat) the batch rows ``index`` of every layer of a transformers cache."""
    caches = (
        [cache.self_attention_cache, cache.cross_attention_cache]
        if hasattr(cache, "self_attention_cache")
        else [cache]
    )
    for part in caches:
        for layer in part.layers:
            if getattr(layer, "is_initialized", False):
                layer.keys = layer.keys.index_select(0, index.to(layer.keys.device))
                layer.values = layer.values.index_select(0, index.to(layer.values.device))


def _seq2seq_stepper(
    ctx: PassContext, requests: list[GenerateRequest]
) -> tuple[Stepper, torch.Tensor]:
    """Encode once; each step runs the decoder on the last tokens (last-position logits)."""
    from transformers import DynamicCache, EncoderDecoderCache

    model, config, device = ctx.model, ctx.model.config, ctx.device
    first, expand = shared_prompts([r.ids for r in requests])
    ids, mask = pad([requests[i].ids for i in first], ctx.pad_id, left=False, device=device)
    ctx.begin_pass(("encoder",), ids)
    encoder_hidden = model.get_encoder()(input_ids=ids, attention_mask=mask).last_hidden_state
    if len(first) < len(requests):  # identical prompts (n completions) were encoded once
        index = torch.tensor(expand, device=device)
        encoder_hidden, mask = encoder_hidden[index], mask[index]
    cache: Any = EncoderDecoderCache(DynamicCache(config=config), DynamicCache(config=config))
    start = int(getattr(config, "decoder_start_token_id", None) or 0)

    def step(current: torch.Tensor) -> torch.Tensor:
        ctx.begin_pass(("decoder", "lm_head"), current)
        out = model(
            encoder_outputs=(encoder_hidden,),
            attention_mask=mask,
            decoder_input_ids=current,
            cache=cache,
            use_cache=True,
        )
        return out.logits[:, -1, :]

    return step, torch.full((len(requests), 1), start, dtype=torch.long, device=device)


def _decoder_stepper(
    ctx: PassContext, requests: list[GenerateRequest]
) -> tuple[Stepper, torch.Tensor]:
    """Left-padded prompts first, then one token per step (positions counted per row).
    Identical prompts (the ``n`` completions of one request) run once: the first step's
    cache rows and logits are then repeated for each of them."""
    from transformers import DynamicCache

    model, device, batch = ctx.model, ctx.device, len(requests)
    first, expand = shared_prompts([r.ids for r in requests])
    step_ids, mask = pad([requests[i].ids for i in first], ctx.pad_id, left=True, device=device)
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    cache = DynamicCache(config=model.config)
    state: _DecoderState = {"mask": mask, "positions": positions, "first": True}
    index = torch.tensor(expand, device=device)

    def step(current: torch.Tensor) -> torch.Tensor:
        if not state["first"]:
            ones = torch.ones((batch, 1), dtype=state["mask"].dtype, device=device)
            state["mask"] = torch.cat([state["mask"], ones], dim=-1)
            state["positions"] = state["positions"][:, -1:] + 1
        ctx.begin_pass(None, current)
        out = model(
            input_ids=current,
            attention_mask=state["mask"],
            position_ids=state["positions"],
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        logits = out.logits[:, -1, :]
        if state["first"] and len(first) < batch:
            take_cache_rows(cache, index)
            state["mask"], state["positions"] = state["mask"][index], state["positions"][index]
            logits = logits[index]
        state["first"] = False
        return logits

    return step, step_ids
