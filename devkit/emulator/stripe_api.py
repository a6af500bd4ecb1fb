"""Stripe's endpoints as the emulator serves them: routing, request checks, answers.

The v2 billing endpoints (sessions, the stream, single events, adjustments), v2 core events
(the thin events of asynchronous error reports), and v1 meters with their event summaries.
Authentication, faults and rate limits are the app's (app.py), applied before a handler runs.
"""

from __future__ import annotations

import base64
import functools
import json
import re
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl

from devkit.emulator.apierror import ApiError, invalid, missing, parse_integer, unknown_parameter
from devkit.emulator.httpserver import Request, Response, json_response
from devkit.emulator.state import MAX_IDENTIFIER_LENGTH, MAX_STREAM_EVENTS, EmulatorState
from devkit.emulator.summaries import SummaryQuery
from devkit.emulator.timefmt import format_rfc3339, parse_rfc3339
from devkit.emulator.v2_events import EventListQuery

LIVE_KEY_PREFIXES = ("sk_live_", "rk_live_")
_EVENT_FIELDS = frozenset({"event_name", "payload", "identifier", "timestamp"})
_METER_PATH = re.compile(
    r"^/v1/billing/meters/([^/]+)(?:/(deactivate|reactivate|event_summaries))?$"
)
_V2_EVENT_PATH = re.compile(r"^/v2/core/events/([^/]+)$")
_OK_EMPTY = b"{}"

# (endpoint name for faults and rate limits, "v1" or "v2", handler, handler's arguments)
Route = tuple[str, str, Callable[..., Response], dict[str, Any]]


def credential(request: Request) -> str:
    """The key or token of a request's Authorization header (Bearer, or Basic's user)."""
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "basic":
        try:
            return base64.b64decode(value).decode().partition(":")[0]
        except ValueError:
            return ""
    return value if scheme.lower() == "bearer" else ""


def _decode_form(body: bytes) -> dict[str, Any]:
    """Stripe's v1 form encoding: `a[b]=c` becomes {"a": {"b": "c"}}."""
    out: dict[str, Any] = {}
    for key, value in parse_qsl(body.decode("utf-8"), keep_blank_values=True):
        parts = re.findall(r"[^\[\]]+", key)
        target = out
        for part in parts[:-1]:
            target = target.setdefault(part, {})
        if parts:
            target[parts[-1]] = value
    return out


def check_event(event: Any, index: int | None = None) -> float | None:
    """The form Stripe's OpenAPI spec gives an event; returns its timestamp (epoch) if any.

    What is wrong is named as Stripe does, parameter and all.
    """
    where = "event" if index is None else f"events[{index}]"
    if not isinstance(event, dict):
        raise invalid(f"{where} must be an object.", where)
    for key in event:
        if key not in _EVENT_FIELDS:
            raise unknown_parameter(f"{where}.{key}")
    name = event.get("event_name")
    if name is None:
        raise missing(f"{where}.event_name")
    if not isinstance(name, str) or not name:
        raise invalid(f"{where}.event_name must be a non-empty string.", f"{where}.event_name")
    payload = event.get("payload")
    if payload is None:
        raise missing(f"{where}.payload")
    if not isinstance(payload, dict):
        raise invalid(f"{where}.payload must be an object of strings.", f"{where}.payload")
    for key, value in payload.items():
        if not isinstance(value, str):
            raise invalid(f"{where}.payload.{key} must be a string.", f"{where}.payload.{key}")
    identifier = event.get("identifier")
    if identifier is not None and (
        not isinstance(identifier, str) or not identifier or len(identifier) > MAX_IDENTIFIER_LENGTH
    ):
        raise invalid(
            f"{where}.identifier must be a string of 1 to {MAX_IDENTIFIER_LENGTH} characters.",
            f"{where}.identifier",
        )
    timestamp = event.get("timestamp")
    if timestamp is None:
        return None
    parsed = _timestamp(timestamp) if isinstance(timestamp, str) else None
    if parsed is None:
        raise invalid(f"{where}.timestamp must be an RFC 3339 date-time.", f"{where}.timestamp")
    return parsed


