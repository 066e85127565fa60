"""arq's Redis settings from Surfing Weights settings: TLS options and Sentinel included.

arq's ``RedisSettings.from_dsn`` keeps only host, port, database, user, password and the
``rediss`` scheme: the ``ssl_*`` query parameters that redis-py's ``from_url`` honours (and
that producers and the cache therefore use) were dropped, so a worker's arq pool could not
verify a private CA and was refused where the producer got through. With
``SW_REDIS_SENTINELS`` arq finds the master through the sentinels (``sentinel=True``).
"""

from __future__ import annotations

from urllib.parse import parse_qs, unquote, urlparse

from arq.connections import RedisSettings

from sw_core.queue_redis import sentinel_addresses
from sw_core.settings import Settings

#: URL query parameters passed on to arq's TLS settings (redis-py's names).
_TLS_PARAMS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs")


def arq_redis_settings(settings: Settings) -> RedisSettings:
    """``RedisSettings`` for ``settings.redis_url`` (``rediss://...?ssl_ca_certs=...``), or
    for its master through ``settings.redis_sentinels``."""
    url = settings.redis_url
    base = RedisSettings.from_dsn(url)
    query = parse_qs(urlparse(url).query)
    for name in _TLS_PARAMS:
        if query.get(name):
            setattr(base, name, unquote(query[name][0]))
    if query.get("ssl_check_hostname"):
        base.ssl_check_hostname = query["ssl_check_hostname"][0].lower() in ("1", "true", "yes")
    sentinels = sentinel_addresses(settings)
    if sentinels:
        base.host = sentinels
        base.sentinel = True
        base.sentinel_master = settings.redis_master_name
    return base
