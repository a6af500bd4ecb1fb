"""The ledger's queries (ledger_sql.py): the SQL itself run by DuckDB over ledger objects in S3
(moto), and the same query text sent to Athena (moto's Athena runs nothing: the calls, the
workgroup, the text and the reading of result pages are what it can show)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import requests
from botocore.exceptions import ClientError

from meter_relay import ledger_sql
from meter_relay.events import MeterEvent, MeterKeys, ValidationRules
from meter_relay.ledger import (
    LedgerLine,
    StripeEvent,
    compress,
    delivered_events,
    ledger_text,
    line_of,
    object_key,
)
from meter_relay.ledger_engines import AthenaEngine, DuckDbEngine, QueryFailed
from meter_relay.ledger_queries import LedgerQueries, Totals, chunks
from meter_relay.ledger_sql import CANCELLATIONS, EVENTS, REJECTIONS
from meter_relay.ledger_store import (
    CancellationLine,
    LedgerBucket,
    LedgerUnavailable,
    RejectionLine,
)
from tests.plugins.aws import AwsEnv

pytestmark = pytest.mark.integration

BUCKET = "ledger-queries-test"
DAY = datetime(2026, 11, 21, tzinfo=UTC)
NOW = DAY + timedelta(days=1)


def at(hour: int, minute: int = 0, second: float = 0) -> datetime:
    return DAY + timedelta(hours=hour, minutes=minute, seconds=second)


def iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def line(
    identifier: str,
    customer: str,
    value: str,
    timestamp: str,
    delivered: datetime,
    *,
    event_name: str = "api_requests",
    request: str = "req-1",
) -> LedgerLine:
    sent = StripeEvent(
        event_name, {"stripe_customer_id": customer, "value": value}, identifier, timestamp
    )
    return line_of(sent, MeterKeys(), iso(delivered), "m-1", request)


@pytest.fixture
def ledger(aws: AwsEnv) -> LedgerBucket:
    s3 = aws.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    return LedgerBucket(BUCKET, "", s3)


def deliver(ledger: LedgerBucket, when: datetime, request: str, *lines: LedgerLine) -> None:
    ledger.put(EVENTS, when, request, delivered_events(lines))


def cancel(ledger: LedgerBucket, when: datetime, identifier: str, event_name: str) -> None:
    """A cancel `dlq cancel` recorded (Stripe took it: pending)."""
    line = CancellationLine(identifier, event_name, "adj_1", "pending", iso(when))
    ledger.put(CANCELLATIONS, when, "cli-1", [line])


def queries(ledger: LedgerBucket) -> LedgerQueries:
    return LedgerQueries(DuckDbEngine(ledger), clock=lambda: NOW)


# ----- listing ----------------------------------------------------------------------------------
def test_keys_are_listed_by_hour_partition_and_by_when_they_were_written(
    ledger: LedgerBucket,
) -> None:
    hours = {"h01": at(1), "h02": at(2, 30), "h03": at(3), "h23": at(23)}
    hours["next-01"] = NOW + timedelta(hours=1)
    for name, when in hours.items():
        deliver(ledger, when, name, line(name, "cus_a", "1", iso(when), when))
    ledger.put(REJECTIONS, at(2), "evt_1", [])  # another table: never listed with events

    def names(keys: Iterable[str]) -> list[str]:
        return sorted(key.rsplit("/", 1)[1].split(".")[0] for key in keys)

    assert names(ledger.keys(EVENTS, at(2, 10), at(3, 59))) == ["h02", "h03"]
    assert names(ledger.keys(EVENTS, at(22), NOW + timedelta(hours=1, minutes=5))) == [
        "h23",
        "next-01",
    ]
    written = datetime.now(UTC)  # S3's LastModified: when each was put, moments ago
    everything = (EVENTS, at(0), NOW + timedelta(hours=2))
    assert names(ledger.keys(*everything, written_from=written - timedelta(minutes=1))) == sorted(
        hours
    )
    assert names(ledger.keys(*everything, written_from=written + timedelta(minutes=1))) == []


# ----- trace -------------------------------------------------------------------------------------
def test_trace_finds_every_record_of_an_identifier_in_order(ledger: LedgerBucket) -> None:
    first_line = line("ev-1", "cus_a", "3", iso(at(10)), at(10, 1), request="req-a")
    deliver(ledger, at(10, 1), "req-a", first_line)
    second_line = line("ev-2", "cus_b", "4", iso(at(23)), at(23, 59), request="req-b")
    deliver(ledger, at(23, 59), "req-b", second_line)
    cancel(ledger, at(11), "ev-1", "api_requests")
    ledger.put(
        REJECTIONS,
        NOW + timedelta(minutes=1),  # the next day's partition
        "evt_report",
        [
            RejectionLine(
                "ev-2",
                "meter_event_customer_not_found",
                "No customer",
                "evt_report",
                "v1.billing.meter.error_report_triggered",
                iso(NOW),
            )
        ],
    )
    found = queries(ledger).trace(["ev-1", "ev-2", "ev-none"], at(0), NOW + timedelta(hours=1))

    assert set(found) == {"ev-1", "ev-2"}
    first = [(r.kind, r.at, r.reference, r.detail) for r in found["ev-1"]]
    assert first == [
        ("delivered", iso(at(10, 1)), "req-a", "m-1"),
        ("cancelled", iso(at(11)), "adj_1", "pending"),
    ]
    delivered = found["ev-1"][0]
    assert (delivered.event_name, delivered.customer, delivered.value) == (
        "api_requests",
        "cus_a",
        "3",
    )
    assert [(r.kind, r.code, r.reference) for r in found["ev-2"]] == [
        ("delivered", None, "req-b"),
        ("rejected", "meter_event_customer_not_found", "evt_report"),
    ]


def test_trace_reads_only_the_days_asked_for(ledger: LedgerBucket) -> None:
    deliver(ledger, at(10), "req-a", line("ev-old", "cus_a", "3", iso(at(10)), at(10)))
    engine = DuckDbEngine(ledger)
    found = LedgerQueries(engine).trace(["ev-old"], NOW, NOW + timedelta(hours=2))
    assert found == {}
    assert engine.objects_read == 0  # the day before was not even fetched


def test_a_trace_of_thousands_asks_few_queries_each_within_athenas_limit() -> None:
    """Each query reads every hour of its window: as few as Athena's 256 KB of text allow,
    the longest identifiers included."""
    longest = [f"{n:05d}'" + "x" * 94 for n in range(5000)]  # 100 characters, a quote in each
    batches = list(chunks(longest))
    assert [i for batch in batches for i in batch] == longest  # each once, in order
    texts = [ledger_sql.trace(batch, at(0), NOW).text for batch in batches]
    assert max(len(text.encode()) for text in texts) < 256 * 1024
    assert len(batches) == 7  # 80,000 bytes of literals a query: 761 of these
    usual = [f"{n:08d}-1b2c-4d5e-8f90-123456789abc-0" for n in range(5000)]  # a message id's
    assert len(list(chunks(usual))) == 3  # was 10, at 500 a query


def test_a_trace_in_several_queries_fetches_each_object_once(ledger: LedgerBucket) -> None:
    for hour in (10, 11):
        recorded = line("ev", "cus_a", "1", iso(at(hour)), at(hour), request=f"req-{hour}")
        deliver(ledger, at(hour), f"req-{hour}", recorded)
    engine = DuckDbEngine(ledger)
    identifiers = ["ev"] + [f"other-{n:06d}" for n in range(9000)]  # 6 queries
    assert len(list(chunks(identifiers))) > 1
    found = LedgerQueries(engine).trace(identifiers, at(0), NOW)
    assert [r.reference for r in found["ev"]] == ["req-10", "req-11"]
    assert engine.objects_read == 2


def test_a_query_reads_the_hours_it_names_not_only_the_days(ledger: LedgerBucket) -> None:
    for hour in (10, 11, 12, 13):
        recorded = line("ev", "cus_a", "1", iso(at(hour)), at(hour), request=f"req-{hour}")
        deliver(ledger, at(hour), f"req-{hour}", recorded)
    text = ledger_sql.trace(["ev"], at(11, 30), at(12, 10)).text
    # every object of the day fetched: the SQL alone must keep to hours 11 and 12
    everything = ledger_sql.Query(text, at(0), NOW)
    rows = DuckDbEngine(ledger).run(everything)
    assert sorted(row["reference"] or "" for row in rows) == ["req-11", "req-12"]
    over_midnight = ledger_sql.Query(ledger_sql.trace(["ev"], at(12), NOW).text, at(0), NOW)
    assert sorted(r["reference"] or "" for r in DuckDbEngine(ledger).run(over_midnight)) == [
        "req-12",
        "req-13",
    ]


def test_an_identifier_is_a_literal_whatever_it_holds(ledger: LedgerBucket) -> None:
    odd = ["it's", "{events}", "a' OR '1'='1", "x\\y"]
    deliver(
        ledger,
        at(10),
        "req-odd",
        *[line(identifier, "cus_a", "1", iso(at(10)), at(10)) for identifier in odd],
        line("other", "cus_a", "1", iso(at(10)), at(10)),
    )
    found = queries(ledger).trace(odd, at(0), NOW)
    assert set(found) == set(odd)
    with pytest.raises(ValueError, match="NUL"):
        ledger_sql.literal("a\x00b")


def test_an_object_holding_a_lone_surrogate_is_read_with_all_its_events(
    ledger: LedgerBucket,
) -> None:
    """A producer's lone surrogate (JSON's escape allows one, and the ledger keeps what Stripe
    received) must not cost trace and reconcile the rest of its object, nor the query: DuckDB
    reads it as U+FFFD."""
    events = [
        MeterEvent(
            "api_requests", {"stripe_customer_id": customer, "value": value}, name, iso(at(10))
        )
        for name, customer, value in [("ev-odd", "cus_\udc80", "2"), ("ev-a", "cus_a", "3")]
    ]
    text = ledger_text(events, ["m-1", "m-2"], ValidationRules(), at(10, 1), "req-odd")
    key = object_key("", at(10, 1), "req-odd")
    ledger.s3.put_object(Bucket=BUCKET, Key=key, Body=compress(text))

    found = queries(ledger).trace(["ev-odd", "ev-a"], at(0), NOW)
    totals = queries(ledger).reconcile("api_requests", [], at(10), at(11), 3600)

    assert [(r.kind, r.customer) for r in found["ev-odd"]] == [("delivered", "cus_\ufffd")]
    assert [(r.kind, r.customer) for r in found["ev-a"]] == [("delivered", "cus_a")]
    hour = int(at(10).timestamp())
    assert totals[("cus_a", hour)].total == Decimal(3)
    assert totals[("cus_\ufffd", hour)].total == Decimal(2)


# ----- what Stripe has (replays) -----------------------------------------------------------------
def test_delivered_means_accepted_and_not_reported_rejected_since(ledger: LedgerBucket) -> None:
    deliver(
        ledger,
        at(10),
        "req-1",
        line("kept", "cus_a", "1", iso(at(10)), at(10)),
        line("rejected", "cus_x", "1", iso(at(10)), at(10)),
        line("fixed", "cus_y", "1", iso(at(10)), at(10)),
    )
    rejection = RejectionLine(
        "?", "meter_event_customer_not_found", "No such customer", "evt_1", "t", iso(at(11))
    )
    ledger.put(
        REJECTIONS,
        at(11),
        "evt_1",
        [
            RejectionLine(**{**_fields(rejection), "identifier": "rejected"}),
            RejectionLine(**{**_fields(rejection), "identifier": "fixed"}),
        ],
    )
    # sent again after the customer was created: Stripe has it now
    deliver(ledger, at(12), "req-2", line("fixed", "cus_y", "1", iso(at(10)), at(12)))

    found = queries(ledger).delivered(["kept", "rejected", "fixed", "never"], at(10))
    assert found == {"kept": at(10), "fixed": at(12)}  # each with its latest counted delivery


def _fields(record: RejectionLine) -> dict[str, Any]:
    return {name: getattr(record, name) for name in record.__struct_fields__}


# ----- reconcile ---------------------------------------------------------------------------------
def test_reconcile_counts_as_stripe_does_per_customer_and_hour(ledger: LedgerBucket) -> None:
    deliver(
        ledger,
        at(10, 5),
        "req-1",
        line("a-1", "cus_a", "3", iso(at(10, 1)), at(10, 5)),
        line("a-2", "cus_a", "5", "2026-11-21T12:20:00+02:00", at(10, 5)),  # 10:20 UTC
        line("a-cancelled", "cus_a", "7", iso(at(10, 30)), at(10, 31)),
        line("a-rejected", "cus_a", "11", iso(at(10, 40)), at(10, 41)),
        line("other-meter", "cus_a", "100", iso(at(10, 40)), at(10, 41), event_name="searches"),
        line("b-1", "cus_b", "2", iso(at(11, 10)), at(11, 11)),
        line("b-2", "cus_b", "9", iso(at(11, 50)), at(11, 51)),
        line("b-early", "cus_b", "1", iso(at(9, 59, 59.5)), at(10, 5)),  # before the span
    )
    # the same identifier delivered again (an SQS retry): Stripe counted the first only
    deliver(ledger, at(10, 45), "req-2", line("a-2", "cus_a", "50", iso(at(10, 20)), at(10, 45)))
    cancel(ledger, at(12), "a-cancelled", "api_requests")
    ledger.put(
        REJECTIONS,
        at(11),
        "evt_1",
        [
            RejectionLine(
                "a-rejected", "meter_event_customer_not_found", "gone", "evt_1", "t", iso(at(11))
            )
        ],
    )
    totals = queries(ledger).reconcile("api_requests", [], at(10), at(12), 3600)

    hour = int(at(10).timestamp())
    assert totals == {
        ("cus_a", hour): Totals(2, Decimal(8), Decimal(5)),
        ("cus_b", hour + 3600): Totals(2, Decimal(11), Decimal(9)),
    }
    # each window's latest delivery of what it counts (a-2's second delivery is not counted)
    assert totals[("cus_a", hour)].last_delivered_at == at(10, 5)
    assert totals[("cus_b", hour + 3600)].last_delivered_at == at(11, 51)


def test_an_identifier_counts_again_24_hours_after_stripe_last_counted_it(
    ledger: LedgerBucket,
) -> None:
    """Stripe deduplicates an identifier for 24 hours: a producer's resend (no timestamp of its
    own, stamped with its new send) an hour later is dropped, one 25 hours later counted."""
    deliver(ledger, at(1, 1), "req-1", line("r-1", "cus_a", "3", iso(at(1)), at(1, 1)))
    deliver(ledger, at(2, 1), "req-2", line("r-1", "cus_a", "3", iso(at(2)), at(2, 1)))
    later = at(26)
    deliver(ledger, later, "req-3", line("r-1", "cus_a", "3", iso(at(26)), later))
    two_days = LedgerQueries(DuckDbEngine(ledger), clock=lambda: NOW + timedelta(days=1))
    totals = two_days.reconcile("api_requests", [], at(0), at(48), 3600)
    hour = int(at(0).timestamp())
    assert totals == {
        ("cus_a", hour + 3600): Totals(1, Decimal(3), Decimal(3)),
        ("cus_a", hour + 2 * 3600): Totals(0, Decimal(0), Decimal(0)),  # the dropped resend
        ("cus_a", hour + 26 * 3600): Totals(1, Decimal(3), Decimal(3)),
    }


def test_a_cancel_takes_off_only_the_count_it_came_within_24_hours_of(
    ledger: LedgerBucket,
) -> None:
    """Stripe cancels an event only within 24 hours of receiving it: of an identifier counted
    twice, 25 hours apart, a cancel after the second takes off the second alone."""
    deliver(ledger, at(1, 1), "req-1", line("r-1", "cus_a", "3", iso(at(1)), at(1, 1)))
    deliver(ledger, at(26, 1), "req-2", line("r-1", "cus_a", "3", iso(at(26)), at(26, 1)))
    cancel(ledger, at(27), "r-1", "api_requests")
    two_days = LedgerQueries(DuckDbEngine(ledger), clock=lambda: NOW + timedelta(days=1))
    totals = two_days.reconcile("api_requests", [], at(0), at(48), 3600)
    hour = int(at(0).timestamp())
    assert totals == {
        ("cus_a", hour + 3600): Totals(1, Decimal(3), Decimal(3)),
        ("cus_a", hour + 26 * 3600): Totals(0, Decimal(0), Decimal(0)),
    }
    assert totals[("cus_a", hour + 26 * 3600)].last_cancelled_at == at(27)
    assert totals[("cus_a", hour + 3600)].last_cancelled_at is None


def test_a_customer_whose_every_event_was_cancelled_is_still_one_to_compare(
    ledger: LedgerBucket,
) -> None:
    """Stripe may still count a cancelled event (its adjustment pending, or failed): the
    customer's window is there, counting nothing, with when it was cancelled."""
    deliver(
        ledger,
        at(10, 5),
        "req-1",
        line("c-1", "cus_a", "3", iso(at(10, 1)), at(10, 5)),
        line("c-2", "cus_c", "7", iso(at(10, 2)), at(10, 5)),
    )
    cancel(ledger, at(10, 40), "c-2", "api_requests")
    totals = queries(ledger).reconcile("api_requests", [], at(10), at(11), 3600)
    hour = int(at(10).timestamp())
    assert totals == {
        ("cus_a", hour): Totals(1, Decimal(3), Decimal(3)),
        ("cus_c", hour): Totals(0, Decimal(0), Decimal(0)),
    }
    assert totals[("cus_c", hour)].last_cancelled_at == at(10, 40)
    assert totals[("cus_c", hour)].last_delivered_at is None  # it counts no delivery
    assert totals[("cus_a", hour)].last_cancelled_at is None


