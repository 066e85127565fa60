"""The rooms of the code base, enforced (rules in :mod:`tests.support.layers`): the library's
subpackages in layers (storage < cache < chunks < engine, whose own rooms are memory < model <
io < tasks < core; pipeline beside them; ops over all), then ``producer``, ``workers`` (its
process glue, chunk side and job side) and ``gateway``, with ``sw_core.cli`` and
``sw_core.local`` on top.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.layers import PACKAGES, layer_violations, room_of


def test_imports_point_down_the_layers() -> None:
    assert layer_violations() == []


def test_every_module_has_a_room() -> None:
    assert room_of("sw_core.engine.memory.budget").name == "engine.memory"  # type: ignore[union-attr]
    assert room_of("sw_core.engine.engine").name == "engine"  # type: ignore[union-attr]
    assert room_of("sw_core.counters").name == "base"  # type: ignore[union-attr]
    assert room_of("workers.arq_compat").name == "workers.base"  # type: ignore[union-attr]
    assert room_of("sw_core.newthing") is None


@pytest.mark.parametrize(
    ("module", "statement"),
    [
        ("sw_core/chunks/mod.py", "import workers"),
        ("sw_core/engine/mod.py", "from producer import Producer"),
        ("sw_core/mod_x.py", "from sw_core.local import demo"),
        ("producer/mod.py", "from workers.node import worker_options"),
        ("workers/mod.py", "from sw_core.cli import main"),
        ("producer/mod.py", "from gateway.app import create_app"),
        ("gateway/mod.py", "import workers.jobs.inference"),
        ("sw_core/storage/mod.py", "from sw_core.ops import monitor"),
        ("sw_core/storage/mod.py", "from sw_core.chunks.pin import check_pin"),
        ("sw_core/cache/mod.py", "from sw_core.chunks.manifest import Manifest"),
        ("sw_core/counters_x.py", "import sw_core.storage"),
        ("sw_core/engine/memory/mod.py", "from sw_core.engine.model import skeleton"),
        ("sw_core/engine/model/mod.py", "from sw_core.engine.io.sources import ChunkSource"),
        ("sw_core/engine/tasks/mod.py", "from sw_core.engine import StreamingEngine"),
        ("sw_core/pipeline/mod.py", "from sw_core.engine import StreamingEngine"),
        ("workers/chunks/mod.py", "from workers.jobs import consumer"),
        ("workers/arq_compat.py", "from workers.node import start_node"),
    ],
)
def test_an_upward_import_is_caught(tmp_path: Path, module: str, statement: str) -> None:
    """The check sees an upward import in a function body, in a planted tree."""
    fake_root = tmp_path / "repo"
    for top in PACKAGES:
        (fake_root / top).mkdir(parents=True)
        (fake_root / top / "__init__.py").write_text("")
    target = fake_root / module
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(f"def f() -> None:\n    {statement}\n")
    violations = layer_violations(fake_root)
    if module.startswith("sw_core/mod_x") or module.startswith("sw_core/counters_x"):
        # a module outside every room is reported as such
        assert violations == [f"{module}:1 is in no room (add it to tests/support/layers.py)"]
        return
    assert len(violations) >= 1, violations
    assert violations[0].startswith(f"{module}:2 imports "), violations


def test_a_downward_import_passes(tmp_path: Path) -> None:
    fake_root = tmp_path / "repo"
    for top in PACKAGES:
        (fake_root / top).mkdir(parents=True)
    target = fake_root / "sw_core/engine/tasks/mod.py"
    target.parent.mkdir(parents=True)
    target.write_text(
        "from sw_core.engine.memory import budget\nfrom sw_core.chunks import manifest\n"
        "import sw_core.counters\n"
    )
    assert layer_violations(fake_root) == []
