"""``sw_core.monitor.StreamingMonitor``, the name users know; the monitor lives in
:mod:`sw_core.ops.monitor`."""

from __future__ import annotations

from sw_core.ops.monitor import StreamingMonitor

__all__ = ["StreamingMonitor"]
