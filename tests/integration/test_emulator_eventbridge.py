"""Thin events put on an EventBridge bus (moto server) as Stripe's partner event source puts
them: a rule matching Stripe's source and event types routes them to an SQS queue, where
they arrive in EventBridge's envelope and the official SDK reads and fetches them."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import stripe

from devkit.emulator import eventbridge
from devkit.emulator.client import EmulatorClient
from devkit.emulator.delivery import DeliveryError
from devkit.emulator.eventbridge import EventBridgeTransport
from devkit.emulator.settings import EventBridgeDestination
from devkit.emulator.v2_events import ThinEvent
from tests.plugins.aws import AwsEnv

pytestmark = pytest.mark.integration

BUS = "stripe-events"
SOURCE = "aws.partner/stripe.com/ed_test_61RelayEmulatorDestination"
TYPES = ["v1.billing.meter.error_report_triggered", "v1.billing.meter.no_meter_found"]


def stripe_rule_to_a_queue(aws: AwsEnv) -> str:
    """A bus, a rule as the docs write it for Stripe's events, an SQS target; the queue URL."""
    events, sqs = aws.client("events"), aws.client("sqs")
    events.create_event_bus(Name=BUS)
    queue_url = sqs.create_queue(QueueName="stripe-errors")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])
    pattern = {"source": [{"prefix": "aws.partner/stripe.com"}], "detail-type": TYPES}
    events.put_rule(Name="stripe-meter-errors", EventBusName=BUS, EventPattern=json.dumps(pattern))
    events.put_targets(
        Rule="stripe-meter-errors",
        EventBusName=BUS,
        Targets=[{"Id": "queue", "Arn": queue_arn["Attributes"]["QueueArn"]}],
    )
    return queue_url


def received(aws: AwsEnv, queue_url: str) -> list[dict[str, Any]]:
    messages = aws.client("sqs").receive_message(
        QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1
    )
    return [json.loads(m["Body"]) for m in messages.get("Messages", [])]


def send_invalid_events(emulator: EmulatorClient) -> None:
    with requests.Session() as http:
        key = {"Authorization": f"Bearer {emulator.secret_key}"}
        for body in (
            {"event_name": "api_requests", "identifier": "bad", "payload": {"value": "1"}},
            {"event_name": "no_such_meter", "identifier": "lost", "payload": {"value": "1"}},
        ):
            # the single-event endpoint refuses these at once; the stream reports them later
            session = http.post(f"{emulator.url}/v2/billing/meter_event_session", headers=key)
            token = session.json()["authentication_token"]
            answer = http.post(
                f"{emulator.url}/v2/billing/meter_event_stream",
                json={"events": [body]},
                headers={"Authorization": f"Bearer {token}"},
                timeout=10,
            )
            assert answer.status_code == 200


def test_events_arrive_in_the_partner_envelope_and_the_sdk_fetches_them(
    emulator: EmulatorClient, aws: AwsEnv
) -> None:
    queue_url = stripe_rule_to_a_queue(aws)
    emulator.set_eventbridge(BUS, endpoint_url=aws.endpoint_url, region=aws.region, source=SOURCE)
    send_invalid_events(emulator)

    emulator.close_error_windows()
    deliveries = emulator.wait_for_deliveries()

    assert {(d["kind"], d["destination"], d["status"]) for d in deliveries} == {
        ("eventbridge", BUS, "delivered")
    }
    envelopes = {e["detail-type"]: e for e in received(aws, queue_url)}
    assert set(envelopes) == set(TYPES)
    listed = {e["id"]: e for e in emulator.list_events()["data"]}
    client = stripe.StripeClient(
        emulator.secret_key,
        base_addresses={"api": emulator.url},
        max_network_retries=0,
    )
    for event_type, envelope in envelopes.items():
        assert envelope["source"] == SOURCE
        detail = envelope["detail"]
        assert detail["type"] == event_type
        assert "data" not in detail
        assert detail == {k: v for k, v in listed[detail["id"]].items() if k != "data"}
        notification = client.parse_event_notification_without_verification(json.dumps(envelope))
        assert notification.id == detail["id"]
        fetched = notification.fetch_event()
        assert fetched.type == event_type
        assert fetched.data.reason.error_count == 1  # type: ignore[union-attr]


def test_the_default_source_is_a_stripe_partner_source(
    emulator: EmulatorClient, aws: AwsEnv
) -> None:
    queue_url = stripe_rule_to_a_queue(aws)
    emulator.set_eventbridge(BUS, endpoint_url=aws.endpoint_url, region=aws.region)
    send_invalid_events(emulator)
    emulator.close_error_windows()
    emulator.wait_for_deliveries()

    sources = {e["source"] for e in received(aws, queue_url)}

    assert sources == {"aws.partner/stripe.com/ed_test_emulator"}
    assert emulator.config()["eventbridge"]["source"] == "aws.partner/stripe.com/ed_test_emulator"


def test_a_missing_bus_is_a_failed_delivery_with_the_reason(
    emulator: EmulatorClient, aws: AwsEnv
) -> None:
    emulator.configure(delivery_attempts=2, delivery_backoff_s=0)
    emulator.set_eventbridge("no-such-bus", endpoint_url=aws.endpoint_url, region=aws.region)
    send_invalid_events(emulator)

    emulator.close_error_windows()
    deliveries = emulator.wait_for_deliveries()

    assert len(deliveries) == 2
    for delivery in deliveries:
        assert delivery["status"] == "failed"
        assert len(delivery["attempts"]) == 2
        assert "ResourceNotFoundException" in delivery["attempts"][0]["error"]
        assert delivery["attempts"][0]["status"] == 400


@pytest.fixture
def silent_bus() -> Iterator[tuple[str, list[bytes]]]:
    """An endpoint that takes each request and never answers: the URL, and what it took."""
    server = socket.create_server(("127.0.0.1", 0))
    taken: list[bytes] = []
    held: list[socket.socket] = []

    def serve() -> None:
        while True:
            try:
                connection, _ = server.accept()
            except OSError:  # closed: the test is over
                return
            held.append(connection)
            taken.append(connection.recv(65536))

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}", taken
    finally:
        server.close()
        for connection in held:
            connection.close()


def test_a_put_that_times_out_is_one_failed_attempt_not_a_second_put(
    silent_bus: tuple[str, list[bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bus that took the PutEvents may still put it on: the dispatcher must know of every
    put it made, so botocore makes one call and the timeout is the attempt's error (botocore
    once put it again unrecorded, and the function received the event twice)."""
    url, taken = silent_bus
    monkeypatch.setattr(eventbridge, "READ_TIMEOUT_S", 0.5)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    transport = EventBridgeTransport(
        EventBridgeDestination(event_bus_name=BUS, region="us-east-1", endpoint_url=url)
    )
    event = ThinEvent("evt_1", TYPES[0], time.time(), {}, {}, 1)

    with pytest.raises(DeliveryError, match="Read timeout") as failure:
        transport.send(b"{}", event, time.time())

    time.sleep(0.5)  # a second put, if botocore made one, has had time to arrive
    assert [request.split(b" ", 2)[:2] for request in taken] == [[b"POST", b"/"]]
    assert failure.value.status is None
