"""Stripe's meter endpoints and the emulator's inspection API, over the HTTP server.

Request path: inspection (/_emulator/) bypasses everything; a Stripe route goes through
injected latency and faults, authentication, rate limits, then its handler. Every Stripe
request is logged with its headers, secrets masked.
"""

from __future__ import annotations

import base64
import functools
import itertools
import json
import re
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

from devkit.emulator.faults import Action, FaultInjector, RateLimiter
from devkit.emulator.httpserver import HttpServer, Request, Response
from devkit.emulator.state import (
    MAX_IDENTIFIER_LENGTH,
    MAX_STREAM_EVENTS,
    ApiError,
    EmulatorState,
    Meter,
    Settings,
)
from devkit.emulator.timefmt import format_rfc3339, parse_rfc3339

RESET_WAIT_SECONDS = 30.0  # the longest a reset waits for requests still being answered
SECRET_HEADERS = ("authorization", "stripe-account", "cookie")
_SECRET_KIND = re.compile(r"[a-z]{1,8}_(?:test_|live_)?")
_EVENT_FIELDS = frozenset({"event_name", "payload", "identifier", "timestamp"})
_METER_PATH = re.compile(
    r"^/v1/billing/meters/([^/]+)(?:/(deactivate|reactivate|event_summaries))?$"
)
_OK_EMPTY = b"{}"

Route = tuple[str, str, Callable[..., Response], dict[str, Any]]


def mask_secret(value: str) -> str:
    """Keep a secret's kind (sk_test_, rk_live_, token_...) and its last 4 characters."""
    scheme, _, secret = value.partition(" ") if " " in value else ("", "", value)
    if len(secret) <= 12:
        masked = "****"
    else:
        # the kind only: underscores further in belong to the secret (session tokens hold them)
        kind = _SECRET_KIND.match(secret)
        masked = f"{kind.group() if kind else ''}****{secret[-4:]}"
    return f"{scheme} {masked}" if scheme else masked


LIVE_KEY_PREFIXES = ("sk_live_", "rk_live_")


def _credential(request: Request) -> str:
    """The key or token of a request's Authorization header (Bearer, or Basic's user)."""
    scheme, _, credential = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "basic":
        try:
            return base64.b64decode(credential).decode().partition(":")[0]
        except ValueError:
            return ""
    return credential if scheme.lower() == "bearer" else ""


