"""Chunk I/O: where chunk bytes come from and how they become tensors.

``sources`` hands out verified chunk bytes (a store directly, or the Redis chunk cache);
``fetching`` reads a chunk into a reused buffer, deserializes it zero-copy and widens it;
``loop`` runs fetch coroutines for synchronous callers on a private event loop.

May import: ``sw_core.engine.model``, ``sw_core.engine.memory`` and the layers below the engine.
"""
