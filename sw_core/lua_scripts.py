"""The Lua sources of every atomic Redis step, read once from ``sw_core/lua/``."""

from __future__ import annotations

from functools import cache
from importlib import resources


@cache
def lua_source(name: str) -> str:
    """Source of ``sw_core/lua/<name>.lua`` (``name`` without the suffix), read once."""
    return resources.files("sw_core").joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")
