"""The job wire format: encoding, decoding and the validation of untrusted entries."""

from __future__ import annotations

import json

import msgpack
import pytest

from sw_core.exceptions import JobError
from sw_core.pipeline.jobs import (
    Job,
    decode_entry,
    encode_job,
    job_id_of,
    pack_payload,
    validate_request,
)
from sw_core.schema import MAX_INPUTS, MAX_TASK_INPUTS, GenerateParams
from sw_core.settings import Settings

SETTINGS = Settings.from_env({}, max_payload_bytes=4096, max_input_tokens=64)


def producer_fields(**overrides: object) -> dict[bytes, bytes]:
    job = Job(job_id="abc123", model="minilm", task="embed", inputs=["hello"], submitted_ms=5)
    fields = {k.encode(): v for k, v in encode_job(job).items()}
    for key, value in overrides.items():
        if value is None:
            fields.pop(key.encode(), None)
        else:
            fields[key.encode()] = value if isinstance(value, bytes) else str(value).encode()
    return fields


def test_round_trip_keeps_every_field() -> None:
    job = Job(
        job_id="j1",
        model="smol",
        task="generate",
        inputs=["hi", "there"],
        params={"max_new_tokens": 7, "temperature": 0.5, "do_sample": True},
        attempt=2,
        submitted_ms=1234,
        first_failure_ms=99,
    )
    fields = encode_job(job)
    assert set(fields) >= {"job_id", "model", "task", "payload", "attempt", "submitted_ms"}
    assert fields["counted"] == b"1"
    back = decode_entry("1700000000000-0", fields, SETTINGS)
    assert (back.job_id, back.model, back.task, back.inputs) == (
        "j1",
        "smol",
        "generate",
        job.inputs,
    )
    assert back.params == job.params
    assert (back.attempt, back.submitted_ms, back.first_failure_ms) == (2, 1234, 99)
    assert back.entry_id == "1700000000000-0" and back.counted


def test_forward_token_ids_round_trip() -> None:
    job = Job(
        job_id="f", model="m", task="forward", inputs=[[1, 2, 3]], params={"output": "logits"}
    )
    back = decode_entry("1-0", encode_job(job), SETTINGS)
    assert back.inputs == [[1, 2, 3]] and back.params == {"output": "logits"}


def test_hand_added_entry_with_text_and_string_params() -> None:
    fields = {b"model": b"smol", b"task": b"generate", b"text": b"hello world"}
    fields |= {b"max_new_tokens": b"20", b"do_sample": b"false", b"temperature": b"0.7"}
    job = decode_entry(b"1700000000123-4", fields, SETTINGS)
    assert job.job_id == "1700000000123-4"  # a hand-added job's id is its entry id
    assert job.inputs == ["hello world"]
    assert job.params == {"max_new_tokens": 20, "do_sample": False, "temperature": 0.7}
    assert job.submitted_ms == 1700000000123 and job.attempt == 1
    assert not job.counted  # the worker counts total_requests for it


def test_hand_added_entry_with_json_inputs() -> None:
    fields = {b"model": b"m", b"task": b"forward", b"inputs": b"[[5, 6]]", b"output": b"hidden"}
    job = decode_entry("2-0", fields, SETTINGS)
    assert job.inputs == [[5, 6]] and job.params == {"output": "hidden"}


def test_encode_refuses_oversized_payload() -> None:
    job = Job(job_id="j", model="m", task="embed", inputs=["x" * 5000])
    with pytest.raises(JobError, match="max_payload_bytes"):
        encode_job(job, max_payload_bytes=4096)


def test_validate_request_cleans_and_checks() -> None:
    model, task, inputs, params = validate_request(
        "m", "generate", ["a"], {"temperature": 1, "seed": 3}, SETTINGS
    )
    assert (model, task, inputs) == ("m", "generate", ["a"])
    assert params == {"temperature": 1.0, "seed": 3} and isinstance(params["temperature"], float)
    with pytest.raises(JobError, match="unknown param 'beam'"):
        validate_request("m", "generate", ["a"], {"beam": 2}, SETTINGS)


def test_temperature_zero_means_greedy() -> None:
    """As in OpenAI's API: 0 is greedy, whatever do_sample or the model's defaults say."""
    _, _, _, params = validate_request("m", "generate", ["a"], {"temperature": 0}, SETTINGS)
    assert params == {"temperature": 0.0}
    assert GenerateParams(temperature=0.0, do_sample=True).sampling_temperature == 0.0
    assert GenerateParams(temperature=0.7).sampling_temperature == 0.7
    assert GenerateParams(do_sample=True).sampling_temperature == 1.0
    assert GenerateParams().sampling_temperature == 0.0
    with pytest.raises(JobError, match="'temperature' must be a number from 0 to 100"):
        validate_request("m", "generate", ["a"], {"temperature": -0.1}, SETTINGS)


