"""The job-parameter table in ``docs/engine.md`` is the schema's."""

from __future__ import annotations

from pathlib import Path

from sw_core import schema_doc
from sw_core.schema import PARAM_SPECS

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "engine.md"


def test_the_params_table_is_the_schemas() -> None:
    assert schema_doc.table_in(GUIDE.read_text()) == schema_doc.params_table(), (
        "docs/engine.md is stale: run `python -m sw_core.schema_doc docs/engine.md`"
    )


def test_every_param_has_a_row() -> None:
    table = schema_doc.params_table()
    for task, specs in PARAM_SPECS.items():
        for name in specs:
            assert f"| {task} | `{name}` |" in table
