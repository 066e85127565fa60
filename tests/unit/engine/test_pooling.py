"""``sw_core.engine.tasks.pooling.pool`` against sentence-transformers' own ``Pooling`` module, for
every mode, with right and left padding and a row that is all padding but one token."""

from __future__ import annotations

import pytest
import torch

from sw_core.engine.tasks.pooling import POOLING_MODES, SentencePipeline, pool, read_pipeline
from sw_core.exceptions import ModelError


def _batch(left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 6, 8, generator=generator)
    mask = torch.zeros(3, 6, dtype=torch.long)
    for row, n in enumerate((6, 3, 1)):  # real tokens per row
        mask[row, slice(6 - n, 6) if left else slice(0, n)] = 1
    return hidden, mask


@pytest.mark.parametrize("left", [False, True])
@pytest.mark.parametrize("mode", POOLING_MODES)
def test_pool_matches_sentence_transformers(mode: str, left: bool) -> None:
    from sentence_transformers.models import Pooling

    hidden, mask = _batch(left)
    expected = Pooling(8, pooling_mode=mode)({"token_embeddings": hidden, "attention_mask": mask})[
        "sentence_embedding"
    ]
    torch.testing.assert_close(pool(hidden, mask, mode), expected, atol=1e-6, rtol=0)


def test_legacy_and_current_pooling_configs_read_alike() -> None:
    legacy = (
        b'{"word_embedding_dimension": 8, "pooling_mode_cls_token": true,'
        b' "pooling_mode_max_tokens": true}'
    )
    current = b'{"embedding_dimension": 8, "pooling_mode": ["cls", "max"]}'
    modules = b'[{"path": "", "type": "x.Transformer"}, {"path": "1_Pooling", "type": "x.Pooling"}]'
    for config in (legacy, current):
        files = {"modules.json": modules, "1_Pooling/config.json": config}
        pipeline = read_pipeline(files, tokenizer=None)
        assert (pipeline.modes, pipeline.normalize, pipeline.describe()) == (
            ("cls", "max"),
            False,
            "cls+max",
        )
    assert read_pipeline({}, tokenizer=None) == SentencePipeline()
    with pytest.raises(ModelError, match="no usable pooling mode"):
        read_pipeline(
            {"modules.json": modules, "1_Pooling/config.json": b'{"pooling_mode": "sum"}'}, None
        )
