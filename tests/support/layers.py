"""The rooms of the code base and what each may import: the rules the layer test enforces
and ``docs/architecture.md`` draws (its room table is rendered from :data:`ROOMS`).

A module belongs to the room with the longest matching module prefix. Every import of a
project module counts, at module level or inside a function, so a lazy import cannot slip a
dependency past the check; an import of a room the importer may not use is a violation, and
so is a project module that belongs to no room.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: The top-level packages whose imports are checked.
PACKAGES = ("sw_core", "producer", "workers", "gateway")


@dataclass(frozen=True)
class Room:
    """A group of modules with one job, and the rooms its modules may import."""

    name: str
    modules: tuple[str, ...]
    may_import: tuple[str, ...]
    job: str


_BASE = tuple(
    f"sw_core.{name}"
    for name in (
        "exceptions utils hashing keys settings settings_doc counters progress retry "
        "lua_scripts queue_redis architectures schema schema_doc context json_schema"
    ).split()
)
_WORKERS = ("workers.base", "workers.chunks", "workers.jobs", "workers")
_LIB = ("base", "storage", "cache", "quant", "chunks")
_ENGINE = ("engine.memory", "engine.model", "engine.io", "engine.tasks", "engine")
_LIBRARY = (*_LIB, *_ENGINE, "synth", "pipeline", "ops")

#: Bottom to top.
ROOMS: tuple[Room, ...] = (
    Room(
        "base",
        (*_BASE, "sw_core"),
        (),
        "errors, settings, key names, counters, hashing, the job schema",
    ),
    Room("storage", ("sw_core.storage",), ("base",), "S3, folders, failover, locations"),
    Room("cache", ("sw_core.cache",), ("base", "storage"), "the Redis chunk cache"),
    Room("quant", ("sw_core.quant",), ("base",), "packed weight formats, layouts, quantizers"),
    Room("chunks", ("sw_core.chunks",), _LIB[:4], "chunk sets: chunker, manifest, verify"),
    Room("synth", ("sw_core.synth",), _LIB, "random weights in the shapes of real models"),
    Room("engine.memory", ("sw_core.engine.memory",), _LIB, "budget, residency, buffers"),
    Room("engine.model", ("sw_core.engine.model",), (*_LIB, *_ENGINE[:1]), "model surgery"),
    Room("engine.io", ("sw_core.engine.io",), (*_LIB, *_ENGINE[:2]), "chunk sources, fetching"),
    Room("engine.tasks", ("sw_core.engine.tasks",), (*_LIB, *_ENGINE[:3]), "embed, generate"),
    Room("engine", ("sw_core.engine",), (*_LIB, *_ENGINE[:4]), "the engine, compute thread"),
    Room("pipeline", ("sw_core.pipeline",), ("base", "storage"), "jobs, store, registry, DLQ"),
    Room("ops", ("sw_core.ops", "sw_core.monitor"), _LIBRARY[:-1], "monitor, metrics, health"),
    Room("producer", ("producer",), _LIBRARY, "submitting jobs, reading results"),
    Room(
        "workers.base",
        tuple(f"workers.{m}" for m in ("arq_compat", "arq_redis", "heartbeat", "logs")),
        (*_LIBRARY, "producer"),
        "arq glue, heartbeats, logging",
    ),
    Room(
        "workers.chunks",
        ("workers.chunks",),
        (*_LIBRARY, "workers.base"),
        "chunk loading: protocol, loader, chunk source",
    ),
    Room(
        "workers.jobs",
        ("workers.jobs",),
        (*_LIBRARY, "producer", "workers.base", "workers.chunks"),
        "the jobs stream: consumer, handlers, decode loops, outcomes",
    ),
    Room(
        "workers",
        ("workers",),
        (*_LIBRARY, "producer", *_WORKERS[:3]),
        "a worker process: arq settings, node, access check",
    ),
    Room("gateway", ("gateway",), (*_LIBRARY, "producer"), "the HTTP gateway (sw serve)"),
    Room(
        "top",
        ("sw_core.cli", "sw_core.local"),
        (*_LIBRARY, "producer", *_WORKERS, "gateway"),
        "the sw command and the local demo",
    ),
)
_BY_NAME = {room.name: room for room in ROOMS}


def room_of(module: str) -> Room | None:
    """The room of a project module (longest matching prefix); None for other modules."""
    best: Room | None = None
    best_len = -1
    for room in ROOMS:
        for prefix in room.modules:
            exact_only = prefix == "sw_core"
            hit = module == prefix or (not exact_only and module.startswith(prefix + "."))
            if hit and len(prefix) > best_len:
                best, best_len = room, len(prefix)
    return best


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


def _is_project(module: str) -> bool:
    return module.split(".")[0] in PACKAGES


def layer_violations(root: Path = ROOT) -> list[str]:
    """Every import that breaks the rooms' rules, as ``file:line imports module (why)``."""
    found: list[str] = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            where = path.relative_to(root)
            home = room_of(module_name(path, root))
            if home is None:
                found.append(f"{where}:1 is in no room (add it to tests/support/layers.py)")
                continue
            for line, imported in imported_names(path, root):
                if not _is_project(imported):
                    continue
                target = room_of(imported)
                if target is None or target is home or target.name in home.may_import:
                    continue
                found.append(f"{where}:{line} imports {imported} ({home.name} -> {target.name})")
    return sorted(set(found))


def render_rooms() -> str:
    """The room table of ``docs/architecture.md``."""
    lines = ["| room | modules | may import | what it holds |", "|---|---|---|---|"]
    for room in ROOMS:
        modules = ", ".join(f"`{m}`" for m in room.modules if m != "sw_core")
        may = ", ".join(room.may_import) or "nothing"
        lines.append(f"| {room.name} | {modules} | {may} | {room.job} |")
    return "\n".join(lines) + "\n"


def package_folders(root: Path = ROOT) -> list[str]:
    """Every package folder of the project, as ``sw_core/engine/memory``."""
    return sorted(
        str(init.parent.relative_to(root))
        for package in PACKAGES
        for init in (root / package).rglob("__init__.py")
    )


def render_folders(root: Path = ROOT) -> str:
    """The folder list of ``docs/architecture.md``: each package folder and the first
    sentence of its docstring."""
    lines = []
    for folder in package_folders(root):
        doc = ast.get_docstring(ast.parse((root / folder / "__init__.py").read_text())) or ""
        paragraph = " ".join(doc.split("\n\n")[0].split())
        summary = paragraph.split(". ")[0].rstrip(".").replace("``", "`")
        lines.append(f"- `{folder}/`: {summary}.")
    return "\n".join(lines) + "\n"


assert all(name in _BY_NAME for room in ROOMS for name in room.may_import), "unknown room"
