"""Two stacks in one account: staging (a test-mode key) and production (a live key).

Both are loaded from template.yaml with only their stack names (and what follows from them:
their StripeMode, the key in their secret) different, and run against one moto account and one
emulator. The production stack is live, so it may talk only to Stripe's own hosts: it reaches
the emulator as https://api.stripe.com and https://meter-events.stripe.com (devkit.stripe_tls).
Neither stack ever reads or overwrites the other's session, and a key or session of the wrong
mode is refused with a clear error that names no secret.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from devkit.emulator import EmulatorServer
from devkit.emulator.client import EmulatorClient
from devkit.harness import LambdaFunction, load_function
from devkit.stripe_tls import StripeTlsFront, stripe_hosts_resolve_here
from tests.plugins.aws import AwsEnv
from tests.plugins.relay import emf_sums, reset_powertools_logger

pytestmark = pytest.mark.integration

TEMPLATE = Path(__file__).resolve().parents[2] / "template.yaml"
TEST_KEY = "sk_test_" + f"staging_{secrets.token_hex(12)}"  # made at run time, never a file's
LIVE_KEY = "sk_live_" + f"production_{secrets.token_hex(12)}"


@pytest.fixture(scope="module")
def stripe_front(emulator_server: EmulatorServer) -> Iterator[StripeTlsFront]:
    with StripeTlsFront(emulator_server.port) as front:
        yield front


@dataclass
class Stack:
    """One deployed stack's functions and the resources CloudFormation would have made."""

    name: str
    mode: str
    aws: AwsEnv
    api_base: str
    meter_events_base: str
    extra_env: dict[str, str]

    def __post_init__(self) -> None:
        sqs = self.aws.client("sqs")
        self.dlq_url = sqs.create_queue(QueueName=f"{self.name}-usage-dlq")["QueueUrl"]
        self.secret_id = f"{self.name}/stripe-secret-key"
        self.aws.client("secretsmanager").create_secret(Name=self.secret_id)
        self.parameter = f"/{self.name}/stripe/meter-event-session"
        self._functions: list[LambdaFunction] = []

    def set_key(self, key: str) -> None:
        self.aws.client("secretsmanager").put_secret_value(
            SecretId=self.secret_id, SecretString=key
        )

    def load(self, logical_id: str) -> LambdaFunction:
        """The function as `sam deploy --stack-name NAME` would configure it: the template's
        values for this stack; the resources' Refs (which only a deployed stack resolves) as
        CloudFormation would name them."""
        function = load_function(
            TEMPLATE,
            logical_id,
            stack_name=self.name,
            parameter_overrides={
                "StripeMode": self.mode,
                "StripeApiBase": self.api_base,
                "StripeMeterEventsBase": self.meter_events_base,
            },
            env_vars={
                "RefresherFunction": {"STRIPE_SECRET_ID": self.secret_id},
                "ForwarderFunction": {
                    "DEAD_LETTER_QUEUE_URL": self.dlq_url,
                    "REFRESHER_FUNCTION_NAME": "",
                    "STREAM_CONCURRENCY": "2",
                },
            },
            extra_env={**self.aws.env, **self.extra_env},
        )
        self._functions.append(function)
        return function

    def stored(self) -> dict[str, Any] | None:
        ssm = self.aws.client("ssm")
        try:
            value = ssm.get_parameter(Name=self.parameter, WithDecryption=True)["Parameter"]
        except ssm.exceptions.ParameterNotFound:
            return None
        data: dict[str, Any] = json.loads(value["Value"])
        return data

    def close(self) -> None:
        for function in self._functions:
            function.close()


