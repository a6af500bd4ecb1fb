"""Reconcile: what Stripe counted for a meter, per customer and window, against the ledger.

Stripe's side is its meter event summaries (`GET /v1/billing/meters/{id}/event_summaries`): a
customer, a start and an end aligned to the minute (to the hour or the UTC day when grouped by
`value_grouping_window`), the meter's formula over the events it counted by event timestamp.
The windows of a run are the hours (or days) from --since to --until, cut to the minute at
both ends: the whole ones are asked for in one grouped request per customer (paged), a cut
one at either end in a request of its own. The ledger's side is ledger_sql.RECONCILE over the
same windows. Summaries are eventually consistent, so the last minutes before now are left
out (`settle`), and the report says so.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import quote

from meter_relay.catalog import CatalogError, MeterCatalog, list_meters
from meter_relay.ledger_queries import LedgerQueries, Totals
from meter_relay.retry import with_retries
from meter_relay.stripe_client import Kind, StripeAnswer, StripeApi

WINDOWS = {"hour": 3600, "day": 86_400}
FORMULAS = ("sum", "count", "last")
PAGE = 100
MAX_PAGES = 1000


class StripeFailed(Exception):
    """Stripe did not answer usefully; `status` 0 when it could not be reached."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class MeterInfo:
    id: str
    event_name: str
    formula: str
    created: int | None = None  # epoch seconds: it counts only the events received since
    others: tuple[str, ...] = ()  # the account's other meters for its event name


@dataclass(frozen=True)
class Window:
    start: int  # epoch seconds, inclusive
    end: int  # exclusive
    # a whole window of the grouping (an hour or a day on its boundaries), not cut at an end:
    # a cut day window can be an hour long, which Stripe refuses to group by day
    whole: bool = field(default=False, compare=False)

    def to_json(self) -> dict[str, str]:
        return {"start": _iso(self.start), "end": _iso(self.end)}


