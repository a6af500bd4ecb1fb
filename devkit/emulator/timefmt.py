"""Time for the emulator: a movable clock and strict RFC 3339 parsing.

The emulator keeps its own rules instead of importing meter_relay's, so that tests of the
forwarder against it check two independent readings of Stripe's documentation.
"""

from __future__ import annotations

import functools
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
    """Epoch seconds of an RFC 3339 date-time, or None when it is not one (dates alone are not).

    The date, time and offset are converted once per distinct text down to the second
    (events of a batch share their second), the fraction added as exact microseconds:
    the same float as datetime's timestamp() of the whole text.
    """
    match = _RFC3339.match(value)
    if match is None:
        return None
    seconds = _epoch_seconds(value[: match.end(6)], match.group(8))
    if seconds is None:
        return None
    fraction = match.group(7)
    micro = int((fraction[1:] + "000000")[:6]) if fraction else 0
    return (seconds * 1_000_000 + micro) / 1_000_000


@functools.lru_cache(maxsize=4096)
def _epoch_seconds(date_time: str, offset: str) -> int | None:
    zone = "+00:00" if offset in ("Z", "z") else offset
    try:
        parsed = datetime.fromisoformat(f"{date_time[:10]}T{date_time[11:]}{zone}")
    except ValueError:
        return None
    return int(parsed.timestamp())


def format_rfc3339(epoch_seconds: float) -> str:
    """Stripe's own rendering: UTC, milliseconds, a Z suffix."""
    moment = datetime.fromtimestamp(epoch_seconds, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