def test_a_cancel_of_another_meters_event_takes_nothing_off(ledger: LedgerBucket) -> None:
    """Stripe cancels an event by its event_name and identifier: a cancel recorded under
    another name (`dlq cancel --identifiers FILE --event-name` given the wrong one) is not
    this event's."""
    deliver(ledger, at(10, 5), "req-1", line("n-1", "cus_a", "3", iso(at(10, 1)), at(10, 5)))
    cancel(ledger, at(11), "n-1", "searches")
    totals = queries(ledger).reconcile("api_requests", [], at(10), at(11), 3600)
    assert totals == {("cus_a", int(at(10).timestamp())): Totals(1, Decimal(3), Decimal(3))}


def test_a_value_too_large_to_sum_fails_its_window_not_the_query(ledger: LedgerBucket) -> None:
    """The forwarder passes on any positive integer; DECIMAL(38, 12) holds 26 digits before the
    point. Such a value adds nothing (its window then disagrees with Stripe's) instead of
    failing the query for every customer."""
    deliver(
        ledger,
        at(10, 5),
        "req-1",
        line("h-1", "cus_a", "3", iso(at(10, 1)), at(10, 5)),
        line("h-2", "cus_huge", "1" + "0" * 30, iso(at(10, 2)), at(10, 5)),
    )
    totals = queries(ledger).reconcile("api_requests", [], at(10), at(11), 3600)
    hour = int(at(10).timestamp())
    assert totals[("cus_a", hour)] == Totals(1, Decimal(3), Decimal(3))
    assert (totals[("cus_huge", hour)].events, totals[("cus_huge", hour)].total) == (1, Decimal(0))


