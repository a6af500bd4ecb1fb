"""Helpers of the error-report tests: the relay stack with what ErrorReportsFunction needs
(the `reports` fixture: its table, the webhook signing secret), the function through the
harness, events Stripe (the emulator) takes and rejects later, and the requests it pushes."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import pytest
import requests

from devkit.emulator.client import EmulatorClient
from devkit.emulator.webhooks import signature_header
from devkit.harness import STACK_NAME, Invocation, LambdaFunction, load_function
from meter_relay.error_reports import REPORT_TYPES
from tests.plugins.relay import ROOT, Relay
from tests.plugins.stripe_emulator import WEBHOOK_SECRET, Received, WebhookReceiver

TEMPLATE = ROOT / "template.yaml"
FUNCTION = "ErrorReportsFunction"
EVENTS = ROOT / "events"
TABLE = f"{STACK_NAME}-error-reports"
WEBHOOK_SECRET_ID = f"{STACK_NAME}/stripe-webhook-signing-secret"
SAMPLE_WEBHOOK_SECRET = (
    "whsec_test_sample_0123456789abcdef"  # signs events/error-reports-webhook.json
)
BUS = "stripe-partner-bus"
SOURCE = "aws.partner/stripe.com/ed_test_61RelayEmulatorDestination"
TRIGGERED, NO_METER = REPORT_TYPES
WINDOW = 10.0


def usage(identifier: str, *, name: str = "api_requests", value: str = "1") -> dict[str, Any]:
    return {
        "event_name": name,
        "identifier": identifier,
        "payload": {"stripe_customer_id": "cus_1", "value": value},
    }


# Three events Stripe takes (200) and drops later, in two reports: one per meter and window.
REJECTED = [
    usage("bad-zero", value="0"),
    usage("bad-text", value="x"),
    usage("lost-1", name="nobody_meters_this"),
]
REJECTED_CODES = {
    "bad-zero": "meter_event_invalid_value",
    "bad-text": "meter_event_invalid_value",
    "lost-1": "no_meter",
}


@dataclass
class Reports:
    """The relay stack (queues, the Stripe secret key) plus what the error reports need."""

    relay: Relay
    receiver: WebhookReceiver

    @property
    def emulator(self) -> EmulatorClient:
        return self.relay.emulator

    def function(self, **env: str) -> LambdaFunction:
        variables = {
            "Parameters": {"STRIPE_API_VERSION": "2026-09-30.preview", "STRIPE_MODE": "test"},
            FUNCTION: {
                "STRIPE_API_BASE": self.relay.emulator_url,
                "STRIPE_SECRET_ID": self.relay.secret_id,
                "STRIPE_WEBHOOK_SECRET_ID": WEBHOOK_SECRET_ID,
                "DEAD_LETTER_QUEUE_URL": self.relay.dlq_url,
                "ERROR_REPORTS_TABLE": TABLE,
                **env,
            },
        }
        return load_function(TEMPLATE, FUNCTION, env_vars=variables, extra_env=self.relay.aws.env)

    def reject(self, *events: dict[str, Any]) -> list[dict[str, Any]]:
        """Stream the events within one validation window, close it; the reports created."""
        before = {e["id"] for e in self.emulator.list_events()["data"]}
        now = float(self.emulator.advance_clock(0)["epoch"])
        self.emulator.set_clock((now // WINDOW + 1) * WINDOW + 0.25)
        with requests.Session() as http:
            key = {"Authorization": f"Bearer {self.relay.secret_key}"}
            session = http.post(
                f"{self.relay.emulator_url}/v2/billing/meter_event_session", headers=key, timeout=10
            ).json()
            answer = http.post(
                f"{self.relay.emulator_url}/v2/billing/meter_event_stream",
                json={"events": list(events)},
                headers={"Authorization": f"Bearer {session['authentication_token']}"},
                timeout=10,
            )
        assert answer.status_code == 200  # Stripe's "received"
        self.emulator.close_error_windows()
        return [e for e in self.emulator.list_events()["data"] if e["id"] not in before]

    def use_eventbridge(self) -> None:
        """Stripe (the emulator) puts its events on the bus, as its partner source does."""
        aws = self.relay.aws
        self.emulator.set_eventbridge(
            BUS, endpoint_url=aws.endpoint_url, region=aws.region, source=SOURCE
        )

    def pushed(self, *events: dict[str, Any]) -> list[Received]:
        """The webhook requests Stripe (the emulator) sent for these rejected events."""
        self.emulator.set_webhooks((self.receiver.url, WEBHOOK_SECRET))
        self.reject(*events)
        self.emulator.wait_for_deliveries()
        return list(self.receiver.received)

    def letters(self) -> list[dict[str, Any]]:
        return self.relay.dlq_messages()

    def remembered(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.relay.aws.client("dynamodb").scan(TableName=TABLE)[
            "Items"
        ]
        return items


@pytest.fixture
def reports(relay: Relay, webhook_receiver: WebhookReceiver) -> Reports:
    dynamodb = relay.aws.client("dynamodb")
    dynamodb.create_table(
        TableName=TABLE,
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    relay.aws.client("secretsmanager").create_secret(
        Name=WEBHOOK_SECRET_ID, SecretString=WEBHOOK_SECRET
    )
    return Reports(relay, webhook_receiver)


def function_url_request(received: Received) -> dict[str, Any]:
    """The Function URL event (payload format 2.0) for a request Stripe sent: the sample's
    shape, with the request's own headers and body."""
    request: dict[str, Any] = json.loads((EVENTS / "error-reports-webhook.json").read_text())
    request["headers"] = dict(received.headers)
    request["body"] = received.body.decode()
    request["requestContext"]["timeEpoch"] = int(time.time() * 1000)
    return request


def signed_request(body: bytes, *, secret: str = WEBHOOK_SECRET, at: int | None = None) -> Any:
    header = signature_header(body, secret, int(time.time()) if at is None else at)
    return function_url_request(Received({"stripe-signature": header}, body))


def answer(invocation: Invocation) -> tuple[int, dict[str, Any]]:
    assert invocation.ok, invocation.error
    return invocation.result["statusCode"], json.loads(invocation.result["body"])


def codes_and_identifiers(letters: list[dict[str, Any]]) -> dict[str, str]:
    """identifier -> Stripe's code, of letters that name each identifier once."""
    pairs = [(m["attributes"]["Identifier"], m["attributes"]["ErrorCode"]) for m in letters]
    found = dict(pairs)
    assert len(found) == len(pairs), f"an identifier was dead-lettered twice: {sorted(pairs)}"
    return found
