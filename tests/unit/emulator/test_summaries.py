"""Meter event summaries against a plain recomputation (Hypothesis), and every refusal of a
summaries query: the reconcile command compares these numbers with a ledger."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devkit.emulator.apierror import ApiError
from devkit.emulator.state import EmulatorState, Settings
from devkit.emulator.summaries import SummaryQuery, aggregate

DAY0 = 1_799_971_200  # 2027-01-15T00:00:00Z
HOUR, DAY = 3600, 86_400
METERS: list[dict[str, Any]] = [
    {"id": "mtr_sum", "event_name": "api_requests", "default_aggregation": {"formula": "sum"}},
    {"id": "mtr_count", "event_name": "logins", "default_aggregation": {"formula": "count"}},
    {"id": "mtr_last", "event_name": "seats", "default_aggregation": {"formula": "last"}},
    {
        "id": "mtr_keys",
        "event_name": "search_calls",
        "customer_mapping": {"event_payload_key": "customer"},
        "value_settings": {"event_payload_key": "calls"},
    },
]
NAMES = {m["id"]: m["event_name"] for m in METERS}
FORMULAS = {m["id"]: m.get("default_aggregation", {}).get("formula", "sum") for m in METERS}
CUSTOMERS = ["cus_1", "cus_2", "cus_3"]


# ----- the oracle ----------------------------------------------------------------------------
@dataclass
class Sent:
    meter: str
    customer: str
    identifier: str
    value: str
    timestamp: float
    valid: bool


def expected_summaries(
    sent: list[Sent], cancelled: set[str], meter: str, query: SummaryQuery
) -> list[tuple[int, int, Decimal]]:
    """What Stripe's documentation says the summaries are, computed the plain way."""
    counted: list[Sent] = []
    seen: set[str] = set()
    for event in sent:  # an identifier counts the first time it comes valid
        if event.valid and event.identifier not in seen:
            seen.add(event.identifier)
            counted.append(event)
    mine = [
        e
        for e in counted
        if e.meter == meter
        and e.customer == query.customer
        and e.identifier not in cancelled
        and query.start <= e.timestamp < query.end
    ]
    step = query.window or query.end - query.start
    out = []
    for lower in range(query.start, query.end, step):
        inside = [e for e in mine if lower <= e.timestamp < lower + step]
        if not inside and query.window is not None:
            continue  # grouped: only windows with usage
        formula = FORMULAS[meter]
        if formula == "count":
            value = Decimal(len(inside))
        elif formula == "sum":
            value = sum((Decimal(e.value) for e in inside), Decimal(0))
        else:
            latest = max(inside, key=lambda e: e.timestamp, default=None)
            ties = [e for e in inside if latest is not None and e.timestamp == latest.timestamp]
            value = Decimal(ties[-1].value) if ties else Decimal(0)  # a tie: the later arrival
        out.append((lower, lower + step, value))
    return sorted(out, reverse=True)


# ----- what Hypothesis varies ----------------------------------------------------------------
valid_values = st.integers(min_value=1, max_value=500).map(str)
decimal_values = st.sampled_from(["0.1", "0.2", "2.5", "1e2", "0", "7"])
timestamps = st.one_of(
    # anywhere in the two days, to the microsecond
    st.integers(min_value=0, max_value=2 * DAY * 10**6 - 1).map(lambda n: DAY0 + n / 10**6),
    # on an hour boundary or a millisecond before it: start inclusive, end exclusive
    st.builds(
        lambda hour, before: DAY0 + hour * HOUR - before,
        st.sampled_from([1, 2, 24, 25]),  # the edges of the fixed queries in check()
        st.sampled_from([0.0, 0.001]),
    ),
    # a few moments shared by many events: ties for `last`
    st.sampled_from([DAY0 + 90.0, DAY0 + HOUR + 90.0, DAY0 + DAY + 90.0]),
)
any_meter = st.sampled_from([m["id"] for m in METERS])


