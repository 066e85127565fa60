"""How many intra-op threads the engine's compute thread runs with."""

from __future__ import annotations

import pytest

from sw_core.engine.compute import WIDE_PASS_ROWS, intra_op_threads


@pytest.mark.parametrize(
    ("cores", "streaming", "rows", "expected"),
    [
        (2, False, 1, 2),  # resident: every core
        (2, True, 1, 1),  # streaming one row: a core is left to the fetch
        (8, True, 3, 7),
        (1, True, 1, 1),  # never fewer than one
        (2, True, WIDE_PASS_ROWS - 1, 1),
        (2, True, WIDE_PASS_ROWS, 2),  # a wide call's ops (a prompt, a batch) are worth every core
    ],
)
def test_auto_leaves_a_core_to_the_fetch_of_a_narrow_streamed_batch(
    cores: int, streaming: bool, rows: int, expected: int
) -> None:
    assert intra_op_threads(0, cores, streaming=streaming, rows=rows) == expected


def test_a_configured_count_wins() -> None:
    assert intra_op_threads(3, 2, streaming=True, rows=1) == 3
    assert intra_op_threads(1, 8, streaming=False, rows=64) == 1
