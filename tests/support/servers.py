"""moto's S3 server on loopback, spoken to through the real ``minio`` SDK.

One class for the session-wide server of the integration tests and the per-test servers of
the chaos suite, which stop and start it again: moto keeps buckets and objects in this
process, so a stop is an outage of the endpoint, not a loss of data, and :meth:`start`
serves the same objects again on the same port.
"""

from __future__ import annotations

import os
from typing import Any

from sw_core.local.redis_server import free_port


class S3Server:
    """moto's S3 HTTP server on ``127.0.0.1`` and a free port, stoppable and restartable."""

    access_key = "testing"
    secret_key = "testing"
    region = "us-east-1"

    def __init__(self) -> None:
        os.environ.setdefault("AWS_ACCESS_KEY_ID", self.access_key)
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", self.secret_key)
        self.port = free_port()
        self._server: Any = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> S3Server:
        """Serve (again); a running server is left as it is."""
        from moto.server import ThreadedMotoServer

        if self._server is None:
            server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
            server.start()
            self._server = server
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def client(self) -> Any:  # -> minio.Minio
        from minio import Minio

        return Minio(
            self.endpoint,
            access_key=self.access_key,
            secret_key=self.secret_key,
            secure=False,
            region=self.region,
        )

    def settings_overrides(self) -> dict[str, Any]:
        """The S3 settings that point at this server."""
        return {
            "s3_endpoint": self.endpoint,
            "s3_access_key": self.access_key,
            "s3_secret_key": self.secret_key,
            "s3_region": self.region,
            "s3_secure": False,
        }