@st.composite
def histories(
    draw: st.DrawFn,
    values: st.SearchStrategy[str],
    meters: st.SearchStrategy[str] = any_meter,
    moments: st.SearchStrategy[float] = timestamps,
) -> dict[str, Any]:
    event = st.tuples(
        meters,
        st.sampled_from(CUSTOMERS),
        moments,
        st.booleans(),  # valid, or a value Stripe rejects later
    )
    events = draw(st.lists(event, min_size=0, max_size=80))
    sent = [
        Sent(meter, customer, f"id{i}", draw(values) if valid else "-1", at, valid)
        for i, (meter, customer, at, valid) in enumerate(events)
    ]
    # resends: an identifier again (as a retry or a replay with another value)
    for original in draw(st.lists(st.sampled_from(sent), max_size=8)) if sent else []:
        sent.append(Sent(**{**vars(original), "value": draw(values), "valid": True}))
    batches = draw(st.integers(min_value=1, max_value=5))
    counted_once = {e.identifier: e for e in reversed(sent) if e.valid}
    cancels = draw(st.sets(st.sampled_from(sorted(counted_once)))) if counted_once else set()
    return {"sent": sent, "batches": batches, "cancels": cancels}


@st.composite
def queries(draw: st.DrawFn) -> tuple[str, SummaryQuery]:
    meter = draw(st.sampled_from([m["id"] for m in METERS]))
    customer = draw(st.sampled_from(CUSTOMERS))
    grouping = draw(st.sampled_from([None, HOUR, DAY]))
    unit = grouping or 60
    slots = 2 * DAY // unit
    start = draw(st.integers(min_value=0, max_value=slots - 1))
    end = draw(st.integers(min_value=start + 1, max_value=slots))
    return meter, SummaryQuery(customer, DAY0 + start * unit, DAY0 + end * unit, grouping)


