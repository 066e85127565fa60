"""The compute of ``embed`` and ``forward`` for one batch (generation: ``generation.py``).

Each function runs the whole batch through the model once -- one pass over the blocks,
each block materialized once for every request in it -- and returns one CPU tensor per
request (the engine turns them into lists for msgpack). Before each pass the context is told which part of the model will run
(``begin_pass``) so the prefetcher can follow it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn
from torch.nn import functional

from sw_core.engine.model.skeleton import Family
from sw_core.engine.tasks.pooling import SentencePipeline
from sw_core.engine.tasks.requests import EmbedRequest, ForwardRequest, pad

if TYPE_CHECKING:
    from transformers import PreTrainedModel


class PassContext(Protocol):
    """What the task functions need from the engine."""

    @property
    def model(self) -> PreTrainedModel: ...
    @property
    def family(self) -> Family: ...

    device: torch.device
    pad_id: int
    sentence: SentencePipeline

    def begin_pass(self, prefixes: tuple[str, ...] | None, ids: torch.Tensor | None) -> None: ...


def base_model(ctx: PassContext) -> tuple[nn.Module, tuple[str, ...] | None]:
    """The model without its LM head, and the module prefix its units live under."""
    model = ctx.model
    if ctx.family == "seq2seq":
        return model.get_encoder(), ("encoder",)
    prefix = getattr(model, "base_model_prefix", "")
    inner = getattr(model, prefix, None) if prefix else None
    if isinstance(inner, nn.Module):
        return inner, (prefix,)
    return model, None


def encode(ctx: PassContext, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Last hidden state of the base model (the encoder for T5), right-padded: (B, T, D)."""
    ids, mask = pad(rows, ctx.pad_id, left=False, device=ctx.device)
    module, prefixes = base_model(ctx)
    ctx.begin_pass(prefixes, ids)
    kwargs: dict[str, Any] = {"input_ids": ids, "attention_mask": mask}
    if ctx.family == "decoder":
        kwargs["use_cache"] = False
    out = module(**kwargs)
    return out.last_hidden_state, mask


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sentence-transformers' mean pooling: masked mean over tokens, (B, T, D) -> (B, D)."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    summed = (hidden * weights).sum(dim=1)
    return summed / torch.clamp(weights.sum(dim=1), min=1e-9)


def run_embed(ctx: PassContext, requests: list[EmbedRequest]) -> list[Any]:
    """Sentence embeddings as the model's sentence-transformers modules make them (pooling,
    Dense layers, Normalize; mean + L2 norm without them): (E,) each on CPU, or with
    ``details`` a dict that also says which pooling ran."""
    hidden, mask = encode(ctx, [r.ids for r in requests])
    pipeline = ctx.sentence
    pooled = pipeline.apply(hidden.float(), mask, normalize=False)
    normalized = functional.normalize(pooled, p=2, dim=1)
    results: list[Any] = []
    for i, req in enumerate(requests):
        norm = pipeline.normalize if req.params.normalize is None else req.params.normalize
        vector = (normalized[i] if norm else pooled[i]).cpu()
        if not req.params.details:
            results.append(vector)
            continue
        results.append(
            {
                "embedding": vector.tolist(),
                "pooling": pipeline.describe(norm),
                "modules": pipeline.origin,
                "tokens": len(req.ids),
                "truncated": req.truncated,
            }
        )
    return results


def run_forward(ctx: PassContext, requests: list[ForwardRequest]) -> list[torch.Tensor]:
    """Last hidden states or logits per request, trimmed to its own tokens: (T, D) or, for
    ``positions="last"``, (D,) -- float32 on CPU."""
    results: list[Any] = [None] * len(requests)
    for output in ("hidden", "logits"):
        picked = [i for i, r in enumerate(requests) if r.output == output]
        if not picked:
            continue
        batch = [requests[i] for i in picked]
        values, lengths = _forward_batch(ctx, batch, output)
        for row, (i, req) in enumerate(zip(picked, batch, strict=True)):
            n = lengths[row]
            per_token = values[row, :n]
            results[i] = (per_token[-1] if req.last_only else per_token).float().cpu()
    return results


def _forward_batch(
    ctx: PassContext, batch: list[ForwardRequest], output: str
) -> tuple[torch.Tensor, list[int]]:
    model = ctx.model
    rows = [r.ids for r in batch]
    if ctx.family == "seq2seq":
        start = int(getattr(model.config, "decoder_start_token_id", None) or 0)
        decoder_rows = [r.decoder_ids or [start] for r in batch]
        hidden, mask = encode(ctx, rows)
        dec_ids, dec_mask = pad(decoder_rows, ctx.pad_id, left=False, device=ctx.device)
        if output == "hidden":
            ctx.begin_pass(("decoder",), dec_ids)
            out = model.get_decoder()(
                input_ids=dec_ids,
                attention_mask=dec_mask,
                encoder_hidden_states=hidden,
                encoder_attention_mask=mask,
                use_cache=False,
            )
            return out.last_hidden_state, [len(r) for r in decoder_rows]
        ctx.begin_pass(("decoder", "lm_head"), dec_ids)
        out = model(
            encoder_outputs=(hidden,),
            attention_mask=mask,
            decoder_input_ids=dec_ids,
            decoder_attention_mask=dec_mask,
            use_cache=False,
        )
        return out.logits, [len(r) for r in decoder_rows]
    if output == "hidden":
        hidden, _ = encode(ctx, rows)
        return hidden, [len(r) for r in rows]
    ids, mask = pad(rows, ctx.pad_id, left=False, device=ctx.device)
    ctx.begin_pass(None, ids)
    out = model(input_ids=ids, attention_mask=mask, use_cache=False)
    return out.logits, [len(r) for r in rows]
