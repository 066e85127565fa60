"""Issue 11: generation parameters the engine knows reach it through the pipeline (top_k)."""

from __future__ import annotations

import pytest

from sw_core.exceptions import JobError
from sw_core.pipeline.jobs import Job, validate_request
from sw_core.settings import Settings
from workers.inference import job_requests


def test_top_k_is_accepted_and_passed_to_the_engine() -> None:
    settings = Settings.from_env({})
    _, _, inputs, params = validate_request(
        "m", "generate", ["hi"], {"top_k": 5, "do_sample": True}, settings
    )
    [request] = job_requests("generate", Job("j", "m", "generate", inputs, params))
    assert request["top_k"] == 5 and request["temperature"] == 1.0
    with pytest.raises(JobError, match="top_k"):
        validate_request("m", "generate", ["hi"], {"top_k": -1}, settings)
