"""OpenAI response bodies and Server-Sent Event chunks."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import numpy as np

from gateway.jobs import Finish

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


def chat_completion(job_id: str, model: str, text: str, finish: Finish) -> dict[str, Any]:
    """A whole ``chat.completion``."""
    return {
        "id": f"chatcmpl-{job_id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": finish.finish_reason,
            }
        ],
        "usage": usage(finish.prompt_tokens, finish.completion_tokens),
    }


def text_completion(job_id: str, model: str, text: str, finish: Finish) -> dict[str, Any]:
    """A whole ``text_completion``."""
    return {
        "id": f"cmpl-{job_id}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "text": text, "logprobs": None, "finish_reason": finish.finish_reason}
        ],
        "usage": usage(finish.prompt_tokens, finish.completion_tokens),
    }


def chunk(
    job_id: str,
    model: str,
    *,
    chat: bool,
    text: str | None = None,
    finish: Finish | None = None,
    first: bool = False,
) -> dict[str, Any]:
    """One streamed chunk: a delta of text, or the end (finish reason and usage)."""
    choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": None}
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
        out["usage"] = usage(finish.prompt_tokens, finish.completion_tokens)
    return out


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


def model_list(names: list[str], synthetic: dict[str, str] | None = None) -> dict[str, Any]:
    """``GET /v1/models``; models of random weights (``sw synth``) carry ``synthetic``."""
    marks = synthetic or {}
    return {"object": "list", "data": [model_card(name, marks.get(name)) for name in names]}


def model_card(name: str, synthetic: str | None = None) -> dict[str, Any]:
    """One model; ``synthetic`` (what its random weights imitate) marks a model that must
    not be mistaken for a real one: in ``owned_by`` and in a ``synthetic`` field."""
    card: dict[str, Any] = {
        "id": name,
        "object": "model",
        "created": 0,
        "owned_by": "surfing-weights",
    }
    if synthetic:
        card["owned_by"] = "surfing-weights (synthetic: random weights)"
        card["synthetic"] = synthetic
    return card