def test_values_whose_sum_would_overflow_fail_their_window_not_the_query(
    ledger: LedgerBucket,
) -> None:
    """Each of 26 digits fits DECIMAL(38, 12) alone, their sum does not: summed, it failed the
    query for every customer (exit 3). Values of more than 20 digits add nothing; 20 do."""
    big, fits = "9" * 26, "9" * 20
    deliver(
        ledger,
        at(10, 5),
        "req-1",
        *[line(f"o-{n}", "cus_over", big, iso(at(10, 1)), at(10, 5)) for n in range(20)],
        *[line(f"f-{n}", "cus_fits", fits, iso(at(10, 1)), at(10, 5)) for n in range(3)],
    )
    totals = queries(ledger).reconcile("api_requests", [], at(10), at(11), 3600)
    hour = int(at(10).timestamp())
    assert (totals[("cus_over", hour)].events, totals[("cus_over", hour)].total) == (20, Decimal(0))
    assert totals[("cus_fits", hour)].total == 3 * Decimal(fits)


def test_reconcile_takes_a_cut_window_and_chosen_customers(ledger: LedgerBucket) -> None:
    deliver(
        ledger,
        at(10, 50),
        "req-1",
        line("a-1", "cus_a", "3", iso(at(10, 1)), at(10, 50)),
        line("a-2", "cus_a", "2.5", iso(at(10, 30)), at(10, 50)),
        line("b-1", "cus_b", "4", iso(at(10, 31)), at(10, 50)),
    )
    totals = queries(ledger).reconcile("api_requests", ["cus_a"], at(10, 30), at(11), 3600)
    assert totals == {("cus_a", int(at(10).timestamp())): Totals(1, Decimal("2.5"), Decimal("2.5"))}
    day = queries(ledger).reconcile("api_requests", [], at(0), NOW, 86_400)
    assert day[("cus_a", int(DAY.timestamp()))] == Totals(2, Decimal("5.5"), Decimal("2.5"))


