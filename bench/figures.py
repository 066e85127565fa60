"""What a benchmark returns: figures, each with its unit and, where there is one, its goal.

A benchmark module exposes a function ``figures(profile: Profile) -> list[Figure]``
(registered in ``bench/registry.py``); ``bench/run.py`` runs it and writes the figures to
one JSON file, ``bench/report.py`` prints and publishes them. A figure is one number
measured in this run (or a ratio of two numbers measured side by side in this run): never
an estimate or an extrapolation.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

#: Comparisons a goal may use.
_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    ">=": operator.ge,
    "<": operator.lt,
    ">": operator.gt,
}
_GOAL_RE = re.compile(r"^\s*(<=|>=|<|>)\s*([-+0-9.eE]+)\s*$")

PASS, FAIL, NONE, ERROR = "pass", "fail", "none", "error"


@dataclass(frozen=True)
class Profile:
    """How long a run may take: ``quick`` (``make bench-quick``, a few minutes in all) or
    ``full`` (``make bench``: the rounds the figures in bench/README.md come from)."""

    name: str = "full"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.name not in ("quick", "full"):
            raise ValueError(f"profile must be 'quick' or 'full', not {self.name!r}")

    @property
    def quick(self) -> bool:
        return self.name == "quick"

    def pick(self, quick: Any, full: Any) -> Any:
        """``quick`` in the quick profile, else ``full``."""
        return quick if self.quick else full


def check_goal(goal: str | None) -> None:
    """Raise ValueError unless ``goal`` is None or like ``">= 0.85"``."""
    if goal is not None and not _GOAL_RE.match(goal):
        raise ValueError(f"a goal reads like '>= 0.85' or '<= 2', not {goal!r}")


def goal_status(value: float | None, goal: str | None) -> str:
    """``pass`` / ``fail`` against ``goal``; ``none`` without a goal; ``error`` without a
    value (the benchmark did not produce it)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ERROR
    if goal is None:
        return NONE
    found = _GOAL_RE.match(goal)
    if found is None:
        raise ValueError(f"bad goal {goal!r}")
    return PASS if _OPS[found.group(1)](float(value), float(found.group(2))) else FAIL


@dataclass
class Figure:
    """One measured figure.

    Args:
        name: ``<bench>.<what>``, unique in a run, stable across runs (the README and
            anything comparing runs key on it).
        value: the number (None: not measured, e.g. the side it needs failed).
        unit: ``x`` for a ratio, ``ms``, ``s``, ``MB``, ``tokens/s``, ``req/s``, ``%`` ...
        goal: ``">= 0.85"``-style, or None for a figure shown for information.
        label: what it is, in words, for the tables.
        note: how it was measured, what it compares with (one or two sentences).
    """

    name: str
    value: float | None
    unit: str
    label: str
    goal: str | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_goal(self.goal)
        if self.value is not None:
            self.value = float(self.value)

    @property
    def status(self) -> str:
        return goal_status(self.value, self.goal)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["status"] = self.status
        if not out["extra"]:
            del out["extra"]
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Figure:
        fields = {k: data[k] for k in ("name", "value", "unit", "label") if k in data}
        return cls(
            **fields, goal=data.get("goal"), note=data.get("note", ""), extra=data.get("extra", {})
        )


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator``, or None when either side is missing or zero."""
    if not numerator or not denominator:
        return None
    return numerator / denominator


def format_value(value: float | None, unit: str) -> str:
    """A value as the tables show it: 3 significant digits, the unit after it."""
    if value is None:
        return "--"
    magnitude = abs(value)
    if not unit and value == int(value):  # a count
        text = str(int(value))
    elif magnitude >= 100:
        text = f"{value:.0f}"
    elif magnitude >= 10:
        text = f"{value:.1f}"
    elif magnitude >= 1:
        text = f"{value:.2f}"
    else:
        text = f"{value:.3f}"
    if unit == "x":
        return f"{text}x"
    if unit == "%":
        return f"{text} %"
    return f"{text} {unit}" if unit else text


def print_figures(figures: list[Figure]) -> None:
    """The figures of one benchmark as a small table (for a script run on its own)."""
    width = max((len(f.label) for f in figures), default=10)
    for fig in figures:
        goal = f"goal {fig.goal}: {fig.status}" if fig.goal else ""
        print(f"  {fig.label:{width}s}  {format_value(fig.value, fig.unit):>14s}  {goal}")
