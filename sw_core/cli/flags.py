"""Command-line flags for settings: every ``SW_*`` setting can also be given as a flag
(``--redis-url``...), which wins over the environment."""

from __future__ import annotations

import argparse
import typing
from typing import TypeAlias

from sw_core.settings import ENV_PREFIX, Settings, _unwrap_optional

#: What ``register(subparsers)`` of each command module is given (``add_subparsers()``).
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def add_cli_flags(parser: argparse.ArgumentParser, names: list[str] | None = None) -> None:
    """Add ``--redis-url``-style flags for settings (all of them unless ``names``)."""
    hints = typing.get_type_hints(Settings)
    for name in sorted(names or Settings.field_names()):
        target, _ = _unwrap_optional(hints[name])
        flag = "--" + name.replace("_", "-")
        env = ENV_PREFIX + name.upper()
        if target is bool:
            parser.add_argument(
                flag,
                dest=f"setting_{name}",
                default=None,
                choices=["true", "false"],
                help=f"(env {env})",
            )
        else:
            parser.add_argument(
                flag,
                dest=f"setting_{name}",
                default=None,
                metavar=name.upper(),
                help=f"(env {env})",
            )


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Settings from the environment with the CLI flags given in ``args`` on top."""
    overrides = {
        key[len("setting_") :]: value
        for key, value in vars(args).items()
        if key.startswith("setting_") and value is not None
    }
    return Settings.from_env(**overrides)