def deep_list(depth: int) -> bytes:
    return b"\x91" * depth + b"\x01"


MALFORMED: list[tuple[str, dict[bytes, bytes], str]] = [
    ("no model", {b"task": b"embed", b"text": b"x"}, "lacks the field"),
    ("no task", {b"model": b"m", b"text": b"x"}, "lacks the field"),
    ("unknown task", {b"model": b"m", b"task": b"translate", b"text": b"x"}, "unknown task"),
    ("bad model name", {b"model": b"../etc", b"task": b"embed", b"text": b"x"}, "model must be"),
    ("empty model", {b"model": b"", b"task": b"embed", b"text": b"x"}, "model must be"),
    ("no inputs", {b"model": b"m", b"task": b"embed"}, "no inputs"),
    ("empty text", {b"model": b"m", b"task": b"embed", b"text": b""}, "non-empty string"),
    (
        "text and inputs",
        {b"model": b"m", b"task": b"embed", b"text": b"a", b"inputs": b'["b"]'},
        "either",
    ),
    ("inputs not json", {b"model": b"m", b"task": b"embed", b"inputs": b"[oops"}, "not a JSON"),
    ("inputs not list", {b"model": b"m", b"task": b"embed", b"inputs": b'"a"'}, "non-empty list"),
    (
        "too many inputs",
        {
            b"model": b"m",
            b"task": b"generate",
            b"inputs": json.dumps(["a"] * (MAX_TASK_INPUTS["generate"] + 1)).encode(),
        },
        "inputs in one generate job",
    ),
    (
        "inputs deep json",
        {b"model": b"m", b"task": b"embed", b"inputs": b"[" * 50 + b"]" * 50},
        "nested deeper",
    ),
    (
        "inputs very deep json",
        {b"model": b"m", b"task": b"embed", b"inputs": b"[" * 100_000 + b"]" * 100_000},
        "bytes",
    ),
    ("forward with text", {b"model": b"m", b"task": b"forward", b"text": b"hi"}, "token ids"),
    (
        "forward str tokens",
        {b"model": b"m", b"task": b"forward", b"inputs": b'[["a"]]'},
        "token ids",
    ),
    (
        "forward negative token",
        {b"model": b"m", b"task": b"forward", b"inputs": b"[[-1]]"},
        "token ids",
    ),
    (
        "forward bool token",
        {b"model": b"m", b"task": b"forward", b"inputs": b"[[true]]"},
        "token ids",
    ),
    (
        "forward too long",
        {b"model": b"m", b"task": b"forward", b"inputs": json.dumps([list(range(65))]).encode()},
        "at most 64 are allowed (SW_MAX_INPUT_TOKENS)",
    ),
    (
        "unknown param",
        {b"model": b"m", b"task": b"embed", b"text": b"a", b"beam": b"3"},
        "unknown param 'beam'",
    ),
    (
        "param wrong type",
        {b"model": b"m", b"task": b"generate", b"text": b"a", b"max_new_tokens": b"many"},
        "'max_new_tokens'='many' is not an integer",
    ),
    (
        "param out of range",
        {b"model": b"m", b"task": b"generate", b"text": b"a", b"max_new_tokens": b"100000"},
        "'max_new_tokens' must be an integer from 1 to",
    ),
    (
        "param zero tokens",
        {b"model": b"m", b"task": b"generate", b"text": b"a", b"max_new_tokens": b"0"},
        "'max_new_tokens' must be an integer from 1 to",
    ),
    (
        "temperature nan",
        {b"model": b"m", b"task": b"generate", b"text": b"a", b"temperature": b"nan"},
        "'temperature' must be a number from 0 to 100, got nan",
    ),
    (
        "bad bool",
        {b"model": b"m", b"task": b"embed", b"text": b"a", b"normalize": b"maybe"},
        "'normalize'='maybe' is not true or false",
    ),
    (
        "bad choice",
        {b"model": b"m", b"task": b"forward", b"inputs": b"[[1]]", b"output": b"attentions"},
        "'output' must be one of 'hidden', 'logits'",
    ),
    (
        "param for other task",
        {b"model": b"m", b"task": b"embed", b"text": b"a", b"max_new_tokens": b"5"},
        "unknown param",
    ),
    (
        "garbage attempt",
        {b"model": b"m", b"task": b"embed", b"text": b"a", b"attempt": b"x"},
        "not a whole number",
    ),
    (
        "zero attempt",
        {b"model": b"m", b"task": b"embed", b"text": b"a", b"attempt": b"0"},
        "must be >= 1",
    ),
    (
        "bad job id",
        {b"model": b"m", b"task": b"embed", b"text": b"a", b"job_id": b"a b/c"},
        "not a valid id",
    ),
    ("non-utf8 text", {b"model": b"m", b"task": b"embed", b"text": b"\xff\xfe"}, "UTF-8"),
    (
        "too many fields",
        {
            b"model": b"m",
            b"task": b"embed",
            b"text": b"a",
            **{f"f{i}".encode(): b"1" for i in range(40)},
        },
        "fields",
    ),
    ("oversized entry", {b"model": b"m", b"task": b"embed", b"text": b"a" * 10_000}, "bytes"),
]

