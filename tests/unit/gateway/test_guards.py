"""Gateway pieces without processes: the refused-fields table, Host names, origins, the
access-log line, the sampled history, worker residency fields, the page's offline files."""

from __future__ import annotations

import re
from importlib import resources
from types import SimpleNamespace

import pytest

from gateway.access import line, route_of
from gateway.errors import ApiError
from gateway.guard import is_protected, loopback_name, parse_origins
from gateway.history import History
from gateway.metrics import UNMATCHED, GatewayCounters
from gateway.requests import parse_chat, parse_completion, parse_embeddings
from gateway.unsupported import UNSUPPORTED
from sw_core.ops.resident import MAX_FIELD_BYTES, decode_resident, encode_resident

CHAT = [{"role": "user", "content": "Hi"}]


@pytest.mark.parametrize("entry", UNSUPPORTED, ids=lambda e: e.field)
def test_each_refused_field_names_itself(entry) -> None:
    asks = {
        "tools": [{}],
        "tool_choice": "required",
        "functions": [{}],
        "function_call": "auto!",
        "response_format": {"type": "json_object"},
        "logprobs": True,
        "top_logprobs": 3,
        "logit_bias": {"1": 2},
        "n": 2,
        "best_of": 2,
        "frequency_penalty": 0.1,
        "presence_penalty": -0.1,
        "echo": True,
        "suffix": "x",
        "audio": {"voice": "a"},
        "prediction": {"type": "content"},
        "dimensions": 8,
    }
    route = entry.routes[0]
    body = {"model": "m", entry.field: asks[entry.field]}
    parse = {"chat": parse_chat, "completion": parse_completion, "embeddings": parse_embeddings}
    body |= {
        "chat": {"messages": CHAT},
        "completion": {"prompt": "x"},
        "embeddings": {"input": "x"},
    }[route]
    with pytest.raises(ApiError) as caught:
        parse[route](body)
    error = caught.value.body()["error"]
    assert caught.value.status == 400 and error["param"] == entry.field
    assert error["code"] == "unsupported_parameter" and f"'{entry.field}'" in error["message"]


def test_values_that_ask_for_nothing_pass() -> None:
    call = parse_chat(
        {
            "model": "m",
            "messages": CHAT,
            "tools": [],
            "tool_choice": "none",
            "logprobs": False,
            "top_logprobs": 0,
            "logit_bias": {},
            "n": 1,
            "response_format": {"type": "text"},
            "frequency_penalty": 0,
            "presence_penalty": 0.0,
            "functions": None,
        }
    )
    assert call.params == {} and not call.include_usage
    streamed = parse_chat(
        {"model": "m", "messages": CHAT, "stream": True, "stream_options": {"include_usage": True}}
    )
    assert streamed.include_usage
    for bad in ({"include_usage": "yes"}, "on"):
        with pytest.raises(ApiError, match="stream_options"):
            parse_chat({"model": "m", "messages": CHAT, "stream": True, "stream_options": bad})


def test_messages_without_text_are_refused() -> None:
    for messages in ([{"role": "user", "content": None}], [{"role": "user", "content": " "}]):
        with pytest.raises(ApiError, match="hold no text") as caught:
            parse_chat({"model": "m", "messages": messages})
        assert caught.value.param == "messages"
    ok = parse_chat({"model": "m", "messages": [{"role": "system", "content": None}, *CHAT]})
    assert ok.prompt[0] == {"role": "system", "content": ""}


def test_loopback_names_and_protected_paths() -> None:
    for host in (
        "localhost",
        "localhost:8000",
        "LOCALHOST.",
        "app.localhost:3000",
        "127.0.0.1:80",
        "127.1.2.3",
        "[::1]:8000",
        "[::1]",
    ):
        assert loopback_name(host), host
    for host in (
        "evil.example",
        "localhost.evil.example",
        "10.0.0.5:8000",
        "0.0.0.0",
        "[::2]:8000",
        "127.0.0.1.nip.io",
    ):
        assert not loopback_name(host), host
    assert parse_origins(" https://A.example/ ,http://b:3000") == {
        "https://a.example",
        "http://b:3000",
    }
    assert all(map(is_protected, ["/v1", "/v1/x", "/api/status", "/api/", "/metrics"]))
    assert not any(map(is_protected, ["/", "/healthz", "/readyz", "/static/app.js", "/v1x"]))