def test_reconcile_finds_the_customer_and_value_where_each_meter_keeps_them(
    ledger: LedgerBucket,
) -> None:
    """A meter with its own payload keys, in the case producers wrote them: the customer and
    the value are read by the keys recorded beside each event, not by Stripe's defaults; an
    event whose payload lacks the key has no customer (and a meter's other events still count)."""
    keys = MeterKeys("customerId", "callCount")

    def searched(identifier: str, payload: dict[str, str]) -> LedgerLine:
        sent = StripeEvent("searches", payload, identifier, iso(at(10, 5)))
        return line_of(sent, keys, iso(at(10, 6)), "m-1", "req-1")

    deliver(
        ledger,
        at(10, 6),
        "req-1",
        searched("s-1", {"customerId": "cus_a", "callCount": "4", "region": "eu"}),
        searched("s-2", {"customerId": "cus_a", "callCount": "6"}),
        searched("s-3", {"customerid": "cus_a", "callCount": "100"}),  # not the meter's key
        line("a-1", "cus_a", "1000", iso(at(10, 5)), at(10, 6)),  # another meter
    )
    totals = queries(ledger).reconcile("searches", [], at(10), at(11), 3600)
    hour = int(at(10).timestamp())
    # the event without the meter's customer key counts for no customer (""); s-1 and s-2 tie
    # (one timestamp, one invocation): either may be Stripe's last
    assert totals == {
        ("cus_a", hour): Totals(2, Decimal(10), Decimal(4), Decimal(6), 2),
        ("", hour): Totals(1, Decimal(100), Decimal(100)),
    }


