"""The delivery ledger of `make run` and `make chaos`: its bucket in moto, and the reconcile
that ends the run, the ledger against Stripe's (the emulator's) meter event summaries.

The reconcile is the operator's (`meter-relay reconcile`: meter_relay.reconcile), on DuckDB
over the run's objects, per meter the run bills, per customer the account has and per hour,
from an hour before production began (the events' timestamps reach that far back) to a minute
past its end. Nothing is left out for eventual consistency: the emulator's summaries are
consistent at once. Customers Stripe does not have (the events it rejects later) have no
summaries to compare with; their events are in the run's own accounting.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3

from devkit.emulator.client import DEFAULT_SECRET_KEY, EmulatorClient
from devkit.local_error_reports import StripeLetter
from meter_relay.config import DEFAULT_API_VERSION
from meter_relay.ledger_engines import DuckDbEngine
from meter_relay.ledger_queries import LedgerQueries
from meter_relay.ledger_store import LedgerBucket
from meter_relay.reconcile import MeterSummaries, Reconciliation, reconcile
from meter_relay.stripe_client import StripeApi, StripeHttp

BUCKET = "meter-relay-local-ledger"
EVENT_NAMES = ("api_requests", "search_calls")  # the meters the run bills
BEFORE = timedelta(hours=1, minutes=1)  # the run's events are stamped up to an hour back
AFTER = timedelta(minutes=1)


def provision(moto_url: str, region: str) -> str:
    """The ledger's bucket, in moto; its name."""
    s3 = boto3.client("s3", endpoint_url=moto_url, region_name=region)
    s3.create_bucket(Bucket=BUCKET)
    return BUCKET


def _engine(moto_url: str, region: str) -> DuckDbEngine:
    """DuckDB over the run's ledger bucket in moto, as `meter-relay` runs it locally."""
    s3 = boto3.client("s3", endpoint_url=moto_url, region_name=region)
    return DuckDbEngine(LedgerBucket(BUCKET, "", s3))


@dataclass
class LedgerCheck:
    """What the run's reconcile found, per event_name."""

    results: list[Reconciliation] = field(default_factory=list)
    objects_read: int = 0

    @property
    def mismatches(self) -> int:
        return sum(len(result.mismatches) for result in self.results)

    @property
    def ok(self) -> bool:
        return bool(self.results) and self.mismatches == 0

    def to_json(self) -> dict[str, Any]:
        return {
            "mismatches": self.mismatches,
            "objects_read": self.objects_read,
            "meters": [result.to_json() for result in self.results],
        }

    def render(self) -> list[str]:
        compared = sum(result.compared for result in self.results)
        lines = [
            f"  reconcile (the ledger against Stripe's summaries, per customer and hour): "
            f"{compared} customer-hours, {self.mismatches} mismatches"
        ]
        for result in self.results:
            for mismatch in result.mismatches[:5]:
                row = mismatch.to_json()
                lines.append(
                    f"    {result.meter.event_name} {row['customer']} {row['start']}: ledger "
                    f"{row['ledger']}, Stripe {row['stripe']}"
                )
        return lines


@dataclass(frozen=True)
class UnknownBody:
    """A letter written "body unknown", and what was known of its event by the end of the run:
    when Stripe (the emulator) received it, and what the ledger holds of it."""

    identifier: str
    window: str  # the report's validation window
    received: list[str]  # the emulator's receipts of the event
    recorded: list[str]  # the ledger's records of it by the run's end

    def render(self) -> str:
        recorded = "; ".join(self.recorded) or "not in the ledger"
        return (
            f"    body unknown: {self.identifier}, window {self.window}, received by Stripe at "
            f"{', '.join(self.received) or '?'}; by the end of the run: {recorded}"
        )


def unknown_bodies(
    moto_url: str,
    region: str,
    emulator: EmulatorClient,
    letters: Sequence[StripeLetter],
    began: datetime,
) -> list[UnknownBody]:
    """Each letter of an unknown body, against the ledger at the end of the run: a ledger that
    never recorded its event, or one that recorded it after the function stopped looking."""
    unknown = [letter for letter in letters if not letter.body_known]
    if not unknown:
        return []
    ledger = LedgerQueries(_engine(moto_url, region))
    found = ledger.trace(
        [letter.identifier for letter in unknown], began - BEFORE, datetime.now(UTC) + AFTER
    )
    return [
        UnknownBody(
            identifier=letter.identifier,
            window=f"{letter.validation_start} to {letter.validation_end}",
            received=[
                f"{event.get('received_at')} ({event.get('status')})"
                for event in emulator.events(identifier=letter.identifier)
            ],
            recorded=[
                f"{record.kind} at {record.at} ({record.reference})"
                for record in found.get(letter.identifier, [])
            ],
        )
        for letter in unknown
    ]


def reconcile_run(
    moto_url: str,
    region: str,
    emulator_url: str,
    began: datetime,
    ended: datetime,
    customers: Sequence[str],
) -> LedgerCheck:
    """The run's ledger against the emulator's summaries (Stripe's rules: summaries.py)."""
    engine = _engine(moto_url, region)
    ledger = LedgerQueries(engine)
    stripe = MeterSummaries(
        StripeApi(StripeHttp(emulator_url, DEFAULT_API_VERSION), DEFAULT_SECRET_KEY)
    )
    check = LedgerCheck()
    for event_name in EVENT_NAMES:
        check.results.append(
            reconcile(
                ledger,
                stripe,
                stripe.meter(event_name),
                since=began - BEFORE,
                until=ended + AFTER,
                grouping="hour",
                customers=customers,
            )
        )
    check.objects_read = engine.objects_read
    return check
