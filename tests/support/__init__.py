"""Helpers shared by the unit, integration and chaos tests, one module per concern.

- :mod:`~tests.support.settings` -- :func:`fast_settings`, the one builder of test settings.
- :mod:`~tests.support.waiting` -- :func:`wait_until`, the one poller (async and sync).
- :mod:`~tests.support.processes` -- :class:`WorkerProcess`, the one worker-process launcher.
- :mod:`~tests.support.servers` -- moto's S3 server (stoppable).
- :mod:`~tests.support.handlers` -- batch handlers worker processes load by dotted path
  (``SW_HANDLER=tests.support.handlers:EchoHandler``); :mod:`~tests.support.engine_handler`
  the recording real-engine handler (imports torch).
- :mod:`~tests.support.models` -- tiny transformers models and the bundled pretrained ones.
- :mod:`~tests.support.engine` -- chunk sets in the Redis cache, reference generation.
- :mod:`~tests.support.storage` -- small chunk sets written without the chunker.
- :mod:`~tests.support.fakes` -- chunk entries and manifests of given sizes, a fake store.
- :mod:`~tests.support.pipeline` -- in-process consumers and loader worker, job builder.
- :mod:`~tests.support.observe` -- what tests read back from Redis (counters, pending, calls).
- :mod:`~tests.support.cli` -- the ``sw`` command, as a process or in this one.

Fixtures stay in the ``conftest.py`` files; they call into these modules.
"""