def test_a_windows_last_value_is_the_newest_events_and_ties_give_all_of_theirs(
    ledger: LedgerBucket,
) -> None:
    """Stripe's `last` is the newest event's value. Events of one timestamp are told apart by
    their delivery; those sent by one invocation (concurrent calls, Stripe's order unknown)
    give the lowest and highest of their values and how many differ, whatever order the
    engine scans them in (it once picked either of two at random: a flaky test, and a
    reconcile that could call a right total wrong)."""
    deliver(
        ledger,
        at(10, 20),
        "req-1",
        line("a-1", "cus_a", "7", iso(at(10, 10)), at(10, 20)),
        line("a-2", "cus_a", "3", iso(at(10, 10)), at(10, 20)),
        line("a-3", "cus_a", "5", iso(at(10, 10)), at(10, 20)),
        line("a-4", "cus_a", "3", iso(at(10, 10)), at(10, 20)),
        line("a-old", "cus_a", "100", iso(at(10, 9)), at(10, 20)),
        line("b-1", "cus_b", "2", iso(at(10, 10)), at(10, 20)),
        line("b-2", "cus_b", "9", iso(at(10, 10)), at(10, 20)),
    )
    deliver(  # a later invocation: its event of the same timestamp came later to Stripe
        ledger,
        at(10, 25),
        "req-2",
        line("b-3", "cus_b", "4", iso(at(10, 10)), at(10, 25)),
    )
    hour = int(at(10).timestamp())
    for _ in range(5):  # the scan order of DuckDB's threads varies between runs
        totals = queries(ledger).reconcile("api_requests", [], at(10), at(11), 3600)
        assert totals == {
            ("cus_a", hour): Totals(5, Decimal(118), Decimal(3), Decimal(7), 3),
            ("cus_b", hour): Totals(3, Decimal(15), Decimal(4)),
        }


