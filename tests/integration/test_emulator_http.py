"""The emulator over raw HTTP: the stream's body rules, asynchronous validation, deduplication,
sessions, rate limits, injected faults, the request log, the HTTP layer and the CLI.

Time is moved with the emulator's clock, never waited for; the only real waits are the CLI's
--lifetime and the injected latency, asserted through the request log, not a stopwatch.
"""

from __future__ import annotations

import contextlib
import json
import re
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from http.client import HTTPConnection
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from requests.adapters import HTTPAdapter

from devkit.emulator import app, httpserver
from devkit.emulator.client import EmulatorClient

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent.parent
METERS_FILE = ROOT / "tests" / "fixtures" / "meters.json"
STREAM = "/v2/billing/meter_event_stream"
SESSION = "/v2/billing/meter_event_session"
DAY = 86_400


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


def now(emulator: EmulatorClient) -> float:
    """The emulator's clock (wall time plus whatever the tests moved it by)."""
    return float(emulator.advance_clock(0)["epoch"])


def rfc3339(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def new_token(emulator: EmulatorClient, http: requests.Session) -> str:
    response = http.post(
        emulator.url + SESSION,
        headers={"Authorization": f"Bearer {emulator.secret_key}"},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    token: str = response.json()["authentication_token"]
    return token


def event(
    identifier: str | None = None,
    *,
    name: str = "api_requests",
    customer: str = "cus_http",
    value: str | None = "1",
    **fields: Any,
) -> dict[str, Any]:
    payload = {"stripe_customer_id": customer}
    if value is not None:
        payload["value"] = value
    body: dict[str, Any] = {"event_name": name, "payload": payload, **fields}
    if identifier is not None:
        body["identifier"] = identifier
    return body


def post_stream(
    emulator: EmulatorClient,
    http: requests.Session,
    token: str,
    body: Any = None,
    *,
    data: bytes | None = None,
) -> requests.Response:
    return http.post(
        emulator.url + STREAM,
        data=data if data is not None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        timeout=10,
    )


@pytest.fixture
def token(emulator: EmulatorClient, http: requests.Session) -> str:
    return new_token(emulator, http)


def v2_error(response: requests.Response, status: int) -> dict[str, Any]:
    """The error object of a v2 error answer, checked for the fields Stripe always sends."""
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/json"
    error: dict[str, Any] = response.json()["error"]
    assert {"type", "code", "message", "doc_url"} <= set(error)
    assert error["message"]
    return error


# ----- the stream's body rules (checked before the 200) --------------------------------------
_LONG_ID = "x" * 101


@pytest.mark.parametrize(
    ("body", "code", "param"),
    [
        pytest.param({"events": []}, "parameter_invalid", "events", id="no-events"),
        pytest.param(
            {"events": [event(f"e{i}") for i in range(101)]},
            "parameter_invalid",
            "events",
            id="101-events",
        ),
        pytest.param({}, "parameter_missing", "events", id="events-missing"),
        pytest.param({"events": None}, "parameter_missing", "events", id="events-null"),
        pytest.param({"events": event("a")}, "parameter_invalid", "events", id="events-object"),
        pytest.param([event("a")], "parameter_invalid", "body", id="array-body"),
        pytest.param("events", "parameter_invalid", "body", id="string-body"),
        pytest.param(
            {"events": [event("a")], "extra": 1}, "parameter_unknown", "extra", id="unknown-key"
        ),
        pytest.param({"events": ["a"]}, "parameter_invalid", "events[0]", id="event-not-object"),
        pytest.param(
            {"events": [{"payload": {"stripe_customer_id": "c", "value": "1"}}]},
            "parameter_missing",
            "events[0].event_name",
            id="no-event-name",
        ),
        pytest.param(
            {"events": [event("a"), {"event_name": "", "payload": {}}]},
            "parameter_invalid",
            "events[1].event_name",
            id="empty-event-name",
        ),
        pytest.param(
            {"events": [{"event_name": "api_requests", "identifier": "a"}]},
            "parameter_missing",
            "events[0].payload",
            id="no-payload",
        ),
        pytest.param(
            {"events": [{"event_name": "api_requests", "payload": ["value", "1"]}]},
            "parameter_invalid",
            "events[0].payload",
            id="payload-array",
        ),
        pytest.param(
            {"events": [{"event_name": "api_requests", "payload": {"value": 5}}]},
            "parameter_invalid",
            "events[0].payload.value",
            id="value-number",
        ),
        pytest.param(
            {"events": [{"event_name": "api_requests", "payload": {"value": None}}]},
            "parameter_invalid",
            "events[0].payload.value",
            id="value-null",
        ),
        pytest.param(
            {"events": [event("")]}, "parameter_invalid", "events[0].identifier", id="id-empty"
        ),
        pytest.param(
            {"events": [event(_LONG_ID)]},
            "parameter_invalid",
            "events[0].identifier",
            id="id-101-chars",
        ),
        pytest.param(
            {"events": [{**event(), "identifier": 7}]},
            "parameter_invalid",
            "events[0].identifier",
            id="id-number",
        ),
        pytest.param(
            {"events": [event("a", timestamp="2024-06-01")]},
            "parameter_invalid",
            "events[0].timestamp",
            id="timestamp-date-only",
        ),
        pytest.param(
            {"events": [event("a", timestamp=1717243200)]},
            "parameter_invalid",
            "events[0].timestamp",
            id="timestamp-epoch",
        ),
        pytest.param(
            {"events": [event("a", timestamp="2024-06-01T12:00:00")]},
            "parameter_invalid",
            "events[0].timestamp",
            id="timestamp-no-offset",
        ),
        pytest.param(
            {"events": [event("a", timestamp="2024-06-01T12:00:00Z\n")]},
            "parameter_invalid",
            "events[0].timestamp",
            id="timestamp-trailing-newline",
        ),
        pytest.param(
            {"events": [event("a", timestamp="2024-02-30T12:00:00Z")]},
            "parameter_invalid",
            "events[0].timestamp",
            id="timestamp-no-such-day",
        ),
        pytest.param(
            {"events": [event("a", dimensions={"region": "eu"})]},
            "parameter_unknown",
            "events[0].dimensions",
            id="unknown-event-field",
        ),
    ],
)
def test_stream_rejects_malformed_bodies_with_a_v2_error(
    emulator: EmulatorClient,
    http: requests.Session,
    token: str,
    body: Any,
    code: str,
    param: str,
) -> None:
    response = post_stream(emulator, http, token, body)

    error = v2_error(response, 400)
    assert error["type"] == "invalid_request_error"
    assert error["code"] == code
    assert error["param"] == param
    assert emulator.events() == []  # a rejected body is not received, not even in part


def test_stream_rejects_a_body_that_is_not_json(
    emulator: EmulatorClient, http: requests.Session, token: str
) -> None:
    response = post_stream(emulator, http, token, data=b'{"events": [')

    error = v2_error(response, 400)
    assert (error["type"], error["code"]) == ("invalid_request_error", "parameter_invalid")
    assert emulator.events() == []


def test_stream_takes_100_events_and_answers_an_empty_object(
    emulator: EmulatorClient, http: requests.Session, token: str
) -> None:
    response = post_stream(emulator, http, token, {"events": [event(f"e{i}") for i in range(100)]})

    assert response.status_code == 200
    assert response.content == b"{}"
    assert response.headers["Request-Id"].startswith("req_")
    assert len(emulator.events(status="counted")) == 100


def test_event_without_identifier_or_timestamp_gets_both(
    emulator: EmulatorClient, http: requests.Session, token: str
) -> None:
    before = now(emulator)
    assert post_stream(emulator, http, token, {"events": [event()]}).status_code == 200

    (stored,) = emulator.events()
    assert stored["identifier"]
    assert stored["status"] == "counted"
    assert stored["timestamp"] == stored["received_at"]
    assert before - 1 <= datetime.fromisoformat(stored["timestamp"]).timestamp()


# ----- asynchronous validation (200 first, error reports later) ------------------------------
def test_events_invalid_against_meters_are_accepted_then_reported_not_counted(
    emulator: EmulatorClient, http: requests.Session, token: str
) -> None:
    t = now(emulator)
    cases = {
        "no-meter": (event("no-meter", name="nobody_meters_this"), "no_meter"),
        "archived": (event("archived", name="legacy_metric"), "archived_meter"),
        "no-customer": (
            {"event_name": "api_requests", "identifier": "no-customer", "payload": {"value": "1"}},
            "meter_event_no_customer_defined",
        ),
        "empty-customer": (event("empty-customer", customer=""), "meter_event_no_customer_defined"),
        "zero": (event("zero", value="0"), "meter_event_invalid_value"),
        "negative": (event("negative", value="-1"), "meter_event_invalid_value"),
        "decimal": (event("decimal", value="1.5"), "meter_event_invalid_value"),
        "word": (event("word", value="abc"), "meter_event_invalid_value"),
        "newline": (event("newline", value="5\n"), "meter_event_invalid_value"),
        "no-value": (event("no-value", value=None), "meter_event_invalid_value"),
        "past": (
            event("past", timestamp=rfc3339(t - 36 * DAY)),
            "timestamp_too_far_in_past",
        ),
        "future": (event("future", timestamp=rfc3339(t + 600)), "timestamp_in_future"),
    }
    valid = [
        event("ok-now"),
        event("ok-34-days-ago", timestamp=rfc3339(t - 34 * DAY)),
        event("ok-4-minutes-ahead", timestamp=rfc3339(t + 240)),
    ]
    body = {"events": [raw for raw, _ in cases.values()] + valid}

    response = post_stream(emulator, http, token, body)

    assert response.status_code == 200
    assert response.content == b"{}"
    errors = emulator.errors()
    assert {e["identifier"]: e["code"] for e in errors["data"]} == {
        identifier: code for identifier, (_, code) in cases.items()
    }
    assert errors["total"] == len(cases)
    assert errors["counts"]["meter_event_invalid_value"] == 6
    archived = next(e for e in errors["data"] if e["identifier"] == "archived")
    assert archived["meter"] == "mtr_test_legacy"
    counted = {e["identifier"] for e in emulator.events(status="counted")}
    assert counted == {"ok-now", "ok-34-days-ago", "ok-4-minutes-ahead"}
    assert {e["identifier"] for e in emulator.events(status="invalid")} == set(cases)


def test_custom_payload_keys_of_a_meter_are_honoured(
    emulator: EmulatorClient, http: requests.Session, token: str
) -> None:
    body = {
        "events": [
            {
                "event_name": "search_calls",
                "identifier": "s1",
                "payload": {"customer": "c", "calls": "4"},
            },
            # the default keys mean nothing to this meter
            {
                "event_name": "search_calls",
                "identifier": "s2",
                "payload": {"stripe_customer_id": "c", "value": "4"},
            },
            {
                "event_name": "search_calls",
                "identifier": "s3",
                "payload": {"customer": "c", "value": "4"},
            },
        ]
    }
    assert post_stream(emulator, http, token, body).status_code == 200

    assert [e["identifier"] for e in emulator.events(status="counted")] == ["s1"]
    codes = {e["identifier"]: e["code"] for e in emulator.errors()["data"]}
    assert codes == {"s2": "meter_event_no_customer_defined", "s3": "meter_event_invalid_value"}


def test_identifier_counted_once_within_24_hours_and_again_after(
    emulator: EmulatorClient, http: requests.Session, token: str
) -> None:
    for _ in range(2):
        assert post_stream(emulator, http, token, {"events": [event("dup-1")]}).status_code == 200
    assert emulator.identifiers()["dup-1"] == {"received": 2, "counted": 1}
    assert [e["status"] for e in emulator.events(identifier="dup-1")] == ["counted", "duplicate"]
    assert emulator.counted_more_than_once() == []

    emulator.advance_clock(DAY - 60)  # still inside the rolling window of the first delivery
    token = new_token(emulator, http)
    assert post_stream(emulator, http, token, {"events": [event("dup-1")]}).status_code == 200
    assert emulator.identifiers()["dup-1"] == {"received": 3, "counted": 1}

    emulator.advance_clock(61)  # now more than 24 hours after the counted one
    token = new_token(emulator, http)
    assert post_stream(emulator, http, token, {"events": [event("dup-1")]}).status_code == 200

    assert emulator.identifiers()["dup-1"] == {"received": 4, "counted": 2}
    assert emulator.counted_more_than_once() == ["dup-1"]


def test_duplicates_inside_one_batch_count_once(
    emulator: EmulatorClient, http: requests.Session, token: str
) -> None:
    body = {"events": [event("same"), event("same"), event("other")]}
    assert post_stream(emulator, http, token, body).status_code == 200

    assert emulator.identifiers() == {
        "same": {"received": 2, "counted": 1},
        "other": {"received": 1, "counted": 1},
    }


# ----- authentication and sessions -----------------------------------------------------------
@pytest.mark.parametrize(
    "authorization",
    ["Bearer token_not_issued_by_this_emulator", "Bearer sk_test_meter_relay_local", "", "Basic"],
)
def test_stream_refuses_anything_but_a_session_token(
    emulator: EmulatorClient, http: requests.Session, authorization: str
) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    response = http.post(
        emulator.url + STREAM, json={"events": [event("a")]}, headers=headers, timeout=10
    )

    error = v2_error(response, 401)
    assert error["code"] != "billing_meter_event_session_expired"
    assert emulator.events() == []


def test_expired_session_token_is_refused_with_temporary_session_expired(
    emulator: EmulatorClient, http: requests.Session, token: str
) -> None:
    assert post_stream(emulator, http, token, {"events": [event("before")]}).status_code == 200
    emulator.advance_clock(901)

    response = post_stream(emulator, http, token, {"events": [event("after")]})

    error = v2_error(response, 401)
    assert error["type"] == "temporary_session_expired"
    assert error["code"] == "billing_meter_event_session_expired"
    assert [e["identifier"] for e in emulator.events()] == ["before"]
    fresh = new_token(emulator, http)  # a new session is the cure
    assert post_stream(emulator, http, fresh, {"events": [event("after")]}).status_code == 200


def test_expire_sessions_ends_every_live_session(
    emulator: EmulatorClient, http: requests.Session
) -> None:
    tokens = [new_token(emulator, http) for _ in range(2)]

    assert emulator.expire_sessions() == 2

    for token in tokens:
        response = post_stream(emulator, http, token, {"events": [event("a")]})
        assert v2_error(response, 401)["code"] == "billing_meter_event_session_expired"


def test_session_ttl_is_configurable(emulator: EmulatorClient, http: requests.Session) -> None:
    emulator.configure(session_ttl=2)
    response = http.post(
        emulator.url + SESSION,
        headers={"Authorization": f"Bearer {emulator.secret_key}"},
        timeout=10,
    )
    session = response.json()
    created = datetime.fromisoformat(session["created"])
    expires_at = datetime.fromisoformat(session["expires_at"])
    assert (expires_at - created).total_seconds() == pytest.approx(2, abs=0.01)
    token = session["authentication_token"]
    assert post_stream(emulator, http, token, {"events": [event("a")]}).status_code == 200

    emulator.advance_clock(3)

    response = post_stream(emulator, http, token, {"events": [event("b")]})
    assert v2_error(response, 401)["type"] == "temporary_session_expired"


@pytest.mark.parametrize(
    "authorization", ["Bearer sk_live_not_accepted_here", "Bearer pk_test_publishable", ""]
)
def test_session_needs_a_secret_test_key(
    emulator: EmulatorClient, http: requests.Session, authorization: str
) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    response = http.post(emulator.url + SESSION, headers=headers, timeout=10)

    assert v2_error(response, 401)["code"] == "api_key_invalid"


# ----- rate limits ---------------------------------------------------------------------------
def test_stream_rate_limit_answers_429_rate_limit_with_retry_after(
    emulator: EmulatorClient, http: requests.Session, token: str
) -> None:
    # a slow refill, so the bucket cannot refill between two requests whatever the machine
    emulator.configure(rate_limits={"stream": {"rate": 0.01, "burst": 2}})

    statuses = [
        post_stream(emulator, http, token, {"events": [event(f"r{i}")]}).status_code
        for i in range(2)
    ]
    limited = post_stream(emulator, http, token, {"events": [event("r2")]})

    assert statuses == [200, 200]
    error = v2_error(limited, 429)
    assert (error["type"], error["code"]) == ("rate_limit", "account_rate_limit_exceeded")
    assert int(limited.headers["Retry-After"]) >= 1
    assert {e["identifier"] for e in emulator.events()} == {"r0", "r1"}
    assert emulator.stats()["requests"]["stream"] == {"200": 2, "429": 1}
    emulator.configure(rate_limits={"stream": None})  # lifted at run time
    assert post_stream(emulator, http, token, {"events": [event("r3")]}).status_code == 200


# ----- injected faults -----------------------------------------------------------------------
def test_error_rate_answers_5xx_and_accepts_nothing(
    emulator: EmulatorClient, http: requests.Session, token: str
) -> None:
    emulator.set_faults("stream", seed=3, error_rate=1.0)

    responses = [post_stream(emulator, http, token, {"events": [event(f"f{i}")]}) for i in range(8)]

    assert {r.status_code for r in responses} <= {500, 503}
    for response in responses:
        assert v2_error(response, response.status_code)["type"] == "api_error"
    assert emulator.events() == []
    assert {entry["fault"] for entry in emulator.requests(endpoint="stream")} == {"error"}


def test_error_statuses_are_configurable(
    emulator: EmulatorClient, http: requests.Session, token: str
) -> None:
    emulator.set_faults("stream", seed=3, error_rate=1.0, error_statuses=[502])

    response = post_stream(emulator, http, token, {"events": [event("a")]})

    assert v2_error(response, 502)["type"] == "api_error"


def test_drop_rate_closes_the_connection_without_an_answer(
    emulator: EmulatorClient, http: requests.Session, token: str
) -> None:
    emulator.set_faults("stream", seed=3, drop_rate=1.0)

    with pytest.raises(requests.ConnectionError):
        post_stream(emulator, http, token, {"events": [event("dropped")]})

    assert emulator.events() == []
    (entry,) = emulator.requests(endpoint="stream")
    assert (entry["status"], entry["fault"]) == (0, "drop")


def test_drop_after_processes_then_closes_the_connection(
    emulator: EmulatorClient, http: requests.Session, token: str
) -> None:
    emulator.set_faults("stream", seed=3, drop_after_rate=1.0)

    with pytest.raises(requests.ConnectionError):
        post_stream(emulator, http, token, {"events": [event("kept")]})

    assert [e["identifier"] for e in emulator.events(status="counted")] == ["kept"]


def test_a_429_burst_lasts_its_length_and_rate_1_never_lets_up(
    emulator: EmulatorClient, http: requests.Session, token: str
) -> None:
    emulator.set_faults("stream", seed=5, burst_429_rate=1.0, burst_429_length=3, retry_after_s=7)

    responses = [post_stream(emulator, http, token, {"events": [event(f"b{i}")]}) for i in range(7)]

    # a burst starts on the first request; when its 3 requests are over, a rate of 1.0
    # starts the next one at once
    for response in responses:
        error = v2_error(response, 429)
        assert error["type"] == "rate_limit"
        assert response.headers["Retry-After"] == "7"
    assert emulator.events() == []


def test_429_bursts_come_in_runs_of_their_length(
    emulator: EmulatorClient, http: requests.Session, token: str
) -> None:
    emulator.set_faults("stream", seed=11, burst_429_rate=0.3, burst_429_length=3)

    statuses = [
        post_stream(emulator, http, token, {"events": [event(f"b{i}")]}).status_code
        for i in range(40)
    ]

    runs = [
        len(run) for run in re.findall(r"L+", "".join("L" if s == 429 else "." for s in statuses))
    ]
    assert set(statuses) == {200, 429}
    # a run still going when the requests stop may be cut short; every other one is whole
    complete = runs[:-1] if statuses[-1] == 429 else runs
    assert complete, statuses
    assert all(length % 3 == 0 for length in complete), statuses
    accepted = {e["identifier"] for e in emulator.events()}
    assert accepted == {f"b{i}" for i, s in enumerate(statuses) if s == 200}


def test_error_after_accepts_the_events_then_answers_5xx(
    emulator: EmulatorClient, http: requests.Session, token: str
) -> None:
    emulator.set_faults("stream", seed=3, error_after_rate=1.0)

    response = post_stream(emulator, http, token, {"events": [event("ambiguous")]})

    assert response.status_code in (500, 503)
    assert v2_error(response, response.status_code)["type"] == "api_error"
    assert [e["identifier"] for e in emulator.events(status="counted")] == ["ambiguous"]
    # the sender cannot know, so it retries: the identifier keeps the usage counted once
    emulator.configure(clear_faults=True)
    assert post_stream(emulator, http, token, {"events": [event("ambiguous")]}).status_code == 200
    assert emulator.identifiers()["ambiguous"] == {"received": 2, "counted": 1}


def _fault_sequence(emulator: EmulatorClient, http: requests.Session) -> list[str]:
    emulator.reset()
    token = new_token(emulator, http)
    emulator.set_faults(
        "stream", seed=1234, error_rate=0.25, drop_rate=0.1, burst_429_rate=0.1, burst_429_length=2
    )
    outcomes = []
    for i in range(40):
        try:
            status = post_stream(emulator, http, token, {"events": [event(f"s{i}")]}).status_code
            outcomes.append(str(status))
        except requests.ConnectionError:
            outcomes.append("drop")
    return outcomes


def test_same_seed_gives_the_same_fault_sequence_after_a_reset(
    emulator: EmulatorClient, http: requests.Session
) -> None:
    first = _fault_sequence(emulator, http)
    second = _fault_sequence(emulator, http)

    assert first == second
    assert {"200", "429", "drop"} <= set(first)
    assert {"500", "503"} & set(first)


def test_latency_shows_in_the_request_log(
    emulator: EmulatorClient, http: requests.Session, token: str
) -> None:
    emulator.set_faults("stream", latency_ms=120)

    for i in range(2):
        assert post_stream(emulator, http, token, {"events": [event(f"l{i}")]}).status_code == 200

    entries = emulator.requests(endpoint="stream")
    assert len(entries) == 2
    assert all(entry["duration_ms"] >= 120 for entry in entries), entries
    assert all(entry["fault"] is None for entry in entries)  # slow is not a fault


def test_faults_stay_on_their_endpoint(
    emulator: EmulatorClient, http: requests.Session, token: str
) -> None:
    emulator.set_faults("session", error_rate=1.0)

    assert post_stream(emulator, http, token, {"events": [event("a")]}).status_code == 200
    response = http.post(
        emulator.url + SESSION,
        headers={"Authorization": f"Bearer {emulator.secret_key}"},
        timeout=10,
    )
    assert response.status_code in (500, 503)


# ----- request log, reset --------------------------------------------------------------------
def test_request_log_masks_the_secret_key_and_the_session_token(
    emulator: EmulatorClient, http: requests.Session, token: str
) -> None:
    assert post_stream(emulator, http, token, {"events": [event("a")]}).status_code == 200
    http.post(
        emulator.url + SESSION,
        headers={"Authorization": "Bearer sk_live_a_wrong_key_1234567890abcd"},
        timeout=10,
    )

    entries = emulator.requests()
    dump = json.dumps(entries) + json.dumps(emulator.config())

    assert [e["endpoint"] for e in entries] == ["session", "stream", "session"]
    key = emulator.secret_key
    assert key not in dump
    assert token not in dump
    # nothing of a secret shows but its kind and its last 4 characters
    for secret in (key.removeprefix("sk_test_")[:-4], token.removeprefix("token_")[:-4]):
        assert all(secret[i : i + 8] not in dump for i in range(len(secret) - 7)), dump
    assert "wrong_key" not in dump
    authorizations = [e["headers"]["authorization"] for e in entries]
    assert authorizations[0] == f"Bearer sk_test_****{key[-4:]}"
    assert authorizations[1] == f"Bearer token_****{token[-4:]}"
    assert authorizations[2] == "Bearer sk_live_****abcd"


def test_invalid_key_error_message_masks_the_key(
    emulator: EmulatorClient, http: requests.Session
) -> None:
    response = http.post(
        emulator.url + SESSION,
        headers={"Authorization": "Bearer sk_live_some_real_looking_secret_9f3a"},
        timeout=10,
    )

    error = v2_error(response, 401)
    assert "some_real_looking" not in error["message"]
    assert error["message"].endswith("sk_live_****9f3a")


def test_reset_forgets_events_sessions_errors_and_the_log(
    emulator: EmulatorClient, http: requests.Session, token: str
) -> None:
    body = {"events": [event("a"), event("b", name="nobody_meters_this")]}
    assert post_stream(emulator, http, token, body).status_code == 200
    emulator.advance_clock(3600)
    assert emulator.events()
    assert emulator.errors()["total"] == 1

    emulator.reset()

    assert emulator.events() == []
    assert emulator.identifiers() == {}
    assert emulator.errors()["total"] == 0
    assert emulator.requests() == []
    assert emulator.stats()["clock_offset_s"] == 0
    response = post_stream(emulator, http, token, {"events": [event("c")]})
    assert v2_error(response, 401)["code"] != "billing_meter_event_session_expired"


@contextlib.contextmanager
def a_held_stream_call(emulator: EmulatorClient, token: str) -> Iterator[Future[requests.Response]]:
    """A stream call held for 800 ms by injected latency, being answered as the block starts."""
    emulator.set_faults("stream", latency_ms=800)
    with ThreadPoolExecutor(1) as pool:
        call = pool.submit(post_stream, emulator, requests.Session(), token, {"events": [event()]})
        deadline = time.monotonic() + 5
        while emulator.stats()["in_flight"] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert emulator.stats()["in_flight"] == 1
        yield call


def test_reset_waits_for_a_request_still_being_answered(
    emulator: EmulatorClient, token: str
) -> None:
    """A call held by injected latency when a test ends must not land in the next one's log."""
    with a_held_stream_call(emulator, token) as held:
        emulator.reset()
        # answered before the reset took its session: not a 401 left in the next test's log
        assert held.result().status_code == 200
    assert emulator.requests() == []
    assert emulator.identifiers() == {}


def test_a_reset_that_gives_up_waiting_says_so(
    emulator: EmulatorClient, token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(app, "RESET_WAIT_SECONDS", 0.05)
    with a_held_stream_call(emulator, token) as held:
        with pytest.raises(RuntimeError, match="1 request"):
            emulator.reset()
        assert held.result().status_code == 401  # it met the fresh state


# ----- the HTTP layer ------------------------------------------------------------------------
def test_keep_alive_serves_many_requests_over_one_connection(
    emulator: EmulatorClient, http: requests.Session, token: str
) -> None:
    adapter = http.get_adapter(emulator.url)
    assert isinstance(adapter, HTTPAdapter)
    pools = adapter.poolmanager.pools
    (key,) = pools.keys()  # the connection the session was made over (fixture `token`)
    pool = pools[key]
    assert (pool.num_connections, pool.num_requests) == (1, 1)

    for i in range(25):
        response = post_stream(emulator, http, token, {"events": [event(f"k{i}")]})
        assert response.status_code == 200
        assert "close" not in response.headers.get("Connection", "").lower()

    assert pool.num_requests == 26
    assert pool.num_connections == 1  # never reopened: the server kept it alive
    assert len(emulator.events(status="counted")) == 25


def test_expect_100_continue_gets_the_interim_answer_before_the_body(
    emulator: EmulatorClient, token: str
) -> None:
    url = urlsplit(emulator.url)
    body = json.dumps({"events": [event("continued")]}).encode()
    connection = HTTPConnection(url.hostname or "", url.port, timeout=10)
    try:
        connection.putrequest("POST", STREAM)
        connection.putheader("Authorization", f"Bearer {token}")
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Content-Length", str(len(body)))
        connection.putheader("Expect", "100-continue")
        connection.endheaders()  # headers only: the body waits for the server's go-ahead
        assert connection.sock is not None
        expected = b"HTTP/1.1 100 Continue\r\n\r\n"
        interim = b""
        while len(interim) < len(expected) and (chunk := connection.sock.recv(64)):
            interim += chunk
        assert interim == expected
        connection.send(body)
        response = connection.getresponse()
        assert response.status == 200
        assert response.read() == b"{}"
    finally:
        connection.close()
    assert [e["identifier"] for e in emulator.events()] == ["continued"]


def _raw_exchange(emulator: EmulatorClient, request: bytes) -> bytes:
    """Send one raw request; read until the server closes (a timeout fails the test)."""
    url = urlsplit(emulator.url)
    with socket.create_connection((url.hostname or "", url.port or 80), timeout=10) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65_536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize(
    "start", [b"GET /v1/billing/meters HTTP/1.0", b"GET /v1/billing/meters HTTP/1.1"]
)
def test_http_1_0_and_connection_close_are_answered_then_closed(
    emulator: EmulatorClient, start: bytes
) -> None:
    headers = b"Host: emulator\r\nAuthorization: Bearer " + emulator.secret_key.encode()
    if start.endswith(b"1.1"):
        headers += b"\r\nConnection: close"

    raw = _raw_exchange(emulator, start + b"\r\n" + headers + b"\r\n\r\n")

    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0] == "HTTP/1.1 200 OK"
    assert "Connection: close" in lines[1:]
    length = next(int(line.split(":")[1]) for line in lines if line.startswith("Content-Length"))
    assert len(body) == length  # exactly one answer, then the server closed
    listing = json.loads(body)
    assert listing["object"] == "list"
    assert "mtr_test_api_requests" in {meter["id"] for meter in listing["data"]}


def _answers(sock: socket.socket, count: int) -> list[tuple[str, bytes]]:
    """Read `count` answers (status line, body) from a keep-alive connection."""
    buffer, answers = b"", list[tuple[str, bytes]]()
    while len(answers) < count:
        head, found, rest = buffer.partition(b"\r\n\r\n")
        if found:
            lines = head.decode("latin-1").split("\r\n")
            length = next(int(v.split(":")[1]) for v in lines if v.startswith("Content-Length"))
            if len(rest) >= length:
                answers.append((lines[0], rest[:length]))
                buffer = rest[length:]
                continue
        chunk = sock.recv(65_536)
        assert chunk, "the server closed the connection"
        buffer += chunk
    return answers


def test_heads_in_pieces_bare_line_feeds_and_queries_are_read_alike(
    emulator: EmulatorClient,
) -> None:
    url = urlsplit(emulator.url)
    with socket.create_connection((url.hostname or "", url.port or 80), timeout=10) as sock:
        sock.sendall(b"GET /_emulator/events?identifier=none&limit=5 HTTP/1.1\r\nHost: e\r\n\r\n")
        sock.sendall(b"\r\nGET /_emulator/health HTTP/1.1\r\nHost: e\r\n\r\n")  # blank line first
        sock.sendall(b"GET /_emulator/health HTTP/1.1\nHost: e\n\n")  # bare line feeds
        sock.sendall(b"GET http://e/_emulator/events?status=counted HTTP/1.1\r\nHo")
        first = _answers(sock, 3)
        sock.sendall(b"st: e\r\n\r\n")  # the rest of a head that came in two pieces
        [last] = _answers(sock, 1)
    assert [status for status, _ in [*first, last]] == ["HTTP/1.1 200 OK"] * 4
    assert json.loads(first[0][1]) == {"total": 0, "data": []}
    assert json.loads(first[1][1]) == json.loads(first[2][1]) == {"ok": True}
    assert json.loads(last[1])["total"] == 0


def test_an_idle_keep_alive_connection_is_closed(
    emulator: EmulatorClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(httpserver._Connection, "idle_timeout_s", 1)
    url = urlsplit(emulator.url)
    with socket.create_connection((url.hostname or "", url.port or 80), timeout=30) as sock:
        sock.sendall(b"GET /_emulator/health HTTP/1.1\r\nHost: e\r\n\r\n")
        assert _answers(sock, 1)[0][0] == "HTTP/1.1 200 OK"
        assert sock.recv(1) == b""  # closed by the server once idle past its limit


def test_unknown_route_is_a_404_with_an_error_body(
    emulator: EmulatorClient, http: requests.Session
) -> None:
    response = http.get(emulator.url + "/v2/billing/nothing_here", timeout=10)

    assert response.status_code == 404
    assert response.json()["error"]["type"] == "invalid_request_error"


# ----- the command line ----------------------------------------------------------------------
def _read_line(process: subprocess.Popen[str], timeout: float) -> str:
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    assert ready, "the emulator printed nothing"
    return process.stdout.readline()


def test_cli_serves_then_stops_after_its_lifetime() -> None:
    process = subprocess.Popen(  # noqa: S603 (our own module, the arguments are the test's)
        [
            sys.executable,
            "-m",
            "devkit.emulator",
            "--port",
            "0",
            "--meters",
            str(METERS_FILE),
            "--lifetime",
            "5",
            "--error-rate",
            "0",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = _read_line(process, timeout=15)
        match = re.search(r"listening on (http://\S+)", line)
        assert match, line
        url = match.group(1)
        with requests.Session() as http:
            assert http.get(f"{url}/_emulator/health", timeout=5).json() == {"ok": True}
            listing = http.get(
                f"{url}/v1/billing/meters",
                params={"limit": 100},
                headers={"Authorization": "Bearer sk_test_cli"},
                timeout=5,
            )
        assert listing.status_code == 200
        ids = {meter["id"] for meter in listing.json()["data"]}
        assert ids == {
            "mtr_test_api_requests",
            "mtr_test_search_calls",
            "mtr_test_logins",
            "mtr_test_legacy",
        }

        assert process.wait(timeout=20) == 0  # by itself: nobody signals it
    finally:
        if process.poll() is None:
            process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.communicate(timeout=5)


@pytest.mark.parametrize(
    "limit", ["nowhere=5", "stream=fast", "stream=", "stream=5:deep", "stream=0"]
)
def test_cli_refuses_an_invalid_rate_limit(limit: str) -> None:
    result = subprocess.run(  # noqa: S603 (our own module, the arguments are the test's)
        [sys.executable, "-m", "devkit.emulator", "--port", "0", "--rate-limit", limit],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )

    assert result.returncode != 0
    assert "listening" not in result.stdout
    assert result.stderr.strip()


@pytest.mark.parametrize(
    ("key", "livemode"),
    [
        ("sk_test_mode_of_the_key_1234", False),
        ("sk_live_mode_of_the_key_5678", True),
        ("rk_live_mode_of_the_key_9012", True),
        ("rk_test_mode_of_the_key_3456", False),
    ],
)
def test_a_session_is_in_the_mode_of_the_key_that_made_it(
    emulator: EmulatorClient, http: requests.Session, key: str, livemode: bool
) -> None:
    emulator.configure(accepted_keys=[key])
    response = http.post(
        emulator.url + SESSION, headers={"Authorization": f"Bearer {key}"}, timeout=10
    )

    assert response.status_code == 200
    assert response.json()["livemode"] is livemode
