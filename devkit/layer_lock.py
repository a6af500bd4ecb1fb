"""The Lambda layer's lock (layers/meter_relay/requirements.txt): the distributions it pins, by
their normalised names, for what checks the built layer and for what imports only its modules."""

from __future__ import annotations

import re
from pathlib import Path

LOCK = Path(__file__).resolve().parent.parent / "layers" / "meter_relay" / "requirements.txt"


def normalise(name: str) -> str:
    """A distribution's name as packaging compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def locked() -> dict[str, str]:
    """Each pinned distribution's normalised name -> its version."""
    pins = re.findall(r"^([A-Za-z0-9._-]+)==(\S+)", LOCK.read_text(encoding="utf-8"), re.M)
    return {normalise(name): version for name, version in pins}