def replay(history: dict[str, Any], value_rule: str) -> EmulatorState:
    state = EmulatorState(settings=Settings(value_rule=value_rule))  # type: ignore[arg-type]
    state.load_meters([dict(m) for m in METERS])
    state.clock.set(DAY0 + 2 * DAY)
    sent: list[Sent] = history["sent"]
    size = max(1, -(-len(sent) // history["batches"]))
    for first in range(0, len(sent), size):
        batch = sent[first : first + size]
        raws = []
        for event in batch:
            keys = (
                ("customer", "calls")
                if event.meter == "mtr_keys"
                else ("stripe_customer_id", "value")
            )
            raws.append(
                {
                    "event_name": NAMES[event.meter],
                    "identifier": event.identifier,
                    "payload": {keys[0]: event.customer, keys[1]: event.value},
                }
            )
        state.accept_stream(raws, [e.timestamp for e in batch])
    for identifier in history["cancels"]:
        meter = next(e.meter for e in sent if e.identifier == identifier and e.valid)
        state.cancel(NAMES[meter], identifier)
    return state


FIXED_QUERIES = [
    (meter, SummaryQuery(customer, DAY0 + start * HOUR, DAY0 + end * HOUR, grouping))
    for meter in NAMES
    for customer in CUSTOMERS
    for start, end in ((0, 48), (1, 25))
    for grouping in (None, HOUR, DAY)
    if grouping != DAY or (start, end) == (0, 48)
]


def check(history: dict[str, Any], asked: list[tuple[str, SummaryQuery]], rule: str) -> None:
    """Every meter and customer over fixed ranges, and the queries Hypothesis drew."""
    state = replay(history, rule)
    for meter, query in FIXED_QUERIES + asked:
        got = state.summaries(state.get_meter(meter), query)
        want = expected_summaries(history["sent"], history["cancels"], meter, query)
        assert [(s["start_time"], s["end_time"]) for s in got] == [(a, b) for a, b, _ in want]
        assert [s["aggregated_value"] for s in got] == [
            int(v) if v == v.to_integral_value() else float(v) for _, _, v in want
        ]
        assert all(
            s["meter"] == meter and s["object"] == "billing.meter_event_summary" for s in got
        )


@settings(max_examples=150, deadline=None)
@given(histories(valid_values), st.lists(queries(), min_size=1, max_size=6))
def test_summaries_match_a_plain_recomputation(
    history: dict[str, Any], asked: list[tuple[str, SummaryQuery]]
) -> None:
    check(history, asked, "positive_integer")


@settings(max_examples=100, deadline=None)
@given(
    histories(
        valid_values,
        meters=st.just("mtr_last"),
        moments=st.sampled_from([DAY0 + 90.0, DAY0 + 91.0, DAY0 + HOUR + 90.0]),
    ),
    st.just([]),
)
def test_last_on_ties_matches_a_plain_recomputation(
    history: dict[str, Any], asked: list[tuple[str, SummaryQuery]]
) -> None:
    check(history, asked, "positive_integer")


@settings(max_examples=60, deadline=None)
@given(histories(decimal_values), st.lists(queries(), min_size=1, max_size=4))
def test_decimal_values_sum_exactly(
    history: dict[str, Any], asked: list[tuple[str, SummaryQuery]]
) -> None:
    check(history, asked, "decimal")


def test_last_takes_the_latest_timestamp_and_the_later_arrival_on_a_tie() -> None:
    events = [(DAY0 + 60.0, "5"), (DAY0 + 10.0, "9"), (DAY0 + 60.0, "7"), (DAY0 + 30.0, "1")]
    assert aggregate("last", events) == Decimal(7)
    assert aggregate("last", []) == Decimal(0)
    assert aggregate("count", events) == Decimal(4)
    assert aggregate("sum", events) == Decimal(22)


def test_ids_are_stable_and_distinct_per_window() -> None:
    state = replay({"sent": [], "batches": 1, "cancels": set()}, "positive_integer")
    query = SummaryQuery("cus_1", DAY0, DAY0 + DAY, None)
    [first] = state.summaries(state.get_meter("mtr_sum"), query)
    [again] = state.summaries(state.get_meter("mtr_sum"), query)
    [other] = state.summaries(
        state.get_meter("mtr_sum"), SummaryQuery("cus_1", DAY0, DAY0 + 60, None)
    )
    assert first["id"] == again["id"] != other["id"]
    assert first["id"].startswith("mtrusg_test_")
    assert first["aggregated_value"] == 0  # one summary for the range, even without usage


# ----- refusals ------------------------------------------------------------------------------
BASE = {"customer": "cus_1", "start_time": str(DAY0), "end_time": str(DAY0 + DAY)}


@pytest.mark.parametrize(
    ("change", "code", "param"),
    [
        ({"customer": None}, "parameter_missing", "customer"),
        ({"start_time": None}, "parameter_missing", "start_time"),
        ({"end_time": None}, "parameter_missing", "end_time"),
        ({"customer": ""}, "parameter_invalid_empty", "customer"),
        ({"start_time": ""}, "parameter_invalid_empty", "start_time"),
        ({"start_time": "soon"}, "parameter_invalid_integer", "start_time"),
        ({"end_time": "1.5"}, "parameter_invalid_integer", "end_time"),
        ({"start_time": str(DAY0 + 1)}, "parameter_invalid", "start_time"),
        ({"end_time": str(DAY0 + 90)}, "parameter_invalid", "end_time"),
        (
            {"start_time": str(DAY0 + 60), "value_grouping_window": "hour"},
            "parameter_invalid",
            "start_time",
        ),
        (
            {"end_time": str(DAY0 + HOUR + 60), "value_grouping_window": "hour"},
            "parameter_invalid",
            "end_time",
        ),
        (
            {"start_time": str(DAY0 + HOUR), "value_grouping_window": "day"},
            "parameter_invalid",
            "start_time",
        ),
        (
            {"end_time": str(DAY0 + 25 * HOUR), "value_grouping_window": "day"},
            "parameter_invalid",
            "end_time",
        ),
        ({"value_grouping_window": "week"}, "parameter_invalid", "value_grouping_window"),
        ({"end_time": str(DAY0)}, "parameter_invalid", "end_time"),
        ({"end_time": str(DAY0 - 60)}, "parameter_invalid", "end_time"),
        ({"meter": "mtr_sum"}, "parameter_unknown", "meter"),
    ],
)
def test_each_bad_query_is_refused_naming_its_parameter(
    change: dict[str, str | None], code: str, param: str
) -> None:
    query = {k: v for k, v in {**BASE, **change}.items() if v is not None}
    with pytest.raises(ApiError) as refused:
        SummaryQuery.from_query(query)
    assert (refused.value.status, refused.value.code, refused.value.param) == (400, code, param)
    assert refused.value.error_type == "invalid_request_error"


def test_aligned_queries_are_taken_with_expand_and_paging_parameters() -> None:
    query = SummaryQuery.from_query(
        {**BASE, "value_grouping_window": "day", "limit": "3", "expand[0]": "data"}
    )
    assert query == SummaryQuery("cus_1", DAY0, DAY0 + DAY, DAY)
    hourly = SummaryQuery.from_query(
        {**BASE, "end_time": str(DAY0 + HOUR), "value_grouping_window": "hour"}
    )
    assert hourly.window == HOUR
