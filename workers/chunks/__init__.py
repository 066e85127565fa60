"""The chunk side of a worker: loading chunks into the shared cache, and asking for them.

``protocol`` is the chunk-load protocol (the arq job's name, the lease, the serializer);
``loader`` is the loader that reads storage and fills the cache; ``chunk_source`` is the
inference side's chunk source that asks the loaders on a cache miss.

May import: ``sw_core`` and the worker's process modules (``workers.arq_compat``,
``workers.arq_redis``); never ``workers.jobs``.
"""
