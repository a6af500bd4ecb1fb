"""The inspection API under /_emulator/: what tests read and steer (no auth, no faults).

A route `/_emulator/a/b` is answered by the method `a_b(method, query, body)`; a bad value
in a request is a 400 with {"error": {"message"}}.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import TYPE_CHECKING, Any

from devkit.emulator.apierror import ApiError
from devkit.emulator.httpserver import Request, Response, json_response
from devkit.emulator.timefmt import format_rfc3339, parse_rfc3339

if TYPE_CHECKING:
    from devkit.emulator.app import Emulator

DELIVERY_WAIT_MAX_S = 120.0
_EVENT_FILTERS = ("identifier", "event_name", "customer", "status", "source")


class Inspection:
    """The /_emulator/ routes over one emulator."""

    def __init__(self, emulator: Emulator) -> None:
        self.emulator = emulator
        self.state = emulator.state

    def handle(self, request: Request) -> Response:
        name = request.path.removeprefix("/_emulator/").strip("/")
        handler = getattr(self, f"route_{name.replace('/', '_')}", None)
        if handler is None:
            return json_response(404, {"error": {"message": f"no inspection route {name!r}"}})
        try:
            body = json.loads(request.body or b"null") if request.method == "POST" else None
            if body is not None and not isinstance(body, dict):
                raise ValueError("the body must be a JSON object")
            result: Response = handler(request.method, request.query, body or {})
            return result
        except ApiError as error:
            return json_response(400, {"error": {"message": error.message}})
        except (ValueError, TypeError, KeyError) as error:
            return json_response(400, {"error": {"message": str(error)}})

    # ----- reading -------------------------------------------------------------------------
    def route_health(self, method: str, query: dict[str, str], body: Any) -> Response:
        return json_response(200, {"ok": True})

    def route_events(self, method: str, query: dict[str, str], body: Any) -> Response:
        filters = {k: v for k, v in query.items() if k in _EVENT_FILTERS}
        events = self.state.events(**filters)
        offset = int(query.get("offset", 0))
        limit = int(query.get("limit", len(events)))
        return json_response(
            200,
            {"total": len(events), "data": [e.to_api() for e in events[offset : offset + limit]]},
        )

    def route_identifiers(self, method: str, query: dict[str, str], body: Any) -> Response:
        min_counted = int(query.get("min_counted", 0))
        records = self.state.identifiers()
        return json_response(
            200,
            {
                "total": len(records),
                "counted_more_than_once": sorted(i for i, r in records.items() if r.counted > 1),
                "identifiers": {
                    identifier: {"received": r.received, "counted": r.counted}
                    for identifier, r in records.items()
                    if r.counted >= min_counted
                },
            },
        )

    def route_errors(self, method: str, query: dict[str, str], body: Any) -> Response:
        errors = self.state.errors()
        return json_response(
            200,
            {
                "total": len(errors),
                "counts": dict(Counter(e.code for e in errors)),
                "data": [e.to_api() for e in errors],
            },
        )

    def route_adjustments(self, method: str, query: dict[str, str], body: Any) -> Response:
        return json_response(200, {"data": [a.to_api() for a in self.state.adjustments()]})

    def route_requests(self, method: str, query: dict[str, str], body: Any) -> Response:
        limit = int(query["limit"]) if "limit" in query else None
        total, shown = self.emulator.log.entries(query.get("endpoint"), limit)
        return json_response(200, {"total": total, "data": shown})

    def route_stats(self, method: str, query: dict[str, str], body: Any) -> Response:
        return json_response(
            200,
            {
                **self.state.stats(),
                "thin_events": len(self.state.thin_events.all()),
                "deliveries_pending": self.emulator.dispatcher.pending(),
                "requests": self.emulator.log.counts(),
                "in_flight": self.emulator.in_flight(),
            },
        )

    def route_deliveries(self, method: str, query: dict[str, str], body: Any) -> Response:
        """Every push of a thin event to a destination, with each attempt's outcome."""
        return self._deliveries()

    def route_deliveries_wait(self, method: str, query: dict[str, str], body: Any) -> Response:
        """Close the windows that have ended, then wait until no delivery is left to try."""
        timeout = float(body.get("timeout", query.get("timeout", 30)))
        if not 0 <= timeout <= DELIVERY_WAIT_MAX_S:
            raise ValueError(f"timeout must be 0 to {DELIVERY_WAIT_MAX_S:g} seconds")
        self.state.settle()
        self.emulator.dispatcher.wait_idle(timeout)
        return self._deliveries()

    def _deliveries(self) -> Response:
        dispatcher = self.emulator.dispatcher
        records = [d.to_api() for d in dispatcher.records()]
        return json_response(200, {"pending": dispatcher.pending(), "data": records})

    # ----- steering ------------------------------------------------------------------------
    def route_reset(self, method: str, query: dict[str, str], body: Any) -> Response:
        left = self.emulator.reset(
            meters=bool(body.get("meters", False)), config=bool(body.get("config", True))
        )
        return json_response(200, {"ok": True, "in_flight": left})

    def route_config(self, method: str, query: dict[str, str], body: Any) -> Response:
        if method == "POST":
            self.emulator.configure(body)
        return json_response(200, self.emulator.describe_config())

    def route_clock(self, method: str, query: dict[str, str], body: Any) -> Response:
        """Move the clock; validation windows it passes close (their events are sent)."""
        clock = self.state.clock
        if method == "POST":
            if "advance" in body:
                clock.advance(float(body["advance"]))
            elif "set" in body:
                target = body["set"]
                epoch = parse_rfc3339(target) if isinstance(target, str) else float(target)
                if epoch is None:
                    raise ValueError("set takes epoch seconds or an RFC 3339 date-time")
                clock.set(epoch)
            elif body.get("reset"):
                clock.reset()
            self.state.settle()
        now = clock.now()
        return json_response(
            200, {"now": format_rfc3339(now), "epoch": now, "offset_s": clock.offset}
        )

    def route_sessions_expire(self, method: str, query: dict[str, str], body: Any) -> Response:
        return json_response(200, {"expired": self.state.expire_sessions()})
