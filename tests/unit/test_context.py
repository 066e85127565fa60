"""A model's context length: its own positions, bounded by the KV cache one sequence may
hold under ``SW_MAX_KV_CACHE_MB``, and ``SW_MAX_INPUT_TOKENS`` capping prompts when set."""

from __future__ import annotations

from sw_core.context import context_limits, kv_bytes_per_token, model_positions
from sw_core.settings import Settings

#: SmolLM2-135M's config.json, the fields that matter.
SMOLLM2 = {
    "model_type": "llama",
    "max_position_embeddings": 8192,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "hidden_size": 576,
}


def test_smollm2_gets_its_own_8192_tokens_under_the_default_settings() -> None:
    # 30 layers x 3 KV heads x 64 dims x (keys + values) x 4 bytes
    assert kv_bytes_per_token(SMOLLM2) == 46_080
    limits = context_limits(SMOLLM2, Settings.from_env({}), generates=True)
    # the default KV budget is a quarter of the 2 GiB memory budget: 11,650 tokens
    assert limits.kv_tokens == (512 << 20) // 46_080 == 11_650
    assert limits.context_length == 8192 and limits.max_input_tokens == 8192
    assert "8192 positions" in limits.bound_by()


def test_a_small_kv_budget_or_an_input_cap_bounds_it_and_says_which() -> None:
    small = context_limits(SMOLLM2, Settings.from_env({}, max_kv_cache_mb=90), generates=True)
    assert small.context_length == (90 << 20) // 46_080 == 2048
    assert "SW_MAX_KV_CACHE_MB" in small.bound_by()
    capped = context_limits(SMOLLM2, Settings.from_env({}, max_input_tokens=512), generates=True)
    assert capped.context_length == 8192 and capped.max_input_tokens == 512
    encoder = context_limits(
        {"max_position_embeddings": 512}, Settings.from_env({}), generates=False
    )
    assert encoder.kv_tokens is None and encoder.context_length == 512


def test_positions_of_roberta_style_models_start_after_the_pad_token() -> None:
    roberta = {"model_type": "roberta", "max_position_embeddings": 514, "pad_token_id": 1}
    assert model_positions(roberta) == 512
    assert model_positions({"model_type": "t5"}) is None
