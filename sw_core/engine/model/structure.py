"""What the engine needs to know about a model, read from the transformers model itself.

No family has its own module: the block lists, the input embeddings, the rotary modules,
the final norms, the output head and the tied weights are all found in the model's module
tree, so a decoder or encoder with the standard layout (a ``ModuleList`` of identical
blocks, an embedding before it, a norm and a head after it) runs as soon as its
``model_type`` is listed in :mod:`sw_core.architectures`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from sw_core.chunks.plan import block_stacks, tied_parameters


@dataclass(frozen=True)
class ModelStructure:
    """The parts of one model, as module paths."""

    #: Block lists (``model.layers``, ``encoder.layer``...), in registration order.
    stacks: tuple[str, ...]
    #: The token embedding (``get_input_embeddings``), if any.
    input_embeddings: str | None
    #: The output projection (``get_output_embeddings``), if any.
    head: str | None
    #: Modules holding rotary ``inv_freq`` buffers (rebuilt on load, never stored).
    rotary: tuple[str, ...]
    #: Final norm -> the block list it runs after (only where registration order differs
    #: from run order, as OPT's ``decoder.final_layer_norm``, registered before the layers).
    final_norms: dict[str, str] = field(default_factory=dict)
    #: Tied parameter alias -> canonical name.
    tied: dict[str, str] = field(default_factory=dict)


def describe(model: nn.Module) -> ModelStructure:
    """The :class:`ModelStructure` of ``model`` (a skeleton on ``meta`` is enough).

    Example:
        >>> describe(llama).stacks  # doctest: +SKIP
        ('model.layers',)
    """
    paths = {id(m): p for p, m in model.named_modules()}
    stacks = tuple(block_stacks(model))
    return ModelStructure(
        stacks=stacks,
        input_embeddings=_path_of(model, "get_input_embeddings", paths),
        head=_path_of(model, "get_output_embeddings", paths),
        rotary=tuple(
            p
            for p, m in model.named_modules()
            if any(b.endswith("inv_freq") for b in m._buffers)
            and not any(p.startswith(s + ".") for s in stacks)
        ),
        final_norms=_final_norms(model, stacks),
        tied=tied_parameters(model),
    )


def _path_of(model: nn.Module, getter: str, paths: dict[int, str]) -> str | None:
    get = getattr(model, getter, None)
    if get is None:
        return None
    try:
        module = get()
    except (AttributeError, NotImplementedError):
        return None
    return paths.get(id(module)) if isinstance(module, nn.Module) else None


def _final_norms(model: nn.Module, stacks: tuple[str, ...]) -> dict[str, str]:
    """Norms beside a block list (same parent) registered before it: they run after it."""
    out: dict[str, str] = {}
    order = [p for p, _ in model.named_modules()]
    for stack in stacks:
        parent, _, _ = stack.rpartition(".")
        parent_module = model.get_submodule(parent) if parent else model
        for name, child in parent_module.named_children():
            path = f"{parent}.{name}" if parent else name
            if "norm" not in type(child).__name__.lower() or path not in order:
                continue
            if order.index(path) < order.index(stack):
                out[path] = stack
    return out
