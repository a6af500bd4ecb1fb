"""The emulator driven by the official Stripe SDK, as the forwarder and operators drive Stripe:
objects come back as the SDK's own types, errors as the SDK's own error classes, with the
status and code Stripe documents for each."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, cast

import pytest
import stripe

from devkit.emulator.client import EmulatorClient

if TYPE_CHECKING:
    from stripe.params.billing import MeterEventSummaryListParams, MeterListParams
    from stripe.params.v2.billing import (
        MeterEventAdjustmentCreateParams,
        MeterEventCreateParams,
        MeterEventStreamCreateParamsEvent,
    )

pytestmark = pytest.mark.integration

HOUR = 3600
DAY = 86_400
CUSTOMER = "cus_sdk"


def make_client(emulator: EmulatorClient, api_key: str) -> stripe.StripeClient:
    return stripe.StripeClient(
        api_key,
        base_addresses={"api": emulator.url, "meter_events": emulator.url},
        max_network_retries=0,
    )


@pytest.fixture
def client(emulator: EmulatorClient) -> stripe.StripeClient:
    """The SDK as users build it, with the secret key."""
    return make_client(emulator, emulator.secret_key)


def session_client(emulator: EmulatorClient, client: stripe.StripeClient) -> stripe.StripeClient:
    """A second client, authenticated by a fresh meter event session's token (the stream's)."""
    session = client.v2.billing.meter_event_session.create()
    return make_client(emulator, session.authentication_token)


@pytest.fixture
def streamer(emulator: EmulatorClient, client: stripe.StripeClient) -> stripe.StripeClient:
    return session_client(emulator, client)


def emulator_now(emulator: EmulatorClient) -> float:
    return float(emulator.advance_clock(0)["epoch"])


def rfc3339(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def usage(
    identifier: str | None = None,
    *,
    name: str = "api_requests",
    customer: str = CUSTOMER,
    value: str = "1",
    timestamp: float | None = None,
) -> MeterEventCreateParams:
    """One event, as the single-event endpoint and (the same shape) the stream take it."""
    event: MeterEventCreateParams = {
        "event_name": name,
        "payload": {"stripe_customer_id": customer, "value": value},
    }
    if identifier is not None:
        event["identifier"] = identifier
    if timestamp is not None:
        event["timestamp"] = rfc3339(timestamp)
    return event


# ----- v1 meters -----------------------------------------------------------------------------
def test_meter_create_retrieve_deactivate_reactivate(
    emulator: EmulatorClient, client: stripe.StripeClient
) -> None:
    meter = client.v1.billing.meters.create(
        {
            "display_name": "Tokens",
            "event_name": "tokens_used",
            "default_aggregation": {"formula": "sum"},
            "customer_mapping": {"event_payload_key": "account", "type": "by_id"},
            "value_settings": {"event_payload_key": "tokens"},
        }
    )

    assert isinstance(meter, stripe.billing.Meter)
    assert meter.object == "billing.meter"
    assert meter.id.startswith("mtr_")
    assert (meter.event_name, meter.display_name, meter.status) == (
        "tokens_used",
        "Tokens",
        "active",
    )
    assert meter.default_aggregation.formula == "sum"
    assert meter.customer_mapping.event_payload_key == "account"
    assert meter.value_settings.event_payload_key == "tokens"
    assert meter.livemode is False
    (logged,) = emulator.requests(endpoint="meters")
    assert logged["headers"]["content-type"] == "application/x-www-form-urlencoded"

    fetched = client.v1.billing.meters.retrieve(meter.id)
    assert fetched.to_dict() == meter.to_dict()

    inactive = client.v1.billing.meters.deactivate(meter.id)
    assert inactive.status == "inactive"
    assert inactive.status_transitions.deactivated_at is not None
    assert client.v1.billing.meters.retrieve(meter.id).status == "inactive"
    with pytest.raises(stripe.InvalidRequestError) as archived:
        client.v2.billing.meter_events.create(
            {"event_name": "tokens_used", "payload": {"account": "a", "tokens": "5"}}
        )
    assert archived.value.code == "archived_meter"

    active = client.v1.billing.meters.reactivate(meter.id)
    assert active.status == "active"
    assert active.status_transitions.deactivated_at is None
    event = client.v2.billing.meter_events.create(
        {"event_name": "tokens_used", "payload": {"account": "a", "tokens": "5"}}
    )
    assert event.event_name == "tokens_used"
    assert [e["status"] for e in emulator.events(event_name="tokens_used")] == ["counted"]


def test_meter_create_is_refused_without_required_params(client: stripe.StripeClient) -> None:
    with pytest.raises(stripe.InvalidRequestError) as refused:
        client.v1.billing.meters.create(
            {"display_name": "No event name", "default_aggregation": {"formula": "sum"}}  # type: ignore[typeddict-item]
        )

    assert refused.value.http_status == 400
    assert refused.value.code == "parameter_missing"
    assert refused.value.param == "event_name"


def test_retrieving_an_unknown_meter_is_a_404(client: stripe.StripeClient) -> None:
    with pytest.raises(stripe.InvalidRequestError) as missing:
        client.v1.billing.meters.retrieve("mtr_nope")

    assert missing.value.http_status == 404
    assert missing.value.code == "resource_missing"


def test_meter_list_pages_with_limit_and_starting_after(client: stripe.StripeClient) -> None:
    for i in range(3):
        client.v1.billing.meters.create(
            {
                "display_name": f"Extra {i}",
                "event_name": f"extra_{i}",
                "default_aggregation": {"formula": "count"},
            }
        )
    everything = client.v1.billing.meters.list({"limit": 100})
    all_ids = [meter.id for meter in everything.data]
    assert len(all_ids) == 7
    assert everything.has_more is False

    pages: list[list[str]] = []
    cursor: str | None = None
    while True:
        params: MeterListParams = {"limit": 2}
        if cursor:
            params["starting_after"] = cursor
        page = client.v1.billing.meters.list(params)
        pages.append([meter.id for meter in page.data])
        if not page.has_more:
            break
        cursor = page.data[-1].id

    assert [len(page) for page in pages] == [2, 2, 2, 1]
    assert [meter_id for page in pages for meter_id in page] == all_ids
    auto = client.v1.billing.meters.list({"limit": 3}).auto_paging_iter()
    assert [meter.id for meter in auto] == all_ids
    inactive = client.v1.billing.meters.list({"status": "inactive"})
    assert [meter.id for meter in inactive.data] == ["mtr_test_legacy"]


# ----- v2 sessions and the stream ------------------------------------------------------------
def test_session_object_and_its_lifetime(
    emulator: EmulatorClient, client: stripe.StripeClient
) -> None:
    session = client.v2.billing.meter_event_session.create()

    assert isinstance(session, stripe.v2.billing.MeterEventSession)
    assert session.object == "v2.billing.meter_event_session"
    assert session.id
    assert session.authentication_token
    assert session.livemode is False
    created = datetime.fromisoformat(session.created)
    expires_at = datetime.fromisoformat(session.expires_at)
    assert (expires_at - created).total_seconds() == pytest.approx(900, abs=0.01)
    assert abs(created.timestamp() - emulator_now(emulator)) < 60

    emulator.configure(session_ttl=60)
    short = client.v2.billing.meter_event_session.create()
    lifetime = datetime.fromisoformat(short.expires_at) - datetime.fromisoformat(short.created)
    assert lifetime.total_seconds() == pytest.approx(60, abs=0.01)
    assert short.authentication_token != session.authentication_token


def test_stream_events_sent_with_the_session_client_are_counted(
    emulator: EmulatorClient, streamer: stripe.StripeClient
) -> None:
    streamer.v2.billing.meter_event_stream.create(
        {"events": [usage("s1", value="3"), usage("s2", value="4"), usage(name="logins")]}
    )

    counted = emulator.events(status="counted")
    assert len(counted) == 3
    assert {e["identifier"] for e in counted} >= {"s1", "s2"}
    assert all(e["source"] == "stream" for e in counted)
    assert emulator.identifiers()["s1"] == {"received": 1, "counted": 1}
    (logged,) = emulator.requests(endpoint="stream")
    assert logged["headers"]["content-type"] == "application/json"
    assert logged["headers"]["authorization"].startswith("Bearer token_****")


def test_the_stream_refuses_the_secret_key(client: stripe.StripeClient) -> None:
    with pytest.raises(stripe.AuthenticationError) as refused:
        client.v2.billing.meter_event_stream.create({"events": [usage("s1")]})

    assert refused.value.http_status == 401


@pytest.mark.parametrize("how", ["advance_clock", "expire_sessions"])
def test_expired_session_raises_temporary_session_expired(
    emulator: EmulatorClient, client: stripe.StripeClient, how: str
) -> None:
    streamer = session_client(emulator, client)
    streamer.v2.billing.meter_event_stream.create({"events": [usage("before")]})
    if how == "advance_clock":
        emulator.advance_clock(901)
    else:
        assert emulator.expire_sessions() == 1

    with pytest.raises(stripe.TemporarySessionExpiredError) as expired:
        streamer.v2.billing.meter_event_stream.create({"events": [usage("after")]})

    assert expired.value.http_status == 401
    assert expired.value.code == "billing_meter_event_session_expired"
    assert [e["identifier"] for e in emulator.events()] == ["before"]
    renewed = session_client(emulator, client)
    renewed.v2.billing.meter_event_stream.create({"events": [usage("after")]})
    assert [e["identifier"] for e in emulator.events()] == ["before", "after"]


# ----- v2 single events and their documented errors ------------------------------------------
def test_single_event_returns_a_meter_event(
    emulator: EmulatorClient, client: stripe.StripeClient
) -> None:
    at = int(emulator_now(emulator)) - 120
    event = client.v2.billing.meter_events.create(
        {
            "event_name": "api_requests",
            "identifier": "single-1",
            "timestamp": rfc3339(at),
            "payload": {"stripe_customer_id": CUSTOMER, "value": "25"},
        }
    )

    assert isinstance(event, stripe.v2.billing.MeterEvent)
    assert event.object == "v2.billing.meter_event"
    assert event.identifier == "single-1"
    assert event.event_name == "api_requests"
    assert event.payload.to_dict() == {"stripe_customer_id": CUSTOMER, "value": "25"}
    assert datetime.fromisoformat(event.timestamp).timestamp() == at
    assert event.livemode is False
    assert datetime.fromisoformat(event.created).timestamp() >= at + 120
    (stored,) = emulator.events(identifier="single-1")
    assert (stored["source"], stored["status"]) == ("sync", "counted")

    generated = client.v2.billing.meter_events.create(usage())
    assert generated.identifier
    assert generated.identifier != "single-1"


_NO_CUSTOMER: MeterEventCreateParams = {"event_name": "api_requests", "payload": {"value": "1"}}
_NO_VALUE: MeterEventCreateParams = {
    "event_name": "api_requests",
    "payload": {"stripe_customer_id": CUSTOMER},
}


@pytest.mark.parametrize(
    ("event", "code"),
    [
        pytest.param(usage("e", name="legacy_metric"), "archived_meter", id="archived_meter"),
        pytest.param(usage("e", name="nobody_meters_this"), "no_meter", id="no_meter"),
        pytest.param(usage("e", value="0"), "payload_invalid_value", id="value-zero"),
        pytest.param(usage("e", value="-1"), "payload_invalid_value", id="value-negative"),
        pytest.param(usage("e", value="1.5"), "payload_invalid_value", id="value-decimal"),
        pytest.param(usage("e", value="abc"), "payload_invalid_value", id="value-word"),
        pytest.param(_NO_CUSTOMER, "payload_no_customer_defined", id="no-customer"),
        pytest.param(_NO_VALUE, "payload_no_value_defined", id="no-value"),
        pytest.param(
            {"event_name": "search_calls", "payload": {"customer": "c", "value": "1"}},
            "payload_no_value_defined",
            id="meter-own-value-key",
        ),
    ],
)
def test_single_event_errors_are_invalid_request_errors(
    emulator: EmulatorClient,
    client: stripe.StripeClient,
    event: MeterEventCreateParams,
    code: str,
) -> None:
    with pytest.raises(stripe.InvalidRequestError) as refused:
        client.v2.billing.meter_events.create(event)

    assert refused.value.http_status == 400
    assert refused.value.code == code
    assert refused.value.json_body is not None
    assert refused.value.json_body["error"]["code"] == code  # type: ignore[index]
    assert emulator.events(status="counted") == []


def test_duplicate_single_event_is_refused_and_counted_once(
    emulator: EmulatorClient, client: stripe.StripeClient
) -> None:
    client.v2.billing.meter_events.create(usage("twice"))

    with pytest.raises(stripe.InvalidRequestError) as duplicate:
        client.v2.billing.meter_events.create(usage("twice", value="9"))

    assert duplicate.value.http_status == 400
    assert duplicate.value.code == "duplicate_meter_event"
    assert emulator.identifiers()["twice"]["counted"] == 1


def test_concurrent_events_for_one_customer_and_meter_raise_409(
    emulator: EmulatorClient,
) -> None:
    emulator.configure(meter_events_hold_ms=1500)
    start = threading.Barrier(2)
    outcomes: dict[str, Any] = {}

    def send(identifier: str) -> None:
        sender = make_client(emulator, emulator.secret_key)
        start.wait()
        try:
            outcomes[identifier] = sender.v2.billing.meter_events.create(usage(identifier))
        except stripe.StripeError as error:
            outcomes[identifier] = error

    threads = [threading.Thread(target=send, args=(name,)) for name in ("c1", "c2")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    errors = [o for o in outcomes.values() if isinstance(o, stripe.StripeError)]
    events = [o for o in outcomes.values() if isinstance(o, stripe.v2.billing.MeterEvent)]
    assert (len(events), len(errors)) == (1, 1), outcomes
    (conflict,) = errors
    assert isinstance(conflict, stripe.APIError)  # the SDK's class for a 409
    assert conflict.http_status == 409
    assert conflict.error is not None
    assert conflict.error.code == "too_many_concurrent_requests"
    counted = [e["identifier"] for e in emulator.events(status="counted")]
    assert counted == [events[0].identifier]
    # once the first is done, the same customer and meter are free again
    emulator.configure(meter_events_hold_ms=0)
    make_client(emulator, emulator.secret_key).v2.billing.meter_events.create(usage("c3"))
    assert emulator.identifiers()["c3"] == {"received": 1, "counted": 1}


def test_rate_limit_raises_rate_limit_error_with_retry_after(
    emulator: EmulatorClient, client: stripe.StripeClient
) -> None:
    # a slow refill: whatever the machine, the second request finds the bucket empty
    emulator.configure(rate_limits={"meter_events": {"rate": 0.01, "burst": 1}})
    client.v2.billing.meter_events.create(usage("first"))

    with pytest.raises(stripe.RateLimitError) as limited:
        client.v2.billing.meter_events.create(usage("second"))

    assert limited.value.http_status == 429
    assert limited.value.code == "account_rate_limit_exceeded"
    assert limited.value.headers is not None
    assert int(limited.value.headers["Retry-After"]) >= 1
    assert [e["identifier"] for e in emulator.events()] == ["first"]


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda c: c.v2.billing.meter_event_session.create(), id="session"),
        pytest.param(lambda c: c.v2.billing.meter_events.create(usage("x")), id="meter_events"),
        pytest.param(lambda c: c.v1.billing.meters.list(), id="meters"),
        pytest.param(
            lambda c: c.v2.billing.meter_event_adjustments.create(
                {"event_name": "api_requests", "type": "cancel", "cancel": {"identifier": "x"}}
            ),
            id="adjustments",
        ),
    ],
)
def test_invalid_api_key_raises_authentication_error(
    emulator: EmulatorClient, call: Callable[[stripe.StripeClient], object]
) -> None:
    stranger = make_client(emulator, "sk_live_not_accepted_by_the_emulator")

    with pytest.raises(stripe.AuthenticationError) as refused:
        call(stranger)

    assert refused.value.http_status == 401
    assert emulator.events() == []


# ----- adjustments ---------------------------------------------------------------------------
def _summary_total(client: stripe.StripeClient, start: int, end: int) -> float:
    page = client.v1.billing.meters.event_summaries.list(
        "mtr_test_api_requests", {"customer": CUSTOMER, "start_time": start, "end_time": end}
    )
    return float(sum(summary.aggregated_value for summary in page.data))


def test_cancel_within_24_hours_completes_and_uncounts_the_event(
    emulator: EmulatorClient, client: stripe.StripeClient, streamer: stripe.StripeClient
) -> None:
    hour = int(emulator_now(emulator)) // HOUR * HOUR - HOUR
    streamer.v2.billing.meter_event_stream.create(
        {
            "events": [
                usage("keep", value="5", timestamp=hour + 10),
                usage("undo", value="7", timestamp=hour + 20),
            ]
        }
    )
    assert _summary_total(client, hour, hour + HOUR) == 12

    adjustment = client.v2.billing.meter_event_adjustments.create(
        {"event_name": "api_requests", "type": "cancel", "cancel": {"identifier": "undo"}}
    )

    assert isinstance(adjustment, stripe.v2.billing.MeterEventAdjustment)
    assert adjustment.object == "v2.billing.meter_event_adjustment"
    assert adjustment.status == "pending"
    assert adjustment.type == "cancel"
    assert adjustment.cancel.identifier == "undo"
    assert adjustment.event_name == "api_requests"
    (stored,) = emulator.adjustments()
    assert (stored["id"], stored["status"]) == (adjustment.id, "complete")
    assert [e["status"] for e in emulator.events(identifier="undo")] == ["cancelled"]
    assert _summary_total(client, hour, hour + HOUR) == 5
    with pytest.raises(stripe.InvalidRequestError) as again:
        client.v2.billing.meter_event_adjustments.create(
            {"event_name": "api_requests", "type": "cancel", "cancel": {"identifier": "undo"}}
        )
    assert again.value.code == "invalid_cancel_configuration"


def test_cancel_after_24_hours_is_an_invalid_cancel_configuration(
    emulator: EmulatorClient, client: stripe.StripeClient
) -> None:
    client.v2.billing.meter_events.create(usage("old"))
    emulator.advance_clock(DAY + 1)

    with pytest.raises(stripe.InvalidRequestError) as refused:
        client.v2.billing.meter_event_adjustments.create(
            {"event_name": "api_requests", "type": "cancel", "cancel": {"identifier": "old"}}
        )

    assert refused.value.http_status == 400
    assert refused.value.code == "invalid_cancel_configuration"
    assert emulator.adjustments() == []
    assert [e["status"] for e in emulator.events(identifier="old")] == ["counted"]


@pytest.mark.parametrize(
    "params",
    [
        pytest.param(
            {"event_name": "api_requests", "type": "cancel", "cancel": {"identifier": "nope"}},
            id="unknown-identifier",
        ),
        pytest.param(
            {"event_name": "logins", "type": "cancel", "cancel": {"identifier": "known"}},
            id="other-event-name",
        ),
        pytest.param({"event_name": "api_requests", "type": "cancel"}, id="no-cancel"),
    ],
)
def test_cancel_of_nothing_cancellable_is_an_invalid_cancel_configuration(
    emulator: EmulatorClient, client: stripe.StripeClient, params: dict[str, Any]
) -> None:
    client.v2.billing.meter_events.create(usage("known"))

    with pytest.raises(stripe.InvalidRequestError) as refused:
        client.v2.billing.meter_event_adjustments.create(
            cast("MeterEventAdjustmentCreateParams", params)
        )

    assert refused.value.http_status == 400
    assert refused.value.code == "invalid_cancel_configuration"
    assert emulator.identifiers()["known"]["counted"] == 1


# ----- v1 event summaries --------------------------------------------------------------------
@pytest.fixture
def hour0(emulator: EmulatorClient) -> int:
    """An hour boundary three hours back: events after it are neither too old nor future."""
    return int(emulator_now(emulator)) // HOUR * HOUR - 3 * HOUR


def test_event_summaries_sum_by_hour_and_over_a_range(
    emulator: EmulatorClient,
    client: stripe.StripeClient,
    streamer: stripe.StripeClient,
    hour0: int,
) -> None:
    events: list[MeterEventStreamCreateParamsEvent] = [
        usage("h0a", value="3", timestamp=hour0),  # start_time is inclusive
        usage("h0b", value="4", timestamp=hour0 + 1800),
        usage("h1a", value="10", timestamp=hour0 + HOUR + 5),
        usage("h1b", value="20", timestamp=hour0 + 2 * HOUR - 1),
        usage("h2a", value="100", timestamp=hour0 + 2 * HOUR),  # end_time is exclusive
        usage("other", value="1000", customer="cus_someone_else", timestamp=hour0 + 60),
    ]
    streamer.v2.billing.meter_event_stream.create({"events": events})
    meters = client.v1.billing.meters

    hourly = meters.event_summaries.list(
        "mtr_test_api_requests",
        {
            "customer": CUSTOMER,
            "start_time": hour0,
            "end_time": hour0 + 2 * HOUR,
            "value_grouping_window": "hour",
        },
    )
    whole = meters.event_summaries.list(
        "mtr_test_api_requests",
        {"customer": CUSTOMER, "start_time": hour0, "end_time": hour0 + 2 * HOUR},
    )
    minutes = meters.event_summaries.list(
        "mtr_test_api_requests",
        {"customer": CUSTOMER, "start_time": hour0 + 60, "end_time": hour0 + HOUR + 60},
    )

    windows = sorted((s.start_time, s.end_time, s.aggregated_value) for s in hourly.data)
    assert windows == [
        (hour0, hour0 + HOUR, 7),
        (hour0 + HOUR, hour0 + 2 * HOUR, 30),
    ]
    summary = hourly.data[0]
    assert isinstance(summary, stripe.billing.MeterEventSummary)
    assert summary.object == "billing.meter_event_summary"
    assert summary.meter == "mtr_test_api_requests"
    assert summary.livemode is False
    assert [(s.start_time, s.end_time, s.aggregated_value) for s in whole.data] == [
        (hour0, hour0 + 2 * HOUR, 37)
    ]
    assert [s.aggregated_value for s in minutes.data] == [14]


def test_event_summaries_count_formula_and_custom_keys(
    client: stripe.StripeClient, streamer: stripe.StripeClient, hour0: int
) -> None:
    streamer.v2.billing.meter_event_stream.create(
        {
            "events": [
                usage(f"login{i}", name="logins", value="50", timestamp=hour0 + 60 * i)
                for i in range(3)
            ]
            + [
                {
                    "event_name": "search_calls",
                    "identifier": f"search{i}",
                    "timestamp": rfc3339(hour0 + i),
                    "payload": {"customer": CUSTOMER, "calls": str(i + 1)},
                }
                for i in range(4)
            ]
        }
    )
    window: MeterEventSummaryListParams = {
        "customer": CUSTOMER,
        "start_time": hour0,
        "end_time": hour0 + HOUR,
    }

    logins = client.v1.billing.meters.event_summaries.list("mtr_test_logins", window)
    searches = client.v1.billing.meters.event_summaries.list("mtr_test_search_calls", window)

    assert [s.aggregated_value for s in logins.data] == [3]  # count ignores the value
    assert [s.aggregated_value for s in searches.data] == [1 + 2 + 3 + 4]


@pytest.mark.parametrize(
    ("start_offset", "end_offset", "window", "param"),
    [
        pytest.param(1, HOUR, None, "start_time", id="start-off-the-minute"),
        pytest.param(0, HOUR + 30, None, "end_time", id="end-off-the-minute"),
        pytest.param(60, HOUR, "hour", "start_time", id="start-off-the-hour"),
        pytest.param(0, HOUR + 60, "hour", "end_time", id="end-off-the-hour"),
    ],
)
def test_event_summaries_refuse_misaligned_times(
    client: stripe.StripeClient,
    hour0: int,
    start_offset: int,
    end_offset: int,
    window: Literal["hour"] | None,
    param: str,
) -> None:
    params: MeterEventSummaryListParams = {
        "customer": CUSTOMER,
        "start_time": hour0 + start_offset,
        "end_time": hour0 + end_offset,
    }
    if window:
        params["value_grouping_window"] = window

    with pytest.raises(stripe.InvalidRequestError) as refused:
        client.v1.billing.meters.event_summaries.list("mtr_test_api_requests", params)

    assert refused.value.http_status == 400
    assert refused.value.code == "parameter_invalid"
    assert refused.value.param == param
