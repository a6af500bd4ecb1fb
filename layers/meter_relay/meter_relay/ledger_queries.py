"""What the ledger answers, through either engine: where events are (trace), which of them
Stripe has (replays), and what Stripe should count per customer and window (reconcile)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Protocol

from meter_relay import ledger_sql
from meter_relay.events import parse_rfc3339
from meter_relay.ledger_engines import Engine

# The identifiers of one query, as SQL text: Athena takes a query text of at most 256 KB,
# and TRACE names them three times (once per table)
LITERALS_BYTES = 80_000
# How long before a DLQ letter was first seen its events may have been delivered: the
# forwarder's letter carries the time it received the message, the error-report function's
# the start of Stripe's validation window; both follow the delivery, or come with it.
DELIVERED_BEFORE_SEEN = timedelta(hours=1)


def chunks(values: Iterable[str], budget: int = LITERALS_BYTES) -> Iterator[list[str]]:
    """The values, each once, in groups whose SQL literals (`'v', `) take at most `budget`
    bytes: as few queries as Athena's limit allows (each reads every hour of its window)."""
    batch: list[str] = []
    size = 0
    for value in dict.fromkeys(values):
        cost = len(value.encode()) + value.count("'") + 4  # its quotes, a comma and a space
        if batch and size + cost > budget:
            yield batch
            batch, size = [], 0
        batch.append(value)
        size += cost
    if batch:
        yield batch


@dataclass(frozen=True)
class Record:
    """One thing the ledger knows of an identifier."""

    kind: str  # delivered | cancelled | rejected
    identifier: str
    at: str  # delivered_at, cancelled_at or reported_at
    reference: str | None  # the invocation's request id, the adjustment id, the Stripe event id
    detail: str | None  # the SQS message id, the adjustment's status, Stripe's message
    code: str | None = None  # Stripe's code (rejected)
    event_name: str | None = None
    customer: str | None = None
    value: str | None = None
    event_time: str | None = None

    def to_json(self) -> dict[str, Any]:
        shown = {
            "kind": self.kind,
            "at": self.at,
            "event_name": self.event_name,
            "customer": self.customer,
            "value": self.value,
            "timestamp": self.event_time,
        }
        if self.kind == "delivered":
            shown.update(request_id=self.reference, message_id=self.detail)
        elif self.kind == "cancelled":
            shown.update(adjustment_id=self.reference, status=self.detail)
        else:
            shown.update(stripe_event_id=self.reference, code=self.code, message=self.detail)
        return {name: value for name, value in shown.items() if value is not None}


@dataclass(frozen=True)
class Totals:
    """A customer's window as the ledger counts it."""

    events: int
    total: Decimal  # the sum of the values
    last: Decimal  # the value of the newest event (by timestamp, then by delivery)
    # Newest events that tie on both (one invocation's, sent in concurrent calls): Stripe's
    # order among them is unknown, so its last value may be any of theirs, from `last` (the
    # lowest) to `last_highest`, `last_values` of them differing.
    last_highest: Decimal | None = None
    last_values: int = 1
    # its latest delivery (an old-stamped event's, a backlog's, can be minutes ago): not part
    # of the totals' value, which is what Stripe is compared with
    last_delivered_at: datetime | None = field(default=None, compare=False)
    # its latest cancel of an event it would count else (Stripe applies them after a while)
    last_cancelled_at: datetime | None = field(default=None, compare=False)

    @property
    def last_change(self) -> datetime | None:
        """When the ledger last changed what it counts here: a delivery, or a cancel."""
        return max(filter(None, (self.last_delivered_at, self.last_cancelled_at)), default=None)

    def by(self, formula: str) -> Decimal:
        if formula == "count":
            return Decimal(self.events)
        if formula == "last":
            return self.last
        return self.total

    def agrees(self, formula: str, billed: Decimal) -> bool:
        """Whether Stripe's value for the window can be this one's: for `last`, one of the
        values of the newest events when they tie (the lowest or highest of two; between them
        when more differ, the ledger keeps no more)."""
        if formula != "last" or self.last_values < 2 or self.last_highest is None:
            return self.by(formula) == billed
        if self.last_values == 2:
            return billed in (self.last, self.last_highest)
        return self.last <= billed <= self.last_highest

    def tie_note(self, formula: str) -> str:
        """What a `last` mismatch should say when the newest events tie."""
        if formula != "last" or self.last_values < 2 or self.last_highest is None:
            return ""
        return (
            f"the newest {self.last_values} values tie (one invocation, one timestamp): "
            f"{self.last.normalize():f} to {self.last_highest.normalize():f}"
        )


class DeliveredLookup(Protocol):
    """Which identifiers Stripe has (the replays' question), for events first seen at `since`
    or later: each with its latest delivery not reported rejected since."""

    def delivered(self, identifiers: Sequence[str], since: datetime) -> dict[str, datetime]: ...


class LedgerQueries:
    """The ledger's questions, asked of one engine."""

    def __init__(self, engine: Engine, clock: Any = None) -> None:
        self.engine = engine
        self._now = clock or (lambda: datetime.now(UTC))

    def trace(
        self, identifiers: Iterable[str], since: datetime, until: datetime
    ) -> dict[str, list[Record]]:
        found: dict[str, list[Record]] = {}
        for batch in chunks(identifiers):
            for row in self.engine.run(ledger_sql.trace(batch, since, until)):
                identifier = row["identifier"] or ""
                found.setdefault(identifier, []).append(
                    Record(
                        kind=row["kind"] or "",
                        identifier=identifier,
                        at=row["recorded_at"] or "",
                        reference=row["reference"],
                        detail=row["detail"],
                        code=row["code"],
                        event_name=row["event_name"],
                        customer=row["customer"],
                        value=row["value"],
                        event_time=row["event_time"],
                    )
                )
        return found

    def delivered(self, identifiers: Sequence[str], since: datetime) -> dict[str, datetime]:
        """The identifiers delivered since `since` (less an hour: DELIVERED_BEFORE_SEEN) that
        Stripe did not report rejected afterwards, each with its latest such delivery."""
        start, now = since - DELIVERED_BEFORE_SEEN, self._now()
        found: dict[str, datetime] = {}
        for batch in chunks(identifiers):
            for row in self.engine.run(ledger_sql.delivered(batch, start, now)):
                at = parse_rfc3339(row["delivered_at"] or "")
                if row["identifier"] and at is not None:
                    found[row["identifier"]] = at
        return found

    def reconcile(
        self,
        event_name: str,
        customers: Sequence[str],
        start: datetime,
        end: datetime,
        step: int,
    ) -> dict[tuple[str, int], Totals]:
        """(customer, window start in epoch seconds) -> the window's totals, for the windows
        of `step` seconds between start and end that hold delivered events (counted or not:
        a customer whose events were all cancelled is still one to compare)."""
        query = ledger_sql.reconcile(event_name, customers, start, end, step, now=self._now())
        totals: dict[tuple[str, int], Totals] = {}
        for row in self.engine.run(query):
            window = int(Decimal(row["window_start"] or "0"))
            tied = int(row["last_values"] or 0)
            totals[(row["customer"] or "", window)] = Totals(
                events=int(row["events"] or 0),
                total=Decimal(row["total"] or "0"),
                last=Decimal(row["last_value"] or "0"),
                last_highest=Decimal(row["last_highest"] or "0") if tied > 1 else None,
                last_values=max(tied, 1),
                last_delivered_at=parse_rfc3339(row.get("last_delivered_at") or ""),
                last_cancelled_at=parse_rfc3339(row.get("last_cancelled_at") or ""),
            )
        return totals
