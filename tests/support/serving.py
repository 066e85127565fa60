"""Helpers of the serving tests: a tiny LLaMA that speaks SmolLM2's tokenizer, its reference
output, and worker processes (inference + loader) that serve it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers

from producer import Producer
from sw_core.settings import Settings
from tests.support.processes import start_worker, worker_env
from tests.support.settings import fast_settings

#: Small enough to be fast, big enough (13 MB of embeddings) that streaming it takes time.
HIDDEN = 64


@dataclass(frozen=True)
class TinyChat:
    """A random LLaMA with SmolLM2's vocabulary, in memory and chunked (with its tokenizer)."""

    folder: Path
    model: Any
    tokenizer: Any


@pytest.fixture(scope="module")
def tiny_chat(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TinyChat]:
    from sw_core.chunks.chunker import chunk_model
    from sw_core.local.bundled import smollm2_gguf_path

    gguf = smollm2_gguf_path()
    tokenizer = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        max_position_embeddings=1024,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    folder = tmp_path_factory.mktemp("tiny-chat")
    chunk_model(model, folder, name="tiny", tokenizer=tokenizer, max_chunk_mb=2)
    yield TinyChat(folder, model, tokenizer)


def prompt_ids(tiny: TinyChat, text: str) -> list[int]:
    """The ids the engine feeds for a ``text`` input (chat template applied)."""
    messages = [{"role": "user", "content": text}]
    prompt = tiny.tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=False
    )
    return list(tiny.tokenizer(prompt, add_special_tokens=False)["input_ids"])


def reference_tokens(tiny: TinyChat, text: str, max_new_tokens: int) -> list[int]:
    """transformers' greedy ``generate`` of this prompt alone (new tokens, cut after EOS)."""
    ids = torch.tensor([prompt_ids(tiny, text)])
    with torch.inference_mode():
        out = tiny.model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
        )[0, ids.shape[1] :].tolist()
    return out[: out.index(2) + 1] if 2 in out else out


def serving_settings(redis_url: str, tiny: TinyChat, **overrides: Any) -> Settings:
    """Settings of a worker that streams the tiny model's weights every step."""
    values: dict[str, Any] = {
        "models": f"tiny={tiny.folder}",
        "memory_budget_mb": 4,
        "prefetch_count": 1,
        "max_new_tokens_limit": 1000,
    }
    values.update(overrides)
    return fast_settings(redis_url, **values)


@contextlib.contextmanager
def workers(settings: Settings, log_dir: Path, names: tuple[str, ...] = ("w1",)) -> Iterator[list]:
    """Inference workers (one per name) and a chunk loader, stopped at the end."""
    procs = [start_worker(worker_env(settings), log_dir / "loader.log", "workers.LoaderSettings")]
    for name in names:
        env = worker_env(settings, SW_WORKER_NAME=name)
        procs.append(start_worker(env, log_dir / f"{name}.log"))
    try:
        yield procs
    finally:
        for proc in procs:
            proc.stop()


async def events_of(producer: Producer, job_id: str, timeout_s: float = 120) -> list[dict]:
    """Every event of a job's stream, up to its final one."""
    return [event async for event in producer.stream(job_id, timeout_s=timeout_s)]


async def first_token(producer: Producer, job_id: str) -> AsyncIterator[dict]:
    """Yield events until (and including) the job's first token."""
    async for event in producer.stream(job_id, timeout_s=120):
        yield event
        if event["type"] in ("token", "final"):
            return


def text_after_last_restart(events: list[dict], index: int = 0) -> str:
    """The concatenated text deltas of one input since the last restart."""
    text = ""
    for event in events:
        if event["type"] == "restart":
            text = ""
        elif event["type"] == "token" and event["index"] == index:
            text += event["text"]
    return text
