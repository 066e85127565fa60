"""Worker processes, started with arq.

- ``arq workers.Settings`` -- an inference node: consumes the jobs stream (batches, retries,
  dead letters, crash recovery, heartbeats) AND serves chunk loads (``load_chunk``).
- ``arq workers.LoaderSettings`` -- a loader-only worker.

Importing this package does nothing else: both read their configuration from ``SW_*``
environment variables (an unknown ``SW_*`` name is an error), check that Redis accepts
their credentials, configure logging (:mod:`workers.logs`, ``SW_LOG_FORMAT``) and adapt arq
when arq starts the worker. ``SW_HANDLER`` names the batch handler.
"""

from __future__ import annotations

from typing import Any

from workers.arq_compat import LazyWorkerSettings


def _build(*, inference: bool) -> dict[str, Any]:
    from sw_core.settings import Settings as CoreSettings
    from workers.access import check_access
    from workers.logs import configure_logging
    from workers.node import worker_options

    settings = CoreSettings.from_env()
    # arq has configured its own logger by now; every line of this process gets one format
    configure_logging(settings.log_format)
    check_access(settings)
    return worker_options(settings, inference=inference)


#: arq settings of an inference node (stream consumer + chunk loader in one process).
Settings = LazyWorkerSettings("inference node", lambda: _build(inference=True))

#: arq settings of a loader-only worker.
LoaderSettings = LazyWorkerSettings("chunk loader", lambda: _build(inference=False))

__all__ = ["LoaderSettings", "Settings"]
