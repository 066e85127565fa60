"""Pin a chunk set to one manifest: ``LOCATION#sha256=<hex>``.

Every chunk and every small file of a chunk set is checked against the sha256 its manifest
lists, so the manifest is what all of it is trusted through. A location that ends in
``#sha256=<64 hex digits>`` (``sw register --pin`` writes one) also fixes the manifest: read
from that location, it must hash to the pin, or the read fails with
:class:`~sw_core.exceptions.SecurityError`. A chunk set replaced after it was pinned (a new
upload, or tampering) is refused until it is registered again.

The pin's grammar (``split_pin``, ``pin_location``) is part of the location grammar, in
:mod:`sw_core.storage.location`; this module checks a manifest against its pin.
"""

from __future__ import annotations

from sw_core.exceptions import SecurityError
from sw_core.utils import calculate_chunk_hash


def check_pin(manifest_bytes: bytes, pin: str | None, where: str) -> None:
    """Raise :class:`SecurityError` when ``pin`` is set and the manifest does not hash to it."""
    if pin is None:
        return
    digest = calculate_chunk_hash(manifest_bytes)
    if digest != pin:
        raise SecurityError(
            f"the manifest at {where} hashes to {digest[:12]}, not to its pin {pin[:12]}: the "
            "chunk set changed since it was registered; check it (`sw verify`) and register "
            "it again (`sw register NAME LOCATION --pin`)"
        )
