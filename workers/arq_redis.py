"""arq's Redis settings from a Surfing Weights Redis URL, TLS options included.

arq's ``RedisSettings.from_dsn`` keeps only host, port, database, user, password and the
``rediss`` scheme: the ``ssl_*`` query parameters that redis-py's ``from_url`` honours (and
that producers and the cache therefore use) were dropped, so a worker's arq pool could not
verify a private CA and was refused where the producer got through.
"""

from __future__ import annotations

from urllib.parse import parse_qs, unquote, urlparse

from arq.connections import RedisSettings

#: URL query parameters passed on to arq's TLS settings (redis-py's names).
_TLS_PARAMS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs")


def arq_redis_settings(url: str) -> RedisSettings:
    """``RedisSettings`` for ``url`` (``redis://`` or ``rediss://...?ssl_ca_certs=...``)."""
    base = RedisSettings.from_dsn(url)
    query = parse_qs(urlparse(url).query)
    for name in _TLS_PARAMS:
        if query.get(name):
            setattr(base, name, unquote(query[name][0]))
    if query.get("ssl_check_hostname"):
        base.ssl_check_hostname = query["ssl_check_hostname"][0].lower() in ("1", "true", "yes")
    return base
