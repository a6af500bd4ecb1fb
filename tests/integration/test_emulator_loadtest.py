"""`make emulator-bench` in small: its load is counted in full at the emulator, as a realistic
producer's would be (a meter for its events, every identifier unique). Speed is not asserted."""

from __future__ import annotations

import json

import pytest

from devkit.emulator import EmulatorServer
from devkit.emulator.client import EmulatorClient
from devkit.emulator.loadtest import CUSTOMERS, EVENTS_PER_BODY, main, run, stream_template

pytestmark = pytest.mark.integration


def test_every_event_sent_is_validated_and_counted_once() -> None:
    with EmulatorServer() as server:
        result = run(server.url, seconds=0.3, concurrency=2)
        client = EmulatorClient(server.url)
        stats = client.stats()
        identifiers = client.identifiers()
        client.close()
        [meter] = server.emulator.state.list_meters()
    assert result["failures"] == 0
    assert result["requests"] > 0
    assert result["events_counted"] == result["requests"] * EVENTS_PER_BODY
    assert stats["events_by_status"] == {"counted": result["events_counted"]}
    assert len(identifiers) == result["events_counted"]
    assert stats["counted_more_than_once"] == 0
    assert meter.event_name.startswith("loadtest_")


def test_counts_only_its_own_events_on_a_running_emulator(
    emulator: EmulatorClient, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--url", emulator.url, "--seconds", "0.2", "--concurrency", "1"]) == 0
    assert main(["--url", emulator.url, "--seconds", "0.2", "--concurrency", "1"]) == 0
    output = capsys.readouterr().out
    assert output.count("emulator stream requests/s = ") == 2
    assert "0 failures" in output
    assert emulator.counted_more_than_once() == []


def test_template_has_one_meter_and_varied_customers() -> None:
    events = json.loads(stream_template("run", "name"))["events"]
    assert len(events) == EVENTS_PER_BODY
    assert {e["event_name"] for e in events} == {"name"}
    assert len({e["payload"]["stripe_customer_id"] for e in events}) == CUSTOMERS
    assert len({e["identifier"] for e in events}) == EVENTS_PER_BODY
