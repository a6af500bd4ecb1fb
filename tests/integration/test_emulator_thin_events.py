"""Asynchronous error reports over real HTTP: thin events created when a validation window
closes on the emulator's clock, served by GET /v2/core/events[/{id}], and pushed to webhook
endpoints, signed, retried, recorded, off the API threads.

The clock is set to just after a window boundary before events are sent, so that they share
one window; deliveries are waited for with the inspection API, not with sleeps.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import stripe

from devkit.emulator.client import EmulatorClient
from tests.plugins.stripe_emulator import WEBHOOK_SECRET, WebhookReceiver

pytestmark = pytest.mark.integration

WINDOW = 10.0
EVENTS = "/v2/core/events"
TRIGGERED = "v1.billing.meter.error_report_triggered"
NO_METER = "v1.billing.meter.no_meter_found"


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


def start_of_a_window(emulator: EmulatorClient) -> float:
    """Set the clock just past the next window boundary; returns that boundary."""
    now = float(emulator.advance_clock(0)["epoch"])
    boundary = (now // WINDOW + 1) * WINDOW
    emulator.set_clock(boundary + 0.25)
    return boundary


def stream(emulator: EmulatorClient, http: requests.Session, *events: dict[str, Any]) -> None:
    session = http.post(
        f"{emulator.url}/v2/billing/meter_event_session",
        headers={"Authorization": f"Bearer {emulator.secret_key}"},
        timeout=10,
    )
    token = session.json()["authentication_token"]
    answer = http.post(
        f"{emulator.url}/v2/billing/meter_event_stream",
        json={"events": list(events)},
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    assert answer.status_code == 200, answer.text


def usage(
    identifier: str, *, name: str = "api_requests", value: str = "1", customer: str = "cus_1"
) -> dict[str, Any]:
    return {
        "event_name": name,
        "identifier": identifier,
        "payload": {"stripe_customer_id": customer, "value": value},
    }


def get(
    emulator: EmulatorClient, http: requests.Session, path: str, key: str | None = None
) -> requests.Response:
    credential = emulator.secret_key if key is None else key
    return http.get(
        emulator.url + path, headers={"Authorization": f"Bearer {credential}"}, timeout=10
    )


# ----- events: created as windows close, fetched, listed -------------------------------------
def test_a_window_of_failures_becomes_one_thin_event_once_it_has_closed(
    emulator: EmulatorClient, http: requests.Session
) -> None:
    boundary = start_of_a_window(emulator)
    stream(
        emulator,
        http,
        usage("bad-1", value="0"),
        usage("bad-2", value="x"),
        usage("good"),
        usage("lost-1", name="nobody_meters_this"),
        usage("lost-2", name="nobody_meters_this"),
    )
    assert emulator.list_events()["data"] == []  # the window is still open

    emulator.advance_clock(WINDOW)
    listed = emulator.list_events()

    assert listed["next_page_url"] is None
    by_type = {e["type"]: e for e in listed["data"]}
    assert set(by_type) == {TRIGGERED, NO_METER}
    triggered = by_type[TRIGGERED]
    assert triggered["related_object"] == {
        "id": "mtr_test_api_requests",
        "type": "billing.meter",
        "url": "/v1/billing/meters/mtr_test_api_requests",
    }
    assert triggered["data"]["validation_start"].endswith("0.000Z")
    assert triggered["data"]["reason"]["error_count"] == 2
    [invalid_value] = triggered["data"]["reason"]["error_types"]
    assert invalid_value["code"] == "meter_event_invalid_value"
    samples = [s["request"]["identifier"] for s in invalid_value["sample_errors"]]
    assert samples == ["bad-1", "bad-2"]
    assert by_type[NO_METER]["related_object"] == {}
    assert by_type[NO_METER]["data"]["reason"]["error_types"][0]["code"] == "no_meter"
    fetched = get(emulator, http, f"{EVENTS}/{triggered['id']}")
    assert fetched.status_code == 200
    assert fetched.json() == triggered
    assert boundary  # the events were sent inside one window


def test_events_are_listed_newest_first_filtered_and_paged(
    emulator: EmulatorClient, http: requests.Session
) -> None:
    start_of_a_window(emulator)
    created = []
    for index in range(5):
        name = "nobody_meters_this" if index % 2 else "api_requests"
        stream(emulator, http, usage(f"bad-{index}", name=name, value="0"))
        emulator.advance_clock(WINDOW)
        [event] = emulator.list_events(limit=1)["data"]
        created.append(event)
    newest_first = [e["id"] for e in reversed(created)]

    assert [e["id"] for e in emulator.list_events()["data"]] == newest_first
    only_meter = emulator.list_events(object_id="mtr_test_api_requests")["data"]
    assert [e["id"] for e in only_meter] == newest_first[::2]
    unmetered = emulator.list_events(types=[NO_METER])["data"]
    assert [e["id"] for e in unmetered] == newest_first[1::2]
    middle = emulator.list_events(
        created={"gt": created[0]["created"], "lt": created[4]["created"]}
    )["data"]
    assert [e["id"] for e in middle] == newest_first[1:4]
    walked, page = [], emulator.list_events(limit=2)
    while True:
        walked += [e["id"] for e in page["data"]]
        if page["next_page_url"] is None:
            break
        page = get(emulator, http, page["next_page_url"]).json()
    assert walked == newest_first


@pytest.mark.parametrize(
    ("path", "param"),
    [
        (f"{EVENTS}?limit=0", "limit"),
        (f"{EVENTS}?created[gt]=yesterday", "created[gt]"),
        (f"{EVENTS}?colour=red", "colour"),
        (f"{EVENTS}?page=garbage", "page"),
    ],
)
def test_bad_list_parameters_are_v2_errors_naming_them(
    emulator: EmulatorClient, http: requests.Session, path: str, param: str
) -> None:
    answer = get(emulator, http, path)
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", param)
    assert error["doc_url"].startswith("https://docs.stripe.com/error-codes")


def test_an_unknown_event_is_a_v2_404(emulator: EmulatorClient, http: requests.Session) -> None:
    answer = get(emulator, http, f"{EVENTS}/evt_test_nope")
    assert answer.status_code == 404
    assert answer.json()["error"] == {
        "type": "invalid_request_error",
        "code": "resource_missing",
        "message": "No such event: 'evt_test_nope'",
        "doc_url": "https://docs.stripe.com/error-codes#resource-missing",
    }


@pytest.mark.parametrize("key", ["", "sk_live_unknown_to_the_emulator", "token_not_a_key"])
def test_events_need_the_secret_key(
    emulator: EmulatorClient, http: requests.Session, key: str
) -> None:
    assert get(emulator, http, EVENTS, key).status_code == 401
    assert get(emulator, http, f"{EVENTS}/evt_test_x", key).status_code == 401


def test_faults_can_be_injected_on_the_events_endpoint(
    emulator: EmulatorClient, http: requests.Session
) -> None:
    emulator.set_faults("events", error_rate=1.0, error_statuses=[503])
    assert get(emulator, http, EVENTS).status_code == 503
    assert emulator.requests(endpoint="events")[0]["fault"] == "error"


def test_an_unknown_customer_is_reported_once_the_account_knows_its_customers(
    emulator: EmulatorClient, http: requests.Session
) -> None:
    emulator.set_known_customers("cus_1")
    start_of_a_window(emulator)
    stream(emulator, http, usage("known"), usage("stranger", customer="cus_unknown"))
    emulator.advance_clock(WINDOW)

    [event] = emulator.list_events()["data"]

    [kind] = event["data"]["reason"]["error_types"]
    assert kind["code"] == "meter_event_customer_not_found"
    assert kind["sample_errors"][0]["request"]["identifier"] == "stranger"
    assert [e["identifier"] for e in emulator.events(status="counted")] == ["known"]


# ----- webhooks --------------------------------------------------------------------------------
def test_each_event_is_pushed_signed_and_without_data(
    emulator: EmulatorClient, http: requests.Session, webhook_receiver: WebhookReceiver
) -> None:
    emulator.set_webhooks((webhook_receiver.url, WEBHOOK_SECRET))
    start_of_a_window(emulator)
    stream(emulator, http, usage("bad", value="0"))
    emulator.advance_clock(WINDOW)

    [delivery] = emulator.wait_for_deliveries()

    [received] = webhook_receiver.received
    [event] = emulator.list_events()["data"]
    assert received.json() == {k: v for k, v in event.items() if k != "data"}
    assert received.headers["content-type"] == "application/json; charset=utf-8"
    signature = received.headers["stripe-signature"]
    assert stripe.WebhookSignature.verify_header(
        received.body.decode(), signature, WEBHOOK_SECRET, 300
    )
    assert delivery["status"] == "delivered"
    assert (delivery["kind"], delivery["destination"]) == ("webhook", webhook_receiver.url)
    assert delivery["body"].encode() == received.body
    assert [a["status"] for a in delivery["attempts"]] == [200]
    shown = emulator.config()["webhooks"]
    assert shown == [{"url": webhook_receiver.url, "secret": "whsec_test_****6789"}]


def test_a_failing_endpoint_is_retried_until_it_takes_the_event(
    emulator: EmulatorClient, http: requests.Session, webhook_receiver: WebhookReceiver
) -> None:
    webhook_receiver.statuses = [500, 503]
    emulator.configure(delivery_backoff_s=0.01)
    emulator.set_webhooks((webhook_receiver.url, WEBHOOK_SECRET))
    stream(emulator, http, usage("bad", value="0"))

    emulator.close_error_windows()
    [delivery] = emulator.wait_for_deliveries()

    assert [a["status"] for a in delivery["attempts"]] == [500, 503, 200]
    assert delivery["status"] == "delivered"
    assert len({r.body for r in webhook_receiver.received}) == 1  # the same body each time
    assert len(webhook_receiver.received) == 3


def closed_port() -> int:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        port: int = listener.getsockname()[1]
    return port


def test_an_unreachable_endpoint_fails_after_its_attempts_and_others_still_get_the_event(
    emulator: EmulatorClient, http: requests.Session, webhook_receiver: WebhookReceiver
) -> None:
    unreachable = f"http://127.0.0.1:{closed_port()}/hooks"
    emulator.configure(delivery_attempts=3, delivery_backoff_s=0)
    emulator.set_webhooks((unreachable, WEBHOOK_SECRET), (webhook_receiver.url, WEBHOOK_SECRET))
    stream(emulator, http, usage("bad", value="0"))

    emulator.close_error_windows()
    deliveries = {d["destination"]: d for d in emulator.wait_for_deliveries()}

    failed = deliveries[unreachable]
    assert failed["status"] == "failed"
    assert len(failed["attempts"]) == 3
    assert all(a["status"] is None and "ConnectionError" in a["error"] for a in failed["attempts"])
    assert deliveries[webhook_receiver.url]["status"] == "delivered"
    assert emulator.stats()["deliveries_pending"] == 0


def test_a_slow_endpoint_never_holds_up_the_api(
    emulator: EmulatorClient, http: requests.Session, webhook_receiver: WebhookReceiver
) -> None:
    webhook_receiver.hold.clear()
    emulator.set_webhooks((webhook_receiver.url, WEBHOOK_SECRET))
    stream(emulator, http, usage("bad", value="0"))

    emulator.close_error_windows()  # answered while the endpoint holds the push
    stream(emulator, http, usage("more", value="0"))
    listed = emulator.list_events()["data"]

    assert len(listed) == 1
    assert emulator.deliveries()["pending"] == 1
    assert webhook_receiver.received == []
    webhook_receiver.hold.set()
    assert [d["status"] for d in emulator.wait_for_deliveries()] == ["delivered"]


def test_windows_close_as_time_passes_without_anyone_reading(
    emulator: EmulatorClient, http: requests.Session, webhook_receiver: WebhookReceiver
) -> None:
    emulator.configure(error_window_s=0.2)
    emulator.set_webhooks((webhook_receiver.url, WEBHOOK_SECRET))
    stream(emulator, http, usage("bad", value="0"))

    deadline = time.monotonic() + 20
    while not emulator.deliveries()["data"] and time.monotonic() < deadline:
        time.sleep(0.05)  # deliveries() reads without closing windows: the ticker must

    assert emulator.deliveries()["data"], "no window closed without a read"
    [delivery] = emulator.wait_for_deliveries()
    assert delivery["status"] == "delivered"
    assert len(webhook_receiver.received) == 1


def test_reset_forgets_deliveries_and_the_webhooks(
    emulator: EmulatorClient, http: requests.Session, webhook_receiver: WebhookReceiver
) -> None:
    emulator.set_webhooks((webhook_receiver.url, WEBHOOK_SECRET))
    stream(emulator, http, usage("bad", value="0"))
    emulator.close_error_windows()
    emulator.wait_for_deliveries()

    emulator.reset()

    assert emulator.deliveries() == {"pending": 0, "data": []}
    assert emulator.config()["webhooks"] == []
    assert emulator.list_events()["data"] == []


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"webhooks": [{"url": "http://x/y", "secret": "nope"}]}, "whsec_"),
        ({"eventbridge": {"event_bus_name": 3}}, "eventbridge.event_bus_name"),
        ({"error_window_s": 0}, "error_window_s"),
        ({"error_window_s": 30, "faults": {"nowhere": {}}}, "unknown endpoint"),
        ({"faults": {"events": {"error_rate": 1}}, "delivery_attempts": 0}, "delivery_attempts"),
    ],
)
def test_bad_destination_settings_are_a_400_that_changes_nothing(
    emulator: EmulatorClient, http: requests.Session, config: dict[str, Any], message: str
) -> None:
    before = emulator.config()
    answer = http.post(f"{emulator.url}/_emulator/config", data=json.dumps(config), timeout=10)
    assert answer.status_code == 400
    assert message in answer.json()["error"]["message"]
    assert emulator.config() == before