@pytest.fixture
def stacks(
    aws: AwsEnv,
    emulator: EmulatorClient,
    emulator_server: EmulatorServer,
    stripe_front: StripeTlsFront,
) -> Iterator[tuple[Stack, Stack]]:
    emulator.configure(accepted_keys=[TEST_KEY, LIVE_KEY])
    staging = Stack("staging", "test", aws, emulator_server.url, emulator_server.url, {})
    production = Stack(
        "production",
        "live",
        aws,
        stripe_front.api_base,
        stripe_front.meter_events_base,
        {"REQUESTS_CA_BUNDLE": stripe_front.ca_bundle},
    )
    staging.set_key(TEST_KEY)
    production.set_key(LIVE_KEY)
    with stripe_hosts_resolve_here():
        yield staging, production
    staging.close()
    production.close()
    reset_powertools_logger("staging", "production")


def sqs_event(stack: Stack, identifiers: list[str]) -> dict[str, Any]:
    now = str(int(time.time() * 1000))
    records = []
    for identifier in identifiers:
        body = {
            "event_name": "api_requests",
            "identifier": identifier,
            "payload": {"stripe_customer_id": f"cus_{stack.name}", "value": "1"},
        }
        records.append(
            {
                "messageId": f"m-{identifier}",
                "receiptHandle": f"rh-{identifier}",
                "body": json.dumps(body),
                "attributes": {"ApproximateReceiveCount": "1", "SentTimestamp": now},
                "messageAttributes": {},
                "eventSource": "aws:sqs",
            }
        )
    return {"Records": records}


def leaks(text: str) -> list[str]:
    return [key for key in (TEST_KEY, LIVE_KEY) if key in text or key[8:] in text]


def test_each_stack_keeps_its_own_session_in_its_own_mode(
    stacks: tuple[Stack, Stack], emulator: EmulatorClient
) -> None:
    staging, production = stacks
    for stack in (production, staging):
        with stack.load("RefresherFunction") as refresher:
            result = refresher.invoke({}).raise_for_error()
        assert result["refreshed"] is True

    staged, produced = staging.stored(), production.stored()
    assert staged is not None
    assert produced is not None
    assert (staged["livemode"], produced["livemode"]) == (False, True)
    assert staged["session_id"] != produced["session_id"]

    # a forced renewal of staging's session leaves production's alone
    with staging.load("RefresherFunction") as refresher:
        refresher.invoke({"force": True}).raise_for_error()
    assert production.stored() == produced
    staged = staging.stored()
    assert staged is not None

    # each forwarder streams with its own stack's token, and only that
    for stack in (staging, production):
        with stack.load("ForwarderFunction") as forwarder:
            ids = [f"{stack.name}-{n}" for n in range(3)]
            response = forwarder.invoke(sqs_event(stack, ids)).raise_for_error()
        assert response == {"batchItemFailures": []}
    tokens = {"staging": staged["token"], "production": produced["token"]}
    calls = emulator.requests(endpoint="stream")  # one call each, staging's first
    assert [call["status"] for call in calls] == [200, 200]
    for call, owner in zip(calls, ("staging", "production"), strict=True):
        assert call["headers"]["authorization"] == f"Bearer token_****{tokens[owner][-4:]}"
    counted = emulator.identifiers()
    assert {i for i in counted if i.startswith(("staging-", "production-"))} == {
        f"{name}-{n}" for name in ("staging", "production") for n in range(3)
    }


def test_a_live_key_never_leaves_for_a_host_that_is_not_stripes(
    stacks: tuple[Stack, Stack], emulator: EmulatorClient, capfd: pytest.CaptureFixture[str]
) -> None:
    """The staging stack points at the emulator by plain HTTP: handed the live key by
    mistake, its refresher refuses to send it there."""
    staging, _ = stacks
    staging.set_key(LIVE_KEY)
    with staging.load("RefresherFunction") as refresher:
        invocation = refresher.invoke({})
    output = capfd.readouterr().out

    assert invocation.error is not None
    message = invocation.error["errorMessage"]
    assert "holds a live key" in message
    assert "not Stripe's" in message
    assert staging.stored() is None
    assert emulator.requests(endpoint="session") == []
    assert leaks(json.dumps(invocation.error) + output) == []
    assert emf_sums(output)["RefreshFailures"] == 1


