"""The figures collector and the ``docs/reliability.md`` writer."""

from __future__ import annotations

from pathlib import Path

from tests.chaos.report import Figures, read_results, record, write_report


def test_the_report_has_one_row_per_scenario_with_its_latest_figures(tmp_path: Path) -> None:
    results = tmp_path / "results.jsonl"
    record(Figures(scenario="1 kill -9 soak", produced=10, completed=9, lost=1), results)
    record(
        Figures(
            scenario="1 kill -9 soak",
            produced=250,
            completed=240,
            dead_lettered=10,
            duplicated=3,
            recover_s=1.234,
            notes="p50 | max",
            mode="long",
            extra={"redelivery p50 (s)": 0.5},
        ),
        results,
    )
    record(Figures(scenario="3 storage outage", produced=30, completed=30), results)
    out = tmp_path / "docs" / "reliability.md"
    rows = write_report(results, out, command="make chaos", failures=["test_x (call)"])
    text = out.read_text()
    assert [r.scenario for r in rows] == ["1 kill -9 soak", "3 storage outage"]
    assert "| 1 kill -9 soak | 250 | 240 | 10 | 0 | 3 | 1.23 | p50 \\| max |" in text
    assert "| 3 storage outage | 30 | 30 | 0 | 0 | 0 | - |  |" in text
    assert "mode: long, short" in text
    assert "- redelivery p50 (s): 0.50" in text
    assert "## Failed scenarios in this run" in text and "test_x (call)" in text
    assert "rediss://" in text
    assert read_results(tmp_path / "missing.jsonl") == []