def test_reconcile_of_an_empty_ledger_is_empty(ledger: LedgerBucket) -> None:
    assert queries(ledger).reconcile("api_requests", [], at(10), at(12), 3600) == {}


# ----- Athena ------------------------------------------------------------------------------------
def athena_results(aws: AwsEnv, rows: list[dict[str, str | None]], names: list[str]) -> None:
    """The rows Athena would answer (its first row the column names), queued in moto."""

    def cells(values: list[str | None]) -> dict[str, Any]:
        return {"Data": [{} if v is None else {"VarCharValue": v} for v in values]}

    result = {
        "rows": [cells(list(names))] + [cells([row[n] for n in names]) for row in rows],
        "column_info": [{"Name": name, "Type": "varchar"} for name in names],
    }
    response = requests.post(
        f"{aws.endpoint_url}/moto-api/static/athena/query-results",
        json={"region": aws.region, "results": [result]},
        timeout=10,
    )
    response.raise_for_status()


def test_athena_runs_the_same_text_in_the_workgroup_and_reads_it_as_duckdb_does(
    aws: AwsEnv, ledger: LedgerBucket
) -> None:
    deliver(
        ledger,
        at(10, 5),
        "req-1",
        line("a-1", "cus_a", "3", iso(at(10, 1)), at(10, 5)),
        line("a-2", "cus_a", "5", iso(at(10, 20)), at(10, 5)),
    )
    query = ledger_sql.reconcile("api_requests", [], at(10), at(11), 3600, now=NOW)
    expected = DuckDbEngine(ledger).run(query)
    assert expected  # the SQL itself, on DuckDB
    athena = aws.client("athena")
    athena.create_work_group(
        Name="production-ledger",
        Configuration={"ResultConfiguration": {"OutputLocation": f"s3://{BUCKET}/athena-results/"}},
    )
    athena_results(aws, expected, list(expected[0]))
    engine = AthenaEngine(
        athena, "production-ledger", "meter_relay_production", sleep=lambda _: None
    )

    assert engine.run(query) == expected
    assert engine.last_execution is not None
    sent = athena.get_query_execution(QueryExecutionId=engine.last_execution)["QueryExecution"]
    assert sent["WorkGroup"] == "production-ledger"
    assert sent["QueryExecutionContext"]["Database"] == "meter_relay_production"
    assert sent["Query"] == query.render(
        {t.name: f'"meter_relay_production"."{t.name}"' for t in ledger_sql.TABLES}
    )
    assert 'FROM "meter_relay_production"."events" x CROSS JOIN UNNEST(' in sent["Query"]
    assert "read_json" not in sent["Query"]
    assert "\x00" not in sent["Query"]


