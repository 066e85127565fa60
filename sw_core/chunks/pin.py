"""Pin a chunk set to one manifest: ``LOCATION#sha256=<hex>``.

Every chunk and every small file of a chunk set is checked against the sha256 its manifest
lists, so the manifest is what all of it is trusted through. A location that ends in
``#sha256=<64 hex digits>`` (``sw register --pin`` writes one) also fixes the manifest: read
from that location, it must hash to the pin, or the read fails with
:class:`~sw_core.exceptions.SecurityError`. A chunk set replaced after it was pinned (a new
upload, or tampering) is refused until it is registered again.
"""

from __future__ import annotations

import re

from sw_core.exceptions import ConfigError, SecurityError
from sw_core.utils import calculate_chunk_hash

#: What separates a location from its manifest pin.
PIN_MARK = "#sha256="
_HEX64 = re.compile(r"[0-9a-f]{64}")


def split_pin(location: str) -> tuple[str, str | None]:
    """``(location without its pin, the pin or None)``.

    Raises:
        ConfigError: a pin that is not 64 hex digits.
    """
    base, mark, pin = location.strip().rpartition(PIN_MARK)
    if not mark:
        return location.strip(), None
    pin = pin.strip().lower()
    if not _HEX64.fullmatch(pin):
        raise ConfigError(f"{location!r}: the manifest pin after {PIN_MARK!r} is not a sha256")
    return base, pin


def pin_location(location: str, manifest_bytes: bytes) -> str:
    """``location`` pinned to the manifest ``manifest_bytes`` (an old pin is replaced)."""
    base, _ = split_pin(location)
    return f"{base}{PIN_MARK}{calculate_chunk_hash(manifest_bytes)}"


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
