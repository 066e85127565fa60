"""Mixture-of-experts layers that fetch only the experts their tokens were routed to.

transformers 5 keeps a block's experts fused (``mlp.experts.gate_up_proj`` of shape
``[num_experts, 2 * I, H]``, ``down_proj`` ``[num_experts, H, I]``); the chunker stores each
expert as its own ``expert`` chunk. The router runs first, as part of the block (its weight
is in the block chunk); :class:`StreamedExperts` then stands in for the fused experts module:
it tells the prefetcher which experts this batch needs, and runs them one at a time --
acquire, compute through transformers' own experts forward on that one expert, release --
so an expert no token chose is never fetched.

The sum over experts is exactly transformers': the ``eager`` implementation adds each
expert's weighted output into the result in expert order (``index_add_``); ``grouped_mm``
and ``batched_mm`` sum each token's top-k slots; both are reproduced bit for bit.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Protocol, cast

import torch
from torch import nn

from sw_core.chunks.manifest import ChunkInfo
from sw_core.engine.model.packed import PackedWeight
from sw_core.engine.model.sharded import ChunkAccess


class ExpertAccess(ChunkAccess, Protocol):
    """What :class:`StreamedExperts` needs: acquire/release plus schedule insertion."""

    def schedule_next(self, chunks: list[ChunkInfo]) -> None: ...


class StreamedExperts(nn.Module):
    """A fused experts module whose experts are chunks, fetched on demand.

    Args:
        access: the residency.
        inner: the original experts module (parameters on ``meta``; its forward is reused
            for one expert at a time).
        chunks: expert chunks in expert order (chunk ``e`` holds expert ``e``).
        tensors: ``{parameter name: canonical tensor name}`` of the fused tensors.
    """

    _inner: nn.Module  # set in __dict__: not a submodule

    def __init__(
        self,
        access: ExpertAccess,
        inner: nn.Module,
        chunks: list[ChunkInfo],
        tensors: dict[str, str],
    ) -> None:
        super().__init__()
        self.access = access
        self.__dict__["_inner"] = inner  # not a submodule: its meta parameters stay hidden
        self.chunks = chunks
        self.tensors = tensors
        self.num_experts = len(chunks)
        #: Expert indices run by the last forward (for tests and benchmarks).
        self.last_routed: list[int] = []
        self._lock = threading.Lock()

    def forward(
        self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
    ) -> torch.Tensor:
        """(N, H) hidden states, (N, K) expert ids and weights -> (N, H)."""
        routed = [e for e in torch.unique(top_k_index).tolist() if 0 <= e < self.num_experts]
        self.last_routed = routed
        self.access.schedule_next([self.chunks[e] for e in routed])
        eager = _implementation(self._inner) == "eager"
        tokens, top_k = top_k_index.shape
        out = torch.zeros_like(hidden_states)
        # (N, K, H): one slot per routing choice, summed at the end as grouped_mm does
        slots = hidden_states.new_zeros(0 if eager else tokens, top_k, hidden_states.shape[-1])
        for e in routed:
            pos, tok = torch.where((top_k_index == e).T)  # by top-k slot, then token
            weights = top_k_weights[tok, pos, None]
            result = self._one_expert(e, hidden_states[tok]) * weights
            if eager:
                out.index_add_(0, tok, result.to(out.dtype))
            else:
                slots[tok, pos] = result.to(slots.dtype)
        return out if eager else slots.sum(dim=1).to(hidden_states.dtype)

    def _one_expert(self, e: int, rows: torch.Tensor) -> torch.Tensor:
        """Expert ``e`` on ``rows`` (n, H), unweighted, through the inner module's forward
        (or, for packed weights, the same computation through the packed kernels)."""
        chunk = self.chunks[e]
        tensors = self.access.acquire(chunk)
        try:
            weights = {p: tensors[c] for p, c in self.tensors.items()}
            if any(isinstance(w, PackedWeight) for w in weights.values()):
                return self._packed_expert(weights, rows)
            with self._lock:
                inner = self._inner
                saved = dict(inner._parameters), inner.num_experts
                try:
                    for param, canonical in self.tensors.items():
                        inner._parameters[param] = nn.Parameter(
                            tensors[canonical], requires_grad=False
                        )
                    # torch types Module.__setattr__ for tensors and modules only
                    inner.num_experts = 1  # type: ignore[assignment]
                    ids = torch.zeros(rows.shape[0], 1, dtype=torch.long, device=rows.device)
                    ones = torch.ones(rows.shape[0], 1, dtype=rows.dtype, device=rows.device)
                    return inner(rows, ids, ones)
                finally:
                    inner._parameters.clear()
                    inner._parameters.update(saved[0])
                    inner.num_experts = saved[1]
        finally:
            self.access.release(chunk)

    def _packed_expert(self, weights: dict[str, Any], rows: torch.Tensor) -> torch.Tensor:
        """transformers' expert MLP (``act(gate) * up``, then ``down``) on packed weights
        (:func:`~sw_core.engine.model.packed_modules.packed_experts` checked the form)."""
        gate, up = _expert_linear(rows, weights["gate_up_proj"]).chunk(2, dim=-1)
        act_fn = cast(Callable[[torch.Tensor], torch.Tensor], self._inner.act_fn)
        hidden = act_fn(gate) * up
        return _expert_linear(hidden, weights["down_proj"])

    def extra_repr(self) -> str:
        return f"experts={self.num_experts}, streamed"


def _expert_linear(x: torch.Tensor, weight: Any) -> torch.Tensor:
    """``x @ W[0].T`` for the one expert a chunk holds, packed or plain."""
    if isinstance(weight, PackedWeight):
        return weight.linear(x, 0)
    return torch.nn.functional.linear(x, weight[0])


def _implementation(inner: nn.Module) -> Any:
    config = getattr(inner, "config", None)
    return getattr(config, "_experts_implementation", "eager") or "eager"
