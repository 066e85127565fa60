"""Tasks: requests in, results out, for ``embed``, ``forward`` and ``generate``.

``requests`` validates and tokenizes requests; ``passes`` runs ``embed`` and ``forward`` over a
batch; ``generation`` runs static generate batches; ``continuous`` the continuous decode batch;
``stopping`` finds stop sequences; ``pooling`` computes sentence embeddings as
sentence-transformers does.

May import: ``sw_core.engine.io``, ``model``, ``memory`` and the layers below the engine; never
the engine core (``engine``, ``compute``, ``facade``, ``setup``), which imports them.
"""
