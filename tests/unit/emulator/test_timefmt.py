"""RFC 3339 parsing and formatting of the emulator, and its movable clock."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from devkit.emulator.timefmt import Clock, format_rfc3339, parse_rfc3339


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-06-01T12:00:00.000Z", 1717243200.0),
        ("2024-06-01T12:00:00Z", 1717243200.0),
        ("2024-06-01t12:00:00z", 1717243200.0),
        ("2024-06-01T14:00:00+02:00", 1717243200.0),
        ("2024-06-01T12:00:00.5Z", 1717243200.5),
        ("2024-06-01T12:00:00.123456789Z", 1717243200.123456),
    ],
)
def test_parses_rfc3339_date_times(text: str, expected: float) -> None:
    assert parse_rfc3339(text) == pytest.approx(expected)


@pytest.mark.parametrize(
    "text",
    [
        "2024-06-01",
        "2024-06-01 12:00:00Z",
        "2024-06-01T12:00:00",
        "20240601T120000Z",
        "2024-13-01T00:00:00Z",
        "2024-02-30T00:00:00Z",
        "2024-06-01T12:00:00.1234567891Z",
        "1717243200",
        "",
    ],
)
def test_rejects_what_is_not_rfc3339(text: str) -> None:
    assert parse_rfc3339(text) is None


@given(st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1)))
def test_format_then_parse_round_trips_to_the_millisecond(moment: datetime) -> None:
    epoch = moment.replace(tzinfo=UTC).timestamp()
    text = format_rfc3339(epoch)
    assert text.endswith("Z")
    parsed = parse_rfc3339(text)
    assert parsed is not None
    assert abs(parsed - epoch) < 0.001


def test_clock_moves_and_resets() -> None:
    clock = Clock()
    before = time.time()
    clock.advance(3600)
    assert clock.now() >= before + 3600
    clock.set(1_000_000.0)
    assert clock.now() == pytest.approx(1_000_000.0, abs=1.0)
    clock.reset()
    assert clock.offset == 0.0
    assert abs(clock.now() - time.time()) < 1.0


@given(
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),
    st.text(alphabet="0123456789", min_size=0, max_size=9),
    st.sampled_from(["Z", "z", "+00:00", "-05:30", "+14:00", "-00:00"]),
)
def test_parsing_by_second_then_fraction_is_datetimes_reading(
    moment: datetime, digits: str, zone: str
) -> None:
    whole = moment.isoformat(timespec="seconds")
    text = whole + (f".{digits}" if digits else "") + zone
    offset = "+00:00" if zone in ("Z", "z") else zone
    micro = (digits + "000000")[:6]
    assert parse_rfc3339(text) == datetime.fromisoformat(f"{whole}.{micro}{offset}").timestamp()
