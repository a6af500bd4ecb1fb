"""The Stripe client against the emulator: how each kind of answer is classified, Retry-After in
both of its forms, failures without an answer, and that no credential ever shows in the text."""

from __future__ import annotations

import email.utils
import json
import socket
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests

from devkit.emulator.client import EmulatorClient
from meter_relay.events import MeterEvent
from meter_relay.stripe_client import (
    SESSION_EXPIRED_CODE,
    Kind,
    MeterEventStream,
    StripeAnswer,
    StripeApi,
    StripeHttp,
    _retry_after,
    cancel_key,
    classify,
)

pytestmark = pytest.mark.integration

VERSION = "2026-09-30.preview"
TIMEOUT = 10.0
STREAM = "/v2/billing/meter_event_stream"


def closed_port_url() -> str:
    """The URL of a local port that nothing listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def good_events(count: int = 2) -> list[dict[str, Any]]:
    now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return [
        {
            "event_name": "api_requests",
            "payload": {"stripe_customer_id": "cus_client_test", "value": "1"},
            "identifier": f"stripe-client-test-{i}",
            "timestamp": now,
        }
        for i in range(count)
    ]


def as_written(events: list[dict[str, Any]]) -> list[MeterEvent]:
    """Events exactly as a test writes them, even ones Stripe refuses: each one's text goes in
    the call as it is (as a single-event body in Stripe's form does)."""
    return [
        MeterEvent(
            raw.get("event_name", ""),
            raw.get("payload", {}),
            raw.get("identifier", ""),
            raw.get("timestamp", ""),
            source=json.dumps(raw),
        )
        for raw in events
    ]


class Client:
    """The library's clients on the emulator, remembering every answer for the secrets check."""

    def __init__(self, emulator: EmulatorClient) -> None:
        self.emulator = emulator
        self.http = StripeHttp(emulator.url, VERSION)
        self.api = StripeApi(self.http, emulator.secret_key)
        self.stream = MeterEventStream(self.http)
        self.answers: list[StripeAnswer] = []
        self.tokens: list[str] = []

    def keep(self, answer: StripeAnswer) -> StripeAnswer:
        self.answers.append(answer)
        return answer

    def token(self) -> str:
        answer = self.keep(self.api.create_session(TIMEOUT))
        assert answer.kind is Kind.OK, answer.error
        assert answer.body is not None
        token = answer.body["authentication_token"]
        assert isinstance(token, str)
        self.tokens.append(token)
        return token

    def send(
        self, token: str, events: list[dict[str, Any]], timeout: float = TIMEOUT
    ) -> StripeAnswer:
        return self.keep(self.stream.send(token, as_written(events), timeout))

    def secrets(self) -> list[str]:
        return [self.emulator.secret_key, *self.tokens]


@pytest.fixture
def client(emulator: EmulatorClient) -> Iterator[Client]:
    client = Client(emulator)
    yield client
    client.http.close()
    # no answer's text, whatever the test did, holds a credential
    for answer in client.answers:
        texts = [repr(answer), str(answer), answer.error, answer.message, str(answer.code)]
        for secret in client.secrets():
            assert all(secret not in text for text in texts), answer.kind


# ----- classify ---------------------------------------------------------------------------------


def test_a_new_session_is_ok_and_its_body_carries_the_token(client: Client) -> None:
    answer = client.keep(client.api.create_session(TIMEOUT))
    assert (answer.kind, answer.status, answer.code) == (Kind.OK, 200, None)
    assert answer.body is not None
    assert answer.body["object"] == "v2.billing.meter_event_session"
    token = answer.body["authentication_token"]
    client.tokens.append(token)
    assert token not in repr(answer)  # the body is left out of the repr
    assert answer.retry_after is None
    assert answer.elapsed > 0


def test_accepted_events_are_ok_with_an_empty_body(client: Client) -> None:
    answer = client.send(client.token(), good_events())
    assert (answer.kind, answer.status, answer.code, answer.body) == (Kind.OK, 200, None, {})
    assert answer.error == "HTTP 200: OK"


def test_a_bad_body_is_rejected_with_stripes_code_and_param(client: Client) -> None:
    events = good_events()
    events[1]["payload"]["value"] = 5  # a number: Stripe takes strings only
    answer = client.send(client.token(), events)
    assert (answer.kind, answer.status, answer.code) == (Kind.REJECTED, 400, "parameter_invalid")
    assert answer.body is not None
    assert answer.body["error"]["param"] == "events[1].payload.value"
    assert "events[1].payload.value" in answer.message
    assert answer.error.startswith("HTTP 400 parameter_invalid: ")


def test_an_unknown_field_is_rejected_as_unknown(client: Client) -> None:
    events = good_events(1)
    events[0]["customer"] = "cus_1"
    answer = client.send(client.token(), events)
    assert (answer.kind, answer.code) == (Kind.REJECTED, "parameter_unknown")


def test_an_expired_token_asks_for_a_new_session(client: Client) -> None:
    token = client.token()
    assert client.emulator.expire_sessions() == 1
    answer = client.send(token, good_events())
    assert (answer.kind, answer.status, answer.code) == (
        Kind.SESSION_EXPIRED,
        401,
        SESSION_EXPIRED_CODE,
    )
    assert answer.body is not None
    assert answer.body["error"]["type"] == "temporary_session_expired"


def test_an_unknown_token_asks_for_a_new_session_too(client: Client) -> None:
    client.token()  # a live session exists, but this is not its token
    forged = "ekmeter_test_" + "Q" * 40
    client.tokens.append(forged)
    answer = client.send(forged, good_events())
    assert (answer.kind, answer.status) == (Kind.SESSION_EXPIRED, 401)
    assert answer.code != SESSION_EXPIRED_CODE
    assert answer.code is not None


def test_a_wrong_secret_key_is_refused_without_showing_it(client: Client) -> None:
    wrong = "sk_live_" + "W" * 32 + "tail"  # the emulator takes any sk_test_ key
    client.tokens.append(wrong)
    answer = client.keep(StripeApi(client.http, wrong).create_session(TIMEOUT))
    assert (answer.kind, answer.status, answer.code) == (
        Kind.SESSION_EXPIRED,
        401,
        "api_key_invalid",
    )


def test_the_rate_limit_answers_429_with_retry_after(client: Client) -> None:
    token = client.token()
    client.emulator.configure(rate_limits={"stream": {"rate": 0.01, "burst": 1}})
    assert client.send(token, good_events()).kind is Kind.OK
    answer = client.send(token, good_events())
    assert (answer.kind, answer.status) == (Kind.RATE_LIMITED, 429)
    assert answer.code == "account_rate_limit_exceeded"
    assert answer.retry_after is not None
    assert 1 <= answer.retry_after <= 100  # ceil(missing token / 0.01 per second)


def test_retry_after_in_seconds_is_read_as_sent(client: Client) -> None:
    token = client.token()
    client.emulator.set_faults("stream", burst_429_rate=1.0, burst_429_length=2, retry_after_s=7)
    answer = client.send(token, good_events())
    assert (answer.kind, answer.retry_after) == (Kind.RATE_LIMITED, 7.0)


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_server_errors_are_transient(client: Client, status: int) -> None:
    token = client.token()
    client.emulator.set_faults("stream", error_rate=1.0, error_statuses=[status])
    answer = client.send(token, good_events())
    assert (answer.kind, answer.status) == (Kind.TRANSIENT, status)
    assert answer.code in {"internal_server_error", "service_unavailable"}


def test_a_conflict_is_transient(client: Client) -> None:
    client.emulator.set_faults("session", error_rate=1.0, error_statuses=[409])
    answer = client.keep(client.api.create_session(TIMEOUT))
    assert (answer.kind, answer.status) == (Kind.TRANSIENT, 409)


def test_an_unknown_route_is_a_failure_not_the_events_fault(client: Client) -> None:
    answer = client.keep(client.http.post_json("/v2/billing/nowhere", client.token(), {}, TIMEOUT))
    assert (answer.kind, answer.status, answer.code) == (Kind.FAILED, 404, "not_found")


def test_a_dropped_connection_is_transient_without_a_status(client: Client) -> None:
    token = client.token()
    client.emulator.set_faults("stream", drop_rate=1.0)
    answer = client.send(token, good_events())
    assert (answer.kind, answer.status, answer.code) == (Kind.TRANSIENT, 0, None)
    assert answer.message.startswith("connection failed: ")
    assert answer.error == answer.message


def test_a_timeout_is_transient_without_a_status(client: Client) -> None:
    token = client.token()
    client.emulator.set_faults("stream", latency_ms=1500)
    answer = client.send(token, good_events(), timeout=0.1)
    assert (answer.kind, answer.status) == (Kind.TRANSIENT, 0)
    assert answer.message == "timed out after 0.1s"


def test_a_cancel_retried_after_its_answer_was_lost_gets_stripes_first_answer(
    client: Client,
) -> None:
    """Stripe applied the cancel, the connection dropped before its answer: the retry, under
    the same Idempotency-Key, gets that answer (the adjustment's id, for the ledger), not a
    refusal as a second cancel. Another event's cancel has a key of its own."""
    events = good_events(2)
    assert client.send(client.token(), events).kind is Kind.OK
    assert client.emulator.identifiers()[events[0]["identifier"]]["counted"] == 1
    identifier = events[0]["identifier"]
    key = cancel_key("run-1", "api_requests", identifier)

    def cancel(identifier: str, key: str) -> StripeAnswer:
        return client.keep(
            client.api.cancel_meter_event("api_requests", identifier, TIMEOUT, idempotency_key=key)
        )

    client.emulator.set_faults("adjustments", drop_after_rate=1.0)
    lost = cancel(identifier, key)
    assert (lost.kind, lost.status) == (Kind.TRANSIENT, 0)
    client.emulator.set_faults("adjustments")
    (applied,) = client.emulator.adjustments()
    again = cancel(identifier, key)
    assert (again.kind, (again.body or {}).get("id")) == (Kind.OK, applied["id"])
    other = cancel(
        events[1]["identifier"], cancel_key("run-1", "api_requests", events[1]["identifier"])
    )
    assert other.kind is Kind.OK
    assert len(client.emulator.adjustments()) == 2
    sent = client.emulator.requests(endpoint="adjustments")
    keys = [r.get("headers", {}).get("idempotency-key") for r in sent]
    assert keys[0] == keys[1] == key != keys[2]
    assert cancel_key("run-2", "api_requests", identifier) != key  # another run's own


def test_nothing_listening_is_transient() -> None:
    http = StripeHttp(closed_port_url(), VERSION)
    answer = MeterEventStream(http).send("ekmeter_test_token_value", as_written(good_events()), 2.0)
    http.close()
    assert (answer.kind, answer.status) == (Kind.TRANSIENT, 0)
    assert "ekmeter_test_token_value" not in repr(answer) + answer.error


def test_every_request_carries_the_version_and_a_bearer_credential(client: Client) -> None:
    client.send(client.token(), good_events())
    logged = client.emulator.requests()
    assert {entry["endpoint"] for entry in logged} >= {"session", "stream"}
    for entry in logged:
        assert entry["headers"]["stripe-version"] == VERSION
        assert entry["headers"]["authorization"].startswith("Bearer ")
        assert entry["headers"]["user-agent"].startswith("meter-relay/")
    stream = [entry for entry in logged if entry["endpoint"] == "stream"]
    assert stream[0]["headers"]["content-type"] == "application/json"


def test_the_api_client_hides_the_secret_key_in_its_repr(client: Client) -> None:
    text = repr(client.api)
    assert client.emulator.secret_key not in text
    assert "<hidden>" in text
    assert client.emulator.url in text


# ----- Retry-After, both forms ------------------------------------------------------------------


def http_date(moment: datetime) -> str:
    return email.utils.format_datetime(moment, usegmt=True)


def test_retry_after_as_an_http_date_in_the_future() -> None:
    seconds = _retry_after(http_date(datetime.now(UTC) + timedelta(hours=1)))
    assert seconds is not None
    assert 3500 < seconds <= 3600


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0", 0.0),
        ("7", 7.0),
        ("2.5", 2.5),
        ("-3", 0.0),
        (http_date(datetime(2015, 10, 21, 7, 28, tzinfo=UTC)), 0.0),
        ("Wed, 21 Oct 2015 07:28:00 -0000", 0.0),  # a naive datetime once raised TypeError
        ("Wed, 21 Oct 2015 07:28:00", 0.0),
        ("", None),
        (None, None),
        ("soon", None),
        ("Wed, 32 Oct 2015 07:28:00 GMT", None),
    ],
)
def test_retry_after_forms(value: str | None, expected: float | None) -> None:
    assert _retry_after(value) == expected


