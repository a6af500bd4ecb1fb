"""The account's v2 events (thin events): GET /v2/core/events and /v2/core/events/{id}.

A thin event is pushed without its `data` (the notification); the receiver fetches the
event by id to read it, within the 30 days Stripe keeps events. Lists come newest first,
paged by an opaque `next_page_url` that carries the filters and where the page ended.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import math
import re
import secrets
import string
import threading
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import parse_qsl

from devkit.emulator.apierror import ApiError, invalid, unknown_parameter
from devkit.emulator.error_reports import ErrorWindow
from devkit.emulator.timefmt import format_rfc3339, parse_rfc3339

RETENTION_S = 30 * 86_400.0
MAX_TYPES = 20
DEFAULT_LIMIT, MAX_LIMIT = 20, 100
LIST_PATH = "/v2/core/events"
_ID_ALPHABET = string.ascii_letters + string.digits
_CREATED = re.compile(r"^created\[(gt|gte|lt|lte)\]$")
_TYPES = re.compile(r"^types(\[\d+\])?$")


@dataclass(frozen=True)
class ThinEvent:
    """One v2 event: what is pushed (notification) and what is fetched (with data)."""

    id: str
    type: str
    created: float
    related_object: dict[str, str]
    data: dict[str, Any]
    seq: int  # order of creation: lists are newest first by it

    def notification(self) -> dict[str, Any]:
        """The pushed shape (webhook body, EventBridge detail): no `data`."""
        return {
            "id": self.id,
            "object": "v2.core.event",
            "type": self.type,
            "created": format_rfc3339(self.created),
            "livemode": False,
            "context": None,
            "reason": None,
            "related_object": self.related_object,
        }

    def notification_body(self) -> bytes:
        """The notification as pushed: JSON, indented as Stripe's webhook bodies are."""
        return json.dumps(self.notification(), indent=2).encode()

    def to_api(self) -> dict[str, Any]:
        """The fetched shape: the notification and `data`."""
        return {**self.notification(), "data": self.data}


@dataclass(frozen=True)
class EventListQuery:
    """GET /v2/core/events's filters, page size and (past the first page) where to go on."""

    types: tuple[str, ...] = ()
    object_id: str | None = None
    created: tuple[tuple[str, float], ...] = ()  # (gt|gte|lt|lte, epoch seconds)
    limit: int = DEFAULT_LIMIT
    before_seq: int | None = None

    @classmethod
    def from_query_string(cls, query_string: str) -> EventListQuery:
        """Parameters as the SDK sends them (types[0]=..., created[gt]=...) or repeated."""
        pairs = parse_qsl(query_string, keep_blank_values=True)
        if any(name == "page" for name, _ in pairs):
            if len(pairs) != 1:
                raise invalid("page cannot be combined with other parameters.", "page")
            return cls.from_page_token(pairs[0][1])
        types: list[str] = []
        object_id, limit = None, DEFAULT_LIMIT
        created: dict[str, float] = {}
        for name, value in pairs:
            if _TYPES.match(name):
                if not value:
                    raise invalid("types must be non-empty event type names.", "types")
                types.append(value)
            elif name == "object_id":
                object_id = value
            elif name == "limit":
                if not value.isdigit() or not 1 <= int(value) <= MAX_LIMIT:
                    raise invalid(f"limit must be an integer from 1 to {MAX_LIMIT}.", "limit")
                limit = int(value)
            elif match := _CREATED.match(name):
                moment = parse_rfc3339(value)
                if moment is None:
                    raise invalid(f"{name} must be an RFC 3339 date-time.", name)
                created[match.group(1)] = moment
            else:
                raise unknown_parameter(name)
        if len(types) > MAX_TYPES:
            raise invalid(f"types takes at most {MAX_TYPES} event types.", "types")
        return cls(tuple(types), object_id, tuple(sorted(created.items())), limit)

    @classmethod
    def from_page_token(cls, token: str) -> EventListQuery:
        try:
            raw = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
            return cls(
                types=tuple(str(t) for t in raw["types"]),
                object_id=raw["object_id"],
                created=tuple((str(op), float(at)) for op, at in raw["created"]),
                limit=int(raw["limit"]),
                before_seq=int(raw["before_seq"]),
            )
        except (binascii.Error, ValueError, KeyError, TypeError):
            raise invalid("page is not a page token this API gave.", "page") from None

    def page_token(self) -> str:
        raw = {
            "types": list(self.types),
            "object_id": self.object_id,
            "created": [list(pair) for pair in self.created],
            "limit": self.limit,
            "before_seq": self.before_seq,
        }
        encoded = base64.urlsafe_b64encode(json.dumps(raw, separators=(",", ":")).encode())
        return encoded.decode().rstrip("=")

    def matches(self, event: ThinEvent) -> bool:
        if self.types and event.type not in self.types:
            return False
        if self.object_id is not None and event.related_object.get("id") != self.object_id:
            return False
        if self.before_seq is not None and event.seq >= self.before_seq:
            return False
        created = _milliseconds(event.created)
        return all(_compare(op, created, _milliseconds(bound)) for op, bound in self.created)


def _milliseconds(epoch: float) -> int:
    """Times as the API writes them (RFC 3339 to the millisecond), for comparing."""
    return round(epoch * 1000)


def _compare(op: str, value: int, bound: int) -> bool:
    if op == "gt":
        return value > bound
    if op == "gte":
        return value >= bound
    if op == "lt":
        return value < bound
    return value <= bound


class EventLog:
    """The events created so far, by id, in order of creation."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: dict[str, ThinEvent] = {}
        self._seq = itertools.count(1)

    def record(self, windows: list[ErrorWindow], now: float) -> list[ThinEvent]:
        """One event per closed validation window, created now (to the millisecond, as shown)."""
        now = math.floor(now * 1000) / 1000
        with self._lock:
            events = [
                ThinEvent(
                    id="evt_test_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(46)),
                    type=window.event_type,
                    created=now,
                    related_object=window.related_object(),
                    data=window.data(),
                    seq=next(self._seq),
                )
                for window in windows
            ]
            self._events.update((event.id, event) for event in events)
        return events

    def get(self, event_id: str, now: float) -> ThinEvent:
        with self._lock:
            event = self._events.get(event_id)
        if event is None or event.created < now - RETENTION_S:
            raise ApiError(404, "resource_missing", f"No such event: '{event_id}'")
        return event

    def page(self, query: EventListQuery, now: float) -> dict[str, Any]:
        """The v2 list object: newest first, at most query.limit, next_page_url if more."""
        oldest = now - RETENTION_S
        with self._lock:
            newest_first = reversed(list(self._events.values()))
        wanted = (e for e in newest_first if e.created >= oldest and query.matches(e))
        found = list(itertools.islice(wanted, query.limit + 1))
        page, more = found[: query.limit], len(found) > query.limit
        next_url = None
        if more:
            token = replace(query, before_seq=page[-1].seq).page_token()
            next_url = f"{LIST_PATH}?page={token}"
        return {"data": [e.to_api() for e in page], "next_page_url": next_url}

    def all(self) -> list[ThinEvent]:
        with self._lock:
            return list(self._events.values())

    def clear(self) -> None:
        with self._lock:
            self._events.clear()
