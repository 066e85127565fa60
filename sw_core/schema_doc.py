"""The job-parameter table of ``docs/engine.md``, rendered from :mod:`sw_core.schema`.

``python -m sw_core.schema_doc docs/engine.md`` rewrites the table between the
``<!-- params-table:begin -->`` and ``<!-- params-table:end -->`` markers; a unit test fails
when the file and the schema disagree.
"""

from __future__ import annotations

import sys
from dataclasses import MISSING, fields
from pathlib import Path

from sw_core.schema import PARAM_TYPES, ParamSpec

BEGIN = "<!-- params-table:begin -->"
END = "<!-- params-table:end -->"
_KINDS = {bool: "bool", int: "int", float: "float", str: "str", list: "string or list"}


def _number(value: float | str) -> str:
    if isinstance(value, str):
        return value
    return str(int(value)) if float(value).is_integer() else format(value, "g")


def _default(value: object) -> str:
    if value is MISSING or value is None or value == ():
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    return f"`{value}`"


def _range(spec: ParamSpec) -> str:
    if spec.choices:
        return " / ".join(f"`{c}`" for c in spec.choices)
    high = f"`SW_{spec.high_setting.upper()}`" if spec.high_setting else spec.high
    low = spec.low
    if low is None and high is None:
        return ""
    left = "" if low is None else f"{'>' if spec.low_exclusive else '>='} {_number(low)}"
    right = "" if high is None else f"<= {_number(high)}"
    return ", ".join(p for p in (left, right) if p)


def params_table() -> str:
    """One row per task parameter: task, name, type, range, default, OpenAI field, meaning."""
    rows = [
        "| task | param | type | range | default | OpenAI field | meaning |",
        "|---|---|---|---|---|---|---|",
    ]
    for task, cls in PARAM_TYPES.items():
        for f in fields(cls):
            spec: ParamSpec = f.metadata["spec"]
            openai = ", ".join(f"`{name}`" for name in spec.openai)
            rows.append(
                f"| {task} | `{f.name}` | {_KINDS[spec.kind]} | {_range(spec)} | "
                f"{_default(f.default)} | {openai} | {spec.doc} |"
            )
    return "\n".join(rows) + "\n"


def table_in(text: str) -> str:
    """The table between the markers of ``text``."""
    start, end = text.index(BEGIN) + len(BEGIN) + 1, text.index(END)
    return text[start:end]


def rewrite(text: str) -> str:
    """``text`` with the table between the markers replaced by :func:`params_table`."""
    start, end = text.index(BEGIN) + len(BEGIN) + 1, text.index(END)
    return text[:start] + params_table() + text[end:]


if __name__ == "__main__":
    path = Path(sys.argv[1])
    path.write_text(rewrite(path.read_text()))
