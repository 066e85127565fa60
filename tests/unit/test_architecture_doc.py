"""``docs/architecture.md`` stays true: its room table is the layer test's rules, and its
folder list names every package folder of the code, each with its docstring's summary."""

from __future__ import annotations

import re

import pytest

from tests.support.layers import ROOT, render_folders, render_rooms

DOC = ROOT / "docs" / "architecture.md"


def _section(name: str) -> str:
    match = re.search(rf"<!-- {name}:[^\n]*-->\n(.*?)<!-- /{name} -->", DOC.read_text(), re.S)
    assert match, f"docs/architecture.md lost its {name} markers"
    return match.group(1)


@pytest.mark.parametrize(
    ("section", "render"), [("rooms", render_rooms), ("folders", render_folders)]
)
def test_architecture_doc_matches_the_code(section: str, render) -> None:  # type: ignore[no-untyped-def]
    assert _section(section) == render(), (
        f"docs/architecture.md's {section} section is stale: regenerate it with "
        f"tests.support.layers.render_{section}()"
    )


def test_a_new_folder_makes_the_doc_stale(tmp_path) -> None:  # type: ignore[no-untyped-def]
    for package in ("sw_core", "producer", "workers", "gateway"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text('"""A package."""\n')
    (tmp_path / "sw_core" / "quant").mkdir()
    (tmp_path / "sw_core" / "quant" / "__init__.py").write_text('"""Packed weights. More."""\n')
    assert "- `sw_core/quant/`: Packed weights.\n" in render_folders(tmp_path)