def check_events(events: list[Any]) -> list[float | None]:
    """check_event for each event of a stream body; their timestamps (epoch) if any.

    An event with the four fields and nothing else (what producers send) is checked here
    in line, for speed; any other goes through check_event, which also names what is wrong.
    """
    timestamps: list[float | None] = []
    append = timestamps.append
    for index, event in enumerate(events):
        if type(event) is dict and len(event) == 4:
            # four keys, and the four fields present below: nothing unknown
            name, payload = event.get("event_name"), event.get("payload")
            identifier, timestamp = event.get("identifier"), event.get("timestamp")
            if (
                type(name) is str
                and name
                and type(payload) is dict
                and type(identifier) is str
                and 0 < len(identifier) <= MAX_IDENTIFIER_LENGTH
                and type(timestamp) is str
                and (parsed := _timestamp(timestamp)) is not None
            ):
                for value in payload.values():
                    if type(value) is not str:
                        break
                else:
                    append(parsed)
                    continue
        append(check_event(event, index))
    return timestamps


@functools.lru_cache(maxsize=65_536)
def _timestamp(text: str) -> float | None:
    """Timestamps repeat across a batch (same second); parse each text once."""
    return parse_rfc3339(text)


def json_body(request: Request) -> Any:
    try:
        return json.loads(request.body or b"null")
    except ValueError:
        raise invalid("The request body is not valid JSON.", "body") from None


def v1_page(
    items: list[dict[str, Any]], query: Mapping[str, str], url: str, noun: str
) -> dict[str, Any]:
    """Stripe's v1 list object, with limit / starting_after / ending_before cursors by id."""
    limit = parse_integer(query.get("limit", "10"), "limit")
    if not 1 <= limit <= 100:
        raise invalid("limit must be between 1 and 100.", "limit")
    after, before = query.get("starting_after"), query.get("ending_before")
    if after and before:
        raise ApiError(
            400,
            "parameters_exclusive",
            "You may only specify one of these parameters: ending_before, starting_after.",
        )
    ids = [item["id"] for item in items]
    for name, cursor in (("starting_after", after), ("ending_before", before)):
        if cursor and cursor not in ids:
            raise ApiError(400, "resource_missing", f"No such {noun}: '{cursor}'", param=name)
    if after:
        items = items[ids.index(after) + 1 :]
        page, more = items[:limit], len(items) > limit
    elif before:
        items = items[: ids.index(before)]
        page, more = items[-limit:], len(items) > limit
    else:
        page, more = items[:limit], len(items) > limit
    return {"object": "list", "data": page, "has_more": more, "url": url}


