"""The v2 event log: ids, the pushed and fetched shapes, list filters, paging by
next_page_url, newest first, and the 30 days events are kept."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devkit.emulator.apierror import ApiError
from devkit.emulator.error_reports import (
    ERROR_REPORT_TRIGGERED,
    NO_METER_FOUND,
    ErrorReport,
    ErrorWindows,
)
from devkit.emulator.timefmt import format_rfc3339
from devkit.emulator.v2_events import RETENTION_S, EventListQuery, EventLog, ThinEvent

T0 = 1_800_000_000.0


def fill(log: EventLog, *specs: tuple[str | None, float]) -> list[ThinEvent]:
    """One event per (meter or None, created), created in the order given."""
    events = []
    for meter, created in specs:
        windows = ErrorWindows()
        name = "unmetered" if meter is None else "metered"
        windows.add(ErrorReport("no_meter", "m", "i", name, created - 20, meter), 10, 3)
        events += log.record(windows.close(created), created)
    return events


def query(text: str) -> EventListQuery:
    return EventListQuery.from_query_string(text)


def test_notification_has_no_data_and_the_fetched_event_has() -> None:
    [event] = fill(EventLog(), ("mtr_a", T0))
    notification = event.notification()

    assert notification == {
        "id": event.id,
        "object": "v2.core.event",
        "type": ERROR_REPORT_TRIGGERED,
        "created": format_rfc3339(T0),
        "livemode": False,
        "context": None,
        "reason": None,
        "related_object": {
            "id": "mtr_a",
            "type": "billing.meter",
            "url": "/v1/billing/meters/mtr_a",
        },
    }
    assert event.to_api() == {**notification, "data": event.data}
    assert event.id.startswith("evt_test_")
    assert len(event.id) == 55
    assert event.notification_body().decode().startswith('{\n  "id": ')


def test_get_finds_an_event_for_30_days_only() -> None:
    log = EventLog()
    [event] = fill(log, (None, T0))
    assert log.get(event.id, T0 + RETENTION_S) is event
    with pytest.raises(ApiError) as gone:
        log.get(event.id, T0 + RETENTION_S + 1)
    with pytest.raises(ApiError) as unknown:
        log.get("evt_test_nope", T0)
    for error in (gone.value, unknown.value):
        assert (error.status, error.code, error.error_type) == (
            404,
            "resource_missing",
            "invalid_request_error",
        )
    assert log.page(EventListQuery(), T0 + RETENTION_S + 1)["data"] == []


def test_list_filters_by_type_object_and_created() -> None:
    log = EventLog()
    a, b, c = fill(log, ("mtr_a", T0), (None, T0 + 10), ("mtr_b", T0 + 20))

    def ids(text: str) -> list[str]:
        return [e["id"] for e in log.page(query(text), T0 + 30)["data"]]

    assert ids("") == [c.id, b.id, a.id]  # newest first
    assert ids(f"types[0]={NO_METER_FOUND}") == [b.id]
    assert ids(f"types={NO_METER_FOUND}&types={ERROR_REPORT_TRIGGERED}") == [c.id, b.id, a.id]
    assert ids("object_id=mtr_a") == [a.id]
    start = format_rfc3339(T0 + 10)
    assert ids(f"created[gt]={start}") == [c.id]
    assert ids(f"created[gte]={start}") == [c.id, b.id]
    assert ids(f"created[lt]={start}") == [a.id]
    assert ids(f"created[lte]={start}&created[gt]={format_rfc3339(T0)}") == [b.id]


@pytest.mark.parametrize(
    ("text", "param"),
    [
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("limit=ten", "limit"),
        ("created[gt]=yesterday", "created[gt]"),
        ("types[0]=", "types"),
        ("&".join(f"types[{i}]=t{i}" for i in range(21)), "types"),
        ("colour=red", "colour"),
        ("created[after]=2027-01-01T00:00:00Z", "created[after]"),
        ("page=not-a-token", "page"),
        ("page=e30&limit=2", "page"),  # a token carries everything
    ],
)
def test_bad_list_parameters_are_named(text: str, param: str) -> None:
    with pytest.raises(ApiError) as refused:
        query(text)
    assert (refused.value.status, refused.value.param) == (400, param)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.sampled_from(["mtr_a", "mtr_b", None]), max_size=25),
    st.integers(min_value=1, max_value=7),
    st.sampled_from(["", f"types[0]={NO_METER_FOUND}", "object_id=mtr_b"]),
)
def test_pages_walk_the_filtered_list_newest_first_once_each(
    meters: list[str | None], limit: int, filters: str
) -> None:
    log = EventLog()
    events = fill(log, *((meter, T0 + i) for i, meter in enumerate(meters)))
    expected = [e.id for e in reversed(events) if query(filters).matches(e)]
    seen: list[str] = []
    page = log.page(query("&".join(p for p in (filters, f"limit={limit}") if p)), T0 + 100)
    while True:
        assert len(page["data"]) <= limit
        seen += [e["id"] for e in page["data"]]
        if page["next_page_url"] is None:
            break
        url = urlsplit(page["next_page_url"])
        assert url.path == "/v2/core/events"
        assert [name for name, _ in parse_qsl(url.query)] == ["page"]
        page = log.page(query(url.query), T0 + 100)
    assert seen == expected
