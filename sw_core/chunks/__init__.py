"""Chunk sets: a model cut into safetensors chunks plus a manifest with each chunk's hash.

- :mod:`sw_core.chunks.chunker` writes a chunk set (``sw chunk``), planned by
  :mod:`sw_core.chunks.plan`;
- :mod:`sw_core.chunks.manifest` is its manifest, :mod:`sw_core.chunks.pin` the manifest pin;
- :mod:`sw_core.chunks.chunk_set` opens one at any location (``ChunkSet.open``);
- :mod:`sw_core.chunks.verify` verifies and publishes one;
- :mod:`sw_core.chunks.safetensors_io` reads chunks without copying, and
  :mod:`sw_core.chunks.assemble` puts a whole state dict back together.
"""