class StripeApi:
    """The Stripe routes over the account (state)."""

    def __init__(self, state: EmulatorState) -> None:
        self.state = state
        self._post_routes: dict[str, tuple[str, Callable[..., Response]]] = {
            "/v2/billing/meter_event_session": ("session", self._create_session),
            "/v2/billing/meter_event_stream": ("stream", self._stream),
            "/v2/billing/meter_events": ("meter_events", self._meter_event),
            "/v2/billing/meter_event_adjustments": ("adjustments", self._adjustment),
            "/v1/billing/meters": ("meters", self._create_meter),
        }

    def route(self, request: Request) -> Route | None:
        method, path = request.method, request.path
        if method == "POST":
            simple = self._post_routes.get(path)
            if simple is not None:
                return simple[0], path[1:3], simple[1], {}
        if method == "GET":
            if path == "/v1/billing/meters":
                return "meters", "v1", self._list_meters, {}
            if path == "/v2/core/events":
                return "events", "v2", self._list_events, {}
            if event := _V2_EVENT_PATH.match(path):
                return "events", "v2", self._get_event, {"event_id": event.group(1)}
        match = _METER_PATH.match(path)
        if match is None:
            return None
        meter_id, action = match.groups()
        if method == "GET" and action is None:
            return "meters", "v1", self._get_meter, {"meter_id": meter_id}
        if method == "GET" and action == "event_summaries":
            return "event_summaries", "v1", self._summaries, {"meter_id": meter_id}
        if method == "POST" and action in ("deactivate", "reactivate"):
            return (
                "meters",
                "v1",
                self._meter_status,
                {"meter_id": meter_id, "active": action == "reactivate"},
            )
        return None

    # ----- v2 billing ----------------------------------------------------------------------
    def _create_session(self, request: Request) -> Response:
        # Stripe's session is in the mode of the key that made it (the emulator takes a live
        # key only when it is one of its accepted_keys)
        live = credential(request).startswith(LIVE_KEY_PREFIXES)
        return json_response(200, self.state.create_session(livemode=live).to_api())

    def _stream(self, request: Request) -> Response:
        body = json_body(request)
        if not isinstance(body, dict):
            raise invalid("The request body must be a JSON object.", "body")
        for key in body:
            if key != "events":
                raise unknown_parameter(key)
        events = body.get("events")
        if events is None:
            raise missing("events")
        if not isinstance(events, list) or not 1 <= len(events) <= MAX_STREAM_EVENTS:
            raise invalid(f"events must be an array of 1 to {MAX_STREAM_EVENTS} events.", "events")
        timestamps = check_events(events)
        self.state.accept_stream(events, timestamps)
        return Response(200, _OK_EMPTY)

    def _meter_event(self, request: Request) -> Response:
        body = json_body(request)
        timestamp = check_event(body)
        hold = self.state.settings.meter_events_hold_ms / 1000.0
        event = self.state.create_sync_event(body, timestamp, hold)
        return json_response(
            200,
            {
                "object": "v2.billing.meter_event",
                "created": format_rfc3339(event.received_at),
                "livemode": False,
                "identifier": event.identifier,
                "event_name": event.event_name,
                "timestamp": format_rfc3339(event.timestamp),
                "payload": event.payload,
            },
        )

    def _adjustment(self, request: Request) -> Response:
        try:
            body = json_body(request)
        except ApiError:
            body = None
        cancel = body.get("cancel") if isinstance(body, dict) else None
        identifier = cancel.get("identifier") if isinstance(cancel, dict) else None
        event_name = body.get("event_name") if isinstance(body, dict) else None
        if (
            not isinstance(body, dict)
            or body.get("type") != "cancel"
            or not isinstance(event_name, str)
            or not event_name
            or not isinstance(identifier, str)
            or not identifier
            or set(body) - {"type", "event_name", "cancel"}
        ):
            raise ApiError(
                400,
                "invalid_cancel_configuration",
                "An adjustment needs type 'cancel', an event_name and cancel.identifier.",
            )
        key = request.headers.get("idempotency-key")
        if key:
            return json_response(200, self.state.cancel_once(key, event_name, identifier))
        return json_response(200, self.state.cancel(event_name, identifier).to_api())

    # ----- v2 core events ------------------------------------------------------------------
    def _list_events(self, request: Request) -> Response:
        query = EventListQuery.from_query_string(request.query_string)
        self.state.settle()  # windows that have ended become events before anyone reads
        return json_response(200, self.state.thin_events.page(query, self.state.clock.now()))

    def _get_event(self, request: Request, event_id: str) -> Response:
        self.state.settle()
        event = self.state.thin_events.get(event_id, self.state.clock.now())
        return json_response(200, event.to_api())

    # ----- v1 ------------------------------------------------------------------------------
    def _create_meter(self, request: Request) -> Response:
        return json_response(200, self.state.create_meter(_decode_form(request.body)).to_api())

    def _get_meter(self, request: Request, meter_id: str) -> Response:
        return json_response(200, self.state.get_meter(meter_id).to_api())

    def _meter_status(self, request: Request, meter_id: str, active: bool) -> Response:
        return json_response(200, self.state.set_meter_status(meter_id, active).to_api())

    def _list_meters(self, request: Request) -> Response:
        status = request.query.get("status")
        items = [m.to_api() for m in self.state.list_meters(status)]
        return json_response(
            200, v1_page(items, request.query, "/v1/billing/meters", "billing meter")
        )

    def _summaries(self, request: Request, meter_id: str) -> Response:
        meter = self.state.get_meter(meter_id)
        query = SummaryQuery.from_query(request.query)
        known = self.state.settings.known_customers
        if known and query.customer not in known:
            raise ApiError(
                400, "resource_missing", f"No such customer: '{query.customer}'", param="customer"
            )
        items = self.state.summaries(meter, query)
        url = f"/v1/billing/meters/{meter_id}/event_summaries"
        return json_response(200, v1_page(items, request.query, url, "billing meter event summary"))
