"""reconcile.py without the network: the windows of a run, the requests Stripe is asked
(grouped where windows are whole, alone where cut), paging, the settled end, and the
comparison per formula."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from meter_relay.ledger_queries import Totals
from meter_relay.reconcile import (
    MeterInfo,
    MeterSummaries,
    StripeFailed,
    Window,
    reconcile,
    settled,
    windows,
)
from meter_relay.stripe_client import Kind, StripeAnswer

T = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)
E = int(T.timestamp())


def test_windows_are_cut_to_the_minute_and_split_at_each_hour() -> None:
    found = windows(T + timedelta(minutes=20, seconds=31), T + timedelta(hours=2, minutes=5), 3600)
    assert found == [
        Window(E + 20 * 60, E + 3600),
        Window(E + 3600, E + 7200),
        Window(E + 7200, E + 7200 + 300),
    ]
    assert [w.whole for w in found] == [False, True, False]
    assert windows(T, T + timedelta(seconds=59), 3600) == []


def test_a_day_window_cut_to_an_hour_is_not_whole() -> None:
    """Stripe groups by day only on day boundaries: an hour cut from a day is asked alone."""
    midnight = T.replace(hour=0)
    found = windows(midnight - timedelta(hours=1), midnight + timedelta(days=1), 86400)
    assert [(w.end - w.start, w.whole) for w in found] == [(3600, False), (86400, True)]


def test_settled_leaves_out_the_last_minutes_before_now() -> None:
    now = T + timedelta(minutes=30, seconds=10)
    assert settled(T + timedelta(hours=1), now, 5) == T + timedelta(minutes=25)
    assert settled(T + timedelta(minutes=10), now, 5) == T + timedelta(minutes=10)


class FakeStripe:
    """Stripe's GETs as the reconcile makes them: the meter, and summaries in pages."""

    def __init__(self, summaries: list[dict[str, Any]], formula: str = "sum") -> None:
        self.summaries = summaries
        self.formula = formula
        self.asked: list[dict[str, Any]] = []

    def get(self, path: str, params: dict[str, Any], timeout: float) -> StripeAnswer:
        if path.endswith("/event_summaries"):
            self.asked.append(params)
            start, end = params["start_time"], params["end_time"]
            inside = [s for s in self.summaries if start <= s["start_time"] < end]
            after = params.get("starting_after")
            if after:
                inside = inside[[s["id"] for s in inside].index(after) + 1 :]
            page = inside[: params["limit"]]
            body = {"data": page, "has_more": len(inside) > len(page)}
            return StripeAnswer(Kind.OK, 200, body=body)
        meter = {
            "id": "mtr_1",
            "event_name": "api",
            "default_aggregation": {"formula": self.formula},
        }
        return StripeAnswer(Kind.OK, 200, body=meter)


def summary(start: int, value: float, step: int = 3600) -> dict[str, Any]:
    return {
        "id": f"s{start}",
        "start_time": start,
        "end_time": start + step,
        "aggregated_value": value,
    }


def test_whole_windows_are_asked_grouped_and_paged_cut_ones_alone() -> None:
    stripe = FakeStripe([summary(E + h * 3600, h) for h in range(1, 150)])
    meter = MeterSummaries(stripe, sleep=lambda _: None).meter("api", "mtr_1")  # type: ignore[arg-type]
    span = windows(T + timedelta(minutes=30), T + timedelta(hours=150), 3600)
    values = MeterSummaries(stripe).summaries(meter, "cus_a", span, "hour")  # type: ignore[arg-type]

    assert values[E + 3600] == Decimal(1)
    assert values[E + 149 * 3600] == Decimal(149)
    cut, *grouped = stripe.asked
    assert (cut["start_time"], cut["end_time"]) == (E + 1800, E + 3600)
    assert "value_grouping_window" not in cut
    assert grouped[0]["value_grouping_window"] == "hour"
    assert (grouped[0]["start_time"], grouped[0]["end_time"]) == (E + 3600, E + 150 * 3600)
    assert grouped[1]["starting_after"] == f"s{E + 100 * 3600}"  # the second page


class FakeLedger:
    def __init__(self, totals: dict[tuple[str, int], Totals]) -> None:
        self.totals = totals

    def reconcile(self, *_: Any) -> dict[tuple[str, int], Totals]:
        return self.totals


