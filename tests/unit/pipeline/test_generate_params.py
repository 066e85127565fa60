"""Generation parameters the engine knows reach it through the pipeline (top_k)."""

from __future__ import annotations

from typing import Any

import pytest

from sw_core.exceptions import JobError
from sw_core.pipeline.jobs import Job, validate_request
from sw_core.schema import PARAM_SPECS, GenerateParams, typed_params
from sw_core.settings import Settings
from workers.jobs.inference import job_requests


def _engine_params(request: dict[str, Any], settings: Settings) -> GenerateParams:
    """The generate params the engine reads from an engine request (its input left out)."""
    given = {k: v for k, v in request.items() if k in PARAM_SPECS["generate"]}
    return typed_params(GenerateParams, given, settings)


def test_top_k_is_accepted_and_passed_to_the_engine() -> None:
    settings = Settings.from_env({})
    _, _, inputs, params = validate_request(
        "m", "generate", ["hi"], {"top_k": 5, "do_sample": True}, settings
    )
    [request] = job_requests("generate", Job("j", "m", "generate", inputs, params))
    engine_params = _engine_params(request, settings)
    assert engine_params.top_k == 5 and engine_params.sampling_temperature == 1.0
    with pytest.raises(JobError, match="top_k"):
        validate_request("m", "generate", ["hi"], {"top_k": -1}, settings)


def test_chat_messages_reach_the_engine_and_bad_ones_are_refused() -> None:
    settings = Settings.from_env({})
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}]
    _, _, inputs, params = validate_request("m", "generate", [chat, "plain"], {}, settings)
    first, second = job_requests("generate", Job("j", "m", "generate", inputs, params))
    assert first["messages"] == chat and second["text"] == "plain"
    for bad in ([], [{"role": "user"}], [{"role": "user", "content": 3}], ["text"]):
        with pytest.raises(JobError, match="chat"):
            validate_request("m", "generate", [bad], {}, settings)
    with pytest.raises(JobError, match="non-empty string"):
        validate_request("m", "embed", [chat], {}, settings)


def test_defaults_come_from_the_generation_config_and_the_job_wins() -> None:
    from transformers import GenerationConfig

    from workers.jobs.inference import generation_defaults

    sampling = GenerationConfig(do_sample=True, temperature=0.6, top_p=0.9, max_new_tokens=900)
    defaults = generation_defaults(sampling, max_new_tokens_limit=512)
    assert defaults["do_sample"] is True and defaults["max_new_tokens"] == 512
    job = Job("j", "m", "generate", ["hi"], {"temperature": 0.2})
    [request] = job_requests("generate", job, defaults)
    assert request["temperature"] == 0.2 and request["top_p"] == 0.9  # the job's own wins
    assert generation_defaults(GenerationConfig(), 512) == {}  # greedy config: greedy default
    # transformers' generate applies the config's repetition penalty whether it samples or not
    penalized = generation_defaults(GenerationConfig(repetition_penalty=1.2), 512)
    assert penalized == {"repetition_penalty": 1.2}
    job = Job("j", "m", "generate", ["hi"], {"repetition_penalty": 1.0})
    [request] = job_requests("generate", job, penalized)
    assert request["repetition_penalty"] == 1.0  # the job can switch it off
    [request] = job_requests("generate", Job("j", "m", "generate", ["hi"], {}), {})
    assert _engine_params(request, Settings()).sampling_temperature == 0.0  # greedy
