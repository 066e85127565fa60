"""A chunk's tensors built once over a pooled buffer are laid over each new lease of it by
views: equal to a fresh build, inside the new lease, and holding it."""

from __future__ import annotations

import torch

from sw_core.engine.io.rebase import Template
from sw_core.engine.memory.buffers import BufferPool
from sw_core.storage.direct import address

MIB = 1 << 20


def _built(base: memoryview) -> dict[str, torch.Tensor]:
    """Three tensors over ``base`` at offsets that are not all multiples of their size."""
    return {
        "a": torch.frombuffer(base[0:64], dtype=torch.float32).view(4, 4),
        "b": torch.frombuffer(base[66:98], dtype=torch.bfloat16).view(2, 8).t(),
        "c": torch.frombuffer(base[101:117], dtype=torch.uint8),
        "d": torch.frombuffer(base[130:146], dtype=torch.float32),  # 2 bytes off a float
    }


def test_a_template_lays_the_same_tensors_over_a_new_lease() -> None:
    pool = BufferPool(8 * MIB)
    lease = pool.lease(4096)
    assert lease.base is not None and lease.memo is not None
    template = Template.of(_built(lease.base), lease.base)
    assert template is not None
    del lease
    again = pool.lease(4096)  # the same buffer: the template does not hold the first lease
    assert pool.stats.reused == 1
    memoryview(again.view)[:] = bytes(range(256)) * 16
    laid = template.over(again.view)
    fresh = _built(again.view)
    start = address(again.view)
    for name, tensor in laid.items():
        assert torch.equal(tensor, fresh[name]) and tensor.stride() == fresh[name].stride()
        assert start <= tensor.data_ptr() < start + again.view.nbytes


def test_the_laid_tensors_hold_their_lease() -> None:
    pool = BufferPool(8 * MIB)
    lease = pool.lease(4096)
    assert lease.base is not None
    template = Template.of(_built(lease.base), lease.base)
    assert template is not None
    laid = template.over(lease.view)
    del lease
    pool.lease(4096)
    assert pool.stats.reused == 0 and pool.stats.mapped == 2  # ``laid`` keeps the first one
    del laid
    pool.lease(4096)
    assert pool.stats.reused == 1


def test_no_template_for_tensors_that_are_not_views_of_the_buffer() -> None:
    pool = BufferPool(8 * MIB)
    lease = pool.lease(4096)
    assert lease.base is not None
    built = _built(lease.base)
    assert Template.of({**built, "copy": built["a"].clone()}, lease.base) is None
    assert Template.of({**built, "none": None}, lease.base) is None  # type: ignore[dict-item]
