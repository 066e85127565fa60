"""Synthetic chunk sets: random weights in the shapes of real models (``sw synth``), for
measuring models larger than every memory in the path without downloading one."""

from __future__ import annotations

from sw_core.synth.build import planned_bytes, planned_chunks, synth_chunk_set
from sw_core.synth.shapes import SHAPES, shape_config

__all__ = ["SHAPES", "planned_bytes", "planned_chunks", "shape_config", "synth_chunk_set"]
