"""OpenAI response bodies and Server-Sent Event chunks."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import numpy as np

from gateway.jobs import Finish, finish_of

#: The last event of every stream.
DONE = b"data: [DONE]\n\n"
#: A comment line: clients ignore it, proxies see the connection is alive.
KEEPALIVE = b": keep-alive\n\n"


def usage(prompt_tokens: int, completion_tokens: int = 0) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def sse(payload: dict[str, Any]) -> bytes:
    """One ``data:`` event."""
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def chat_logprobs(entries: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    """A chat choice's ``logprobs``: ``{"content": [{token, logprob, bytes, top_logprobs}]}``
    (the job's entries without their ``token_id``)."""
    if entries is None:
        return None

    def one(entry: dict[str, Any]) -> dict[str, Any]:
        return {"token": entry["token"], "logprob": entry["logprob"], "bytes": entry["bytes"]}

    content = [
        {**one(e), "top_logprobs": [one(t) for t in e.get("top_logprobs") or []]} for e in entries
    ]
    return {"content": content, "refusal": None}


def completion_logprobs(
    entries: list[dict[str, Any]] | None, offset: int = 0
) -> dict[str, Any] | None:
    """A completion choice's ``logprobs`` (the legacy shape): tokens, their log-probabilities,
    the top alternatives as ``{token: logprob}`` and each token's offset in the text (from
    ``offset``, the text before these tokens)."""
    if entries is None:
        return None
    offsets = []
    for entry in entries:
        offsets.append(offset)
        offset += len(entry["token"])
    return {
        "tokens": [e["token"] for e in entries],
        "token_logprobs": [e["logprob"] for e in entries],
        "top_logprobs": [
            {t["token"]: t["logprob"] for t in e.get("top_logprobs") or []} for e in entries
        ],
        "text_offset": offsets,
    }


def chat_completion(
    job_id: str, model: str, outputs: list[dict[str, Any]], usage_of: Finish
) -> dict[str, Any]:
    """A whole ``chat.completion``: one choice per output (``n``)."""
    choices = []
    for i, output in enumerate(outputs):
        choices.append(
            {
                "index": i,
                "message": {"role": "assistant", "content": output.get("text") or ""},
                "logprobs": chat_logprobs(output.get("logprobs")),
                "finish_reason": finish_of(output).finish_reason,
            }
        )
    return {
        "id": f"chatcmpl-{job_id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": usage(usage_of.prompt_tokens, usage_of.completion_tokens),
    }


def text_completion(
    job_id: str, model: str, outputs: list[dict[str, Any]], usage_of: Finish
) -> dict[str, Any]:
    """A whole ``text_completion``: one choice per output (``n``)."""
    choices = [
        {
            "index": i,
            "text": output.get("text") or "",
            "logprobs": completion_logprobs(output.get("logprobs")),
            "finish_reason": finish_of(output).finish_reason,
        }
        for i, output in enumerate(outputs)
    ]
    return {
        "id": f"cmpl-{job_id}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": usage(usage_of.prompt_tokens, usage_of.completion_tokens),
    }


def chunk(
    job_id: str,
    model: str,
    *,
    chat: bool,
    text: str | None = None,
    finish: Finish | None = None,
    first: bool = False,
    index: int = 0,
    logprobs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One streamed chunk of choice ``index``: a delta of text (with its ``logprobs``, in
    the route's shape), or the end (its finish reason)."""
    choice: dict[str, Any] = {"index": index, "logprobs": logprobs, "finish_reason": None}
    if chat:
        delta: dict[str, Any] = {"role": "assistant"} if first else {}
        if text is not None:
            delta["content"] = text
        choice["delta"] = delta
    else:
        choice["text"] = text or ""
    out: dict[str, Any] = {
        "id": f"{'chatcmpl' if chat else 'cmpl'}-{job_id}",
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
    }
    if finish is not None:
        choice["finish_reason"] = finish.finish_reason
    return out


def usage_chunk(job_id: str, model: str, chat: bool, finish: Finish) -> dict[str, Any]:
    """The last chunk of a stream that asked for ``stream_options.include_usage``: the usage
    of the whole request and no choices (as OpenAI sends it)."""
    return {
        "id": f"{'chatcmpl' if chat else 'cmpl'}-{job_id}",
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [],
        "usage": usage(finish.prompt_tokens, finish.completion_tokens),
    }


def embeddings(
    model: str, vectors: list[list[float]], prompt_tokens: int, *, as_base64: bool
) -> dict[str, Any]:
    """An ``embedding`` list; base64 is the little-endian float32 bytes OpenAI sends."""
    data = []
    for i, vector in enumerate(vectors):
        value: Any = vector
        if as_base64:
            value = base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()
        data.append({"object": "embedding", "index": i, "embedding": value})
    return {"object": "list", "data": data, "model": model, "usage": usage(prompt_tokens)}


def model_list(cards: list[dict[str, Any]]) -> dict[str, Any]:
    """``GET /v1/models``."""
    return {"object": "list", "data": cards}


def model_card(
    name: str, context_length: int | None = None, synthetic: str | None = None
) -> dict[str, Any]:
    """One model; its context length (prompt plus answer, see :mod:`sw_core.context`) as
    ``context_length`` and as vLLM's ``max_model_len`` when the gateway could read it;
    ``synthetic`` (what its random weights imitate) marks a model that must not be mistaken
    for a real one: in ``owned_by`` and in a ``synthetic`` field."""
    card: dict[str, Any] = {
        "id": name,
        "object": "model",
        "created": 0,
        "owned_by": "surfing-weights",
    }
    if context_length is not None:
        card["context_length"] = card["max_model_len"] = context_length
    if synthetic:
        card["owned_by"] = "surfing-weights (synthetic: random weights)"
        card["synthetic"] = synthetic
    return card
