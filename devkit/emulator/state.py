"""What the emulated Stripe account holds: meters, sessions, meter events, error reports.

Everything here is plain data behind one lock, independent of HTTP, so the rules (Stripe's
validation, the 24-hour deduplication window, the cancel window) are testable on their own.
Events from the stream are validated after the 200, as Stripe does: accepted batches wait
in a backlog that `drain()` works off, in arrival order, before anything reads the results
or changes the rules, and that the HTTP server has worked off (`work_off()`) once each
stream answer is sent, so it stays as short as the number of connections.

Failures found then are gathered per meter and validation window; `settle()` turns each
window that has ended on the emulator's clock into a thin event (v2_events) and hands the
new events to `on_thin_events` (the app pushes them to the configured destinations).
"""

from __future__ import annotations

import functools
import gc
import itertools
import math
import re
import secrets
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from devkit.emulator.apierror import ApiError
from devkit.emulator.error_reports import ErrorReport, ErrorWindows
from devkit.emulator.settings import Settings, ValueRule
from devkit.emulator.summaries import SummaryQuery, summarize
from devkit.emulator.timefmt import Clock, format_rfc3339
from devkit.emulator.v2_events import EventLog, ThinEvent

__all__ = ["DAY", "ApiError", "EmulatorState", "ErrorReport", "Meter", "Settings", "StoredEvent"]

DAY = 86_400.0
DEDUP_WINDOW_S = DAY
CANCEL_WINDOW_S = DAY
PAST_LIMIT_S = 35 * DAY
FUTURE_LIMIT_S = 5 * 60.0
MAX_IDENTIFIER_LENGTH = 100
MAX_STREAM_EVENTS = 100

Formula = Literal["sum", "count", "last"]
Status = Literal["counted", "duplicate", "invalid", "cancelled"]
_POSITIVE_INTEGER = re.compile(r"^[0-9]+\Z")  # not $: it would let "5\n" through
_DECIMAL_TEXT = re.compile(r"^[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?\Z")


@dataclass
class Meter:
    id: str
    event_name: str
    display_name: str
    customer_key: str = "stripe_customer_id"
    value_key: str = "value"
    formula: Formula = "sum"
    status: Literal["active", "inactive"] = "active"
    created: int = 0
    updated: int = 0
    deactivated_at: int | None = None
    event_time_window: str | None = None
    # when it counts events (by their arrival): from its creation (a meter given at start-up,
    # one the account had: always), not while inactive
    active_from: float = -math.inf
    inactive_since: float | None = None
    inactive_spans: list[tuple[float, float]] = field(default_factory=list)

    def counts_received_at(self, at: float) -> bool:
        """Whether an event that arrived at `at` is one of this meter's."""
        if at < self.active_from or (self.inactive_since is not None and at >= self.inactive_since):
            return False
        return not any(start <= at < end for start, end in self.inactive_spans)

    def to_api(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "billing.meter",
            "created": self.created,
            "customer_mapping": {"event_payload_key": self.customer_key, "type": "by_id"},
            "default_aggregation": {"formula": self.formula},
            "display_name": self.display_name,
            "event_name": self.event_name,
            "event_time_window": self.event_time_window,
            "livemode": False,
            "status": self.status,
            "status_transitions": {"deactivated_at": self.deactivated_at},
            "updated": self.updated,
            "value_settings": {"event_payload_key": self.value_key},
        }


@dataclass
class Session:
    id: str
    token: str
    created: float
    expires_at: float
    livemode: bool = False  # made with a live key (sk_live_, rk_live_)

    def to_api(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "v2.billing.meter_event_session",
            "authentication_token": self.token,
            "created": format_rfc3339(self.created),
            "expires_at": format_rfc3339(self.expires_at),
            "livemode": self.livemode,
        }


@dataclass(slots=True)
class StoredEvent:
    """One received meter event and what became of it (a reading of its batch's row)."""

    identifier: str
    event_name: str
    payload: dict[str, str]
    timestamp: float
    received_at: float
    source: Literal["stream", "sync"]
    status: Status = "counted"
    error_code: str | None = None

    def to_api(self) -> dict[str, Any]:
        return {
            "identifier": self.identifier,
            "event_name": self.event_name,
            "payload": self.payload,
            "timestamp": format_rfc3339(self.timestamp),
            "received_at": format_rfc3339(self.received_at),
            "source": self.source,
            "status": self.status,
            "error_code": self.error_code,
        }


