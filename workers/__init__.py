"""Worker processes, started with arq.

- ``arq workers.Settings`` -- an inference node: consumes the jobs stream (batches, retries,
  dead letters, crash recovery, heartbeats) AND serves chunk loads (``load_chunk``).
- ``arq workers.LoaderSettings`` -- a loader-only worker.

Both read their configuration from ``SW_*`` environment variables when this package is
imported (an unknown ``SW_*`` name is an error). ``SW_HANDLER`` names the batch handler.
"""

from __future__ import annotations

from sw_core.settings import Settings as _CoreSettings
from workers.node import worker_options
from workers.resilience import check_access, tolerate_redis_outages

_SETTINGS = _CoreSettings.from_env()
check_access(_SETTINGS)
tolerate_redis_outages()

#: arq settings of an inference node (stream consumer + chunk loader in one process).
Settings = type(
    "Settings",
    (),
    {
        "__doc__": "arq settings of an inference node: `arq workers.Settings`.",
        "__module__": __name__,
        **worker_options(_SETTINGS, inference=True),
    },
)

#: arq settings of a loader-only worker.
LoaderSettings = type(
    "LoaderSettings",
    (),
    {
        "__doc__": "arq settings of a chunk-loader worker: `arq workers.LoaderSettings`.",
        "__module__": __name__,
        **worker_options(_SETTINGS, inference=False),
    },
)

__all__ = ["LoaderSettings", "Settings"]