@pytest.mark.parametrize(
    ("formula", "stripe_value", "mismatch"),
    [
        ("sum", 8, False),
        ("sum", 5, True),
        ("count", 2, False),
        ("last", 5, False),
        ("last", 3, True),
    ],
)
def test_the_meters_formula_decides_what_is_compared(
    formula: str, stripe_value: float, mismatch: bool
) -> None:
    stripe = FakeStripe([summary(E, stripe_value)], formula)
    ledger = FakeLedger({("cus_a", E): Totals(2, Decimal(8), Decimal(5))})
    result = reconcile(
        ledger,  # type: ignore[arg-type]
        MeterSummaries(stripe),  # type: ignore[arg-type]
        MeterInfo("mtr_1", "api", formula),
        since=T,
        until=T + timedelta(hours=1),
        grouping="hour",
    )
    assert result.customers == ["cus_a"]
    assert bool(result.mismatches) is mismatch


@pytest.mark.parametrize(
    ("tied", "stripe_value", "mismatch"),
    [
        (Totals(3, Decimal(10), Decimal(2), Decimal(6), 2), 2, False),
        (Totals(3, Decimal(10), Decimal(2), Decimal(6), 2), 6, False),
        (Totals(3, Decimal(10), Decimal(2), Decimal(6), 2), 4, True),  # an older event's value
        (Totals(3, Decimal(12), Decimal(2), Decimal(6), 3), 4, False),  # the middle of three
        (Totals(3, Decimal(12), Decimal(2), Decimal(6), 3), 7, True),
    ],
)
def test_a_last_value_may_be_any_of_the_newest_events_that_tie(
    tied: Totals, stripe_value: float, mismatch: bool
) -> None:
    """Events of one timestamp sent by one invocation reach Stripe in an order the ledger does
    not know: Stripe's last value agrees if it is one of theirs, and a mismatch says so."""
    stripe = FakeStripe([summary(E, stripe_value)], "last")
    result = reconcile(
        FakeLedger({("cus_a", E): tied}),  # type: ignore[arg-type]
        MeterSummaries(stripe),  # type: ignore[arg-type]
        MeterInfo("mtr_1", "api", "last"),
        since=T,
        until=T + timedelta(hours=1),
        grouping="hour",
    )
    assert bool(result.mismatches) is mismatch
    if mismatch:
        (found,) = result.mismatches
        assert found.ledger == Decimal(2)
        assert (
            found.note
            == f"the newest {tied.last_values} values tie (one invocation, one timestamp): 2 to 6"
        )


def test_a_customer_stripe_does_not_know_is_a_mismatch_with_stripes_words() -> None:
    class Refusing(FakeStripe):
        def get(self, path: str, params: dict[str, Any], timeout: float) -> StripeAnswer:
            return StripeAnswer(Kind.REJECTED, 400, "resource_missing", "No such customer")

    ledger = FakeLedger({("cus_x", E): Totals(1, Decimal(4), Decimal(4))})
    result = reconcile(
        ledger,  # type: ignore[arg-type]
        MeterSummaries(Refusing([])),  # type: ignore[arg-type]
        MeterInfo("mtr_1", "api", "sum"),
        since=T,
        until=T + timedelta(hours=1),
        grouping="hour",
    )
    (mismatch,) = result.mismatches
    assert (mismatch.ledger, mismatch.stripe) == (Decimal(4), Decimal(0))
    assert "No such customer" in mismatch.note


def test_stripe_unreachable_stops_the_reconcile() -> None:
    class Down(FakeStripe):
        def get(self, path: str, params: dict[str, Any], timeout: float) -> StripeAnswer:
            return StripeAnswer(Kind.TRANSIENT, 0, None, "connection failed")

    with pytest.raises(StripeFailed, match="connection failed") as failure:
        MeterSummaries(Down([]), sleep=lambda _: None).meter("api", "mtr_1")  # type: ignore[arg-type]
    assert failure.value.status == 0


