"""``sw serve``: the gateway on uvicorn, refusing to leave loopback without API keys, with
bounded connections (:mod:`gateway.connections`) and one access-log line per request."""

from __future__ import annotations

import ipaddress
import logging
import sys

from sw_core.exceptions import ConfigError
from sw_core.settings import Settings, redact_url

log = logging.getLogger(__name__)
LOOPBACK_NAMES = ("localhost",)


def is_loopback(host: str) -> bool:
    """``127.0.0.1``, ``::1``, ``localhost`` ... (``0.0.0.0`` and names are not)."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(settings: Settings, host: str) -> str:
    """The start-up line about keys; refuses a non-loopback host without keys.

    Raises:
        ConfigError: no ``SW_API_KEYS`` and ``host`` is not a loopback address.
    """
    from gateway.auth import KeyChecker

    if KeyChecker(settings.api_keys).enabled:
        return "API keys required (SW_API_KEYS)"
    if not is_loopback(host):
        raise ConfigError(
            f"refusing to listen on {host} without API keys: set SW_API_KEYS, or use "
            "--host 127.0.0.1"
        )
    return "no SW_API_KEYS: listening on loopback only, no key required"


def serve(settings: Settings, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run the gateway until SIGINT/SIGTERM (blocking)."""
    import uvicorn

    from gateway.app import create_app
    from gateway.connections import uvicorn_options

    note = check_bind(settings, host)
    print(
        f"sw serve: http://{host}:{port}/ (Redis {redact_url(settings.redis_url)}); {note}",
        file=sys.stderr,
        flush=True,
    )
    access = logging.getLogger("gateway.access")
    if access.level == logging.NOTSET:
        access.setLevel(logging.INFO)
    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = uvicorn.Config(
        create_app(settings),
        host=host,
        port=port,
        log_level="warning",
        access_log=False,  # ours (gateway.access) has the model, tokens and key id
        timeout_graceful_shutdown=5,
        **uvicorn_options(settings),
    )
    uvicorn.Server(config).run()
