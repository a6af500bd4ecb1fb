"""Time for the emulator: a movable clock and strict RFC 3339 parsing.

The emulator keeps its own rules instead of importing meter_relay's, so that tests of the
forwarder against it check two independent readings of Stripe's documentation.
"""

from __future__ import annotations

import re
import threading
import time
from datetime import UTC, datetime

_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})\Z"
)


class Clock:
    """Wall-clock time plus an offset that tests move forward (or back) at run time."""

    def __init__(self) -> None:
        self._offset = 0.0
        self._lock = threading.Lock()

    def now(self) -> float:
        return time.time() + self._offset

    def advance(self, seconds: float) -> float:
        with self._lock:
            self._offset += seconds
        return self.now()

    def set(self, epoch_seconds: float) -> float:
        with self._lock:
            self._offset = epoch_seconds - time.time()
        return self.now()

    def reset(self) -> None:
        with self._lock:
            self._offset = 0.0

    @property
    def offset(self) -> float:
        return self._offset


def parse_rfc3339(value: str) -> float | None:
    """Epoch seconds of an RFC 3339 date-time, or None when it is not one (dates alone are not)."""
    match = _RFC3339.match(value)
    if match is None:
        return None
    fraction = match.group(7) or ""
    offset = match.group(8)
    text = value[: match.start(7)] if fraction else value[: match.start(8)]
    text = text[:10] + "T" + text[11:]
    micro = (fraction[1:] + "000000")[:6] if fraction else "000000"
    zone = "+00:00" if offset in ("Z", "z") else offset
    try:
        parsed = datetime.fromisoformat(f"{text}.{micro}{zone}")
    except ValueError:
        return None
    return parsed.timestamp()


def format_rfc3339(epoch_seconds: float) -> str:
    """Stripe's own rendering: UTC, milliseconds, a Z suffix."""
    moment = datetime.fromtimestamp(epoch_seconds, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