def test_athena_answers_become_the_ledgers_totals(aws: AwsEnv) -> None:
    athena = aws.client("athena")
    athena.create_work_group(Name="wg", Configuration={})
    hour = str(int(at(10).timestamp()))
    athena_results(
        aws,
        [
            {
                "customer": "cus_a",
                "window_start": hour,
                "events": "2",
                "total": "8.000000000000",
                "last_value": "5.000000000000",
                "last_highest": "7.000000000000",
                "last_values": "2",
            },
            {
                "customer": "cus_b",
                "window_start": hour,
                "events": "1",
                "total": "3.000000000000",
                "last_value": "3.000000000000",
                "last_highest": "3.000000000000",
                "last_values": "1",
            },
        ],
        [
            "customer",
            "window_start",
            "events",
            "total",
            "last_value",
            "last_highest",
            "last_values",
        ],
    )
    engine = AthenaEngine(athena, "wg", "db", sleep=lambda _: None)
    totals = LedgerQueries(engine, clock=lambda: NOW).reconcile(
        "api_requests", [], at(10), at(11), 3600
    )
    assert totals == {
        ("cus_a", int(hour)): Totals(2, Decimal(8), Decimal(5), Decimal(7), 2),
        ("cus_b", int(hour)): Totals(1, Decimal(3), Decimal(3)),
    }