def test_a_zoneless_http_date_counts_as_gmt() -> None:
    later = datetime.now(UTC) + timedelta(hours=2)
    seconds = _retry_after(later.strftime("%a, %d %b %Y %H:%M:%S"))
    assert seconds is not None
    assert 7100 < seconds <= 7200


def test_classify_reads_an_http_date_retry_after() -> None:
    """The emulator sends seconds only: this answer is built by hand, as a proxy might send it."""
    response = requests.Response()
    response.status_code = 429
    response.reason = "Too Many Requests"
    response._content = b""
    response.headers["Retry-After"] = http_date(datetime.now(UTC) + timedelta(minutes=10))
    answer = classify(response, 0.01)
    assert (answer.kind, answer.status, answer.code) == (Kind.RATE_LIMITED, 429, None)
    assert answer.retry_after is not None
    assert 500 < answer.retry_after <= 600
    assert answer.message == "Too Many Requests"


@pytest.mark.parametrize(
    ("content", "status", "kind", "code"),
    [
        (b"<html>bad gateway</html>", 502, Kind.TRANSIENT, None),
        (b'{"error": "flat"}', 400, Kind.REJECTED, None),
        (b'{"error": {"code": 42}}', 400, Kind.REJECTED, None),
        (b"[1, 2]", 403, Kind.FAILED, None),
        (b"", 204, Kind.TRANSIENT, None),  # no JSON object: not Stripe's success
    ],
)
def test_classify_survives_bodies_that_are_not_stripes(
    content: bytes, status: int, kind: Kind, code: str | None
) -> None:
    response = requests.Response()
    response.status_code = status
    response._content = content
    answer = classify(response, 0.0)
    assert (answer.kind, answer.status, answer.code) == (kind, status, code)