@dataclass(slots=True)
class _Batch:
    """Events received together (a stream request, or one sync event), stored by column.

    Millions of events are kept: one object per event would cost more time and memory
    than a few list entries. StoredEvent is a reading of one row.
    """

    received_at: float
    source: Literal["stream", "sync"]
    identifiers: list[str] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    payloads: list[dict[str, str]] = field(default_factory=list)
    timestamps: list[float] = field(default_factory=list)
    statuses: list[Status] = field(default_factory=list)
    error_codes: dict[int, str] = field(default_factory=dict)  # of the invalid rows

    def event(self, index: int) -> StoredEvent:
        return StoredEvent(
            self.identifiers[index],
            self.names[index],
            self.payloads[index],
            self.timestamps[index],
            self.received_at,
            self.source,
            self.statuses[index],
            self.error_codes.get(index),
        )

    def counted_index(self, identifier: str) -> int:
        """The row where identifier was counted (a batch counts an identifier once)."""
        for index, candidate in enumerate(self.identifiers):
            if candidate == identifier and self.statuses[index] in ("counted", "cancelled"):
                return index
        raise KeyError(identifier)


@dataclass(frozen=True)
class IdentifierCounts:
    """How often an identifier arrived, and how often it was counted as usage."""

    received: int
    counted: int


@dataclass
class Adjustment:
    id: str
    event_name: str
    identifier: str
    created: float
    status: Literal["pending", "complete"] = "pending"

    def to_api(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "v2.billing.meter_event_adjustment",
            "livemode": False,
            "created": format_rfc3339(self.created),
            "status": self.status,
            "event_name": self.event_name,
            "type": "cancel",
            "cancel": {"identifier": self.identifier},
        }


