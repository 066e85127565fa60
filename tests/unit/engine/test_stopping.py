"""Stop sequences without a model: where one begins, what a stream holds back, and the job
params that carry them (with ``repetition_penalty``) through the pipeline."""

from __future__ import annotations

import random

import pytest

from sw_core.engine.tasks.stopping import first_stop, pending_stop
from sw_core.exceptions import JobError
from sw_core.pipeline.jobs import Job, decode_entry, validate_request
from sw_core.settings import Settings
from workers.jobs.inference import job_requests
from workers.jobs.token_stream import TextDeltas


def test_first_stop_is_the_earliest_occurrence_of_any() -> None:
    assert first_stop("one two three", ["three", "two"]) == 4
    assert first_stop("one two three", ["x"]) is None
    assert first_stop("abab", ["ba", "ab"]) == 0
    assert first_stop("anything", []) is None


@pytest.mark.parametrize(
    ("text", "stops", "held"),
    [
        ("hello wor", ["world"], 3),  # "wor" may become "world"
        ("hello w", ["world", "hello"], 1),
        ("hello", ["world"], 0),
        ("xabab", ["ababc"], 4),  # the longest tail that begins a stop ("ab" does too)
        ("xabab", ["bx", "abx", "babx"], 3),
        ("ab", ["ab"], 0),  # a whole stop sequence is found, not held
        ("x\n", ["\n\n"], 1),
        ("", ["a"], 0),
    ],
)
def test_pending_stop_is_the_longest_tail_that_begins_a_stop(
    text: str, stops: list[str], held: int
) -> None:
    assert pending_stop(text, stops) == held


PIECES = ["Hel", "lo", " wo", "rld", "!", " E", "N", "D", " tail"]


def _stream(stops: list[str], pieces: list[str] = PIECES) -> tuple[list[str], str]:
    """Deltas as the decode loop sends them (token i decodes to ``pieces[i]``), the row
    ending at its first stop sequence; and the row's result text."""

    def decode(ids: list[int]) -> str:
        return "".join(pieces[i] for i in ids)

    deltas = TextDeltas(decode, stops)
    out = []
    for k in range(1, len(pieces) + 1):
        cut = first_stop(decode(list(range(k))), stops)
        final = cut is not None or k == len(pieces)
        out.append(deltas.next(list(range(k)), final=final, end=cut))
        if final:
            return out, decode(list(range(k)))[:cut]
    raise AssertionError("never final")


def test_a_stop_split_across_tokens_is_never_streamed() -> None:
    deltas, text = _stream(["END"])
    assert text == "Hello world! " and "".join(deltas) == text
    # "E", then "EN" may begin "END": held back until "D" completed the stop sequence
    assert deltas == ["Hel", "lo", " wo", "rld", "!", " ", "", ""]
    assert all("E" not in d for d in deltas)


def test_a_held_tail_goes_out_once_the_stop_is_ruled_out() -> None:
    deltas, text = _stream(["Ex", "worry"])
    assert text == "".join(PIECES)  # no stop sequence: the whole text, at the end
    assert "".join(deltas) == text
    assert deltas[2] == " " and deltas[3] == "world"  # "wo" waited for "rld"
    assert deltas[5] == " " and deltas[6] == "EN"  # "E" waited for "N"


def test_random_texts_and_stops_keep_every_rule() -> None:
    rng = random.Random(7)

    def word(most: int) -> str:
        return "".join(rng.choice("ab \n") for _ in range(rng.randint(1, most)))

    stopped = 0
    for _ in range(300):
        pieces = [word(3) for _ in range(rng.randint(1, 12))]
        stops = [word(4) for _ in range(rng.randint(1, 4))]
        deltas, text = _stream(stops, pieces)
        # the row ends with the first token after which its text holds a stop sequence
        want = "".join(pieces)
        for k in range(1, len(pieces) + 1):
            cut = first_stop("".join(pieces[:k]), stops)
            if cut is not None:
                want = "".join(pieces[:k])[:cut]
                stopped += 1
                break
        assert text == want == "".join(deltas), (pieces, stops)
        assert not any(stop in text for stop in stops)
    assert 50 < stopped < 300  # both kinds of row were tried


def test_stop_and_repetition_penalty_are_job_params() -> None:
    settings = Settings()
    _, _, inputs, params = validate_request(
        "m", "generate", ["hi"], {"stop": "\n\n", "repetition_penalty": 1}, settings
    )
    assert params == {"stop": ["\n\n"], "repetition_penalty": 1.0}
    [request] = job_requests("generate", Job("j", "m", "generate", inputs, params))
    assert request["stop"] == ["\n\n"] and request["repetition_penalty"] == 1.0
    listed = validate_request("m", "generate", ["hi"], {"stop": ["a", " b"]}, settings)[3]
    assert listed == {"stop": ["a", " b"]}
    # an entry added by hand: text fields, the stop sequence kept as given
    fields = {
        "model": "m",
        "task": "generate",
        "text": "hi",
        "stop": " END ",
        "repetition_penalty": "1.3",
    }
    job = decode_entry("1-0", {k: v.encode() for k, v in fields.items()}, settings)
    assert job.params == {"stop": [" END "], "repetition_penalty": 1.3}


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"stop": ["a"] * 5}, "'stop' holds 5 strings; at most 4"),
        ({"stop": [1]}, "'stop' must hold strings only"),
        ({"stop": [""]}, "'stop' holds an empty string"),
        ({"stop": {"a": 1}}, "'stop' must be a string or a list"),
        ({"stop": "x" * 257}, "257 characters"),
        ({"repetition_penalty": 0}, "'repetition_penalty' must be a number > 0, got 0.0"),
        ({"repetition_penalty": -2.0}, "'repetition_penalty' must be a number > 0, got -2.0"),
        ({"repetition_penalty": float("nan")}, "must be a number > 0, got nan"),
        ({"repetition_penalty": "1.3"}, "must be a number > 0, got '1.3'"),
    ],
)
def test_bad_stop_and_penalty_params_are_refused(params: dict, message: str) -> None:
    with pytest.raises(JobError, match=message):
        validate_request("m", "generate", ["hi"], params, Settings())
    with pytest.raises(JobError, match="unknown param 'stop' for task embed"):
        validate_request("m", "embed", ["hi"], {"stop": "x"}, Settings())
