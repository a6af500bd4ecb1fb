"""`make run`, small: the whole local stack accounts for every event it produced."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import pytest
import requests

from devkit.emulator.client import EmulatorClient
from devkit.local_stack import DELIVERED, Expected, MappingStats, account

pytestmark = pytest.mark.integration


@pytest.mark.timeout(360)  # the run itself is bounded at 300 s below
def test_a_small_local_run_accounts_for_every_event() -> None:
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "devkit.local_stack",
            "--events",
            "1500",
            "--envelope-size",
            "10",
            "--invalid-share",
            "0.05",
            "--json",
            "--timeout",
            "240",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    summary = json.loads(completed.stdout.strip().splitlines()[-1])
    assert summary["unaccounted"] == 0
    assert summary["counted_twice"] == 0
    assert summary["misplaced"] == 0
    assert summary["produced"] >= 1500
    dead = sum(summary["dead_lettered"].values())
    assert dead > 0  # the invalid share really was produced and dead-lettered
    assert summary["delivered"] + summary["rejected_later"] + dead == summary["produced"]
    assert "result: OK" in completed.stdout
    # no fault, so nothing was handled twice: no message came back while its batch was at
    # work (the template's 5 s batching window is as long as the 5 s retry delay here)
    assert summary["records_returned_for_retry"] == 0
    assert summary["sent_again_deduplicated"] == 0
    assert summary["duplicate_dead_letters"] == 0


def _stream(emulator: EmulatorClient, *identifiers: str) -> None:
    token = requests.post(
        f"{emulator.url}/v2/billing/meter_event_session",
        headers={"Authorization": f"Bearer {emulator.secret_key}"},
        timeout=10,
    ).json()["authentication_token"]
    events = [
        {
            "event_name": "api_requests",
            "identifier": i,
            "payload": {"stripe_customer_id": "cus_1", "value": "1"},
        }
        for i in identifiers
    ]
    response = requests.post(
        f"{emulator.url}/v2/billing/meter_event_stream",
        headers={"Authorization": f"Bearer {token}"},
        json={"events": events},
        timeout=10,
    )
    assert response.status_code == 200


def test_the_report_fails_on_lost_double_counted_or_misplaced_events(
    emulator: EmulatorClient,
) -> None:
    _stream(emulator, "twice", "fine")
    emulator.advance_clock(86_401)  # past the dedup window: a resend is counted again
    _stream(emulator, "twice")
    expected = Expected()
    expected.outcomes = {
        "twice": DELIVERED,
        "fine": DELIVERED,
        "lost": DELIVERED,
        "wrong-code": "parameter_unknown",
    }
    expected.raw_messages = {"raw-1": "message_not_json"}
    expected.produced = 4
    dead = {"wrong-code": "payload_invalid_value", "raw-1": "message_not_json"}
    report = account(expected, emulator, dead, 2.0, MappingStats())
    assert report.counted_twice == 1
    assert report.delivered == 2
    assert report.unaccounted == ["lost"]
    assert len(report.misplaced) == 1
    assert report.dead_lettered == Counter({"payload_invalid_value": 1, "message_not_json": 1})
    assert not report.ok
    assert "result: FAILED" in report.render()