class EmulatorState:
    """The account: all mutation goes through these methods, under one lock."""

    def __init__(self, clock: Clock | None = None, settings: Settings | None = None) -> None:
        self.clock = clock or Clock()
        self.settings = settings or Settings()
        self._lock = threading.RLock()
        self._ids = itertools.count(1)
        self._initial_meters: list[dict[str, Any]] = []
        self._meters: dict[str, Meter] = {}
        self._backlog: deque[Callable[[], None]] = deque()
        self._accepted = 0
        self._inflight: set[tuple[str, str]] = set()
        self.thin_events = EventLog()
        self.on_thin_events: Callable[[list[ThinEvent]], None] | None = None
        self._settling = threading.Lock()  # one settle at a time: events leave in order
        self._clear_events()

    # ----- ids and reset -------------------------------------------------------------------
    def _new_id(self, prefix: str) -> str:
        return f"{prefix}_{next(self._ids):06d}{secrets.token_hex(6)}"

    def _clear_events(self) -> None:
        self._sessions: dict[str, Session] = {}
        self._batches: list[_Batch] = []
        # Per identifier, in three maps so that the common case (an identifier counted once)
        # costs one entry: the batch that holds its last count; how often it was counted
        # again (beyond the 24-hour window); how often it came and was not counted
        # (duplicate or invalid).
        self._last_counted: dict[str, _Batch] = {}
        self._counted_again: dict[str, int] = {}
        self._not_counted: dict[str, int] = {}
        self._errors: list[ErrorReport] = []
        self._error_windows = ErrorWindows()
        self._adjustments: list[Adjustment] = []
        # Idempotency-Key -> (the request, the first answer, when): Stripe answers a request
        # again under its key as it answered it first, within 24 hours
        self._idempotent: dict[str, tuple[tuple[str, str], dict[str, Any], float]] = {}
        self.thin_events.clear()

    def reset(self, *, meters: bool = False) -> None:
        """Forget events, sessions, reports; with meters=True also meters made at run time."""
        with self._lock:
            self._backlog.clear()
            self._clear_events()
            self.clock.reset()
            gc.unfreeze()
            if meters:
                self._meters.clear()
                for spec in self._initial_meters:
                    self._add_meter(spec, at_start=True)

    # ----- meters --------------------------------------------------------------------------
    def load_meters(self, specs: list[dict[str, Any]]) -> list[Meter]:
        """Meters given at start-up (--meters), in Stripe's billing.meter shape."""
        with self._lock:
            meters = []
            for index, spec in enumerate(specs):
                try:
                    meters.append(self._add_meter(spec, at_start=True))
                except ApiError as error:
                    error.message = f"meters[{index}]: {error.message}"
                    raise
            self._initial_meters.extend(specs)
            return meters

    def _add_meter(self, spec: dict[str, Any], *, at_start: bool = False) -> Meter:
        """A meter from its spec; `at_start`: one the account had before (it counts events
        whenever they arrived, as the emulator's clock may be set back)."""
        event_name = spec.get("event_name")
        if not isinstance(event_name, str) or not event_name:
            raise ApiError(400, "parameter_missing", "Missing event_name.", param="event_name")
        formula = (spec.get("default_aggregation") or {}).get("formula", "sum")
        if formula not in ("sum", "count", "last"):
            raise ApiError(
                400,
                "parameter_invalid",
                f"Invalid default_aggregation[formula]: {formula!r}.",
                param="default_aggregation[formula]",
            )
        for other in self._meters.values():
            if other.event_name == event_name and other.status == "active":
                raise ApiError(
                    400,
                    "resource_already_exists",
                    f"An active meter with event_name {event_name!r} already exists.",
                    param="event_name",
                )
        moment = self.clock.now()
        now = int(moment)
        status = spec.get("status", "active")
        meter = Meter(
            id=spec.get("id") or self._new_id("mtr"),
            event_name=event_name,
            display_name=spec.get("display_name") or event_name,
            customer_key=(spec.get("customer_mapping") or {}).get(
                "event_payload_key", "stripe_customer_id"
            ),
            value_key=(spec.get("value_settings") or {}).get("event_payload_key", "value"),
            formula=formula,
            status="inactive" if status == "inactive" else "active",
            created=now,
            updated=now,
            deactivated_at=now if status == "inactive" else None,
            event_time_window=spec.get("event_time_window"),
            active_from=-math.inf if at_start else moment,
            # inactive from the start: it never counts (whatever the clock is set to)
            inactive_since=(-math.inf if at_start else moment) if status == "inactive" else None,
        )
        self._meters[meter.id] = meter
        return meter

    def create_meter(self, spec: dict[str, Any]) -> Meter:
        for name in ("display_name", "event_name", "default_aggregation"):
            if not spec.get(name):
                raise ApiError(
                    400, "parameter_missing", f"Missing required param: {name}.", param=name
                )
        self.drain()
        with self._lock:
            return self._add_meter(spec)

    def get_meter(self, meter_id: str) -> Meter:
        with self._lock:
            meter = self._meters.get(meter_id)
        if meter is None:
            raise ApiError(
                404, "resource_missing", f"No such billing meter: '{meter_id}'", param="id"
            )
        return meter

    def list_meters(self, status: str | None = None) -> list[Meter]:
        with self._lock:
            meters = list(self._meters.values())
        return [m for m in meters if status is None or m.status == status]

    def set_meter_status(self, meter_id: str, active: bool) -> Meter:
        meter = self.get_meter(meter_id)
        self.drain()
        with self._lock:
            moment = self.clock.now()
            if active and meter.status != "active":
                meter.status, meter.deactivated_at = "active", None
                if meter.inactive_since is not None:
                    meter.inactive_spans.append((meter.inactive_since, moment))
                meter.inactive_since = None
            elif not active and meter.status == "active":
                meter.status, meter.deactivated_at = "inactive", int(moment)
                meter.inactive_since = moment
            meter.updated = int(self.clock.now())
        return meter

    def _meter_for(self, event_name: str) -> Meter | None:
        """The active meter for event_name, else an inactive one (so archived_meter shows)."""
        found = None
        for meter in self._meters.values():
            if meter.event_name == event_name:
                if meter.status == "active":
                    return meter
                found = meter
        return found

    def _meters_by_name(self, names: set[str]) -> dict[str, Meter | None]:
        return {name: self._meter_for(name) for name in names}

    # ----- sessions ------------------------------------------------------------------------
    def create_session(self, livemode: bool = False) -> Session:
        now = self.clock.now()
        session = Session(
            id=self._new_id("mtres"),
            token=f"token_{secrets.token_urlsafe(32)}",
            created=now,
            expires_at=now + self.settings.session_ttl,
            livemode=livemode,
        )
        with self._lock:
            self._sessions[session.token] = session
        return session

    def check_session_token(self, token: str) -> None:
        session = self._sessions.get(token)
        if session is None:
            raise ApiError(
                401,
                "unauthorized",
                "The provided authentication token is not a valid meter event session token.",
                error_type="invalid_request_error",
            )
        if self.clock.now() >= session.expires_at:
            raise ApiError(
                401,
                "billing_meter_event_session_expired",
                "The temporary session token has expired.",
                error_type="temporary_session_expired",
            )

    def expire_sessions(self) -> int:
        now = self.clock.now()
        with self._lock:
            live = [s for s in self._sessions.values() if s.expires_at > now]
            for session in live:
                session.expires_at = now
        return len(live)

    # ----- the stream (async validation) ---------------------------------------------------
    def accept_stream(self, events: list[dict[str, Any]], timestamps: list[float | None]) -> None:
        """Take a batch whose form was checked; it is validated later, in arrival order.

        As at Stripe, the 200 says "received", not "valid". The backlog is worked off by
        `work_off()` once the answer is sent, and by `drain()`, which every reader and every
        change of meters or rules calls first, so what anyone observes is as if each batch
        had been validated when it arrived, while the answer does not wait for it.
        """
        self._backlog.append(
            functools.partial(self._process_stream, self.clock.now(), events, timestamps)
        )
        self._accepted += 1
        if self._accepted % 64 == 0:
            # Accepted events live until reset: keep the cyclic GC from rescanning them all
            # (with millions kept, its full passes would dominate the emulator's time).
            gc.freeze()

    def drain(self) -> None:
        """Validate every accepted batch and apply every adjustment still waiting."""
        with self._lock:
            while self._backlog:
                self._backlog.popleft()()

    def work_off(self) -> None:
        """drain(), unless the lock is busy: its holder drains, or the next call will.

        The HTTP server calls this once a stream request is answered, so validation runs
        while the client reads the answer and the backlog stays as short as the number
        of connections, whatever the load.
        """
        if self._lock.acquire(blocking=False):
            try:
                while self._backlog:
                    self._backlog.popleft()()
            finally:
                self._lock.release()

    def _process_stream(
        self, received_at: float, events: list[dict[str, Any]], timestamps: list[float | None]
    ) -> None:
        with self._lock:
            batch = _Batch(received_at, "stream")
            meters = self._meters_by_name({raw["event_name"] for raw in events})
            # Per event name with an active meter: the meter's own copy of the name (kept
            # instead of each event's), its customer and value keys. An event that passes
            # every rule with them takes the short path below; any other goes through
            # _validate, which names the failure.
            keys = {
                name: (meter.event_name, meter.customer_key, meter.value_key)
                for name, meter in meters.items()
                if meter is not None and meter.status == "active"
            }
            rule = self.settings.value_rule
            allowed = _ALLOWED[rule]
            customers = self.settings.known_customers or None  # None: every customer known
            earliest, latest = received_at - PAST_LIMIT_S, received_at + FUTURE_LIMIT_S
            last_counted = self._last_counted
            identifiers, names, payloads = batch.identifiers, batch.names, batch.payloads
            stamps, statuses = batch.timestamps, batch.statuses
            for raw, timestamp in zip(events, timestamps, strict=True):
                name, payload = raw["event_name"], raw["payload"]
                identifier = raw.get("identifier") or self._new_id("evt")
                if timestamp is None:
                    timestamp = received_at
                spec = keys.get(name)
                if (
                    spec is None
                    or not (customer := payload.get(spec[1]))
                    or (customers is not None and customer not in customers)
                    or not (value := payload.get(spec[2]))
                    or not (allowed.get(value) or _value_allowed(rule, value))
                    or not earliest <= timestamp <= latest
                ):
                    failure = self._validate(
                        name, payload, timestamp, received_at, meters[name], sync=False
                    )
                    self._add(batch, identifier, name, payload, timestamp, failure)
                    continue
                # _add for a valid event, in line: this runs for every event
                known = len(last_counted)
                last = last_counted.setdefault(identifier, batch)  # one look-up in a big map
                if len(last_counted) != known:
                    statuses.append("counted")
                elif received_at - last.received_at < DEDUP_WINDOW_S:
                    statuses.append("duplicate")
                    self._not_counted[identifier] = self._not_counted.get(identifier, 0) + 1
                else:
                    statuses.append("counted")
                    self._counted_again[identifier] = self._counted_again.get(identifier, 0) + 1
                    last_counted[identifier] = batch
                identifiers.append(identifier)
                names.append(spec[0])
                payloads.append(payload)
                stamps.append(timestamp)
            self._batches.append(batch)

    def _validate(
        self,
        name: str,
        payload: dict[str, str],
        timestamp: float,
        received_at: float,
        meter: Meter | None,
        *,
        sync: bool,
    ) -> tuple[str, str, str | None] | None:
        """Stripe's per-event rules; codes differ between the sync endpoint and error reports
        (whose messages follow Stripe's documented samples). The sync endpoint does not check
        that the customer exists: see _unknown_customer."""
        if meter is None:
            if sync:
                return "no_meter", f"No active meter with event_name {name!r}.", None
            return "no_meter", f"No meter was found matching event_name {name}.", None
        if meter.status != "active":
            return "archived_meter", "The meter must be Active to submit events.", meter.id
        if not payload.get(meter.customer_key):
            if sync:
                message = f"The payload must have a {meter.customer_key!r} key."
                return "payload_no_customer_defined", message, meter.id
            message = f"Customer mapping key {meter.customer_key} not found in payload."
            return "meter_event_no_customer_defined", message, meter.id
        if not sync and (unknown := self._unknown_customer(meter, payload)):
            return unknown
        value = payload.get(meter.value_key)
        if value is None or value == "":
            if sync:
                message = f"The payload must have a {meter.value_key!r} value."
                return "payload_no_value_defined", message, meter.id
            message = f"Value mapping key {meter.value_key} not found in payload."
            return "meter_event_invalid_value", message, meter.id
        if not _value_allowed(self.settings.value_rule, value):
            code = "payload_invalid_value" if sync else "meter_event_invalid_value"
            return code, f"The value must be a positive integer, got {value!r}.", meter.id
        if timestamp < received_at - PAST_LIMIT_S:
            return (
                "timestamp_too_far_in_past",
                "The timestamp must be within the past 35 calendar days.",
                meter.id,
            )
        if timestamp > received_at + FUTURE_LIMIT_S:
            return (
                "timestamp_in_future",
                "The timestamp must be no more than 5 minutes in the future.",
                meter.id,
            )
        return None

    def _unknown_customer(
        self, meter: Meter, payload: dict[str, str]
    ) -> tuple[str, str, str | None] | None:
        """meter_event_customer_not_found, when the account knows its customers (settings)."""
        customer = payload[meter.customer_key]
        known = self.settings.known_customers
        if not known or customer in known:
            return None
        return "meter_event_customer_not_found", f"No such customer: '{customer}'", meter.id

    def _add(
        self,
        batch: _Batch,
        identifier: str,
        name: str,
        payload: dict[str, str],
        timestamp: float,
        failure: tuple[str, str, str | None] | None,
    ) -> Status:
        """Store one event in its batch: invalid (with an error report), or counted unless
        its identifier was counted within the rolling 24 hours (then a duplicate)."""
        status: Status
        if failure is not None:
            code, message, meter_id = failure
            status = "invalid"
            batch.error_codes[len(batch.identifiers)] = code
            report = ErrorReport(code, message, identifier, name, batch.received_at, meter_id)
            self._errors.append(report)
            settings = self.settings
            self._error_windows.add(
                report, settings.error_window_s, settings.error_samples_per_code
            )
        elif self._counted_recently(identifier, batch.received_at):
            status = "duplicate"
        else:
            status = "counted"
            if identifier in self._last_counted:
                self._counted_again[identifier] = self._counted_again.get(identifier, 0) + 1
            self._last_counted[identifier] = batch
        if status != "counted":
            self._not_counted[identifier] = self._not_counted.get(identifier, 0) + 1
        batch.identifiers.append(identifier)
        batch.names.append(name)
        batch.payloads.append(payload)
        batch.timestamps.append(timestamp)
        batch.statuses.append(status)
        return status

    def _counted_recently(self, identifier: str, at: float) -> bool:
        last = self._last_counted.get(identifier)
        return last is not None and at - last.received_at < DEDUP_WINDOW_S

    # ----- the synchronous endpoint --------------------------------------------------------
    def create_sync_event(
        self, raw: dict[str, Any], timestamp: float | None, hold: float
    ) -> StoredEvent:
        """POST /v2/billing/meter_events: validated now, errors as Stripe documents them.

        An unknown customer is not one of them: such an event is accepted, then reported
        asynchronously (meter_event_customer_not_found), as a streamed one would be."""
        self.drain()
        received_at = self.clock.now()
        name, payload = raw["event_name"], raw["payload"]
        if timestamp is None:
            timestamp = received_at
        with self._lock:
            identifier = raw.get("identifier") or self._new_id("evt")
            meter = self._meter_for(name)
            failure = self._validate(name, payload, timestamp, received_at, meter, sync=True)
            if failure is not None:
                raise ApiError(400, failure[0], failure[1])
            assert meter is not None  # _validate answers no_meter otherwise
            if self._counted_recently(identifier, received_at):
                raise ApiError(
                    400,
                    "duplicate_meter_event",
                    f"A meter event with identifier {identifier!r} was already submitted.",
                )
            slot = (meter.id, payload[meter.customer_key])
            if slot in self._inflight:
                raise ApiError(
                    409,
                    "too_many_concurrent_requests",
                    "Cannot create multiple usage events for the same customer, meter "
                    "concurrently.",
                )
            self._inflight.add(slot)
        try:
            if hold > 0:
                time.sleep(hold)
            with self._lock:
                batch = _Batch(received_at, "sync")
                unknown = self._unknown_customer(meter, payload)
                self._add(batch, identifier, name, payload, timestamp, unknown)
                self._batches.append(batch)
        finally:
            with self._lock:
                self._inflight.discard(slot)
        return batch.event(0)

    # ----- adjustments ---------------------------------------------------------------------
    def cancel(self, event_name: str, identifier: str) -> Adjustment:
        """Check the cancel now (400 if impossible); it completes later, as at Stripe."""
        self.drain()
        now = self.clock.now()
        with self._lock:
            batch = self._last_counted.get(identifier)
            index = batch.counted_index(identifier) if batch is not None else -1
            if batch is None or batch.names[index] != event_name:
                raise ApiError(
                    400,
                    "invalid_cancel_configuration",
                    f"No meter event {identifier!r} with event_name {event_name!r} to cancel.",
                )
            if batch.statuses[index] == "cancelled":
                raise ApiError(
                    400,
                    "invalid_cancel_configuration",
                    f"Meter event {identifier!r} is already cancelled.",
                )
            if now - batch.received_at > CANCEL_WINDOW_S:
                raise ApiError(
                    400,
                    "invalid_cancel_configuration",
                    "Meter events can only be cancelled within 24 hours of being received.",
                )
            adjustment = Adjustment(self._new_id("mtradj"), event_name, identifier, now)
            self._adjustments.append(adjustment)
        self._backlog.append(functools.partial(self._apply_cancel, adjustment, batch, index))
        return adjustment

    def cancel_once(self, key: str, event_name: str, identifier: str) -> dict[str, Any]:
        """A cancel under an Idempotency-Key: the same key and request within 24 hours get
        the first answer again (a retry after a lost answer is not refused as a second
        cancel); another request under the key is refused, as at Stripe."""
        with self._lock:
            seen = self._idempotent.get(key)
        if seen is not None and self.clock.now() - seen[2] < DAY:
            if seen[0] != (event_name, identifier):
                raise ApiError(
                    400,
                    "idempotency_error",
                    "Keys for idempotent requests can only be used with the same parameters "
                    "they were first used with.",
                    error_type="idempotency_error",
                )
            return seen[1]
        answer = self.cancel(event_name, identifier).to_api()
        with self._lock:
            self._idempotent[key] = ((event_name, identifier), answer, self.clock.now())
        return answer

    def _apply_cancel(self, adjustment: Adjustment, batch: _Batch, index: int) -> None:
        with self._lock:
            batch.statuses[index] = "cancelled"
            adjustment.status = "complete"

    # ----- reading -------------------------------------------------------------------------
    def events(self, **filters: str) -> list[StoredEvent]:
        self.drain()
        wanted_identifier = filters.get("identifier")
        with self._lock:
            events = [
                batch.event(index)
                for batch in self._batches
                if wanted_identifier is None or wanted_identifier in batch.identifiers
                for index in range(len(batch.identifiers))
            ]
        for key, wanted in filters.items():
            if key == "customer":
                events = [e for e in events if wanted in e.payload.values()]
            else:
                events = [e for e in events if getattr(e, key) == wanted]
        return events

    def identifiers(self) -> dict[str, IdentifierCounts]:
        self.drain()
        with self._lock:
            out = {}
            for identifier in self._last_counted:
                counted = 1 + self._counted_again.get(identifier, 0)
                received = counted + self._not_counted.get(identifier, 0)
                out[identifier] = IdentifierCounts(received, counted)
            for identifier, received in self._not_counted.items():
                if identifier not in out:
                    out[identifier] = IdentifierCounts(received, 0)
            return out

    def errors(self) -> list[ErrorReport]:
        self.drain()
        with self._lock:
            return list(self._errors)

    def adjustments(self) -> list[Adjustment]:
        self.drain()
        with self._lock:
            return list(self._adjustments)

    def stats(self) -> dict[str, Any]:
        self.drain()
        with self._lock:
            statuses: Counter[str] = Counter()
            for batch in self._batches:
                statuses.update(batch.statuses)
            return {
                "events_received": statuses.total(),
                "events_by_status": dict(statuses),
                "unique_identifiers": len(self._last_counted)
                + sum(1 for i in self._not_counted if i not in self._last_counted),
                "counted_more_than_once": len(self._counted_again),
                "error_reports": len(self._errors),
                "sessions": len(self._sessions),
                "meters": len(self._meters),
                "clock_offset_s": self.clock.offset,
            }

    def usage(
        self, meter: Meter, customer: str, start: float, end: float
    ) -> list[tuple[float, str]]:
        """(event timestamp, value) of the meter's counted events for customer with a
        timestamp in [start, end), in arrival order: no duplicate, no cancelled event, none
        rejected asynchronously. A meter has the events received while it was active
        (Meter.counts_received_at): a meter made for the event name of one deactivated before it
        has none of the older one's. Events received in the last `summaries_lag_s` are not
        in yet (Stripe's summaries lag its stream)."""
        self.drain()
        name, customer_key, value_key = meter.event_name, meter.customer_key, meter.value_key
        shown_until = self.clock.now() - self.settings.summaries_lag_s
        rows: list[tuple[float, str]] = []
        with self._lock:
            for batch in self._batches:
                if batch.received_at > shown_until or not meter.counts_received_at(
                    batch.received_at
                ):
                    continue
                names, payloads, timestamps = batch.names, batch.payloads, batch.timestamps
                for index, status in enumerate(batch.statuses):
                    if (
                        status == "counted"
                        and names[index] == name
                        and start <= timestamps[index] < end
                        and payloads[index].get(customer_key) == customer
                    ):
                        rows.append((timestamps[index], payloads[index].get(value_key, "")))
        return rows

    def summaries(self, meter: Meter, query: SummaryQuery) -> list[dict[str, Any]]:
        """Stripe's meter event summaries of the meter for query (newest first)."""
        rows = self.usage(meter, query.customer, query.start, query.end)
        return summarize(meter.id, meter.formula, query, rows)

    # ----- error reports as thin events ----------------------------------------------------
    def settle(self) -> list[ThinEvent]:
        """Turn every validation window that has ended into a thin event, stored, and handed
        to on_thin_events; what was accepted is validated first."""
        with self._settling:
            with self._lock:
                self.drain()
                now = self.clock.now()
                events = self.thin_events.record(self._error_windows.close(now), now)
            if events and self.on_thin_events is not None:
                self.on_thin_events(events)
        return events

    def has_open_windows(self) -> bool:
        """Whether settle() may have work: failures in open windows, or batches to validate."""
        return bool(self._error_windows.pending or self._backlog)


_ALLOWED: dict[ValueRule, dict[str, bool]] = {"positive_integer": {}, "decimal": {}}


def _value_allowed(rule: ValueRule, value: str) -> bool:
    """_value_rule_holds, remembered per text (values repeat: "1", "25", ...)."""
    known = _ALLOWED[rule]
    holds = known.get(value)
    if holds is None:
        if len(known) >= 65_536:
            known.clear()
        holds = known[value] = _value_rule_holds(rule, value)
    return holds


def _value_rule_holds(rule: ValueRule, value: str) -> bool:
    """Stripe's documented rule is a positive integer; "decimal" admits any number >= 0 written
    as JSON writes numbers (Decimal() alone also takes " 5 ", "1_000" and "٣")."""
    if rule == "positive_integer":
        # not int(value) > 0: int() refuses texts of more than 4300 digits
        return bool(_POSITIVE_INTEGER.match(value)) and value.strip("0") != ""
    return bool(_DECIMAL_TEXT.match(value))