@pytest.mark.parametrize(
    ("delivered_minutes_ago", "stripe_value", "unsettled", "mismatch"),
    [
        (2, 5, True, False),  # disagrees, delivered too recently: Stripe may not have it yet
        (10, 5, False, True),  # disagrees, delivered long enough ago: a mismatch
        (2, 8, False, False),  # agrees: nothing to say
    ],
)
def test_a_window_delivered_too_recently_for_stripes_summaries_is_unsettled(
    delivered_minutes_ago: int, stripe_value: float, unsettled: bool, mismatch: bool
) -> None:
    """An old-stamped event delivered a minute ago (a backlog, a replay) is in the ledger and
    may not be in Stripe's summaries yet: its window is not called a mismatch until later."""
    now = T + timedelta(hours=5)
    delivered = now - timedelta(minutes=delivered_minutes_ago)
    totals = Totals(2, Decimal(8), Decimal(5), last_delivered_at=delivered)
    result = reconcile(
        FakeLedger({("cus_a", E): totals}),  # type: ignore[arg-type]
        MeterSummaries(FakeStripe([summary(E, stripe_value)])),  # type: ignore[arg-type]
        MeterInfo("mtr_1", "api", "sum"),
        since=T,
        until=T + timedelta(hours=1),
        grouping="hour",
        delivered_until=now - timedelta(minutes=5),
    )
    assert bool(result.unsettled) is unsettled
    assert bool(result.mismatches) is mismatch
    assert result.compared == 1


def test_a_window_cancelled_too_recently_for_stripes_summaries_is_unsettled() -> None:
    """Stripe applies a cancel after a while: a window whose event was cancelled a minute ago
    (Stripe still counting it) is not called a mismatch yet; an hour later it is."""
    now = T + timedelta(hours=5)
    for cancelled, unsettled in (
        (now - timedelta(minutes=1), True),
        (now - timedelta(hours=1), False),
    ):
        totals = Totals(
            0, Decimal(0), Decimal(0), last_delivered_at=None, last_cancelled_at=cancelled
        )
        result = reconcile(
            FakeLedger({("cus_c", E): totals}),  # type: ignore[arg-type]
            MeterSummaries(FakeStripe([summary(E, 7)])),  # type: ignore[arg-type]
            MeterInfo("mtr_1", "api", "sum"),
            since=T,
            until=T + timedelta(hours=1),
            grouping="hour",
            delivered_until=now - timedelta(minutes=5),
        )
        assert result.customers == ["cus_c"]  # every event of it cancelled: still compared
        assert (bool(result.unsettled), len(result.mismatches)) == (unsettled, 1 - unsettled)


def test_a_customer_named_twice_is_compared_once() -> None:
    stripe = FakeStripe([summary(E, 5)])
    result = reconcile(
        FakeLedger({("cus_a", E): Totals(1, Decimal(8), Decimal(8))}),  # type: ignore[arg-type]
        MeterSummaries(stripe),  # type: ignore[arg-type]
        MeterInfo("mtr_1", "api", "sum"),
        since=T,
        until=T + timedelta(hours=1),
        grouping="hour",
        customers=["cus_a", "cus_a"],
    )
    assert (result.customers, result.compared, len(result.mismatches)) == (["cus_a"], 1, 1)
    assert len(stripe.asked) == 1


class ReplacedMeterStripe(FakeStripe):
    """An account whose meter for `api` was replaced: mtr_old deactivated, mtr_1 created at
    `created`."""

    def __init__(self, created: int) -> None:
        super().__init__([])
        self.created = created

    def list_meters(self, params: dict[str, Any], timeout: float) -> StripeAnswer:
        meters = [
            {"id": "mtr_old", "event_name": "api", "status": "inactive"},
            {"id": "mtr_1", "event_name": "api", "status": "active"},
        ]
        return StripeAnswer(Kind.OK, 200, body={"data": meters, "has_more": False})

    def get(self, path: str, params: dict[str, Any], timeout: float) -> StripeAnswer:
        answer = super().get(path, params, timeout)
        if path.endswith("mtr_1") and answer.body is not None:
            answer.body["created"] = self.created
        return answer


@pytest.mark.parametrize(("created", "noted"), [(E + 1800, True), (E - 60, False)])
def test_a_meter_made_after_the_first_window_began_is_said_to_count_only_since(
    created: int, noted: bool
) -> None:
    """Stripe counts on a meter only what it received since its creation: a window before a
    replacement meter shows Stripe lower by what the old one counted, which the output says."""
    stripe = MeterSummaries(ReplacedMeterStripe(created))  # type: ignore[arg-type]
    meter = stripe.meter("api")
    assert (meter.id, meter.created, meter.others) == ("mtr_1", created, ("mtr_old",))
    result = reconcile(
        FakeLedger({}),  # type: ignore[arg-type]
        stripe,
        meter,
        since=T,
        until=T + timedelta(hours=2),
        grouping="hour",
    )
    assert bool(result.notes) is noted
    if noted:
        assert "other meters for api (mtr_old)" in result.notes[0]
        assert "--meter-id" in result.notes[0]
        assert result.to_json()["notes"] == result.notes