PAYLOADS: list[tuple[str, bytes, str]] = [
    ("not msgpack", b"\xc1\xc1\xc1", "not valid msgpack"),
    ("truncated", pack_payload(["hello"], {})[:-2], "ends too early"),
    ("extra bytes", pack_payload(["hello"], {}) + b"\x01", "after its msgpack value"),
    ("not a map", msgpack.packb(["hello"]), "must be a map"),
    ("no inputs key", msgpack.packb({"params": {}}), "must be a map"),
    ("unknown key", msgpack.packb({"inputs": ["a"], "evil": 1}), "unknown key"),
    (
        "mixed key types",
        msgpack.packb({"inputs": ["a"], b"evil": 1, "z": 2}, use_bin_type=True),
        "unknown key",
    ),
    ("bytes inputs key", msgpack.packb({b"inputs": ["a"]}, use_bin_type=True), "must be a map"),
    ("inputs int", msgpack.packb({"inputs": 5}), "non-empty list"),
    ("inputs empty", msgpack.packb({"inputs": []}), "non-empty list"),
    ("inputs bytes", msgpack.packb({"inputs": [b"raw"]}, use_bin_type=True), "non-empty string"),
    ("inputs nested", msgpack.packb({"inputs": [["a"]]}), "non-empty string"),
    ("too many inputs", msgpack.packb({"inputs": [1] * (MAX_INPUTS + 1)}), "max_array_len"),
    ("params not map", msgpack.packb({"inputs": ["a"], "params": [1]}), "params must be a map"),
    (
        "param bool for int",
        msgpack.packb({"inputs": ["a"], "params": {"normalize": 1}}),
        "'normalize' must be true or false, got 1",
    ),
    ("deeply nested", b"\x82\xa6inputs" + deep_list(2000) + b"\xa6params\x80", "nested"),
    ("nested 6", msgpack.packb({"inputs": [[[[[1]]]]]}), "nested deeper"),
    ("int map keys", msgpack.packb({1: 2}), "not valid msgpack"),
    ("ext type", msgpack.packb({"inputs": [msgpack.ExtType(1, b"x")]}), "not valid msgpack"),
    ("oversized payload", msgpack.packb({"inputs": ["a" * 5000]}), "max_payload_bytes"),
    ("huge declared string", b"\x81\xa6inputs\x91\xdb\x7f\xff\xff\xff", "not valid msgpack"),
    ("huge declared array", b"\x81\xa6inputs\xdd\x7f\xff\xff\xff", "not valid msgpack"),
]


@pytest.mark.parametrize(("case", "fields", "reason"), MALFORMED, ids=[c[0] for c in MALFORMED])
def test_malformed_hand_added_entries_are_refused_with_a_reason(
    case: str, fields: dict[bytes, bytes], reason: str
) -> None:
    with pytest.raises(JobError) as info:
        decode_entry("1-0", fields, SETTINGS)
    assert reason in str(info.value), str(info.value)


@pytest.mark.parametrize(("case", "payload", "reason"), PAYLOADS, ids=[c[0] for c in PAYLOADS])
def test_malformed_payloads_are_refused_with_a_reason(
    case: str, payload: bytes, reason: str
) -> None:
    with pytest.raises(JobError) as info:
        decode_entry("1-0", producer_fields(payload=payload), SETTINGS)
    assert reason in str(info.value), str(info.value)


def test_producer_entry_may_not_mix_in_param_fields() -> None:
    with pytest.raises(JobError, match="unexpected field"):
        decode_entry("1-0", producer_fields(temperature=b"1"), SETTINGS)


def test_payload_length_is_checked_before_unpacking(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("an oversized payload must not reach the unpacker")

    monkeypatch.setattr(msgpack, "Unpacker", boom)
    big = b"\x00" * (SETTINGS.max_payload_bytes + 1)
    with pytest.raises(JobError, match="max_payload_bytes"):
        decode_entry("1-0", producer_fields(payload=big), SETTINGS)


def test_job_id_of_falls_back_to_the_entry_id() -> None:
    assert job_id_of("9-0", {"job_id": b"good-id"}) == "good-id"
    assert job_id_of("9-0", {"job_id": b"bad id!"}) == "9-0"
    assert job_id_of("9-0", {}) == "9-0"