def test_a_key_of_the_other_mode_is_refused_before_it_reaches_stripe(
    stacks: tuple[Stack, Stack], emulator: EmulatorClient, capfd: pytest.CaptureFixture[str]
) -> None:
    _, production = stacks
    production.set_key(TEST_KEY)
    with production.load("RefresherFunction") as refresher:
        invocation = refresher.invoke({})
    output = capfd.readouterr().out

    assert invocation.error is not None
    message = invocation.error["errorMessage"]
    assert "holds a test-mode key, but this stack's StripeMode is live" in message
    assert production.stored() is None
    assert emulator.requests(endpoint="session") == []
    assert leaks(json.dumps(invocation.error) + output) == []
    sums = emf_sums(output)
    assert (sums["RefreshFailures"], sums["SessionModeMismatch"]) == (1, 1)
    assert sums["SessionSecondsLeft"] == 0  # the alarm on it sees a session running out


@contextmanager
def session_stand_in(livemode: bool) -> Iterator[str]:
    """Stripe's API on 127.0.0.1 as a misconfigured gateway might answer it: sessions in
    `livemode` whatever the key, no meters."""

    class Handler(BaseHTTPRequestHandler):
        def _answer(self, body: dict[str, Any]) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            content = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(content)))
            self.end_headers()
            self.wfile.write(content)

        def do_POST(self) -> None:  # a meter event session
            expires = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(time.time() + 900))
            self._answer(
                {
                    "object": "v2.billing.meter_event_session",
                    "id": "mes_stand_in",
                    "authentication_token": "token_stand_in",
                    "expires_at": expires,
                    "livemode": livemode,
                }
            )

        def do_GET(self) -> None:  # the account's meters
            self._answer({"object": "list", "data": [], "has_more": False})

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_session_made_in_the_other_mode_is_never_stored(
    stacks: tuple[Stack, Stack], capfd: pytest.CaptureFixture[str]
) -> None:
    """The key's prefix is checked first; should what answers still make a session of the
    other mode (a gateway, a key whose prefix lies), its livemode is checked too."""
    staging, _ = stacks
    with session_stand_in(livemode=True) as url:
        staging.api_base = url
        with staging.load("RefresherFunction") as refresher:
            invocation = refresher.invoke({})
    output = capfd.readouterr().out

    assert invocation.error is not None
    assert (
        "Stripe made a live-mode session with the stack's key, but its StripeMode is test: "
        "the session is not stored" in invocation.error["errorMessage"]
    )
    assert staging.stored() is None
    assert leaks(json.dumps(invocation.error) + output) == []
    assert "token_stand_in" not in output
    sums = emf_sums(output)
    assert (sums["RefreshFailures"], sums["SessionModeMismatch"]) == (1, 1)


def test_a_live_forwarder_never_streams_with_a_test_mode_session(
    stacks: tuple[Stack, Stack], emulator: EmulatorClient, capfd: pytest.CaptureFixture[str]
) -> None:
    """Stripe would answer 200 and never bill: the events wait in the queue instead, and the
    SessionModeMismatch metric (its alarm) says why."""
    staging, production = stacks
    with staging.load("RefresherFunction") as refresher:
        refresher.invoke({}).raise_for_error()
    test_session = staging.stored()
    assert test_session is not None
    production.aws.client("ssm").put_parameter(  # a test-mode session in production's place
        Name=production.parameter,
        Value=json.dumps(test_session),
        Type="SecureString",
    )
    capfd.readouterr()

    with production.load("ForwarderFunction") as forwarder:
        ids = ["production-a", "production-b"]
        response = forwarder.invoke(sqs_event(production, ids)).raise_for_error()
    output = capfd.readouterr().out

    assert response == {"batchItemFailures": [{"itemIdentifier": f"m-{i}"} for i in ids]}
    assert emulator.requests(endpoint="stream") == []
    assert emf_sums(output)["SessionModeMismatch"] >= 1
    assert "StripeMode is live" in output
    assert test_session["token"] not in output
