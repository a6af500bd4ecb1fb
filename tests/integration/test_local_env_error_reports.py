"""ErrorReportsFunction with events/env.json against what `make local-env` provisions (its
table and webhook signing secret, by the names env.json gives), as `make invoke` runs it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import requests

from devkit.emulator.client import EmulatorClient
from devkit.harness import load_function
from tests.integration.test_env_json import env_vars as env_vars  # the fixture
from tests.plugins.aws import AwsEnv

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "template.yaml"
FUNCTION = "ErrorReportsFunction"


def sample(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((ROOT / "events" / name).read_text(encoding="utf-8"))
    return loaded


def reject_one(emulator: EmulatorClient, identifier: str) -> dict[str, Any]:
    """An event Stripe takes, then reports (a customer it does not know): its report."""
    emulator.set_known_customers("cus_1")
    key = {"Authorization": f"Bearer {emulator.secret_key}"}
    token = requests.post(
        f"{emulator.url}/v2/billing/meter_event_session", headers=key, timeout=10
    ).json()["authentication_token"]
    event = {
        "event_name": "api_requests",
        "identifier": identifier,
        "payload": {"stripe_customer_id": "cus_nobody", "value": "1"},
    }
    answer = requests.post(
        f"{emulator.url}/v2/billing/meter_event_stream",
        headers={"Authorization": f"Bearer {token}"},
        json={"events": [event]},
        timeout=10,
    )
    assert answer.status_code == 200
    emulator.close_error_windows()
    reports: list[dict[str, Any]] = emulator.list_events()["data"]
    (report,) = reports
    return report


def test_the_error_report_samples_run_with_env_json_against_the_local_env(
    env_vars: dict[str, Any], aws: AwsEnv, emulator: EmulatorClient
) -> None:
    report = reject_one(emulator, "local-env-1")
    envelope = sample("error-reports-eventbridge-triggered.json")
    envelope["detail"] = {k: report[k] for k in ("id", "object", "type", "created")}
    with load_function(TEMPLATE, FUNCTION, env_vars=env_vars, extra_env=aws.env) as function:
        unknown = function.invoke(sample("error-reports-eventbridge-triggered.json"))
        processed = function.invoke(envelope)
        webhook = function.invoke(sample("error-reports-webhook.json"))

    # the sample's Stripe event is not the emulator's: acknowledged as unavailable
    assert unknown.ok, unknown.error
    assert unknown.result["status"] == "unavailable"
    # a report the emulator made: its sample's letter in the DLQ env.json names
    assert processed.ok, processed.error
    assert processed.result["status"] == "processed"
    assert processed.result["letters"] == 1
    dlq_url = env_vars[FUNCTION]["DEAD_LETTER_QUEUE_URL"]
    (letter,) = aws.client("sqs").receive_message(
        QueueUrl=dlq_url, MaxNumberOfMessages=10, MessageAttributeNames=["All"]
    )["Messages"]
    attributes = {k: v["StringValue"] for k, v in letter["MessageAttributes"].items()}
    assert attributes["Identifier"] == "local-env-1"
    assert attributes["ErrorCode"] == "meter_event_customer_not_found"
    # the webhook sample's signature is verified with the signing secret local-env created
    # (and refused: it was signed long ago, with another secret)
    assert webhook.ok, webhook.error
    assert webhook.result["statusCode"] == 400