def test_proxy_and_ca_settings_come_from_the_environment_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/corporate.pem")
    http = StripeHttp("https://meter-events.stripe.com", VERSION)
    assert http.session.proxies["https"] == "http://proxy.internal:3128"
    assert http.session.verify == "/etc/ssl/certs/corporate.pem"
    assert http.session.trust_env is False  # no scan of os.environ per call


def test_no_proxy_keeps_stripe_off_the_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", ".stripe.com")
    http = StripeHttp("https://meter-events.stripe.com", VERSION)
    assert "https" not in http.session.proxies


def test_stream_calls_reuse_one_kept_alive_connection(client: Client) -> None:
    token = client.token()
    pool = client.http._pool()
    assert pool is not None  # no proxy: the stream goes through requests' own pool
    before = pool.num_requests  # the session request went through this same pool
    for _ in range(5):
        assert client.send(token, good_events()).kind is Kind.OK
    assert pool.num_requests - before == 5
    assert pool.num_connections == 1  # opened once, kept alive for every call


def test_behind_a_proxy_the_stream_takes_requests_full_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    http = StripeHttp("https://meter-events.stripe.com", VERSION)
    assert http._pool() is None  # Session.request, which speaks to the proxy


def test_a_base_url_with_a_path_keeps_it_on_the_pooled_path(emulator: EmulatorClient) -> None:
    http = StripeHttp(f"{emulator.url}/gateway", VERSION)  # e.g. behind an API gateway
    answer = MeterEventStream(http).send("token_unused", as_written(good_events()), TIMEOUT)
    http.close()
    # the emulator serves nothing under /gateway: a 404, where the stream's own path would
    # have answered 401 to this token
    assert (answer.status, answer.code) == (404, "not_found")


def test_a_413_is_too_large_not_a_failure() -> None:
    response = requests.Response()
    response.status_code = 413
    response._content = b"<html>413 Request Entity Too Large</html>"
    assert classify(response, 0.0).kind is Kind.TOO_LARGE


@pytest.mark.parametrize("pooled", [True, False])
def test_a_credential_a_header_cannot_carry_is_not_quoted_in_the_answer(
    emulator: EmulatorClient, pooled: bool
) -> None:
    """http.client refuses a header value with a line break in a ValueError quoting the
    whole header: the answer names the error's type only."""
    http = StripeHttp(emulator.url, "2026-09-30.preview")
    credential = "token_visible\r\nX-Injected: secret-part-of-the-token"
    try:
        if pooled:
            answer = http.post_pooled("/v2/billing/meter_event_stream", credential, b"{}", 5.0)
        else:
            answer = http.post_json("/v2/billing/meter_event_stream", credential, {}, 5.0)
    finally:
        http.close()
    assert answer.kind is Kind.TRANSIENT
    # requests checks headers itself (InvalidHeader); the pooled path meets http.client's
    assert answer.message in (
        "the request was not sent: ValueError",
        "connection failed: InvalidHeader",
    )
    assert "secret-part" not in answer.error
