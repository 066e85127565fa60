"""Model surgery: the transformers model without its weights, and how chunks go in and out.

``skeleton`` builds the model on ``meta`` and binds a chunk's tensors; ``structure`` reads the
block lists and special modules from the model itself; ``runtime`` hooks each part to
materialize it just before it runs; ``sharded`` and ``experts`` run row-sharded matrices and
routed experts one chunk at a time; ``dtypes`` picks the compute dtype and widens narrow chunks.

May import: ``sw_core.engine.memory`` and the layers below the engine.
"""