def _json(status: int, payload: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(status, json.dumps(payload, separators=(",", ":")).encode(), headers or {})


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


def _invalid(message: str, param: str, code: str = "parameter_invalid") -> ApiError:
    return ApiError(400, code, message, param=param)


def check_event(event: Any, index: int | None = None) -> float | None:
    """The form Stripe's OpenAPI spec gives an event; returns its timestamp (epoch) if any.

    What is wrong is named as Stripe does, parameter and all.
    """
    where = "event" if index is None else f"events[{index}]"
    if not isinstance(event, dict):
        raise _invalid(f"{where} must be an object.", where)
    for key in event:
        if key not in _EVENT_FIELDS:
            raise _invalid(
                f"Received unknown parameter: {where}.{key}", f"{where}.{key}", "parameter_unknown"
            )
    name = event.get("event_name")
    if name is None:
        raise _invalid(
            f"Missing required param: {where}.event_name.",
            f"{where}.event_name",
            "parameter_missing",
        )
    if not isinstance(name, str) or not name:
        raise _invalid(f"{where}.event_name must be a non-empty string.", f"{where}.event_name")
    payload = event.get("payload")
    if payload is None:
        raise _invalid(
            f"Missing required param: {where}.payload.", f"{where}.payload", "parameter_missing"
        )
    if not isinstance(payload, dict):
        raise _invalid(f"{where}.payload must be an object of strings.", f"{where}.payload")
    for key, value in payload.items():
        if not isinstance(value, str):
            raise _invalid(f"{where}.payload.{key} must be a string.", f"{where}.payload.{key}")
    identifier = event.get("identifier")
    if identifier is not None and (
        not isinstance(identifier, str) or not identifier or len(identifier) > MAX_IDENTIFIER_LENGTH
    ):
        raise _invalid(
            f"{where}.identifier must be a string of 1 to {MAX_IDENTIFIER_LENGTH} characters.",
            f"{where}.identifier",
        )
    timestamp = event.get("timestamp")
    if timestamp is None:
        return None
    parsed = _timestamp(timestamp) if isinstance(timestamp, str) else None
    if parsed is None:
        raise _invalid(f"{where}.timestamp must be an RFC 3339 date-time.", f"{where}.timestamp")
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


class Emulator:
    """The whole emulated service, independent of sockets: `handle(Request) -> Response`."""

    def __init__(
        self,
        *,
        seed: int = 0,
        settings: Settings | None = None,
        meters: list[dict[str, Any]] | None = None,
        faults: dict[str, dict[str, Any]] | None = None,
        rate_limits: dict[str, dict[str, float] | None] | None = None,
        request_log_size: int = 10_000,
    ) -> None:
        self.state = EmulatorState(settings=settings or Settings())
        self.faults = FaultInjector(seed)
        self.limits = RateLimiter()
        self._startup = {
            "faults": faults or {},
            "rate_limits": rate_limits or {},
            "seed": seed,
            "settings": vars(self.state.settings).copy(),
        }
        self._apply_config(self._startup)
        if meters:
            self.state.load_meters(meters)
        self._log: deque[dict[str, Any]] = deque(maxlen=request_log_size)
        self._counts: Counter[tuple[str, int]] = Counter()
        self._counts_lock = threading.Lock()
        self._request_ids = itertools.count(1)
        self._in_flight = 0  # API requests being answered (a reset waits for them)
        self._idle = threading.Condition()

    # ----- dispatch ------------------------------------------------------------------------
    def handle(self, request: Request) -> Response:
        if request.path.startswith("/_emulator/"):
            return self._inspect(request)
        with self._idle:
            self._in_flight += 1
        try:
            return self._answer(request)
        finally:
            with self._idle:
                self._in_flight -= 1
                self._idle.notify_all()

    def _answer(self, request: Request) -> Response:
        route = self._route(request)
        if route is None:
            return _json(
                404,
                {
                    "error": {
                        "type": "invalid_request_error",
                        "code": "not_found",
                        "message": f"Unrecognized request URL ({request.method}: {request.path}).",
                    }
                },
            )
        endpoint, version, handler, params = route
        started = time.perf_counter()
        decision = self.faults.decide(endpoint)
        if decision.latency_s > 0:
            time.sleep(decision.latency_s)
        if decision.action is Action.DROP:
            self._record(request, endpoint, 0, started, "drop")
            return Response(0, drop=True)
        try:
            self._authenticate(request, endpoint)
            retry_after = self.limits.acquire(endpoint)
            if retry_after is None and decision.action is Action.RATE_LIMITED:
                retry_after = decision.retry_after_s
            if retry_after is not None:
                raise self._rate_limited(version, retry_after)
            if decision.action is Action.ERROR:
                raise self._server_error(decision.status)
            response = handler(request, **params)
            if decision.action is Action.ERROR_AFTER:
                raise self._server_error(decision.status)
        except ApiError as error:
            response = self._error_response(error, version)
        if decision.action is Action.DROP_AFTER:
            response.drop = True
        if endpoint == "stream":
            response.after = self.state.work_off
        response.headers["Request-Id"] = f"req_{next(self._request_ids):012d}"
        if "stripe-version" in request.headers:
            response.headers["Stripe-Version"] = request.headers["stripe-version"]
        fault = decision.action.value if decision.action is not Action.PROCEED else None
        self._record(request, endpoint, 0 if response.drop else response.status, started, fault)
        return response

    def _route(self, request: Request) -> Route | None:
        method, path = request.method, request.path
        if method == "POST":
            simple = {
                "/v2/billing/meter_event_session": ("session", self._create_session),
                "/v2/billing/meter_event_stream": ("stream", self._stream),
                "/v2/billing/meter_events": ("meter_events", self._meter_event),
                "/v2/billing/meter_event_adjustments": ("adjustments", self._adjustment),
                "/v1/billing/meters": ("meters", self._create_meter),
            }.get(path)
            if simple is not None:
                return simple[0], path[1:3], simple[1], {}
        if method == "GET" and path == "/v1/billing/meters":
            return "meters", "v1", self._list_meters, {}
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

    # ----- cross-cutting -------------------------------------------------------------------
    def _authenticate(self, request: Request, endpoint: str) -> None:
        credential = _credential(request)
        if endpoint == "stream":
            self.state.check_session_token(credential)
            return
        if not self.state.settings.key_is_valid(credential):
            shown = mask_secret(credential) if credential else "none"
            raise ApiError(401, "api_key_invalid", f"Invalid API Key provided: {shown}")

    @staticmethod
    def _rate_limited(version: str, retry_after: int) -> ApiError:
        headers = {"Retry-After": str(retry_after)}
        message = "Too many requests hit the API too quickly. Back off and retry."
        if version == "v2":
            return ApiError(
                429,
                "account_rate_limit_exceeded",
                message,
                error_type="rate_limit",
                headers=headers,
            )
        return ApiError(429, "rate_limit", message, headers=headers)

    @staticmethod
    def _server_error(status: int) -> ApiError:
        code = "service_unavailable" if status == 503 else "internal_server_error"
        return ApiError(
            status, code, "An injected server error (emulator fault).", error_type="api_error"
        )

    @staticmethod
    def _error_response(error: ApiError, version: str) -> Response:
        body: dict[str, Any] = {
            "type": error.error_type,
            "code": error.code,
            "message": error.message,
        }
        if version == "v2":
            body["doc_url"] = f"https://docs.stripe.com/error-codes#{error.code.replace('_', '-')}"
        if error.param:
            body["param"] = error.param
        return _json(error.status, {"error": body}, dict(error.headers))

    def _record(
        self, request: Request, endpoint: str, status: int, started: float, fault: str | None
    ) -> None:
        headers = {
            name: mask_secret(value) if name in SECRET_HEADERS else value
            for name, value in request.headers.items()
        }
        self._log.append(
            {
                "at": self.state.clock.now(),  # epoch: formatted when read, off the hot path
                "method": request.method,
                "path": request.path,
                "endpoint": endpoint,
                "status": status,
                "fault": fault,
                "headers": headers,
                "body_bytes": len(request.body),
                "duration_ms": round((time.perf_counter() - started) * 1000, 3),
            }
        )
        with self._counts_lock:
            self._counts[(endpoint, status)] += 1

    @staticmethod
    def _json_body(request: Request) -> Any:
        try:
            return json.loads(request.body or b"null")
        except ValueError:
            raise _invalid("The request body is not valid JSON.", "body") from None

    # ----- v2 ------------------------------------------------------------------------------
    def _create_session(self, request: Request) -> Response:
        # Stripe's session is in the mode of the key that made it (the emulator takes a live
        # key only when it is one of its accepted_keys)
        live = _credential(request).startswith(LIVE_KEY_PREFIXES)
        return _json(200, self.state.create_session(livemode=live).to_api())

    def _stream(self, request: Request) -> Response:
        body = self._json_body(request)
        if not isinstance(body, dict):
            raise _invalid("The request body must be a JSON object.", "body")
        for key in body:
            if key != "events":
                raise _invalid(f"Received unknown parameter: {key}", key, "parameter_unknown")
        events = body.get("events")
        if events is None:
            raise _invalid("Missing required param: events.", "events", "parameter_missing")
        if not isinstance(events, list) or not 1 <= len(events) <= MAX_STREAM_EVENTS:
            raise _invalid(f"events must be an array of 1 to {MAX_STREAM_EVENTS} events.", "events")
        timestamps = check_events(events)
        self.state.accept_stream(events, timestamps)
        return Response(200, _OK_EMPTY)

    def _meter_event(self, request: Request) -> Response:
        body = self._json_body(request)
        timestamp = check_event(body)
        hold = self.state.settings.meter_events_hold_ms / 1000.0
        event = self.state.create_sync_event(body, timestamp, hold)
        return _json(
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
            body = self._json_body(request)
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
        return _json(200, self.state.cancel(event_name, identifier).to_api())

    # ----- v1 ------------------------------------------------------------------------------
    def _create_meter(self, request: Request) -> Response:
        return _json(200, self.state.create_meter(_decode_form(request.body)).to_api())

    def _get_meter(self, request: Request, meter_id: str) -> Response:
        return _json(200, self.state.get_meter(meter_id).to_api())

    def _meter_status(self, request: Request, meter_id: str, active: bool) -> Response:
        return _json(200, self.state.set_meter_status(meter_id, active).to_api())

    def _list_meters(self, request: Request) -> Response:
        status = request.query.get("status")
        items = [m.to_api() for m in self.state.list_meters(status)]
        return _json(200, _page(items, request.query, "/v1/billing/meters"))

    def _summaries(self, request: Request, meter_id: str) -> Response:
        meter: Meter = self.state.get_meter(meter_id)
        query = request.query
        customer = query.get("customer")
        if not customer:
            raise _invalid("Missing required param: customer.", "customer", "parameter_missing")
        start, end = _int_param(query, "start_time"), _int_param(query, "end_time")
        if start >= end:
            raise _invalid("start_time must be before end_time.", "start_time")
        window_name = query.get("value_grouping_window")
        window = {"hour": 3600, "day": 86_400, None: None}.get(window_name, -1)
        if window == -1:
            raise _invalid(
                "value_grouping_window must be 'hour' or 'day'.", "value_grouping_window"
            )
        alignment = window or 60
        for name, value in (("start_time", start), ("end_time", end)):
            if value % alignment:
                raise _invalid(f"{name} must be aligned to {alignment}-second boundaries.", name)
        items = self.state.summaries(meter, customer, start, end, window)
        return _json(200, _page(items, query, f"/v1/billing/meters/{meter_id}/event_summaries"))

    # ----- inspection ----------------------------------------------------------------------
    def _inspect(self, request: Request) -> Response:
        name = request.path.removeprefix("/_emulator/").strip("/")
        try:
            body = self._json_body(request) if request.method == "POST" else None
            handler = getattr(self, f"_inspect_{name.replace('/', '_')}", None)
            if handler is None:
                return _json(404, {"error": {"message": f"no inspection route {name!r}"}})
            result: Response = handler(request.method, request.query, body or {})
            return result
        except (ApiError, ValueError, TypeError, KeyError) as error:
            return _json(400, {"error": {"message": str(error)}})

    def _inspect_health(self, method: str, query: dict[str, str], body: Any) -> Response:
        return _json(200, {"ok": True})

    def _inspect_events(self, method: str, query: dict[str, str], body: Any) -> Response:
        filters = {
            k: v
            for k, v in query.items()
            if k in ("identifier", "event_name", "customer", "status", "source")
        }
        events = self.state.events(**filters)
        offset = int(query.get("offset", 0))
        limit = int(query.get("limit", len(events)))
        return _json(
            200,
            {"total": len(events), "data": [e.to_api() for e in events[offset : offset + limit]]},
        )

    def _inspect_identifiers(self, method: str, query: dict[str, str], body: Any) -> Response:
        min_counted = int(query.get("min_counted", 0))
        records = self.state.identifiers()
        return _json(
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

    def _inspect_errors(self, method: str, query: dict[str, str], body: Any) -> Response:
        errors = self.state.errors()
        return _json(
            200,
            {
                "total": len(errors),
                "counts": dict(Counter(e.code for e in errors)),
                "data": [e.to_api() for e in errors],
            },
        )

    def _inspect_adjustments(self, method: str, query: dict[str, str], body: Any) -> Response:
        return _json(200, {"data": [a.to_api() for a in self.state.adjustments()]})

    def _inspect_requests(self, method: str, query: dict[str, str], body: Any) -> Response:
        entries = list(self._log)
        if "endpoint" in query:
            entries = [e for e in entries if e["endpoint"] == query["endpoint"]]
        limit = int(query.get("limit", len(entries)))
        shown = [{**e, "at": format_rfc3339(e["at"])} for e in entries[len(entries) - limit :]]
        return _json(200, {"total": len(entries), "data": shown})

    def _inspect_stats(self, method: str, query: dict[str, str], body: Any) -> Response:
        with self._counts_lock:
            counts = dict(self._counts)
        requests: dict[str, dict[str, int]] = {}
        for (endpoint, status), count in counts.items():
            requests.setdefault(endpoint, {})[str(status)] = count
        with self._idle:
            in_flight = self._in_flight
        return _json(200, {**self.state.stats(), "requests": requests, "in_flight": in_flight})

    def _inspect_reset(self, method: str, query: dict[str, str], body: Any) -> Response:
        # a request still being answered (one held by injected latency) would otherwise land
        # in the fresh state: a test's log would show the calls its predecessor left behind
        with self._idle:
            self._idle.wait_for(lambda: self._in_flight == 0, timeout=RESET_WAIT_SECONDS)
            left = self._in_flight  # not 0 only if a request outlasted the wait
        self.state.reset(meters=bool(body.get("meters", False)))
        self._log.clear()
        with self._counts_lock:
            self._counts.clear()
        if body.get("config", True):
            self.faults.clear()
            self.limits.clear()
            self._apply_config(self._startup)
        return _json(200, {"ok": True, "in_flight": left})

    def _inspect_config(self, method: str, query: dict[str, str], body: Any) -> Response:
        if method == "POST":
            self._apply_config(body)
        settings = self.state.settings
        return _json(
            200,
            {
                **self.faults.snapshot(),
                "rate_limits": self.limits.snapshot(),
                "session_ttl": settings.session_ttl,
                "value_rule": settings.value_rule,
                "meter_events_hold_ms": settings.meter_events_hold_ms,
                "accepted_keys": [mask_secret(k) for k in settings.accepted_keys],
            },
        )

    def _apply_config(self, config: dict[str, Any]) -> None:
        unknown = set(config) - {
            "faults",
            "seed",
            "rate_limits",
            "settings",
            "session_ttl",
            "value_rule",
            "meter_events_hold_ms",
            "accepted_keys",
            "clear_faults",
        }
        if unknown:
            raise ValueError(f"unknown configuration keys: {sorted(unknown)}")
        self.state.drain()  # what was accepted is judged by the rules in force when it came
        if config.get("clear_faults"):
            self.faults.clear()
        if "faults" in config or "seed" in config:
            self.faults.configure(config.get("faults", {}), seed=config.get("seed"))
        if "rate_limits" in config:
            self.limits.configure(config["rate_limits"])
        settings = self.state.settings
        for name, value in {**config.get("settings", {}), **config}.items():
            if name == "value_rule" and value not in ("positive_integer", "decimal"):
                raise ValueError("value_rule must be 'positive_integer' or 'decimal'")
            if name in ("session_ttl", "meter_events_hold_ms"):
                setattr(settings, name, float(value))
            elif name in ("value_rule", "accepted_keys"):
                setattr(settings, name, value)

    def _inspect_clock(self, method: str, query: dict[str, str], body: Any) -> Response:
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
        now = clock.now()
        return _json(200, {"now": format_rfc3339(now), "epoch": now, "offset_s": clock.offset})

    def _inspect_sessions_expire(self, method: str, query: dict[str, str], body: Any) -> Response:
        return _json(200, {"expired": self.state.expire_sessions()})


def _int_param(query: dict[str, str], name: str) -> int:
    raw = query.get(name)
    if raw is None:
        raise _invalid(f"Missing required param: {name}.", name, "parameter_missing")
    try:
        return int(raw)
    except ValueError:
        raise _invalid(f"Invalid integer: {raw}", name) from None


def _page(items: list[dict[str, Any]], query: dict[str, str], url: str) -> dict[str, Any]:
    """Stripe's list object, with limit / starting_after / ending_before cursors by id."""
    limit = int(query.get("limit", 10))
    if not 1 <= limit <= 100:
        raise _invalid("limit must be between 1 and 100.", "limit")
    ids = [item["id"] for item in items]
    if after := query.get("starting_after"):
        items = items[ids.index(after) + 1 :] if after in ids else []
        page, more = items[:limit], len(items) > limit
    elif before := query.get("ending_before"):
        items = items[: ids.index(before)] if before in ids else []
        page, more = items[-limit:], len(items) > limit
    else:
        page, more = items[:limit], len(items) > limit
    return {"object": "list", "data": page, "has_more": more, "url": url}


class EmulatorServer:
    """The emulator on a real socket: `with EmulatorServer(...) as emulator: emulator.url`."""

    def __init__(
        self,
        emulator: Emulator | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        **options: Any,
    ) -> None:
        self.emulator = emulator or Emulator(**options)
        self._http = HttpServer(self.emulator.handle, host, port)
        self.host, self.port = self._http.host, self._http.port

    @property
    def url(self) -> str:
        return self._http.url

    def start(self) -> EmulatorServer:
        self._http.start()
        return self

    def stop(self) -> None:
        self._http.stop()

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
