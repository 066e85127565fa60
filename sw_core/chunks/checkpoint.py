"""Which transformers class a model folder's checkpoint fills, and where each weight is.

The class is the one ``config.json`` names (``architectures``), else ``AutoModel``'s for the
config. Checkpoint keys map to model keys adding or stripping the base-model prefix
(``bert.``). A config that names a class with a head over a checkpoint holding only the base
model -- common among sentence-transformers models, whose ``config.json`` often says
``BertForMaskedLM`` -- gets the base model, as ``AutoModel`` loads it, when the missing
weights are exactly the head's (said on stderr).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, cast

import torch

from sw_core.architectures import check_architecture
from sw_core.chunks.plan import tied_parameters
from sw_core.exceptions import ModelError

log = logging.getLogger(__name__)


def match_checkpoint(
    folder: Path, model_class: type[torch.nn.Module], config: Any, file_keys: dict[str, Any]
) -> tuple[torch.nn.Module, type[torch.nn.Module], dict[str, str], dict[str, Any], dict[str, str]]:
    """The skeleton the checkpoint's weights fill, with where each weight is read from.

    A config that names a class with a head (``BertForMaskedLM``) over a checkpoint holding
    only the base model (common among sentence-transformers models) gets the base model, as
    ``AutoModel`` loads it, when the missing weights are exactly the head's; said on stderr.
    """
    with torch.device("meta"):
        skeleton = model_class(config)
    found = _checkpoint_keys(skeleton, file_keys)
    missing = found[-1]
    base = getattr(skeleton, "base_model", skeleton)
    prefix = getattr(skeleton, "base_model_prefix", "")
    if missing and base is not skeleton and prefix:
        head_only = all(not k.startswith(prefix + ".") for k in missing)
        base_class = type(base)
        with torch.device("meta"):
            base_skeleton = base_class(config)
        base_found = _checkpoint_keys(base_skeleton, file_keys)
        if head_only and not base_found[-1]:
            print(
                f"sw chunk: {folder.name}: config.json names {model_class.__name__}, but the "
                f"checkpoint lacks its head ({len(missing)} weights, e.g. {missing[0]}); "
                f"chunking the base model {base_class.__name__}, as AutoModel loads it",
                file=sys.stderr,
            )
            skeleton, model_class, found = base_skeleton, base_class, base_found
            missing = []
    if missing:
        raise ModelError(
            f"{folder}: the checkpoint lacks {len(missing)} weights of {model_class.__name__}, "
            f"e.g. {missing[:3]}"
        )
    tied, handle_of, file_key_of, _ = found
    return skeleton, model_class, tied, handle_of, file_key_of


def _checkpoint_keys(
    skeleton: torch.nn.Module, file_keys: dict[str, Any]
) -> tuple[dict[str, str], dict[str, Any], dict[str, str], list[str]]:
    """``(tied, handle of each weight, its key in the file, missing weights)``."""
    tied = tied_parameters(skeleton)
    model_keys = [k for k in skeleton.state_dict() if k not in tied]
    key_map = map_checkpoint_keys(
        list(file_keys), set(model_keys) | set(tied), getattr(skeleton, "base_model_prefix", "")
    )
    handle_of: dict[str, Any] = {}
    file_key_of: dict[str, str] = {}
    for file_key, model_key in key_map.items():
        canonical = tied.get(model_key, model_key)
        if canonical in file_key_of:
            continue
        handle_of[canonical] = file_keys[file_key]
        file_key_of[canonical] = file_key
    missing = [k for k in model_keys if k not in file_key_of]
    return tied, handle_of, file_key_of, missing


def skeleton_class(folder: Path) -> tuple[type[torch.nn.Module], Any]:
    import transformers
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(folder)
    except (OSError, ValueError) as exc:
        raise ModelError(f"{folder}: cannot read config.json: {exc}") from exc
    check_architecture(str(config.model_type), f"cannot chunk {folder}")
    for arch in config.architectures or []:
        cls = getattr(transformers, arch, None)
        if isinstance(cls, type):
            return cls, config
    # transformers' own table of config class -> model class (typed loosely upstream)
    mapping: Any = cast(Any, transformers.AutoModel)._model_mapping
    model_class = mapping.get(type(config))
    if model_class is None:
        raise ModelError(f"{folder}: unsupported model type {config.model_type!r}")
    return model_class, config


def map_checkpoint_keys(file_keys: list[str], model_keys: set[str], prefix: str) -> dict[str, str]:
    """Checkpoint key -> model key, adding or stripping the base-model prefix as needed."""
    mapping: dict[str, str] = {}
    for key in file_keys:
        candidates = [key]
        if prefix:
            candidates += [f"{prefix}.{key}"]
            if key.startswith(prefix + "."):
                candidates.append(key[len(prefix) + 1 :])
        for candidate in candidates:
            if candidate in model_keys:
                mapping[key] = candidate
                break
        else:
            log.info("checkpoint key %s is not a weight of the model; skipped", key)
    return mapping