class StuckAthena:
    """An Athena whose query never finishes, or fails: what moto cannot do."""

    def __init__(self, state: str) -> None:
        self.state = state
        self.stopped: list[str] = []

    def start_query_execution(self, **_: Any) -> dict[str, Any]:
        return {"QueryExecutionId": "q-1"}

    def get_query_execution(self, QueryExecutionId: str) -> dict[str, Any]:
        return {
            "QueryExecution": {
                "Status": {"State": self.state, "StateChangeReason": "TABLE_NOT_FOUND: events"}
            }
        }

    def stop_query_execution(self, QueryExecutionId: str) -> None:
        self.stopped.append(QueryExecutionId)


def test_a_failed_athena_query_says_why() -> None:
    engine = AthenaEngine(StuckAthena("FAILED"), "wg", "db", sleep=lambda _: None)  # type: ignore[arg-type]
    with pytest.raises(QueryFailed, match="q-1 failed: TABLE_NOT_FOUND"):
        engine.run(ledger_sql.trace(["x"], at(0), NOW))


@pytest.mark.parametrize(
    ("limits", "said"),
    [
        ({"timeout": 300}, "did not finish in 300 s"),
        # the replay function has 50 s, the query up to 300: its wait stops with the time the
        # function has left, so the letters are given back before Lambda ends it
        ({"remaining": lambda: 40.0}, "did not finish in 40 s"),
    ],
    ids=["its-timeout", "the-callers-time-left"],
)
def test_an_athena_query_that_outlasts_its_wait_is_stopped(limits: Any, said: str) -> None:
    clock = iter(range(0, 10_000, 10))
    athena = StuckAthena("RUNNING")
    engine = AthenaEngine(
        athena,  # type: ignore[arg-type]
        "wg",
        "db",
        sleep=lambda _: None,
        clock=lambda: float(next(clock)),
        **limits,
    )
    with pytest.raises(QueryFailed, match=said):
        engine.run(ledger_sql.trace(["x"], at(0), NOW))
    assert athena.stopped == ["q-1"]


class PagedAthena(StuckAthena):
    """A finished query whose results come in two pages (Athena gives 1,000 rows a page), the
    column names as the first page's first row only; or an Athena that refuses to start."""

    def __init__(self, refuse: str | None = None) -> None:
        super().__init__("SUCCEEDED")
        self.refuse = refuse

    def start_query_execution(self, **_: Any) -> dict[str, Any]:
        if self.refuse:
            error = {"Error": {"Code": self.refuse, "Message": "Rate exceeded"}}
            raise ClientError(error, "StartQueryExecution")  # type: ignore[arg-type]
        return {"QueryExecutionId": "q-1"}

    def get_paginator(self, _: str) -> Any:
        def page(*values: str) -> dict[str, Any]:
            rows = [{"Data": [{"VarCharValue": v}]} for v in values]
            info = [{"Name": "identifier", "Type": "varchar"}]
            return {"ResultSet": {"Rows": rows, "ResultSetMetadata": {"ColumnInfo": info}}}

        class Pages:
            def paginate(self, **_: Any) -> list[dict[str, Any]]:
                return [page("identifier", "a-1", "a-2"), page("a-3")]

        return Pages()


def test_every_page_of_athenas_answer_is_read_and_its_refusal_is_said() -> None:
    engine = AthenaEngine(PagedAthena(), "wg", "db", sleep=lambda _: None)  # type: ignore[arg-type]
    rows = engine.run(ledger_sql.trace(["x"], at(0), NOW))
    assert [row["identifier"] for row in rows] == ["a-1", "a-2", "a-3"]

    throttled = PagedAthena(refuse="TooManyRequestsException")
    refused = AthenaEngine(throttled, "wg", "db", sleep=lambda _: None)  # type: ignore[arg-type]
    with pytest.raises(LedgerUnavailable, match="Athena: StartQueryExecution: TooManyRequests"):
        refused.run(ledger_sql.trace(["x"], at(0), NOW))
