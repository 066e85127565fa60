"""Memory: what stays materialized under the worker's budget, and the buffers chunks land in.

``budget`` decides at load time which chunks stay resident (a pure plan); ``residency`` holds
the byte-counted set of materialized chunks and prefetches the streamed ones; ``slots`` its
plain records; ``buffers`` the reused chunk buffers; ``heap`` keeps freed buffers from piling
up in the C heap.

May import: the layers below the engine (``sw_core`` base modules, ``chunks``); nothing else of
the engine.
"""
