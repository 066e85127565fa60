"""The layers of the code base, enforced: the library (``sw_core``) <- ``producer`` <-
``workers`` and ``gateway`` (the HTTP gateway, beside the workers) <- the command line and the
local demo (``sw_core.cli``, ``sw_core.local``).

Every import statement counts, at module level or inside a function, so a lazy import
cannot slip a dependency past the check.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: Packages on top: they may import anything.
TOP = ("sw_core.cli", "sw_core.local")
#: For each layer, the packages it must not import (the layers above it).
FORBIDDEN = {
    "sw_core": ("producer", "workers", "gateway", *TOP),
    "producer": ("workers", "gateway", *TOP),
    "workers": ("gateway", *TOP),
    "gateway": ("workers", *TOP),
}


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_names(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """``(line, module)`` for every import in the file, relative imports resolved."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            out.append((node.lineno, base))
            out.extend((node.lineno, f"{base}.{alias.name}") for alias in node.names)
    return out


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def layer_violations(root: Path = ROOT) -> list[str]:
    """Every import that points up the layers, as ``file:line imports module``."""
    found: list[str] = []
    for package, forbidden in FORBIDDEN.items():
        for path in sorted((root / package).rglob("*.py")):
            name = module_name(path, root)
            if any(within(name, top) for top in TOP):
                continue
            for line, imported in imported_names(path, root):
                if any(within(imported, bad) for bad in forbidden):
                    found.append(f"{path.relative_to(root)}:{line} imports {imported}")
    return sorted(set(found))


def test_imports_point_down_the_layers() -> None:
    assert layer_violations() == []


@pytest.mark.parametrize(
    ("package", "statement"),
    [
        ("sw_core/chunks", "import workers"),
        ("sw_core/engine", "from producer import Producer"),
        ("sw_core", "from sw_core.local import demo"),
        ("producer", "from workers.node import worker_options"),
        ("workers", "from sw_core.cli import main"),
        ("producer", "from gateway.app import create_app"),
        ("gateway", "import workers.jobs.inference"),
    ],
)
def test_an_upward_import_is_caught(tmp_path: Path, package: str, statement: str) -> None:
    """The check sees an upward import in a function body of a library module."""
    fake_root = tmp_path / "repo"
    for top in ("sw_core", "producer", "workers", "gateway"):
        (fake_root / top).mkdir(parents=True)
        (fake_root / top / "__init__.py").write_text("")
    target = fake_root / package / "mod.py"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(f"def f() -> None:\n    {statement}\n")
    violations = layer_violations(fake_root)
    assert len(violations) >= 1
    assert violations[0].startswith(f"{package}/mod.py:2 imports ")
