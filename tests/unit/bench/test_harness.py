"""The benchmark harness (bench/run.py, bench/report.py): goals, the results file, and the
README's tables, which must be the ones generated from bench/results.json."""

from __future__ import annotations

import ast
import json
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[3] / "bench"
HARNESS = ("figures", "machine", "registry", "report", "run", "smollm2", "timing")


@pytest.fixture()
def bench() -> Iterator[dict[str, ModuleType]]:
    """The harness modules, imported as bench/run.py imports them (bench/ on the path)."""
    import importlib

    sys.path.insert(0, str(BENCH))
    try:
        yield {name: importlib.import_module(name) for name in HARNESS}
    finally:
        sys.path.remove(str(BENCH))
        for name in HARNESS:
            sys.modules.pop(name, None)


def test_goals_pass_fail_or_none(bench: dict[str, ModuleType]) -> None:
    figures = bench["figures"]
    assert figures.Figure("a.b", 0.9, "x", "r", goal=">= 0.85").status == "pass"
    assert figures.Figure("a.b", 0.8, "x", "r", goal=">= 0.85").status == "fail"
    assert figures.Figure("a.b", 1.2, "x", "r", goal="<= 1.1").status == "fail"
    assert figures.Figure("a.b", 1.2, "x", "r").status == "none"
    assert figures.Figure("a.b", None, "x", "r", goal="<= 1").status == "error"
    with pytest.raises(ValueError, match="goal"):
        figures.Figure("a.b", 1.0, "x", "r", goal="about 1")
    with pytest.raises(ValueError, match="profile"):
        figures.Profile("medium")


def test_readme_tables_are_the_generated_ones(bench: dict[str, ModuleType]) -> None:
    report = bench["report"]
    results = json.loads((BENCH / "results.json").read_text())
    readme = (BENCH / "README.md").read_text()
    stale = "bench/README.md is stale: run `.venv/bin/python bench/report.py --readme`"
    assert report.table_in(readme) == report.summary_markdown(results), stale
    grids = report.grids(results)
    assert grids, "results.json holds no grid (the serving sweep's table)"
    for grid, table in grids.items():
        assert report.table_in(readme, grid) == table, f"{stale} (grid {grid!r})"


def test_the_summary_names_the_machine_of_each_benchmark(bench: dict[str, ModuleType]) -> None:
    report = bench["report"]
    intel = {"cpu": "Intel Xeon", "cores": 2, "memory_gib": 23.6, "python": "3.11.7"}
    amd = {**intel, "cpu": "AMD EPYC"}
    one = {"benches": {"a": {"machine": intel}, "b": {"machine": intel}}}
    assert [line for line in report.machine_lines(one) if line] == [
        "Machine: Intel Xeon, 2 cores, 23.6 GiB; Python 3.11.7, torch None, transformers "
        "None, redis-server ?."
    ]
    two = {"benches": {"a": {"machine": intel}, "b": {"machine": amd}, "c": {"machine": amd}}}
    lines = [line for line in report.machine_lines(two) if line]
    assert len(lines) == 2
    assert lines[0].startswith("Machine of a: Intel Xeon")
    assert lines[1].startswith("Machine of b, c: AMD EPYC")


def test_rewrite_replaces_only_the_marked_blocks(bench: dict[str, ModuleType]) -> None:
    report = bench["report"]
    begin, end = report.markers()
    g_begin, g_end = report.markers("sweep")
    text = f"intro\n{begin}\nold\n{end}\nmiddle\n{g_begin}\nold grid\n{g_end}\noutro\n"
    fig = {"name": "x.y", "value": 2.0, "unit": "s", "label": "a label", "goal": "<= 3"}
    where = {"grid": "sweep", "row": "0.5", "column": "TTFT p99 s"}
    cell = {"name": "x.c", "value": 1.5, "unit": "s", "label": "cell", "extra": where}
    results = {"benches": {"x": {"figures": [fig, cell], "loaded": False}}}
    out = report.rewrite(text, results)
    assert out.startswith("intro\n") and out.endswith("outro\n") and "middle" in out
    assert "old" not in out
    assert "| x | a label | 2.00 s | <= 3 | met |" in out
    assert "| sweep | TTFT p99 s |" in out and "| 0.5 | 1.50 |" in out
    assert "| x | cell |" not in out  # a grid's cell is not a summary line


