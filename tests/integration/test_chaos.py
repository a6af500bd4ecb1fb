"""`make chaos`, smaller: every fault at once, and still nothing lost or counted twice, and no
valid event dead-lettered (MaxReceiveCount 10, under sustained rate limiting); the events
Stripe rejects only later come back through its error reports on the partner bus (EventBridge)
and are each in the DLQ by a sample's letter or counted without a sample, adding up to
Stripe's totals."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from devkit.local_error_reports import EVENTBRIDGE
from tests.integration.local_run_checks import assert_reconciled, assert_stripe_rejections_accounted

pytestmark = pytest.mark.integration


@pytest.mark.timeout(450)  # the run itself is bounded at 400 s below
def test_a_small_chaos_run_loses_nothing_and_counts_nothing_twice() -> None:
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "devkit.chaos",
            "--events",
            "1500",
            "--duration",
            "24",
            "--outage",
            "6",
            "8",
            "--rate-limit",
            "14",
            "8",
            "3",
            "--kill-every",
            "3",
            "--json",
            "--timeout",
            "300",
        ],
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout[-4000:] + completed.stderr[-4000:]
    summary = json.loads(completed.stdout.strip().splitlines()[-1])
    assert summary["unaccounted"] == 0
    assert summary["counted_twice"] == 0
    assert summary["misplaced"] == 0  # the DLQ holds exactly the invalid events, by code
    assert sum(summary["dead_lettered"].values()) > 0
    chaos = summary["chaos"]
    # the faults really happened, or the run proves nothing
    assert chaos["forwarder_kills"] >= 1
    assert chaos["sessions_ended_by_stripe"] >= 1
    assert chaos["ssm_calls_throttled"] >= 1
    assert chaos["stream_calls_answered_429"] >= 1  # the account's limit was met, and adapted to
    assert summary["failed_invocations"] >= chaos["forwarder_kills"]  # killed ones are lost
    # the outage ended every session and lasted until the forwarder had answered batches:
    # their messages went back to the queue and came back to be delivered once
    # (counted_twice == 0 above)
    assert chaos["batches_answered_in_outage"] >= 2
    assert summary["records_returned_for_retry"] >= 1
    # the rate limit began once the outage was over: the forwarder met it
    assert chaos["rate_limit_began"] >= 6 + chaos["refresher_outage_seconds"]
    # Stripe's error reports reached the function through the bus and the template's rule
    assert_stripe_rejections_accounted(summary, EVENTBRIDGE)
    assert_reconciled(summary)
