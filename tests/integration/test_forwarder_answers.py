"""The forwarder against answers and inputs that are not what Stripe and Lambda usually send.

Found by an independent run against a Stripe stand-in: a 200 that is not Stripe's answer, a
stored token ending in a line break, a record without `attributes`, an empty batch, two events
of one batch sharing an identifier, a gateway's 413, a byte-order mark before the JSON. Each is
driven through the harness against moto and the emulator, or a stand-in where Stripe's own
answer cannot be had.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.integration.test_forwarder import counted, dead_letters, event, failures
from tests.plugins.relay import Relay, emf_sums

pytestmark = pytest.mark.integration

Answer = tuple[int, dict[str, str], bytes]


class StandIn:
    """A stream endpoint on 127.0.0.1 that answers what `answer(body)` says, and keeps every
    request body it was sent."""

    def __init__(self, answer: Callable[[bytes], Answer]) -> None:
        self.answer = answer
        self.bodies: list[bytes] = []
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                stand_in.bodies.append(body)
                status, headers, content = stand_in.answer(body)
                self.send_response(status)
                for name, value in {**headers, "Content-Length": str(len(content))}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(content)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> StandIn:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def identifiers(self) -> list[str]:
        return [e["identifier"] for body in self.bodies for e in json.loads(body)["events"]]


@pytest.fixture
def stand_in() -> Iterator[Callable[[Callable[[bytes], Answer]], StandIn]]:
    started: list[StandIn] = []

    def start(answer: Callable[[bytes], Answer]) -> StandIn:
        server = StandIn(answer).__enter__()
        started.append(server)
        return server

    yield start
    for server in started:
        server.__exit__()


# ----- a 200 that is not Stripe's success -------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "content"),
    [
        ("text/html", b"<html><body>Welcome to the corporate proxy</body></html>"),
        ("application/json", b""),
        ("application/json", b"[]"),
        ("application/json", b'"ok"'),
        ("text/plain", b"OK"),
        ("application/json", b'{"status":"ok"}'),  # a stand-in's or a gateway's own success
    ],
    ids=["html-page", "empty", "json-array", "json-string", "plain-ok", "json-object-not-{}"],
)
def test_a_200_that_is_not_stripes_answer_delivers_nothing(
    relay: Relay,
    stand_in: Callable[[Callable[[bytes], Answer]], StandIn],
    capfd: pytest.CaptureFixture[str],
    content_type: str,
    content: bytes,
) -> None:
    """A proxy's page, an empty body, a wrong base URL: the stream's success is `{}`, and only
    that counts; anything else leaves every message to be retried."""
    server = stand_in(lambda body: (200, {"Content-Type": content_type}, content))
    relay.put_session()
    sqs_event = relay.sqs_event([event(f"not-stripe-{n}") for n in range(20)])
    with relay.forwarder(env={"STRIPE_METER_EVENTS_BASE": server.url}) as forwarder:
        invocation = forwarder.invoke(sqs_event)
    output = capfd.readouterr().out

    assert failures(invocation, sqs_event) == {r["messageId"] for r in sqs_event["Records"]}
    assert server.bodies  # it was asked, and its answer was not taken for Stripe's
    sums = emf_sums(output)
    assert sums["EventsDelivered"] == 0
    assert sums["StreamAnswersNotStripe"] >= 1
    warnings = [
        json.loads(line)["message"]
        for line in output.splitlines()
        if line.startswith("{") and "not Stripe's" in line
    ]
    assert warnings
    for warning in warnings:  # the status and the first bytes, to see what answered
        assert f"HTTP 200 that is not Stripe's answer: {content[:64]!r}" in warning


def test_the_streams_success_is_its_empty_json_object(
    relay: Relay, stand_in: Callable[[Callable[[bytes], Answer]], StandIn]
) -> None:
    server = stand_in(lambda body: (200, {"Content-Type": "application/json"}, b"{}"))
    relay.put_session()
    sqs_event = relay.sqs_event([event("stripe-success")])
    with relay.forwarder(env={"STRIPE_METER_EVENTS_BASE": server.url}) as forwarder:
        assert failures(forwarder.invoke(sqs_event), sqs_event) == set()
    assert server.identifiers() == ["stripe-success"]


# ----- the session token as stored ------------------------------------------------------------


def test_a_stored_token_ending_in_a_line_break_is_used_without_it(relay: Relay) -> None:
    session = relay.put_session()
    relay.aws.client("ssm").put_parameter(
        Name=relay.parameter,
        Value=json.dumps({**session, "token": session["token"] + "\n"}),
        Type="SecureString",
        Overwrite=True,
    )
    sqs_event = relay.sqs_event([event("token-with-newline")])
    with relay.forwarder() as forwarder:
        assert failures(forwarder.invoke(sqs_event), sqs_event) == set()
    assert counted(relay) == {"token-with-newline": 1}


def test_a_token_a_header_cannot_carry_is_never_logged(
    relay: Relay, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    session = relay.put_session()
    broken = session["token"][:20] + "\r\n" + session["token"][20:]
    relay.aws.client("ssm").put_parameter(
        Name=relay.parameter,
        Value=json.dumps({**session, "token": broken}),
        Type="SecureString",
        Overwrite=True,
    )
    sqs_event = relay.sqs_event([event("token-broken")])
    with relay.forwarder() as forwarder:
        invocation = forwarder.invoke(sqs_event)
    captured = capfd.readouterr()
    logs = captured.out + captured.err + caplog.text

    assert failures(invocation, sqs_event) == {sqs_event["Records"][0]["messageId"]}
    assert "header cannot carry" in logs
    for part in (session["token"][6:20], session["token"][20:]):
        assert part not in logs


# ----- what Lambda may send -------------------------------------------------------------------


def test_an_empty_batch_is_an_empty_answer(relay: Relay) -> None:
    with relay.forwarder() as forwarder:
        invocation = forwarder.invoke({"Records": []})
    assert invocation.error is None, invocation.error
    assert invocation.result == {"batchItemFailures": []}


def test_a_record_without_attributes_is_still_dead_lettered_and_delivered(relay: Relay) -> None:
    relay.put_session()
    sqs_event = relay.sqs_event(["not json", event("no-attributes")], ["m-bad", "m-good"])
    for record in sqs_event["Records"]:
        del record["attributes"]
    with relay.forwarder() as forwarder:
        invocation = forwarder.invoke(sqs_event)

    assert failures(invocation, sqs_event) == set()
    assert counted(relay) == {"no-attributes": 1}
    letters = dead_letters(relay)
    assert {key: m["attributes"]["ErrorCode"] for key, m in letters.items()} == {
        ("m-bad", None): "message_not_json"
    }


def test_a_byte_order_mark_before_the_json_is_read_as_json(relay: Relay) -> None:
    relay.put_session()
    bodies = [
        "\ufeff" + json.dumps(event("bom-single")),
        "\ufeff" + json.dumps({"events": [event("bom-envelope-0"), event("bom-envelope-1")]}),
    ]
    sqs_event = relay.sqs_event(bodies)
    with relay.forwarder() as forwarder:
        assert failures(forwarder.invoke(sqs_event), sqs_event) == set()
    assert counted(relay) == {"bom-single": 1, "bom-envelope-0": 1, "bom-envelope-1": 1}
    assert relay.dlq_messages() == []


# ----- one identifier, two events -------------------------------------------------------------


def test_a_later_event_reusing_an_identifier_of_the_batch_is_dead_lettered(relay: Relay) -> None:
    """Stripe counts the first event of an identifier and drops the others silently: the
    later ones go to the DLQ, saying so, unless they are the same event again."""
    relay.put_session()
    bodies: list[Any] = [
        event("shared", "cus_a", "5"),
        event("shared", "cus_a", "7"),  # another value: another event
        event("again", "cus_b", "1"),
        event("again", "cus_b", "1"),  # the same event twice: Stripe counts it once, rightly
        {"events": [event("inner", value="1"), event("inner", value="2")]},
    ]
    ids = ["m-first", "m-second", "m-same-1", "m-same-2", "m-envelope"]
    sqs_event = relay.sqs_event(bodies, ids)
    with relay.forwarder() as forwarder:
        invocation = forwarder.invoke(sqs_event)

    assert failures(invocation, sqs_event) == set()
    assert counted(relay) == {"shared": 1, "again": 1, "inner": 1}
    assert relay.emulator.events(identifier="shared")[0]["payload"]["value"] == "5"
    letters = dead_letters(relay)
    assert {key: m["attributes"]["ErrorCode"] for key, m in letters.items()} == {
        ("m-second", "shared"): "duplicate_identifier_in_batch",
        ("m-envelope", "inner"): "duplicate_identifier_in_batch",
    }
    second = letters[("m-second", "shared")]
    assert second["json"]["payload"]["value"] == "7"  # the later event, as it was sent
    assert "m-first" in second["attributes"]["ErrorMessage"]


# ----- a gateway's body limit -----------------------------------------------------------------


def test_a_413_splits_the_call_until_it_passes(
    relay: Relay, stand_in: Callable[[Callable[[bytes], Answer]], StandIn]
) -> None:
    """A gateway in front of Stripe refusing large bodies: the call is split in halves as a
    rejected one is, instead of looping until maxReceiveCount."""
    limit = 2500  # bytes: about 20 events

    def gateway(body: bytes) -> Answer:
        if len(body) > limit:
            return 413, {"Content-Type": "text/html"}, b"<html>413 Request Entity Too Large</html>"
        return 200, {"Content-Type": "application/json"}, b"{}"

    server = stand_in(gateway)
    relay.put_session()
    sqs_event = relay.sqs_event([event(f"big-{n:03}") for n in range(100)])
    with relay.forwarder(env={"STRIPE_METER_EVENTS_BASE": server.url}) as forwarder:
        invocation = forwarder.invoke(sqs_event)

    assert failures(invocation, sqs_event) == set()
    accepted = [
        e["identifier"]
        for body in server.bodies
        if len(body) <= limit
        for e in json.loads(body)["events"]
    ]
    assert sorted(accepted) == [f"big-{n:03}" for n in range(100)]


def test_a_single_event_too_large_for_the_gateway_is_dead_lettered(
    relay: Relay, stand_in: Callable[[Callable[[bytes], Answer]], StandIn]
) -> None:
    server = stand_in(lambda body: (413, {}, b"") if len(body) > 400 else (200, {}, b"{}"))
    relay.put_session()
    huge = event("huge")
    huge["payload"]["note"] = "x" * 600
    sqs_event = relay.sqs_event([huge, event("small")], ["m-huge", "m-small"])
    with relay.forwarder(env={"STRIPE_METER_EVENTS_BASE": server.url}) as forwarder:
        assert failures(forwarder.invoke(sqs_event), sqs_event) == set()
    letters = dead_letters(relay)
    assert {key: m["attributes"]["ErrorCode"] for key, m in letters.items()} == {
        ("m-huge", "huge"): "request_too_large"
    }


# ----- an answer that never quite arrives -----------------------------------------------------


@contextmanager
def trickling_endpoint() -> Iterator[str]:
    """Answers 200, then sends its body one byte every 0.25 s: each read is quick enough for
    any socket timeout, the whole answer never is."""
    stop = threading.Event()
    server = socket.create_server(("127.0.0.1", 0))

    def answer(connection: socket.socket) -> None:
        with contextlib.suppress(OSError), connection:
            connection.recv(65536)
            connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
            connection.sendall(b"Content-Length: 400\r\n\r\n{")
            while not stop.wait(0.25):
                connection.sendall(b" ")

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError, OSError):
                connection, _ = server.accept()
                threading.Thread(target=answer, args=(connection,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        server.close()


def test_the_handler_returns_before_the_deadline_however_slowly_answers_arrive(
    relay: Relay,
) -> None:
    relay.put_session()
    sqs_event = relay.sqs_event([event(f"trickle-{n}") for n in range(3)])
    with (
        trickling_endpoint() as url,
        relay.forwarder(
            env={"STRIPE_METER_EVENTS_BASE": url}, extra_env={"DEADLINE_MARGIN_MS": "2000"}
        ) as forwarder,
    ):
        started = time.monotonic()
        invocation = forwarder.invoke(sqs_event, timeout=8.0)
        took = time.monotonic() - started

    assert invocation.error is None, invocation.error  # never Sandbox.Timedout
    assert took < 8.0
    assert failures(invocation, sqs_event) == {r["messageId"] for r in sqs_event["Records"]}