def test_every_registered_benchmark_defines_its_function(bench: dict[str, ModuleType]) -> None:
    for entry in bench["registry"].BENCHES:
        tree = ast.parse((BENCH / f"{entry.module}.py").read_text())
        functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
        assert entry.function in functions, f"bench/{entry.module}.py has no {entry.function}()"
        assert [a.arg for a in functions[entry.function].args.args] == ["profile"], entry.name
    assert [b.name for b in bench["registry"].select([], [])] == [
        b.name for b in bench["registry"].BENCHES if not b.opt_in
    ]
    assert "peers" in [b.name for b in bench["registry"].select([], ["peers"])]
    quick = [b.name for b in bench["registry"].select([], [], quick=True)]
    assert "quality" not in quick and "cache_read" in quick
    assert "quality" in [b.name for b in bench["registry"].select([], ["quality"], quick=True)]
    with pytest.raises(ValueError, match="unknown"):
        bench["registry"].select(["nope"], [])


def test_bench_modules_stay_small_and_unsqueezed() -> None:
    for path in sorted(BENCH.glob("*.py")):
        text = path.read_text()
        assert len(text.splitlines()) <= 400, f"{path.name}: over 400 lines, split it"
        assert "fmt: skip" not in text and "fmt: off" not in text, path.name


FAKE = textwrap.dedent(
    """
    from figures import Figure

    def good(profile):
        return [
            Figure("fake.ratio", 1.5 if profile.quick else 2.5, "x", "a ratio", goal=">= 2"),
            Figure("fake.ms", 12.0, "ms", "a time"),
        ]

    def broken(profile):
        raise RuntimeError("this benchmark fails")

    def shares(profile):
        import os
        from pathlib import Path

        mark = Path(os.environ["BENCH_SHARED_DIR"]) / "mark"
        seen = mark.exists()
        mark.write_text("written by an earlier benchmark of this run")
        return [Figure("fake.seen", float(seen), "", "the mark of an earlier benchmark")]
    """
)


def test_run_writes_one_results_file(bench: dict[str, ModuleType], tmp_path: Path) -> None:
    run, registry = bench["run"], bench["registry"]
    (tmp_path / "fakebench.py").write_text(FAKE)
    good = registry.Bench("fake", "fakebench", "a fake benchmark", function="good")
    broken = registry.Bench("broken", "fakebench", "one that fails", function="broken")
    out = tmp_path / "results.json"
    quick = bench["figures"].Profile("quick")

    known = (good, broken)
    results = run.run_benches(known, quick, out, extra_path=str(tmp_path), registry=known)

    on_disk = json.loads(out.read_text())
    assert on_disk == results
    entry = on_disk["benches"]["fake"]
    assert entry["profile"] == "quick" and "error" not in entry
    assert [(f["name"], f["value"], f["status"]) for f in entry["figures"]] == [
        ("fake.ratio", 1.5, "fail"),
        ("fake.ms", 12.0, "none"),
    ]
    for key in ("load_before", "load_after", "seconds", "started", "commit", "machine"):
        assert key in entry, key
    assert len(entry["load_before"]) == 3 and entry["machine"]["cores"] >= 1
    assert isinstance(entry["other_cpu_cores"], float) and isinstance(entry["loaded"], bool)
    assert on_disk["benches"]["broken"]["error"].startswith("exit status 1")
    assert on_disk["benches"]["broken"]["figures"] == []
    assert on_disk["last_run"]["benches"] == ["fake", "broken"]

    # a later run of one benchmark replaces its entry and keeps the others
    full = bench["figures"].Profile("full")
    again = run.run_benches([good], full, out, extra_path=str(tmp_path), registry=known)
    assert again["benches"]["fake"]["figures"][0]["status"] == "pass"
    assert "broken" in again["benches"]


def test_benchmarks_of_one_run_share_a_folder(bench: dict[str, ModuleType], tmp_path: Path) -> None:
    """What one benchmark prepares in the run's shared folder (bench/smollm2.py) the next
    finds; the folder goes away with the run."""
    run, registry = bench["run"], bench["registry"]
    (tmp_path / "fakebench.py").write_text(FAKE)
    first = registry.Bench("first", "fakebench", "writes the mark", function="shares")
    second = registry.Bench("second", "fakebench", "finds it", function="shares")
    quick = bench["figures"].Profile("quick")
    known = (first, second)
    results = run.run_benches(
        known, quick, tmp_path / "results.json", extra_path=str(tmp_path), registry=known
    )
    seen = [results["benches"][b.name]["figures"][0]["value"] for b in known]
    assert seen == [0.0, 1.0]
    again = run.run_benches(
        [first], quick, tmp_path / "results.json", extra_path=str(tmp_path), registry=known
    )
    assert again["benches"]["first"]["figures"][0]["value"] == 0.0
