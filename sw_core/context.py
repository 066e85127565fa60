"""A model's context length: how many tokens one sequence may hold, prompt and output.

It is the smaller of

- the model's own limit: its learned or rotary positions (``max_position_embeddings``,
  ``n_positions``; RoBERTa-style models lose ``pad_token_id + 1`` of them);
- for models that generate, the tokens one sequence's KV cache may hold within
  ``SW_MAX_KV_CACHE_MB`` (:attr:`~sw_core.settings.Settings.kv_cache_bytes`);

and ``SW_MAX_INPUT_TOKENS``, when set (> 0), caps the prompt alone. The engine refuses what
exceeds them, naming the limit and the setting; the gateway shows the context length in
``GET /v1/models``. Reads a ``config.json`` as a dict or a transformers config, so that the
gateway needs no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sw_core.settings import Settings


def _get(config: Any, name: str) -> Any:
    return config.get(name) if isinstance(config, dict) else getattr(config, name, None)


def model_positions(config: Any) -> int | None:
    """Tokens the model's positions cover (None when they are unbounded)."""
    from sw_core.architectures import ARCHITECTURES

    positions = _get(config, "max_position_embeddings") or _get(config, "n_positions")
    if not positions:
        return None
    arch = ARCHITECTURES.get(str(_get(config, "model_type") or ""))
    if arch is not None and arch.positions_after_pad:
        positions -= int(_get(config, "pad_token_id") or 0) + 1
    return int(positions)


def kv_bytes_per_token(config: Any, itemsize: int = 4) -> int:
    """Bytes one token adds to the KV cache of every layer (keys and values)."""
    layers = int(_get(config, "num_hidden_layers") or _get(config, "n_layer") or 1)
    heads = int(_get(config, "num_attention_heads") or _get(config, "n_head") or 1)
    kv_heads = int(_get(config, "num_key_value_heads") or heads)
    hidden = int(_get(config, "hidden_size") or _get(config, "n_embd") or 1)
    head_dim = int(_get(config, "head_dim") or hidden // heads)
    return 2 * layers * kv_heads * head_dim * itemsize


@dataclass(frozen=True)
class ContextLimits:
    """The limits of one model under one worker's settings."""

    #: The model's own positions (None: unbounded).
    positions: int | None
    #: Tokens one sequence's KV cache may hold (None: the model keeps no KV cache).
    kv_tokens: int | None
    #: ``SW_MAX_INPUT_TOKENS`` (0: no cap beyond the context length).
    input_cap: int

    @property
    def context_length(self) -> int | None:
        """Most tokens, prompt plus output, of one sequence (None: unbounded)."""
        bounds = [b for b in (self.positions, self.kv_tokens) if b is not None]
        return min(bounds) if bounds else None

    @property
    def max_input_tokens(self) -> int | None:
        """Most prompt tokens (None: unbounded)."""
        bounds = [b for b in (self.context_length, self.input_cap or None) if b is not None]
        return min(bounds) if bounds else None

    def bound_by(self) -> str:
        """What sets :attr:`context_length`, in words naming the setting."""
        if self.kv_tokens is not None and (
            self.positions is None or self.kv_tokens < self.positions
        ):
            return f"the KV cache one sequence may hold under SW_MAX_KV_CACHE_MB ({self.kv_tokens} tokens)"
        return f"the model's own {self.positions} positions"


def context_limits(
    config: Any, settings: Settings, *, generates: bool, itemsize: int = 4
) -> ContextLimits:
    """The :class:`ContextLimits` of a model with ``config`` under ``settings``;
    ``generates``: it keeps a KV cache (decoder-only and encoder-decoder models);
    ``itemsize``: bytes of one cached value (4 for float32 compute)."""
    kv_tokens = None
    if generates:
        kv_tokens = settings.kv_cache_bytes // kv_bytes_per_token(config, itemsize)
    return ContextLimits(model_positions(config), kv_tokens, settings.max_input_tokens)
