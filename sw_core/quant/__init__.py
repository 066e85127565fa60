"""Packed (quantized) weights: formats, layouts and converters, independent of the engine.

- :mod:`sw_core.quant.formats` -- :class:`~sw_core.quant.formats.PackedFormat`, what a manifest
  records for every packed tensor, and the names of its stored parts;
- :mod:`sw_core.quant.int4_layout` -- the nibble layout of torch's CPU int4 kernel;
- :mod:`sw_core.quant.weights` -- :class:`~sw_core.quant.weights.QuantizedWeight` (what a tensor
  source hands the chunk writer) and the exact float32 dequantization;
- :mod:`sw_core.quant.rtn` -- round-to-nearest int8 / int4 quantization (``sw chunk --quantize``);
- :mod:`sw_core.quant.gguf_blocks` -- GGUF quantized blocks kept packed.

Nothing here imports torch at package import (reading a manifest stays light).
"""
