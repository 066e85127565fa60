"""The job side of a worker: the jobs stream in, results, retries and dead letters out.

``consumer`` reads the stream through the consumer group and batches jobs; ``admission``
starts them; ``handlers`` is the pluggable batch handler interface and ``inference`` the
default handler (the streaming engine); ``decode_loop`` runs continuous batching;
``token_stream`` writes token events; ``outcomes`` ends a job (result, retry, dead letter);
``retry_mover`` puts due retries back.

May import: ``sw_core``, ``producer``, ``workers.chunks`` and the worker's process modules
(``workers.arq_compat``, ``workers.arq_redis``, ``workers.logs``).
"""
