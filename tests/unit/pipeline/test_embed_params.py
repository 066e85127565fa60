"""Embed job params ``truncate`` and ``details`` are checked like the others and reach the
engine's requests."""

from __future__ import annotations

import pytest

from sw_core.exceptions import JobError
from sw_core.pipeline.job_checks import coerce_params
from sw_core.pipeline.jobs import Job
from sw_core.settings import Settings
from workers.jobs.inference import job_requests


def test_embed_params_are_typed_and_passed_on() -> None:
    settings = Settings()
    params = coerce_params("embed", {"truncate": "false", "details": "true"}, settings)
    assert params == {"truncate": False, "details": True}
    job = Job("1-0", "minilm", "embed", ["a", "b"], params={**params, "normalize": False})
    assert job_requests("embed", job) == [
        {"text": t, "normalize": False, "truncate": False, "details": True} for t in ("a", "b")
    ]
    with pytest.raises(JobError, match="truncate"):
        coerce_params("embed", {"truncate": "sometimes"}, settings)
