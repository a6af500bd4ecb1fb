"""The reconcile that ends `make run` and `make chaos` (devkit.local_ledger), on a ledger in moto
and the emulator's summaries: agreement passes, a planted discrepancy fails the run's report
and is named."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import msgspec
import pytest

from devkit.emulator.client import EmulatorClient
from devkit.local_error_reports import StripeLetter
from devkit.local_ledger import BUCKET, provision, reconcile_run, unknown_bodies
from devkit.local_stack import Expected, MappingStats, account
from meter_relay.events import MeterKeys, format_timestamp
from meter_relay.ledger import StripeEvent, delivered_events, line_of
from meter_relay.ledger_sql import EVENTS
from meter_relay.ledger_store import LedgerBucket
from tests.integration.test_local_stack import _stream_events
from tests.plugins.aws import AwsEnv

pytestmark = pytest.mark.integration


def _sent_and_recorded(
    aws: AwsEnv, emulator: EmulatorClient, identifier: str
) -> tuple[datetime, str, dict[str, Any]]:
    """One event Stripe received and the ledger recorded (invocation r-1): when the run
    began, the event's timestamp, the event."""
    provision(aws.endpoint_url, aws.region)
    began = datetime.now(UTC)
    stamp = format_timestamp(began - timedelta(minutes=10))
    event: dict[str, Any] = {
        "event_name": "api_requests",
        "identifier": identifier,
        "timestamp": stamp,
        "payload": {"stripe_customer_id": "cus_0001", "value": "3"},
    }
    _stream_events(emulator, [event])
    recorded = line_of(msgspec.convert(event, StripeEvent), MeterKeys(), stamp, "m-1", "r-1")
    LedgerBucket(BUCKET, "", aws.client("s3")).put(
        EVENTS, began, "r-1", delivered_events([recorded])
    )
    return began, stamp, event


def test_the_runs_reconcile_passes_on_agreement_and_names_a_discrepancy(
    aws: AwsEnv, emulator: EmulatorClient
) -> None:
    began, _, event = _sent_and_recorded(aws, emulator, "run-1")
    customers = ["cus_0001", "cus_0002"]

    agreed = reconcile_run(aws.endpoint_url, aws.region, emulator.url, began, began, customers)
    assert agreed.ok
    assert [r.compared for r in agreed.results] == [1, 0]

    _stream_events(
        emulator, [{**event, "identifier": "never-sent"}]
    )  # Stripe counts what we never sent
    planted = reconcile_run(aws.endpoint_url, aws.region, emulator.url, began, began, customers)
    assert not planted.ok
    (mismatch,) = planted.results[0].mismatches
    assert (mismatch.customer, mismatch.ledger, mismatch.stripe) == (
        "cus_0001",
        Decimal(3),
        Decimal(6),
    )

    report = account(Expected(), emulator, {}, 1.0, MappingStats())
    report.ledger = planted
    assert not report.ok
    rendered = report.render()
    assert "1 customer-hours, 1 mismatches" in rendered
    assert "api_requests cus_0001" in rendered
    assert "result: FAILED" in rendered
    assert report.to_json()["reconcile"]["mismatches"] == 1
    assert Counter(report.dead_lettered) == Counter()


def test_a_letter_whose_body_stayed_unknown_is_held_against_stripe_and_the_ledger(
    aws: AwsEnv, emulator: EmulatorClient
) -> None:
    """The run's report says, of each letter "body unknown", when Stripe received its event
    and what the ledger held of it by the end: recorded late, or never."""
    began, stamp, _ = _sent_and_recorded(aws, emulator, "late-1")
    letters = [
        StripeLetter("late-1", "meter_event_customer_not_found", "evt_1", False, "s", "e"),
        StripeLetter("never-1", "meter_event_customer_not_found", "evt_1", False, "s", "e"),
        StripeLetter("known-1", "meter_event_customer_not_found", "evt_1", True),
    ]

    late, never = unknown_bodies(aws.endpoint_url, aws.region, emulator, letters, began)

    assert (late.identifier, late.window) == ("late-1", "s to e")
    assert len(late.received) == 1
    assert late.recorded == [f"delivered at {stamp} (r-1)"]
    assert (never.identifier, never.received, never.recorded) == ("never-1", [], [])
    assert "not in the ledger" in never.render()
    assert unknown_bodies(aws.endpoint_url, aws.region, emulator, letters[2:], began) == []
