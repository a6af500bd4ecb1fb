"""The emulator's asynchronous error reports and event summaries, read with the official
Stripe SDK as a handler would: a webhook delivery captured from the emulator is accepted by
`StripeClient.parse_event_notification`, the notification's `fetch_event()` returns the
data, events list and page, and summaries page newest first with Stripe's errors."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import pytest
import stripe
from stripe.events import (
    V1BillingMeterErrorReportTriggeredEvent,
    V1BillingMeterErrorReportTriggeredEventNotification,
    V1BillingMeterNoMeterFoundEvent,
    V1BillingMeterNoMeterFoundEventNotification,
)

from devkit.emulator.client import EmulatorClient
from tests.integration.test_emulator_sdk_conformance import (
    CUSTOMER,
    HOUR,
    emulator_now,
    make_client,
    session_client,
    usage,
)
from tests.plugins.stripe_emulator import WEBHOOK_SECRET, Received, WebhookReceiver

if TYPE_CHECKING:
    from stripe.params.billing import MeterEventSummaryListParams

pytestmark = pytest.mark.integration


@pytest.fixture
def client(emulator: EmulatorClient) -> stripe.StripeClient:
    return make_client(emulator, emulator.secret_key)


def deliver_failures(
    emulator: EmulatorClient,
    client: stripe.StripeClient,
    receiver: WebhookReceiver,
    *events: Any,
) -> dict[str, Received]:
    """Stream events, close their window, wait for the pushes; what arrived, by event type."""
    emulator.set_webhooks((receiver.url, WEBHOOK_SECRET))
    session_client(emulator, client).v2.billing.meter_event_stream.create({"events": list(events)})
    emulator.close_error_windows()
    emulator.wait_for_deliveries()
    return {str(r.json()["type"]): r for r in receiver.received}


def test_a_webhook_delivery_parses_and_fetches_its_data(
    emulator: EmulatorClient, client: stripe.StripeClient, webhook_receiver: WebhookReceiver
) -> None:
    arrived = deliver_failures(
        emulator,
        client,
        webhook_receiver,
        usage("zero", value="0"),
        usage("word", value="ten"),
        usage("fine"),
        {"event_name": "api_requests", "identifier": "anon", "payload": {"value": "1"}},
    )
    delivery = arrived["v1.billing.meter.error_report_triggered"]

    notification = client.parse_event_notification(
        delivery.body, delivery.headers["stripe-signature"], WEBHOOK_SECRET
    )

    assert isinstance(notification, V1BillingMeterErrorReportTriggeredEventNotification)
    assert notification.related_object.id == "mtr_test_api_requests"
    assert notification.livemode is False
    event = notification.fetch_event()
    assert isinstance(event, V1BillingMeterErrorReportTriggeredEvent)
    assert event.id == notification.id
    reason = event.data.reason
    assert reason.error_count == 3
    by_code = {t.code: t for t in reason.error_types}
    assert set(by_code) == {"meter_event_invalid_value", "meter_event_no_customer_defined"}
    assert by_code["meter_event_invalid_value"].error_count == 2
    samples = by_code["meter_event_invalid_value"].sample_errors
    assert [s.request.identifier for s in samples] == ["zero", "word"]
    assert samples[1].error_message == "The value must be a positive integer, got 'ten'."
    assert event.data.validation_start < event.data.validation_end
    meter = notification.fetch_related_object()
    assert isinstance(meter, stripe.billing.Meter)
    assert meter.event_name == "api_requests"
    last = webhook_receiver.received[-1].headers
    assert last["stripe-signature"].startswith("t=")


def test_a_no_meter_found_delivery_parses_and_fetches(
    emulator: EmulatorClient, client: stripe.StripeClient, webhook_receiver: WebhookReceiver
) -> None:
    arrived = deliver_failures(
        emulator, client, webhook_receiver, usage("lost", name="nobody_meters_this")
    )
    delivery = arrived["v1.billing.meter.no_meter_found"]

    notification = client.parse_event_notification(
        delivery.body, delivery.headers["stripe-signature"], WEBHOOK_SECRET
    )

    assert isinstance(notification, V1BillingMeterNoMeterFoundEventNotification)
    event = notification.fetch_event()
    assert isinstance(event, V1BillingMeterNoMeterFoundEvent)
    [kind] = event.data.reason.error_types
    assert (kind.code, kind.error_count) == ("no_meter", 1)
    assert kind.sample_errors[0].request.identifier == "lost"
    assert kind.sample_errors[0].error_message == (
        "No meter was found matching event_name nobody_meters_this."
    )


def test_the_sdk_refuses_a_delivery_with_another_secret_or_another_body(
    emulator: EmulatorClient, client: stripe.StripeClient, webhook_receiver: WebhookReceiver
) -> None:
    arrived = deliver_failures(emulator, client, webhook_receiver, usage("zero", value="0"))
    [delivery] = arrived.values()
    signature = delivery.headers["stripe-signature"]

    with pytest.raises(stripe.SignatureVerificationError):
        client.parse_event_notification(delivery.body, signature, "whsec_someone_elses")
    with pytest.raises(stripe.SignatureVerificationError):
        client.parse_event_notification(delivery.body + b" ", signature, WEBHOOK_SECRET)


def test_events_list_filter_and_page_through_the_sdk(
    emulator: EmulatorClient, client: stripe.StripeClient
) -> None:
    streamer = session_client(emulator, client)
    for index in range(3):
        streamer.v2.billing.meter_event_stream.create(
            {"events": [usage(f"zero{index}", value="0"), usage(f"x{index}", name="nope")]}
        )
        emulator.close_error_windows()

    first = client.v2.core.events.list({"limit": 2})
    walked = list(first.auto_paging_iter())
    only_no_meter = client.v2.core.events.list({"types": ["v1.billing.meter.no_meter_found"]})
    of_meter = client.v2.core.events.list({"object_id": "mtr_test_api_requests"})

    assert len(first.data) == 2
    assert first.next_page_url is not None
    assert len(walked) == 6
    assert [e.created for e in walked] == sorted((e.created for e in walked), reverse=True)
    assert len(only_no_meter.data) == 3
    assert {e.type for e in only_no_meter.data} == {"v1.billing.meter.no_meter_found"}
    assert len(of_meter.data) == 3
    assert client.v2.core.events.retrieve(walked[0].id).id == walked[0].id
    with pytest.raises(stripe.InvalidRequestError) as missing:
        client.v2.core.events.retrieve("evt_test_unknown")
    assert missing.value.http_status == 404


# ----- event summaries -------------------------------------------------------------------------
def test_hourly_summaries_are_newest_first_and_page_with_the_sdk(
    emulator: EmulatorClient, client: stripe.StripeClient
) -> None:
    hour0 = int(emulator_now(emulator)) // HOUR * HOUR - 6 * HOUR
    session_client(emulator, client).v2.billing.meter_event_stream.create(
        {
            "events": [
                usage(f"h{h}", value=str(h + 1), timestamp=hour0 + h * HOUR + 5) for h in range(5)
            ]
        }
    )
    params: MeterEventSummaryListParams = {
        "customer": CUSTOMER,
        "start_time": hour0,
        "end_time": hour0 + 6 * HOUR,
        "value_grouping_window": "hour",
        "limit": 2,
    }

    first = client.v1.billing.meters.event_summaries.list("mtr_test_api_requests", params)
    every = list(first.auto_paging_iter())
    back = client.v1.billing.meters.event_summaries.list(
        "mtr_test_api_requests", {**params, "ending_before": every[3].id}
    )

    assert first.has_more is True
    assert [s.start_time for s in first.data] == [hour0 + 4 * HOUR, hour0 + 3 * HOUR]
    assert [(s.start_time, s.aggregated_value) for s in every] == [
        (hour0 + h * HOUR, h + 1) for h in reversed(range(5))
    ]  # the sixth hour has no usage: no summary
    assert [s.id for s in back.data] == [every[1].id, every[2].id]
    assert back.has_more is True


@pytest.mark.parametrize(
    ("params", "code", "param"),
    [
        ({"start_time": 0, "end_time": 60}, "parameter_missing", "customer"),
        ({"customer": CUSTOMER, "end_time": 60}, "parameter_missing", "start_time"),
        ({"customer": CUSTOMER, "start_time": 0}, "parameter_missing", "end_time"),
        (
            {"customer": CUSTOMER, "start_time": 30, "end_time": 60},
            "parameter_invalid",
            "start_time",
        ),
        (
            {
                "customer": CUSTOMER,
                "start_time": 0,
                "end_time": HOUR,
                "value_grouping_window": "week",
            },
            "parameter_invalid",
            "value_grouping_window",
        ),
        ({"customer": CUSTOMER, "start_time": 60, "end_time": 60}, "parameter_invalid", "end_time"),
        (
            {"customer": CUSTOMER, "start_time": 0, "end_time": 60, "limit": 101},
            "parameter_invalid",
            "limit",
        ),
        (
            {"customer": CUSTOMER, "start_time": 0, "end_time": 60, "starting_after": "mtrusg_x"},
            "resource_missing",
            "starting_after",
        ),
    ],
)
def test_summary_errors_are_invalid_request_errors_naming_the_parameter(
    client: stripe.StripeClient, params: dict[str, Any], code: str, param: str
) -> None:
    with pytest.raises(stripe.InvalidRequestError) as refused:
        client.v1.billing.meters.event_summaries.list(
            "mtr_test_api_requests", cast("MeterEventSummaryListParams", params)
        )
    assert (refused.value.http_status, refused.value.code, refused.value.param) == (
        400,
        code,
        param,
    )


def test_summaries_of_an_unknown_meter_or_customer_are_refused(
    emulator: EmulatorClient, client: stripe.StripeClient
) -> None:
    params: MeterEventSummaryListParams = {"customer": CUSTOMER, "start_time": 0, "end_time": 60}
    with pytest.raises(stripe.InvalidRequestError) as no_meter:
        client.v1.billing.meters.event_summaries.list("mtr_nope", params)
    emulator.set_known_customers("cus_someone")
    with pytest.raises(stripe.InvalidRequestError) as no_customer:
        client.v1.billing.meters.event_summaries.list("mtr_test_api_requests", params)

    assert (no_meter.value.http_status, no_meter.value.code) == (404, "resource_missing")
    assert (no_customer.value.code, no_customer.value.param) == ("resource_missing", "customer")
