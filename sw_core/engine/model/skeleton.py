"""The model without its weights: a transformers skeleton on ``meta``, checked against the
manifest, with a way to put each chunk's tensors in and take them out again.

Parameters are created on the ``meta`` device (no memory); buffers the checkpoint does not
carry -- BERT's ``position_ids``/``token_type_ids``, LLaMA's rotary ``inv_freq`` -- are
built for real by the model's own ``__init__`` (``init_empty_weights(include_buffers=False)``),
so they hold correct values instead of NaN. Every state-dict entry of the skeleton must be
covered by exactly one chunk (or by row shards that cover every row, or by a tied alias),
and every tensor of every chunk must be an entry of the skeleton: any mismatch is a
:class:`~sw_core.exceptions.ModelError` at load time, never garbage at run time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from sw_core.architectures import ARCHITECTURES, Family, check_architecture
from sw_core.chunks.manifest import ChunkInfo, Manifest
from sw_core.engine.model.chunk_reader import ChunkReader
from sw_core.engine.model.footprint import with_kernel_views
from sw_core.engine.model.packed import PackedWeight
from sw_core.engine.model.packed_modules import (
    PackedEmbedding,
    PackedModule,
    replace_packed_modules,
)
from sw_core.engine.model.structure import describe
from sw_core.exceptions import ModelError

#: How a place holds its tensor: a parameter, a buffer, or a packed module's weight.
PARAM, BUFFER, PACKED = "param", "buffer", "packed"

if TYPE_CHECKING:
    from transformers import PreTrainedModel

#: model_type -> family; the architectures this engine runs and tests.
SUPPORTED_TYPES: dict[str, Family] = {k: a.family for k, a in ARCHITECTURES.items()}


@dataclass
class TensorSpec:
    """One stored tensor (canonical name) and the places in the model that hold it."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    #: The canonical name plus its tied aliases that exist in the model.
    owners: list[str]
    #: One whole chunk, or the row shards in row order.
    chunks: list[ChunkInfo] = field(default_factory=list)

    @property
    def sharded(self) -> bool:
        return any(c.rows is not None for c in self.chunks)

    @property
    def experts(self) -> bool:
        """A fused experts tensor stored one expert per chunk."""
        return any(c.role == "expert" for c in self.chunks)


def load_config(raw: bytes) -> Any:
    """A transformers config from ``config.json`` bytes."""
    from transformers import AutoConfig

    try:
        data = json.loads(raw)
        model_type = data.pop("model_type")
        return AutoConfig.for_model(model_type, **data)
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"config.json is not a usable transformers config: {exc}") from None


def model_class(manifest: Manifest, config: Any) -> tuple[type[PreTrainedModel], Family]:
    """The transformers class named by the manifest, if its family is supported."""
    import transformers

    model_type = str(getattr(config, "model_type", ""))
    family = check_architecture(model_type, f"model {manifest.name!r}").family
    cls = getattr(transformers, manifest.model_class, None)
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        raise ModelError(
            f"model {manifest.name!r}: {manifest.model_class!r} is not a transformers model class"
        )
    return cls, family


