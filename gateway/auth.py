"""API keys: ``Authorization: Bearer KEY`` checked against ``SW_API_KEYS`` in constant time.

Both sides are hashed (sha256) before :func:`hmac.compare_digest`, so the comparison takes
the same time whatever the key's length or content, and every configured key is compared
(no early exit). Keys are never logged or echoed: a request's key is named by its place in
``SW_API_KEYS`` (``key1``, ``key2`` ...) in the access log.
"""

from __future__ import annotations

import hashlib
import hmac

from gateway.errors import ApiError
from sw_core.settings import Secret


class KeyChecker:
    """Accepts a request when keys are off or its bearer token is one of the keys."""

    def __init__(self, keys: Secret | None) -> None:
        text = keys.reveal() if isinstance(keys, Secret) else (keys or "")
        self._digests = [
            hashlib.sha256(key.strip().encode()).digest() for key in text.split(",") if key.strip()
        ]

    @property
    def enabled(self) -> bool:
        """Keys are configured (every /v1 call needs one)."""
        return bool(self._digests)

    def check(self, authorization: str | None) -> str | None:
        """Raise a 401 :class:`ApiError` unless the ``Authorization`` header holds a key.

        Returns:
            The key's id (``key1`` for the first of ``SW_API_KEYS``), None when keys are off.

        Raises:
            ApiError: no header, not ``Bearer``, or a key that is not configured.
        """
        if not self._digests:
            return None
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(
                401,
                "You didn't provide an API key: send 'Authorization: Bearer KEY'.",
                "authentication_error",
                "missing_api_key",
            )
        given = hashlib.sha256(token.strip().encode("utf-8", "surrogateescape")).digest()
        found = 0
        for number, digest in enumerate(self._digests, start=1):
            if hmac.compare_digest(given, digest):  # every key is compared: no early exit
                found = number
        if not found:
            raise ApiError(
                401, "Incorrect API key provided.", "authentication_error", "invalid_api_key"
            )
        return f"key{found}"

    def accepts(self, authorization: str | None) -> bool:
        """Whether the header would pass :meth:`check` (keys off: always)."""
        try:
            self.check(authorization)
        except ApiError:
            return False
        return True
