"""Deadlines on the wire: producer entries carry deadline_ms, hand-added ones deadline_s."""

from __future__ import annotations

import pytest

from sw_core.exceptions import JobError
from sw_core.pipeline.jobs import Job, decode_entry, encode_job
from sw_core.pipeline.lifecycle import past_deadline
from sw_core.settings import Settings

SETTINGS = Settings.from_env({})


def test_deadline_ms_round_trips_through_the_entry() -> None:
    job = Job("j1", "m1", "embed", ["x"], submitted_ms=1000, deadline_ms=5000)
    decoded = decode_entry("1-0", encode_job(job), SETTINGS)
    assert decoded.deadline_ms == 5000
    assert encode_job(Job("j2", "m1", "embed", ["x"])).get("deadline_ms") is None


def test_hand_added_deadline_s_counts_from_the_entry_time() -> None:
    fields = {b"model": b"m1", b"task": b"embed", b"text": b"hi", b"deadline_s": b"2.5"}
    job = decode_entry("1700000000000-0", fields, SETTINGS)
    assert job.deadline_ms == 1700000002500
    assert job.params == {}  # not taken for a task parameter
    assert past_deadline(job, now=1700000002501) and not past_deadline(job, now=1700000002500)


@pytest.mark.parametrize("value", [b"soon", b"0", b"-3", b"nan"])
def test_bad_hand_added_deadline_is_a_job_error(value: bytes) -> None:
    fields = {b"model": b"m1", b"task": b"embed", b"text": b"hi", b"deadline_s": value}
    with pytest.raises(JobError, match="deadline_s"):
        decode_entry("1-0", fields, SETTINGS)
