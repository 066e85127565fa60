"""Gateway pieces without processes: request parsing, keys, the loopback rule, and the job
pipeline's chat inputs that the gateway relies on."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from gateway.auth import KeyChecker
from gateway.errors import ApiError, error_from_exception
from gateway.jobs import Delta, Finish, JobBackend
from gateway.requests import parse_chat, parse_completion, parse_embeddings
from gateway.responses import embeddings
from gateway.server import check_bind, is_loopback
from sw_core.exceptions import ConfigError, JobError, JobTimeoutError, ModelError, SurfingError
from sw_core.pipeline.jobs import Job, decode_entry, encode_job, validate_request
from sw_core.settings import Secret, Settings
from workers.jobs.inference import job_requests

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]


def test_a_generate_job_may_carry_a_chat_and_the_chat_flag() -> None:
    settings = Settings()
    _, _, inputs, params = validate_request(
        "m", "generate", [CHAT, "plain"], {"chat": False}, settings
    )
    assert inputs == [CHAT, "plain"] and params == {"chat": False}
    job = Job("j1", "m", "generate", inputs, params)
    decoded = decode_entry("1-0", encode_job(job), settings)
    assert decoded.inputs == [CHAT, "plain"]
    requests = job_requests("generate", decoded)
    assert requests[0]["messages"] == CHAT and requests[0]["chat"] is False
    assert requests[1]["text"] == "plain"


@pytest.mark.parametrize(
    "bad",
    [
        [],
        [{"role": "user"}],
        [{"role": "user", "content": 3}],
        [{"role": "u", "content": "x", "x": 1}],
    ],
)
def test_a_malformed_chat_is_refused(bad: list) -> None:
    pattern = "input 0: (a chat holds 1 to 64 messages|each chat message is a map of 'role')"
    with pytest.raises(JobError, match=pattern):
        validate_request("m", "generate", [bad], {}, Settings())


def test_chat_request_becomes_one_generate_input() -> None:
    call = parse_chat(
        {
            "model": "smol",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
            "max_tokens": 5,
            "temperature": 0.7,
            "seed": 3,
            "stream": True,
        }
    )
    assert call.prompt == [{"role": "user", "content": "Hi"}] and call.stream
    assert call.params == {"max_new_tokens": 5, "do_sample": True, "temperature": 0.7, "seed": 3}
    greedy = parse_chat({"model": "smol", "messages": CHAT, "temperature": 0})
    assert greedy.params == {} and not greedy.stream


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"messages": CHAT}, "'model'"),
        ({"model": "m", "messages": "hi"}, "'messages'"),
        ({"model": "m", "messages": [{"role": "robot", "content": "x"}]}, "'role'"),
        ({"model": "m", "messages": CHAT, "n": 17}, "'n' must be an integer from 1 to 16"),
        ({"model": "m", "messages": CHAT, "n": 0}, "'n'"),
        ({"model": "m", "messages": CHAT, "top_logprobs": 3}, "'top_logprobs' needs"),
        ({"model": "m", "messages": CHAT, "logprobs": 1}, "'logprobs' must be true or false"),
        ({"model": "m", "messages": CHAT, "response_format": {"type": "xml"}}, "'response_format'"),
        (
            {"model": "m", "messages": CHAT, "response_format": {"type": "json_schema"}},
            "'response_format' of type json_schema needs",
        ),
        (
            {
                "model": "m",
                "messages": CHAT,
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"type": "nonsense"}},
                },
            },
            "'response_format' is not a usable JSON schema",
        ),
        ({"model": "m", "messages": CHAT, "stop": ["a", "b", "c", "d", "e"]}, "'stop' holds 5"),
        ({"model": "m", "messages": CHAT, "stop": [1]}, "'stop' must hold strings only"),
        ({"model": "m", "messages": CHAT, "stop": 7}, "'stop' must be a string or a list"),
        ({"model": "m", "messages": CHAT, "stop": [""]}, "'stop' holds an empty string"),
        ({"model": "m", "messages": CHAT, "frequency_penalty": 2.5}, "'frequency_penalty' must"),
        ({"model": "m", "messages": CHAT, "presence_penalty": -3}, "'presence_penalty' must"),
        ({"model": "m", "messages": CHAT, "min_p": 1.5}, "'min_p' must be a number from 0 to 1"),
        ({"model": "m", "messages": CHAT, "presence_penalty": "0"}, "'presence_penalty'"),
        ({"model": "m", "messages": CHAT, "repetition_penalty": 0}, "'repetition_penalty'"),
        ({"model": "m", "messages": CHAT, "max_tokens": 0}, "'max_tokens'"),
        ({"model": "m", "messages": CHAT, "temperature": 5}, "'temperature'"),
        ({"model": "m", "messages": CHAT, "stream": "yes"}, "'stream'"),
    ],
)
def test_bad_chat_requests_are_400(body: dict, field: str) -> None:
    with pytest.raises(ApiError) as caught:
        parse_chat(body)
    assert caught.value.status == 400 and field in caught.value.message


def test_openai_fields_reach_the_job_params_as_the_schema_names_them() -> None:
    body = {"model": "m", "messages": CHAT, "n": 2, "logprobs": True, "top_logprobs": 3}
    call = parse_chat(
        {
            **body,
            "frequency_penalty": 0.5,
            "presence_penalty": -1,
            "min_p": 0.05,
            "seed": 4,
            "temperature": 1,
        }
    )
    assert call.params == {
        "n": 2,
        "logprobs": True,
        "top_logprobs": 3,
        "frequency_penalty": 0.5,
        "presence_penalty": -1.0,
        "min_p": 0.05,
        "seed": 4,
        "do_sample": True,
        "temperature": 1.0,
    }
    # a completion's logprobs is the number of alternatives
    completion = parse_completion({"model": "m", "prompt": "Hi", "logprobs": 2})
    assert completion.params == {"logprobs": True, "top_logprobs": 2, "chat": False}
    assert parse_completion({"model": "m", "prompt": "Hi", "logprobs": 0}).params["logprobs"]
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    structured = parse_chat(
        {
            "model": "m",
            "messages": CHAT,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "s", "schema": schema},
            },
        }
    )
    assert json.loads(structured.params["json_schema"]) == schema
    as_object = parse_chat(
        {"model": "m", "messages": CHAT, "response_format": {"type": "json_object"}}
    )
    assert as_object.params == {"json_schema": '{"type": "object"}'}
    plain = parse_chat({"model": "m", "messages": CHAT, "response_format": {"type": "text"}})
    assert plain.params == {}


def test_stop_and_penalties_reach_the_job_params() -> None:
    body = {"model": "m", "messages": CHAT, "stop": "\n\n", "repetition_penalty": 1.3}
    call = parse_chat({**body, "frequency_penalty": 0, "presence_penalty": 0.0})
    assert call.params == {"stop": ["\n\n"], "repetition_penalty": 1.3}
    listed = parse_completion({"model": "m", "prompt": "x", "stop": ["a", "b"]})
    assert listed.params == {"stop": ["a", "b"], "chat": False}
    off = parse_chat({"model": "m", "messages": CHAT, "stop": None, "repetition_penalty": 1})
    assert off.params == {}
    _, _, inputs, params = validate_request("m", "generate", [CHAT], call.params, Settings())
    [request] = job_requests("generate", Job("j", "m", "generate", inputs, params))
    assert request["stop"] == ["\n\n"] and request["repetition_penalty"] == 1.3


def test_completion_skips_the_chat_template_and_embeddings_take_strings() -> None:
    call = parse_completion({"model": "m", "prompt": ["Once"], "max_tokens": 3})
    assert call.prompt == "Once" and call.params == {"max_new_tokens": 3, "chat": False}
    assert parse_embeddings({"model": "e", "input": "x"}).inputs == ["x"]
    with pytest.raises(ApiError, match="token-id inputs"):
        parse_embeddings({"model": "e", "input": [[1, 2]]})
    with pytest.raises(ApiError, match="dimensions"):
        parse_embeddings({"model": "e", "input": "x", "dimensions": 8})


def test_base64_embeddings_are_little_endian_float32() -> None:
    body = embeddings("e", [[0.5, -1.25, 3.0]], 4, as_base64=True)
    raw = base64.b64decode(body["data"][0]["embedding"])
    assert np.frombuffer(raw, dtype="<f4").tolist() == [0.5, -1.25, 3.0]
    assert body["usage"]["prompt_tokens"] == 4


def test_keys_are_checked_and_never_shown() -> None:
    keys = KeyChecker(Secret("alpha, beta-key"))
    assert keys.enabled
    keys.check("Bearer alpha")
    keys.check("bearer beta-key")
    for header, code in [
        (None, "missing_api_key"),
        ("Basic alpha", "missing_api_key"),
        ("Bearer alph", "invalid_api_key"),
        ("Bearer alpha, beta-key", "invalid_api_key"),
    ]:
        with pytest.raises(ApiError) as caught:
            keys.check(header)
        assert caught.value.status == 401 and caught.value.code == code
        assert "alpha" not in caught.value.message
    assert not KeyChecker(None).enabled
    KeyChecker(None).check(None)
    assert "alpha" not in repr(Settings(api_keys=Secret("alpha")))


def test_without_keys_only_loopback_is_served() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.5")
    assert "loopback only" in check_bind(Settings(), "127.0.0.1")
    with pytest.raises(ConfigError, match="without API keys"):
        check_bind(Settings(), "0.0.0.0")
    assert "required" in check_bind(Settings(api_keys=Secret("k")), "0.0.0.0")


def test_job_errors_map_to_openai_statuses() -> None:
    assert error_from_exception(JobError("bad")).status == 400
    assert error_from_exception(ModelError("too long")).status == 400
    assert error_from_exception(JobTimeoutError("late")).status == 504
    full = type("QueueFullError", (Exception,), {})("full")
    assert error_from_exception(full).status == 429
    assert error_from_exception(full).headers["Retry-After"] == "1"
    assert error_from_exception(RuntimeError("boom")).status == 500


class FakeProducer:
    """A producer whose token stream and result are given (no Redis)."""

    def __init__(self, events: list[dict], result: list | None = None) -> None:
        self.events = events
        self.result_value = result
        self.redis = None

    def stream(self, job_id: str, *, timeout_s: float | None = 60):
        async def events():
            for event in self.events:
                yield event

        return events()

    async def result(self, job_id: str, timeout_s: float | None = 30):
        return self.result_value

    async def cancel(self, job_id: str) -> str:
        return "cancelled"

    async def submit(self, model: str, task: str, inputs: list, *, deadline_s=None, **params):
        return "j"


async def collect(producer: FakeProducer) -> list:
    backend = JobBackend(producer, Settings())  # type: ignore[arg-type]
    return [event async for event in backend.stream("j", 5)]


async def test_a_restarted_stream_does_not_repeat_text() -> None:
    events = [
        {"type": "token", "index": 0, "text": "Hel"},
        {"type": "token", "index": 0, "text": "lo"},
        {"type": "restart"},
        {"type": "token", "index": 0, "text": "Hello"},
        {"type": "token", "index": 0, "text": " world"},
        {
            "type": "end",
            "index": 0,
            "finish_reason": "eos",
            "prompt_tokens": 4,
            "completion_tokens": 3,
        },
        {"type": "final", "status": "done"},
    ]
    got = await collect(FakeProducer(events))
    assert got == [Delta("Hel"), Delta("lo"), Delta(" world"), Finish("stop", 4, 3)]
    diverging = [*events[:3], {"type": "token", "index": 0, "text": "Bye"}]
    with pytest.raises(SurfingError, match="different answer"):
        await collect(FakeProducer(diverging))


async def test_a_stream_without_token_events_ends_with_the_whole_result() -> None:
    result = [
        {"text": "Paris.", "token_ids": [5, 6, 7], "finish_reason": "length", "prompt_tokens": 9}
    ]
    got = await collect(FakeProducer([{"type": "final", "status": "done"}], result))
    assert got == [Delta("Paris."), Finish("length", 9, 3)]


async def test_a_quiet_stream_gets_keepalives_and_a_deadline(monkeypatch) -> None:
    import asyncio

    from gateway import streams as service

    monkeypatch.setattr(service, "KEEPALIVE_S", 0.02)

    async def slow(delay_s: float):
        await asyncio.sleep(delay_s)
        yield Delta("late")

    got = [e async for e in service._with_keepalive(slow(0.1), timeout_s=5)]
    assert got[-1] == Delta("late") and got.count(None) >= 2
    with pytest.raises(TimeoutError):
        async for _ in service._with_keepalive(slow(5), timeout_s=0.1):
            pass


async def test_a_stream_left_at_once_frees_its_slot_once() -> None:
    """A client gone before its stream's first event: the events may never start; the
    response still closes the stream -- one slot released, the job cancelled."""
    from gateway.routes import ClosingStream
    from gateway.service import Gateway, OpenStream
    from gateway.streams import StreamPlan

    producer = FakeProducer([{"type": "token", "index": 0, "text": "x"}])
    cancelled: list[str] = []

    async def cancel(job_id: str) -> str:
        cancelled.append(job_id)
        return "cancelled"

    producer.cancel = cancel  # type: ignore[method-assign]
    gateway = Gateway(JobBackend(producer, Settings()), Settings())  # type: ignore[arg-type]
    for started in (False, True):
        gateway.counters.open_requests = 1
        stream = OpenStream(gateway, StreamPlan("j", "m", True, False, 0.0), {})
        if started:
            await anext(aiter(stream))  # the first event went out, then the client left

        async def receive() -> dict:
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            pass

        await ClosingStream(stream)(
            {"type": "http", "asgi": {"spec_version": "2.3"}}, receive, send
        )
        assert gateway.counters.open_requests == 0
        await stream.close()  # twice is once
        assert gateway.counters.open_requests == 0
    for task in list(gateway._cancels):
        await task
    assert cancelled == ["j", "j"]
