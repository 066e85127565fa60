"""``json_schema`` (OpenAI's ``response_format``): a random LLaMA that speaks SmolLM2's
tokenizer, which left alone writes gibberish, writes JSON valid under the schema when the
engine masks its logits with llguidance -- greedy and sampled, static batches and continuous
batching alike; and a schema llguidance refuses is a ModelError naming the field."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from sw_core.engine import StreamingEngine
from sw_core.engine.tasks.continuous import DecodeSession
from sw_core.exceptions import ModelError
from tests.support.engine import drive_session
from tests.support.serving import TinyChat, tiny_chat  # noqa: F401

SCHEMA = {
    "type": "object",
    "properties": {
        "answer": {"enum": ["yes", "no", "maybe"]},
        "sure": {"type": "boolean"},
        "colour": {"type": "string", "maxLength": 6},
    },
    "required": ["answer", "sure", "colour"],
    "additionalProperties": False,
}
PROMPT = "Answer in JSON: is the sky blue?"


def assert_valid(text: str) -> None:
    value = json.loads(text)
    assert set(value) == {"answer", "sure", "colour"}, value
    assert value["answer"] in ("yes", "no", "maybe") and isinstance(value["sure"], bool)
    assert isinstance(value["colour"], str) and len(value["colour"]) <= 6


@pytest.fixture
async def engine(tiny_chat: TinyChat) -> AsyncIterator[StreamingEngine]:  # noqa: F811
    engine = await StreamingEngine.open(tiny_chat.folder, memory_budget_mb=64)
    yield engine
    await engine.aclose()


async def test_the_output_is_json_valid_under_the_schema(engine: StreamingEngine) -> None:
    base: dict[str, Any] = {"text": PROMPT, "max_new_tokens": 60}
    constrained = {**base, "json_schema": json.dumps(SCHEMA)}
    free, greedy, sampled = await engine.run_async(
        "generate", [base, constrained, {**constrained, "temperature": 1.0, "seed": 5}]
    )
    with pytest.raises(ValueError):  # the model alone: not JSON
        json.loads(free["text"])
    for result in (greedy, sampled):
        assert result["finish_reason"] == "eos", result
        assert_valid(result["text"])
    session = DecodeSession(engine, 64 << 20)
    other = session.parse("free", base)
    joined = session.parse("json", {**constrained, "temperature": 1.0, "seed": 5})
    done = await drive_session(session, {1: [other], 3: [joined]})
    assert session.text(done["json"]) == sampled["text"]  # the same, alone or in company


async def test_any_object_and_a_bad_schema(engine: StreamingEngine) -> None:
    [obj, bad] = await engine.run_async(
        "generate",
        [
            {"text": PROMPT, "max_new_tokens": 40, "json_schema": '{"type": "object"}'},
            {"text": PROMPT, "json_schema": '{"type": "nonsense"}'},
        ],
    )
    if obj["finish_reason"] == "eos":
        assert isinstance(json.loads(obj["text"]), dict)
    else:  # cut at max_new_tokens: still the beginning of an object
        assert obj["text"].lstrip().startswith("{")
    assert isinstance(bad, ModelError) and "json_schema" in str(bad)
