"""The operator's guide cannot drift from the code: settings, keys, errors, metric names."""

from __future__ import annotations

import dataclasses
import inspect
import re
from pathlib import Path

import pytest

from sw_core import settings_doc
from sw_core.exceptions import ERROR_TYPES
from sw_core.keys import Keys
from sw_core.ops.metrics import Histogram
from sw_core.ops.prometheus import build_metrics
from sw_core.settings import Settings

GUIDE = Path(__file__).resolve().parents[3] / "docs" / "operations.md"


@pytest.fixture(scope="module")
def guide() -> str:
    return GUIDE.read_text()


def test_settings_table_is_the_generated_one(guide: str) -> None:
    assert settings_doc.table_in(guide) == settings_doc.settings_table(), (
        "docs/operations.md is stale: run `python -m sw_core.settings_doc docs/operations.md`"
    )


def test_settings_table_lists_every_field_with_its_default(guide: str) -> None:
    table = settings_doc.table_in(guide)
    for field in dataclasses.fields(Settings):
        row = next((r for r in table.splitlines() if f"`SW_{field.name.upper()}`" in r), None)
        assert row is not None, field.name
        default = "unset" if field.default is None else str(field.default).lower()
        assert default in row.lower(), (field.name, row)


def test_a_setting_without_a_meaning_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(settings_doc.MEANINGS, "redis_url")
    with pytest.raises(ValueError, match="redis_url"):
        settings_doc.settings_table()


def test_rewrite_replaces_only_the_marked_block() -> None:
    text = f"intro\n{settings_doc.BEGIN}\nold table\n{settings_doc.END}\noutro\n"
    out = settings_doc.rewrite(text)
    assert out.startswith("intro\n") and out.endswith("outro\n")
    assert "old table" not in out and "`SW_REDIS_URL`" in out


def key_names() -> dict[str, str]:
    """Every key name of :class:`Keys`, with ``<param>`` placeholders for arguments."""
    keys = Keys("sw")
    names: dict[str, str] = {}
    for name, member in inspect.getmembers(Keys):
        if name.startswith("_") or name == "prefix":
            continue
        if isinstance(member, property):
            names[name] = getattr(keys, name)
        elif inspect.isfunction(member):
            params = list(inspect.signature(member).parameters)[1:]
            names[name] = getattr(keys, name)(*(f"<{p}>" for p in params))
    return names


def test_every_redis_key_is_in_the_guide(guide: str) -> None:
    names = key_names()
    assert len(names) >= 20
    missing = {attr: key for attr, key in names.items() if f"`{key}" not in guide}
    assert not missing, f"keys missing from docs/operations.md: {missing}"


def test_every_error_type_is_in_the_table_with_its_retry_class(guide: str) -> None:
    for name, cls in ERROR_TYPES.items():
        row = next((r for r in guide.splitlines() if r.startswith(f"| `{name}` |")), None)
        assert row is not None, name
        kind = row.split("|")[2].strip()
        assert kind == ("transient" if cls.transient else "permanent"), (name, kind)


def test_metric_names_in_the_guide_are_the_exported_ones(guide: str) -> None:
    stats = {"errors_by_type": {"StorageError": 1}, "workers_by_kind": {"inference": 1}}
    exported = {f.name for f in build_metrics(stats, {"embed": Histogram()})}
    section = guide.split("### Prometheus", 1)[1].split("## Redis keys", 1)[0]
    documented = set(re.findall(r"`(sw_[a-z_]+)`", section))
    # prometheus_client drops the _total suffix of counter families
    documented = {n[: -len("_total")] if n.endswith("_total") else n for n in documented}
    assert documented - {"sw_up"} == exported