def test_the_access_line_is_one_line_without_secrets() -> None:
    scope = {"method": "GET", "path": "/v1/\nx y" + "z" * 500}
    text = line(scope, 401, {"model": "a\nb", "key": "key2", "prompt_tokens": 3}, 0.0123)
    assert "\n" not in text and text.count(" ") == 6, text
    assert text.startswith("GET /v1/\\nx\\x20y") and "..." in text and len(text) < 400
    assert text.endswith("401 model=a\\nb tokens=3+0 duration=0.012s key=key2")
    assert route_of({}) == UNMATCHED
    assert route_of({"route": SimpleNamespace(path="/v1/models/{name:path}")}) == (
        "/v1/models/{name:path}"
    )


def test_the_history_samples_rates_over_each_interval() -> None:
    counters = GatewayCounters()
    history = History(counters)
    history.sample({"cache_hits": 0, "cache_misses": 10, "queue_length": 2, "pending": 1}, 100.0)
    counters.tokens(5, 40)
    counters.recent_ttft.extend([(101.0, 0.2), (101.5, 0.4), (99.0, 9.0)])
    history.sample({"cache_hits": 6, "cache_misses": 12, "queue_length": 0, "pending": 0}, 102.0)
    history.sample(None, 104.0)  # the cluster could not be read: a gap, not zeros
    samples = history.as_dict()["samples"]
    assert samples[0] == (100.0, None, None, 3, None)
    assert samples[1] == (102.0, 20.0, pytest.approx(0.3), 0, 0.75)  # 6 hits of 8 lookups
    assert samples[2] == (104.0, 0.0, None, None, None)
    for t in range(1000):
        history.sample(None, 200.0 + t)
    assert len(history.as_dict()["samples"]) == 150  # bounded


def test_resident_chunks_field_is_bounded_and_read_back() -> None:
    assert decode_resident(encode_resident({"m": ["a", "b"]})) == {"m": {"a", "b"}}
    many = {f"model-{i}": [f"model.layers.{j}" for j in range(400)] for i in range(20)}
    text = encode_resident(many)
    assert len(text) <= MAX_FIELD_BYTES
    decoded = decode_resident(text)
    assert decoded and len(decoded) < 20 and "_truncated" not in decoded
    assert decode_resident("not json") == {} and decode_resident(None) == {}


def test_the_page_loads_nothing_from_elsewhere() -> None:
    static = resources.files("gateway").joinpath("static")
    for name in ("index.html", "app.js", "chat.js", "charts.js", "style.css"):
        text = static.joinpath(name).read_text()
        assert not re.search(r"https?://|//cdn|@import", text), name


async def test_a_chunk_set_that_could_not_be_read_is_read_again_later(monkeypatch) -> None:
    import asyncio

    from gateway import tokens
    from sw_core.settings import Settings

    monkeypatch.setattr(tokens, "RETRY_S", 0.1)
    counter = tokens.TokenCounter(Settings())
    loads: list[int] = []

    async def load(model: str, location: str) -> tokens.ModelFacts:
        loads.append(1)
        if len(loads) == 1:
            raise OSError("storage away")
        return tokens.ModelFacts(max_positions=7)

    monkeypatch.setattr(counter, "_load", load)
    assert (await counter.facts("m", "/x")).max_positions is None  # empty, not a failure
    assert (await counter.facts("m", "/x")).max_positions is None and len(loads) == 1
    await asyncio.sleep(0.15)
    assert (await counter.facts("m", "/x")).max_positions == 7
    assert (await counter.facts("m", "/x")).max_positions == 7 and len(loads) == 2