class Skeleton:
    """A weightless model plus the map from stored tensors to the places that hold them.

    Args:
        manifest: the chunk set's manifest.
        config: the transformers config built from its ``config.json``.
        device: where materialized tensors and the rebuilt buffers live.
        packed_dtype: keep packed tensors packed, computing with activations of this dtype
            (bfloat16), in the modules that can (:mod:`~sw_core.engine.model.packed_modules`);
            None widens every packed tensor on arrival.
        kernel_views: read the chunks that compute from their kernel prefix alone as their
            kernel views (:func:`~sw_core.engine.model.footprint.with_kernel_views`); the
            skeleton's :attr:`manifest` is then the manifest of what is read.
    """

    def __init__(
        self,
        manifest: Manifest,
        config: Any,
        device: torch.device,
        packed_dtype: torch.dtype | None = None,
        *,
        kernel_views: bool = False,
    ) -> None:
        from accelerate import init_empty_weights

        self.manifest = manifest
        self.config = config
        self.device = device
        #: Counts :meth:`set_tensor` calls (binds, unbinds, merges): unchanged means no
        #: weight moved since a caller last looked.
        self.generation = 0
        cls, self.family = model_class(manifest, config)
        if hasattr(config, "_attn_implementation") and config._attn_implementation is None:
            # sdpa where the class has it (Gemma 2 has only eager attention)
            config._attn_implementation = (
                "sdpa" if getattr(cls, "_supports_sdpa", False) else "eager"
            )
        with init_empty_weights(include_buffers=False):
            model = cls(config)
        self.model: PreTrainedModel = model.eval()
        self.structure = describe(model)
        for module in model.modules():
            for name, buf in list(module._buffers.items()):
                if buf is not None and not buf.is_meta:
                    module._buffers[name] = buf.to(device)
        self.tensors = self._map_tensors()
        #: Packed tensors that stay packed (the others are widened on arrival).
        self.kept_packed: frozenset[str] = frozenset()
        if packed_dtype is not None and manifest.formats:
            owners = {spec.name: spec.owners for spec in self.tensors.values()}
            self.kept_packed = frozenset(
                replace_packed_modules(model, owners, manifest.formats, packed_dtype)
            )
        if kernel_views:
            manifest = self.manifest = with_kernel_views(manifest, packed_dtype, self.kept_packed)
        self._places: dict[str, tuple[nn.Module, str, str]] = {}
        #: Per ``(module, recurse)``: every place under it that holds a weight (see
        #: :meth:`meta_tensors`); dropped when modules are replaced.
        self._probes: dict[tuple[int, bool], tuple[nn.Module, list[Place]]] = {}
        #: ``meta`` stand-ins put back where a tensor was (one per tensor, reused).
        self._placeholders: dict[str, nn.Parameter] = {}
        for spec in self.tensors.values():
            for owner in spec.owners:
                self._places[owner] = self._place(owner)
        self.by_chunk: dict[str, ChunkInfo] = {c.name: c for c in manifest.chunks}
        #: Sharded tensors held only as ``nn.Embedding`` weights (not tied to an output head):
        #: rows are only ever gathered from them, so they never need to be whole.
        self.lookup_only = self._lookup_only()
        self.reader = ChunkReader(
            manifest, {n: (spec.shape, spec.dtype) for n, spec in self.tensors.items()}
        )

    # ---------------------------------------------------------------- checks
    def _map_tensors(self) -> dict[str, TensorSpec]:
        name = self.manifest.name
        state = self.model.state_dict(keep_vars=True)
        tied = self.manifest.tied
        specs: dict[str, TensorSpec] = {}
        for key in state:
            canonical = tied.get(key, key)
            if canonical not in state:
                raise ModelError(
                    f"model {name!r}: manifest ties {key!r} to {canonical!r}, which "
                    f"{self.manifest.model_class} does not have"
                )
            spec = specs.get(canonical)
            if spec is None:
                ref = state[canonical]
                spec = specs[canonical] = TensorSpec(
                    canonical, tuple(ref.shape), ref.dtype, owners=[]
                )
            spec.owners.append(key)
        for chunk in self.manifest.chunks:
            if not chunk.tensors:
                raise ModelError(f"model {name!r}: chunk {chunk.name!r} holds no tensors")
            for tensor in chunk.tensors:
                spec = specs.get(tensor)
                if spec is None:
                    raise ModelError(
                        f"model {name!r}: chunk {chunk.name!r} holds {tensor!r}, which "
                        f"{self.manifest.model_class} built from config.json does not have"
                    )
                if spec.chunks and (chunk.rows is None or not spec.sharded):
                    raise ModelError(
                        f"model {name!r}: tensor {tensor!r} is stored twice "
                        f"({spec.chunks[0].name!r} and {chunk.name!r})"
                    )
                spec.chunks.append(chunk)
            if chunk.role == "block":
                self._check_block(chunk)
        for spec in specs.values():
            if not spec.chunks:
                raise ModelError(
                    f"model {name!r}: no chunk holds tensor {spec.name!r}; the chunk set is "
                    "incomplete or was cut from another model"
                )
            if spec.sharded:
                self._check_shards(spec)
        return specs

    def _check_block(self, chunk: ChunkInfo) -> None:
        name = self.manifest.name
        try:
            module = self.model.get_submodule(chunk.name)
        except AttributeError:
            raise ModelError(
                f"model {name!r}: block chunk {chunk.name!r} names no module of "
                f"{self.manifest.model_class}"
            ) from None
        prefix = chunk.name + "."
        stray = [t for t in chunk.tensors if not t.startswith(prefix)]
        if stray:
            raise ModelError(f"model {name!r}: block chunk {chunk.name!r} holds {stray[0]!r}")
        needed = {prefix + k for k in module.state_dict(keep_vars=True)}
        experts = {t for c in self.manifest.chunks if c.role == "expert" for t in c.tensors}
        missing = sorted(needed - set(chunk.tensors) - set(self.manifest.tied) - experts)
        if missing:
            raise ModelError(
                f"model {name!r}: block chunk {chunk.name!r} lacks {len(missing)} tensors, "
                f"e.g. {missing[0]!r}"
            )

    def _check_shards(self, spec: TensorSpec) -> None:
        name = self.manifest.name
        spec.chunks.sort(key=lambda c: (c.rows or [0, 0])[0])
        cursor = 0
        for chunk in spec.chunks:
            rows = chunk.rows
            if rows is None or len(rows) != 2 or rows[0] != cursor or rows[1] <= rows[0]:
                raise ModelError(
                    f"model {name!r}: row shards of {spec.name!r} do not tile its rows "
                    f"(chunk {chunk.name!r} has rows {rows}, expected to start at {cursor})"
                )
            cursor = rows[1]
        dims = 2 if spec.chunks[0].role != "expert" else len(spec.shape)  # experts: [E, ...]
        if len(spec.shape) != dims or cursor != spec.shape[0]:
            raise ModelError(
                f"model {name!r}: row shards of {spec.name!r} cover {cursor} rows, "
                f"the tensor has shape {list(spec.shape)}"
            )

    # ---------------------------------------------------------------- tensors in and out
    def _place(self, name: str) -> tuple[nn.Module, str, str]:
        path, _, attr = name.rpartition(".")
        module = self.model.get_submodule(path) if path else self.model
        if isinstance(module, PackedModule) and attr == "weight":
            return module, attr, PACKED
        return module, attr, PARAM if attr in module._parameters else BUFFER

    def refresh_places(self) -> None:
        """Re-resolve owners after modules were replaced; drop owners that no longer exist."""
        self._probes.clear()
        for spec in self.tensors.values():
            alive = []
            for owner in spec.owners:
                try:
                    module, attr, kind = self._place(owner)
                except AttributeError:
                    continue
                if kind == PACKED or attr in module._parameters or attr in module._buffers:
                    alive.append(owner)
                    self._places[owner] = (module, attr, kind)
                else:
                    self._places.pop(owner, None)
            spec.owners = alive

    def _lookup_only(self) -> frozenset[str]:
        names = set()
        for spec in self.tensors.values():
            places = [self._places[owner] for owner in spec.owners]
            lookups = [
                isinstance(m, nn.Embedding | PackedEmbedding) and attr == "weight"
                for m, attr, _ in places
            ]
            if spec.sharded and not spec.experts and lookups and all(lookups):
                names.add(spec.name)
        return frozenset(names)

    def set_tensor(self, canonical: str, tensor: torch.Tensor | PackedWeight) -> None:
        """Put ``tensor`` in every place that holds ``canonical`` (tied aliases included)."""
        self.generation += 1
        for owner in self.tensors[canonical].owners:
            module, attr, kind = self._places[owner]
            if kind == PACKED:
                assert isinstance(module, PackedModule)
                module.hold(tensor if isinstance(tensor, PackedWeight) else None)
            elif isinstance(tensor, PackedWeight):
                raise ModelError(f"{owner} cannot hold a packed weight")
            elif kind == PARAM:
                module._parameters[attr] = nn.Parameter(tensor, requires_grad=False)
            else:
                module._buffers[attr] = tensor

    def clear_tensor(self, canonical: str) -> None:
        """Put an empty ``meta`` tensor back where ``canonical`` was (frees its memory)."""
        placeholder = self._placeholders.get(canonical)
        if placeholder is None:
            spec = self.tensors[canonical]
            placeholder = nn.Parameter(
                torch.empty(spec.shape, dtype=spec.dtype, device="meta"), requires_grad=False
            )
            self._placeholders[canonical] = placeholder
        self.generation += 1
        for owner in self.tensors[canonical].owners:
            module, attr, kind = self._places[owner]
            if kind == PACKED:
                assert isinstance(module, PackedModule)
                module.hold(None)
            elif kind == PARAM:
                module._parameters[attr] = placeholder
            else:
                module._buffers[attr] = placeholder.data

    def bind(self, chunk: ChunkInfo, tensors: dict[str, Any]) -> None:
        """Put a whole chunk's tensors into the model (row shards are not bound)."""
        if chunk.rows is not None:
            return
        for name, tensor in tensors.items():
            self.set_tensor(name, tensor)

    def unbind(self, chunk: ChunkInfo) -> None:
        if chunk.rows is not None:
            return
        for name in chunk.tensors:
            self.clear_tensor(name)

    def deserialize(self, chunk: ChunkInfo, data: bytearray | memoryview) -> dict[str, Any]:
        """Tensors of a verified chunk over ``data`` (zero-copy on CPU), checked against the
        skeleton (:class:`~sw_core.engine.model.chunk_reader.ChunkReader`)."""
        tensors = self.reader.read(chunk, data)
        if self.device.type != "cpu":
            tensors = {
                k: v.to(self.device) if isinstance(v, torch.Tensor) else v
                for k, v in tensors.items()
            }
        return tensors

    def meta_tensors(self, module: nn.Module, *, recurse: bool) -> list[str]:
        """Names of ``module``'s parameters/buffers still on ``meta`` (not materialized).

        Checked before every streamed layer runs, so the module tree is walked once per
        module (:func:`weight_places`) and each later call only looks at the places."""
        key = (id(module), recurse)
        probe = self._probes.get(key)
        if probe is None or probe[0] is not module:
            probe = self._probes[key] = (module, weight_places(module, recurse=recurse))
        missing = []
        for name, holder, attr, kind in probe[1]:
            if kind == PACKED:
                if getattr(holder, "packed", None) is None:
                    missing.append(name)
                continue
            table = holder._parameters if kind == PARAM else holder._buffers
            value = table.get(attr)
            if value is not None and value.is_meta:
                missing.append(name)
        return missing


#: A place that holds a weight: ``(name under the probed module, holder, attr, kind)``.
Place = tuple[str, nn.Module, str, str]


def weight_places(module: nn.Module, *, recurse: bool) -> list[Place]:
    """Every parameter, buffer and packed weight of ``module`` (and its descendants when
    ``recurse``), as :meth:`Skeleton.meta_tensors` checks them."""
    places: list[Place] = []
    members = module.named_modules() if recurse else [("", module)]
    for prefix, holder in members:
        lead = f"{prefix}." if prefix else ""
        places += [(lead + attr, holder, attr, PARAM) for attr in holder._parameters]
        places += [(lead + attr, holder, attr, BUFFER) for attr in holder._buffers]
        if isinstance(holder, PackedModule):
            places.append((lead + "weight", holder, "weight", PACKED))
    return places
