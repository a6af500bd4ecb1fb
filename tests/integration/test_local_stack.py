"""`make run`, small: the whole local stack accounts for every event it produced, those Stripe
rejects only later included (its error reports reach ErrorReportsFunction as deployed)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from typing import Any

import boto3
import pytest
import requests
from botocore.config import Config

from devkit.emulator.client import DEFAULT_SECRET_KEY, EmulatorClient
from devkit.lambda_endpoint import LambdaEndpoint
from devkit.local_error_reports import (
    BOTH,
    ROUTES,
    WEBHOOK,
    ErrorReportRoutes,
    StripeLetter,
)
from devkit.local_error_reports import provision as provision_error_reports
from devkit.local_stack import (
    DELIVERED,
    REJECTED_LATER,
    REJECTED_LATER_CODE,
    SECRET_NAME,
    TEMPLATE,
    Expected,
    MappingStats,
    account,
    read_dead_letters,
)
from tests.integration.local_run_checks import assert_reconciled, assert_stripe_rejections_accounted
from tests.plugins.aws import AwsEnv

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
    # Stripe rejected some events later; its reports came back through the webhook
    reports = assert_stripe_rejections_accounted(summary, WEBHOOK)
    assert summary["rejected_later_without_sample"] > 0  # Stripe sends 3 samples per code
    assert reports["deliveries"] == {"delivered": reports["reports"]}
    assert set(reports["stripe_totals"]) == {REJECTED_LATER_CODE}
    assert reports["stripe_totals"][REJECTED_LATER_CODE] == summary["rejected_later"]
    assert "bodies known" in completed.stdout  # read back from the delivery ledger
    assert_reconciled(summary)
    assert "customer-hours, 0 mismatches" in completed.stdout
    # the webhook's signing secret (generated for the run) is shown nowhere
    assert not re.search(r"whsec_[0-9a-f]{8}", completed.stdout + completed.stderr)


def _stream_events(emulator: EmulatorClient, events: list[dict[str, Any]]) -> None:
    token = requests.post(
        f"{emulator.url}/v2/billing/meter_event_session",
        headers={"Authorization": f"Bearer {emulator.secret_key}"},
        timeout=10,
    ).json()["authentication_token"]
    response = requests.post(
        f"{emulator.url}/v2/billing/meter_event_stream",
        headers={"Authorization": f"Bearer {token}"},
        json={"events": events},
        timeout=10,
    )
    assert response.status_code == 200


def _usage(identifier: str, customer: str = "cus_1", name: str = "api_requests") -> dict[str, Any]:
    return {
        "event_name": name,
        "identifier": identifier,
        "payload": {"stripe_customer_id": customer, "value": "1"},
    }


def _stream(emulator: EmulatorClient, *identifiers: str) -> None:
    _stream_events(emulator, [_usage(i) for i in identifiers])


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


# ----- Stripe's error reports, as make run wires them ---------------------------------------------
UNKNOWN = "cus_unknown_to_stripe"


@pytest.mark.timeout(180)
@pytest.mark.parametrize("route", ROUTES)
def test_a_report_the_function_never_received_fails_the_run(
    route: str, aws: AwsEnv, emulator: EmulatorClient
) -> None:
    """The function is wired as make run wires it (provisioned in moto, run by a local Lambda
    endpoint, reached by the emulator's pushes); Stripe's first report is made before any
    destination exists, so the function never receives it. The letters of the second report
    account for its events; the first's samples have no letter, the function's counts fall
    short of Stripe's totals, an expected rejection never happened: the run FAILED."""
    emulator.set_known_customers("cus_1")
    sqs = aws.client("sqs")
    dlq_url = sqs.create_queue(QueueName="local-usage-dlq")["QueueUrl"]
    aws.client("secretsmanager").create_secret(Name=SECRET_NAME, SecretString=DEFAULT_SECRET_KEY)
    setup = provision_error_reports(TEMPLATE, aws.endpoint_url, aws.region, route)
    env_vars = {
        "Parameters": {"STRIPE_MODE": "test"},
        "ErrorReportsFunction": setup.env_vars(emulator.url, SECRET_NAME, dlq_url),
    }
    unheard = [f"unheard-{n}" for n in range(5)]  # Stripe samples 3 of them
    _stream_events(emulator, [_usage(i, UNKNOWN) for i in unheard])
    emulator.close_error_windows()  # its report is made, and pushed nowhere
    heard = [_usage("heard-1", UNKNOWN), _usage("heard-2", UNKNOWN)]
    heard.append(_usage("heard-no-meter", name="nobody_meters_this"))  # sent without a catalog

    with LambdaEndpoint(TEMPLATE, env_vars, aws.env, lifetime=150) as endpoint:
        client = boto3.client(
            "lambda",
            endpoint_url=endpoint.url,
            region_name=aws.region,
            config=Config(read_timeout=120, retries={"total_max_attempts": 1}),
        )
        with ErrorReportRoutes(setup, emulator, client) as routes:
            _stream_events(emulator, heard)
            received = routes.settle()
    dead = read_dead_letters(sqs, dlq_url)
    expected = Expected(produced=9)
    expected.outcomes = dict.fromkeys([*unheard, "heard-1", "heard-2", "lost"], REJECTED_LATER)
    expected.outcomes["heard-no-meter"] = "no_meter"
    report = account(
        expected, emulator, dead, 1.0, MappingStats(), stripe_letters=dead.stripe, received=received
    )

    # what the function received became letters, with Stripe's codes, once each
    assert {x.identifier: x.code for x in dead.stripe} == {
        "heard-1": REJECTED_LATER_CODE,
        "heard-2": REJECTED_LATER_CODE,
        "heard-no-meter": "no_meter",
    }
    assert len(dead.stripe) == 3
    assert all(not x.body_known for x in dead.stripe)
    assert len(received.outcomes) == 2  # the meter's report and the no-meter one
    # each report once by each route: the second is a duplicate, nothing written again (the
    # letters above). A push the emulator stopped waiting for (a slow machine) may have landed
    # all the same, and is pushed again as Stripe does: that answer is a duplicate too
    pushes = [(p["kind"], p["event"], p["attempts"]) for p in emulator.deliveries()["data"]]
    answered_late = sum(
        1
        for _, _, attempts in pushes
        for attempt in attempts[:-1]
        if re.search(r"read ?time", str(attempt["error"]), re.IGNORECASE)
    )
    assert received.duplicates == (2 if route == BOTH else 0) + answered_late, pushes
    assert received.pushes == Counter({"delivered": 4 if route == BOTH else 2})
    stripe = report.stripe_reports
    assert stripe is not None
    assert stripe.reports == 3
    assert stripe.totals == Counter({REJECTED_LATER_CODE: 7, "no_meter": 1})
    assert stripe.rejected == stripe.totals
    assert stripe.function_counted == Counter({REJECTED_LATER_CODE: 2, "no_meter": 1})
    assert stripe.letters == Counter({REJECTED_LATER_CODE: 2, "no_meter": 1})
    assert stripe.unsampled == Counter({REJECTED_LATER_CODE: 2})  # unheard-3 and -4
    assert [m.split(": ")[1] for m in stripe.missing] == [
        f"unheard-{n} ({REJECTED_LATER_CODE})" for n in range(3)
    ]
    assert report.misplaced == []  # no_meter, reported by Stripe, is where it belongs
    assert report.rejected_later_in_dlq == 3
    assert report.rejected_later_unsampled == 2
    assert sorted(report.unaccounted) == [
        "lost",
        *[f"unheard-{n} (a sample of Stripe's report, no letter)" for n in range(3)],
    ]
    assert not stripe.ok
    assert any("the function counted" in problem for problem in stripe.problems)
    assert not report.ok
    assert report.to_json()["stripe_error_reports"]["ok"] is False
    rendered = report.render()
    assert "result: FAILED" in rendered
    assert "samples without a letter" in rendered


@pytest.mark.timeout(60)
def test_totals_that_disagree_fail_the_report_though_every_event_is_accounted(
    emulator: EmulatorClient,
) -> None:
    """A report whose samples all have letters, but Stripe rejected more than its reports
    count (a window never reported): FAILED, with nothing unaccounted."""
    emulator.set_known_customers("cus_1")
    _stream_events(emulator, [_usage("late-1", UNKNOWN)])
    emulator.close_error_windows()
    (event,) = emulator.list_events()["data"]
    letters = [StripeLetter("late-1", REJECTED_LATER_CODE, event["id"], body_known=False)]
    now = float(emulator.advance_clock(0)["epoch"])
    emulator.set_clock((now // 10 + 1) * 10 + 0.25)  # a window just begun: open while we read
    _stream_events(emulator, [_usage("late-2", UNKNOWN)])
    expected = Expected(produced=1)
    expected.outcomes = {"late-1": REJECTED_LATER}
    report = account(expected, emulator, {}, 1.0, MappingStats(), stripe_letters=letters)
    assert report.unaccounted == []
    assert report.misplaced == []
    assert report.rejected_later_in_dlq == 1
    stripe = report.stripe_reports
    assert stripe is not None
    assert stripe.totals == Counter({REJECTED_LATER_CODE: 1})
    assert stripe.rejected == Counter({REJECTED_LATER_CODE: 2})
    assert not report.ok
    assert "result: FAILED" in report.render()
