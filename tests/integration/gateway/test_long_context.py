"""A 4,000-token prompt against SmolLM2 through the official ``openai`` client, a real
``sw serve``, Redis and an inference worker: the model's own context length (8,192, shown in
``/v1/models``) instead of the old 512-token default, the same greedy tokens as
transformers' ``generate`` and log-probabilities within 1e-4 of its log-softmax."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import torch

from sw_core.engine.tasks.logprobs import TokenText
from tests.support.gateway import Cluster, running_cluster
from tests.support.models import ChunkedModel

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]
PROMPT_TOKENS = 4000
NEW = 4
SENTENCE = "The lighthouse keeper counted the ships that passed the rocky point each night. "


@pytest.fixture(scope="module")
def cluster(
    redis_server: Any, smollm2_chunked: ChunkedModel, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    models = f"smollm2={smollm2_chunked.folder}"
    # a long prefill on a shared 2-core machine: generous deadlines
    with running_cluster(
        redis_server.url,
        models,
        Path(tmp_path_factory.mktemp("long-context")),
        gateway_timeout_s=1800,
        batch_timeout_s=1800,
    ) as c:
        yield c


async def test_a_4000_token_prompt_equals_transformers(
    cluster: Cluster, smollm2_chunked: ChunkedModel
) -> None:
    tokenizer, model = smollm2_chunked.tokenizer, smollm2_chunked.model
    ids = tokenizer(SENTENCE * 300)["input_ids"][:PROMPT_TOKENS]
    prompt = tokenizer.decode(ids)
    ids = tokenizer(prompt)["input_ids"]  # what the engine feeds for this text
    assert PROMPT_TOKENS - 5 <= len(ids) <= PROMPT_TOKENS + 5
    async with openai.AsyncOpenAI(
        base_url=cluster.gateways[0].url + "/v1", api_key="unused", max_retries=0, timeout=1800
    ) as client:
        [card] = (await client.models.list()).data
        assert card.model_extra["context_length"] == 8192
        answer = await client.completions.create(
            model="smollm2", prompt=prompt, max_tokens=NEW, logprobs=3, temperature=0
        )
    assert answer.usage.prompt_tokens == len(ids)
    with torch.inference_mode():
        out = model.generate(
            input_ids=torch.tensor([ids]),
            attention_mask=torch.ones((1, len(ids)), dtype=torch.long),
            max_new_tokens=NEW,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
        )
    tokens = out.sequences[0, len(ids) :].tolist()
    want = torch.log_softmax(torch.stack(out.logits)[:, 0].float(), dim=-1)
    names = TokenText(tokenizer)
    got = answer.choices[0].logprobs
    assert got.tokens == [names(t)[0] for t in tokens]  # the same greedy tokens
    for step, token in enumerate(tokens):
        assert abs(got.token_logprobs[step] - float(want[step, token])) < 1e-4, step
    assert answer.choices[0].text == tokenizer.decode(tokens, skip_special_tokens=True)