def _iso(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _minute(moment: datetime) -> int:
    return int(moment.timestamp()) // 60 * 60


def windows(since: datetime, until: datetime, step: int) -> list[Window]:
    """The windows of `step` seconds covering [since, until), both cut to the minute: whole
    ones, and cut ones at the ends."""
    start, end = _minute(since), _minute(until)
    found = []
    while start < end:
        boundary = (start // step + 1) * step
        stop = min(boundary, end)
        found.append(Window(start, stop, whole=stop - start == step))
        start = found[-1].end
    return found


@dataclass(frozen=True)
class Mismatch:
    customer: str
    window: Window
    ledger: Decimal
    stripe: Decimal
    ledger_events: int
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "customer": self.customer,
            **self.window.to_json(),
            "ledger": _number(self.ledger),
            "stripe": _number(self.stripe),
            "difference": _number(self.stripe - self.ledger),
            "ledger_events": self.ledger_events,
            "note": self.note,
        }


def _number(value: Decimal) -> str:
    return format(value.normalize(), "f") if value else "0"


@dataclass
class Reconciliation:
    meter: MeterInfo
    windows: list[Window]
    customers: list[str]
    settled_until: datetime  # what is after it was left out
    mismatches: list[Mismatch] = field(default_factory=list)
    compared: int = 0  # (customer, window) pairs that held usage on either side
    # pairs that disagree while the ledger holds events delivered too recently for Stripe's
    # summaries (an old-stamped event: a backlog, a replay): not called mismatches yet
    unsettled: list[tuple[str, Window]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what the reader needs to read the rest

    def to_json(self) -> dict[str, Any]:
        return {
            "meter": self.meter.id,
            "event_name": self.meter.event_name,
            "formula": self.meter.formula,
            "since": _iso(self.windows[0].start) if self.windows else None,
            "until": _iso(self.windows[-1].end) if self.windows else None,
            "left_out_after": self.settled_until.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "customers": self.customers,
            "compared": self.compared,
            "mismatches": [m.to_json() for m in self.mismatches],
            "unsettled": [{"customer": who, **window.to_json()} for who, window in self.unsettled],
            "notes": self.notes,
        }


class MeterSummaries:
    """Stripe's meters and their event summaries, with the secret key."""

    def __init__(self, api: StripeApi, *, timeout: float = 30.0, **retry: Any) -> None:
        self.api = api
        self.timeout = timeout
        self._retry = retry  # with_retries' options (tests: no sleeping)

    def _get(self, path: str, params: dict[str, Any]) -> dict[str, Any]:
        call = functools.partial(self.api.get, path, params)
        answer: StripeAnswer | None = with_retries(call, **self._retry)
        if answer is None:
            raise StripeFailed(f"GET {path}: no answer in time")
        if answer.kind is not Kind.OK or answer.body is None:
            raise StripeFailed(f"GET {path}: {answer.error}", answer.status)
        return answer.body

    def meter(self, event_name: str, meter_id: str | None = None) -> MeterInfo:
        """The meter of `event_name` (its active one), or the one named, with its formula."""
        others: tuple[str, ...] = ()
        if meter_id is None:
            try:
                meters = list_meters(self.api, self.timeout)
            except CatalogError as error:
                raise StripeFailed(str(error), error.status) from None
            found = MeterCatalog.from_stripe(meters).get(event_name)
            if found is None:
                raise StripeFailed(f"no meter for event_name {event_name!r} in the account", 404)
            meter_id = found.meter_id
            others = tuple(
                str(m.get("id"))
                for m in meters
                if m.get("event_name") == event_name and m.get("id") != meter_id
            )
        meter = self._get(f"/v1/billing/meters/{quote(meter_id, safe='')}", {})
        formula = str((meter.get("default_aggregation") or {}).get("formula", "sum"))
        name = str(meter.get("event_name", event_name))
        # Stripe answered: the question does not fit the meter (400: the caller's to fix)
        if name != event_name:
            raise StripeFailed(
                f"meter {meter_id} is for event_name {name!r}, not {event_name!r}", 400
            )
        if formula not in FORMULAS:
            raise StripeFailed(f"meter {meter_id} aggregates by {formula!r}, not {FORMULAS}", 400)
        created = meter.get("created")
        created = created if isinstance(created, int) else None
        return MeterInfo(meter_id, name, formula, created, others)

    def summaries(
        self, meter: MeterInfo, customer: str, span: Sequence[Window], grouping: str
    ) -> dict[int, Decimal]:
        """Window start -> Stripe's value, for the customer over `span`: the whole windows in
        grouped requests, each cut one alone."""
        values: dict[int, Decimal] = {}
        path = f"/v1/billing/meters/{quote(meter.id, safe='')}/event_summaries"
        for first, last, grouped in _requests(span):
            params: dict[str, Any] = {
                "customer": customer,
                "start_time": first.start,
                "end_time": last.end,
                "limit": PAGE,
            }
            if grouped:
                params["value_grouping_window"] = grouping
            for summary in self._pages(path, params):
                values[int(summary["start_time"])] = _decimal(summary.get("aggregated_value"))
        return values

    def _pages(self, path: str, params: dict[str, Any]) -> Iterable[dict[str, Any]]:
        for _ in range(MAX_PAGES):
            page = self._get(path, params)
            data = [item for item in page.get("data") or [] if isinstance(item, dict)]
            yield from data
            if not page.get("has_more") or not data:
                return
            params = {**params, "starting_after": data[-1]["id"]}
        raise StripeFailed(f"GET {path}: more than {MAX_PAGES} pages")


def _requests(span: Sequence[Window]) -> list[tuple[Window, Window, bool]]:
    """(first, last, grouped) per request: runs of whole windows together, cut ones alone."""
    found: list[tuple[Window, Window, bool]] = []
    for window in span:
        if window.whole and found and found[-1][2] and found[-1][1].end == window.start:
            found[-1] = (found[-1][0], window, True)
        else:
            found.append((window, window, window.whole))
    return found


def _decimal(value: Any) -> Decimal:
    try:
        return Decimal(str(value))
    except (InvalidOperation, ValueError):
        return Decimal(0)


def reconcile(
    ledger: LedgerQueries,
    stripe: MeterSummaries,
    meter: MeterInfo,
    *,
    since: datetime,
    until: datetime,
    grouping: str,
    customers: Sequence[str] = (),
    on_customer: Callable[[str], None] | None = None,
    delivered_until: datetime | None = None,
) -> Reconciliation:
    """Every (customer, window) where the ledger and Stripe disagree. The customers are those
    given (each once), else those the ledger has delivered events of in the windows, counted
    or cancelled. `delivered_until`: a disagreeing window whose events the ledger has
    delivered or cancelled since may not be in Stripe's summaries yet (they lag the stream):
    it is noted unsettled, not a mismatch."""
    step = WINDOWS[grouping]
    span = windows(since, until, step)
    customers = list(dict.fromkeys(customers))  # a customer named twice is compared once
    result = Reconciliation(meter, span, customers, until)
    if not span:
        return result
    if meter.others and meter.created is not None and meter.created > span[0].start:
        result.notes.append(
            f"meter {meter.id} was created {_iso(meter.created)}, after the first window began, "
            f"and the account has other meters for {meter.event_name} "
            f"({', '.join(meter.others)}): Stripe counts on a meter only the events it received "
            "since its creation, so a window before shows Stripe lower by what those counted "
            "(--meter-id asks one of them)"
        )
    start = datetime.fromtimestamp(span[0].start, UTC)
    end = datetime.fromtimestamp(span[-1].end, UTC)
    counted = ledger.reconcile(meter.event_name, customers, start, end, step)
    chosen = list(customers) or sorted({customer for customer, _ in counted})
    result.customers = chosen
    by_start = {window.start // step * step: window for window in span}
    for customer in chosen:
        if on_customer:
            on_customer(customer)
        note = ""
        try:
            billed = stripe.summaries(meter, customer, span, grouping)
        except StripeFailed as error:
            if error.status != 400:  # Stripe unreachable, or refusing the key: stop
                raise
            billed, note = {}, f"Stripe: {error}"  # e.g. a customer Stripe does not know
        theirs_by = {start // step * step: value for start, value in billed.items()}
        ours = {window: totals for (who, window), totals in counted.items() if who == customer}
        for window_start in sorted(set(ours) | set(theirs_by)):
            window = by_start.get(window_start)
            if window is None:
                continue
            theirs = theirs_by.get(window_start, Decimal(0))
            if window_start not in ours and not theirs:
                continue  # a cut window's summary comes even when empty: no usage either side
            totals = ours.get(window_start, Totals(0, Decimal(0), Decimal(0)))
            result.compared += 1
            if totals.agrees(meter.formula, theirs):
                continue
            last = totals.last_change
            if last is not None and delivered_until is not None and last > delivered_until:
                result.unsettled.append((customer, window))
                continue
            why = "; ".join(filter(None, [note, totals.tie_note(meter.formula)]))
            result.mismatches.append(
                Mismatch(customer, window, totals.by(meter.formula), theirs, totals.events, why)
            )
    return result


def settled(until: datetime, now: datetime, settle_minutes: float) -> datetime:
    """The end of what can be compared: --until, but not the last `settle_minutes` before now
    (Stripe's summaries lag its stream), cut to the minute."""
    latest = now - timedelta(minutes=settle_minutes)
    end = min(until, latest)
    return datetime.fromtimestamp(_minute(end), UTC)
