"""The relay stack for tests: what template.yaml declares for the forwarder and the refresher,
provisioned in moto and pointed at the Stripe emulator, with the functions run by the harness.

`relay` (per test, on top of `aws` and `emulator`) gives the queues, the secret, the env-vars
document (sam local's format) and helpers: `forwarder()` / `refresher()` load the functions
through the harness, `sqs_event()` builds a Lambda SQS event, `dlq_messages()` reads the DLQ,
`put_session()` / `stored_session()` write and read the session parameter.

A forwarder that should ask the refresher for a new session (`forwarder(refresher=True)`)
reaches it through the local Lambda endpoint (`devkit.lambda_endpoint`), one subprocess per
test session, started on first use. Its functions see the same moto server, emulator, names
and secret as the tests (every name here is fixed, and moto is reset between tests, so the
URLs stay valid).
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import secrets
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import pytest
import requests

from devkit.emulator import EmulatorServer
from devkit.emulator.client import EmulatorClient
from devkit.harness import ACCOUNT_ID, STACK_NAME, LambdaFunction, load_function
from devkit.lambda_endpoint import LambdaEndpoint
from devkit.moto_server import DEFAULT_REGION, MotoServer, aws_env
from meter_relay.secret_key import key_fingerprint
from tests.plugins.aws import AwsEnv

if TYPE_CHECKING:
    from mypy_boto3_lambda import LambdaClient

ROOT = Path(__file__).resolve().parent.parent.parent
TEMPLATE = ROOT / "template.yaml"
FORWARDER = "ForwarderFunction"
REFRESHER = "RefresherFunction"

# Names as the stack would make them (the harness's stack name is "local").
USAGE_QUEUE = f"{STACK_NAME}-usage"
DEAD_LETTER_QUEUE = f"{STACK_NAME}-usage-dlq"
SECRET_ID = f"{STACK_NAME}/stripe-secret-key"
SESSION_PARAMETER = "/meter-relay-test/stripe/meter-event-session"
CATALOG_PATH = "/meter-relay-test/stripe/meter-catalog"
LEDGER_BUCKET = "meter-relay-test-ledger"
MAX_RECEIVE_COUNT = 3
API_VERSION = "2026-09-30.preview"
# One key per test session, random so that a test can look for it in logs.
SECRET_KEY = f"sk_test_relay_{secrets.token_hex(12)}"

# Tuning the template does not declare (so not settable through env-vars): quick retries.
FORWARDER_TUNING = {
    "RETRY_BASE_DELAY_MS": "10",
    "RETRY_MAX_DELAY_MS": "50",
    "REQUEST_TIMEOUT_SECONDS": "5",
}


def reset_powertools_logger(*stacks: str) -> None:
    """Forget Powertools' configuration of the process-wide `logging` loggers of the services
    (a stack's name, as the template sets POWERTOOLS_SERVICE_NAME: the harness's, and any
    others named; and the library's default).

    Powertools configures such a logger once per process, with a handler bound to the
    sys.stdout of that moment; the harness shares `logging` between environments, so without
    this a later test's logs would go to an earlier test's (closed) capture stream.
    """
    for service in (STACK_NAME, "meter-relay", *stacks):
        _reset_logger(service)


def _reset_logger(service: str) -> None:
    std_logger = logging.getLogger(service)
    for handler in list(std_logger.handlers):
        std_logger.removeHandler(handler)
    for name in (
        "init",
        "powertools_handler",
        "powertools_buffer_config",
        "powertools_buffer_cache",
    ):
        if hasattr(std_logger, name):
            delattr(std_logger, name)


def queue_url(moto_url: str, name: str) -> str:
    return f"{moto_url}/{ACCOUNT_ID}/{name}"


def queue_arn(name: str) -> str:
    return f"arn:aws:sqs:{DEFAULT_REGION}:{ACCOUNT_ID}:{name}"


def build_env_vars(moto_url: str, emulator_url: str, *, refresher: bool) -> dict[str, Any]:
    """The `--env-vars` document for both functions (only variables the template declares)."""
    return {
        "Parameters": {
            "STRIPE_API_VERSION": API_VERSION,
            "STRIPE_MODE": "test",
            "SESSION_TOKEN_PARAMETER": SESSION_PARAMETER,
            "POWERTOOLS_LOG_LEVEL": "INFO",
        },
        FORWARDER: {
            "STRIPE_METER_EVENTS_BASE": emulator_url,
            "DEAD_LETTER_QUEUE_URL": queue_url(moto_url, DEAD_LETTER_QUEUE),
            "REFRESHER_FUNCTION_NAME": REFRESHER if refresher else "",
            "STREAM_CONCURRENCY": "4",
            "METER_CATALOG_PATH": CATALOG_PATH,
            "LEDGER_BUCKET": LEDGER_BUCKET,
        },
        REFRESHER: {
            "STRIPE_API_BASE": emulator_url,
            "STRIPE_SECRET_ID": SECRET_ID,
            "METER_CATALOG_PATH": CATALOG_PATH,
        },
    }


class LazyEndpoint:
    """The local Lambda endpoint for the session, started by the first test that needs it."""

    def __init__(self, moto_url: str, emulator_url: str) -> None:
        self._moto_url = moto_url
        self._emulator_url = emulator_url
        self._endpoint: LambdaEndpoint | None = None

    def get(self) -> LambdaEndpoint:
        if self._endpoint is None:
            endpoint = LambdaEndpoint(
                TEMPLATE,
                build_env_vars(self._moto_url, self._emulator_url, refresher=False),
                aws_env(self._moto_url),
                lifetime=3600,
            )
            self._endpoint = endpoint.start()
        return self._endpoint

    def stop(self) -> None:
        if self._endpoint is not None:
            self._endpoint.stop()
            self._endpoint = None


@dataclass
class Relay:
    """The provisioned stack of one test, and helpers to drive it."""

    aws: AwsEnv
    emulator: EmulatorClient
    emulator_url: str
    endpoint: LazyEndpoint
    queue_url: str
    queue_arn: str
    dlq_url: str
    dlq_arn: str
    secret_id: str = SECRET_ID
    secret_key: str = SECRET_KEY
    parameter: str = SESSION_PARAMETER
    _functions: list[LambdaFunction] = field(default_factory=list)

    # ----- configuration ---------------------------------------------------------------------
    def env_vars(self, *, refresher: bool = False) -> dict[str, Any]:
        return build_env_vars(self.aws.endpoint_url, self.emulator_url, refresher=refresher)

    def forwarder(
        self,
        *,
        refresher: bool = False,
        env: Mapping[str, str] | None = None,
        extra_env: Mapping[str, str] | None = None,
    ) -> LambdaFunction:
        """The forwarder's execution environment (closed at the end of the test).

        refresher: REFRESHER_FUNCTION_NAME is set and reaches the refresher through the local
        Lambda endpoint; else it is empty (no refresher). env: overrides of variables the
        template declares (env-vars); extra_env: anything else (tuning), on top of quick retries.
        """
        env_vars = self.env_vars(refresher=refresher)
        env_vars[FORWARDER].update(env or {})
        extra = {**self.aws.env, **FORWARDER_TUNING, **(extra_env or {})}
        if refresher:
            extra.update(self.endpoint.get().client_env)
        return self._load(FORWARDER, env_vars, extra)

    def refresher(
        self,
        *,
        env: Mapping[str, str] | None = None,
        extra_env: Mapping[str, str] | None = None,
    ) -> LambdaFunction:
        env_vars = self.env_vars()
        env_vars[REFRESHER].update(env or {})
        return self._load(REFRESHER, env_vars, {**self.aws.env, **(extra_env or {})})

    def _load(
        self, logical_id: str, env_vars: dict[str, Any], extra_env: dict[str, str]
    ) -> LambdaFunction:
        function = load_function(TEMPLATE, logical_id, env_vars=env_vars, extra_env=extra_env)
        self._functions.append(function)
        return function

    def lambda_client(self) -> LambdaClient:
        """A boto3 Lambda client of the local Lambda endpoint (started if need be)."""
        session = boto3.session.Session(
            aws_access_key_id=self.aws.env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.aws.env["AWS_SECRET_ACCESS_KEY"],
            aws_session_token=self.aws.env["AWS_SESSION_TOKEN"],
            region_name=self.aws.region,
        )
        return session.client("lambda", endpoint_url=self.endpoint.get().url)

    def close(self) -> None:
        for function in self._functions:
            function.close()
        self._functions.clear()

    # ----- events ----------------------------------------------------------------------------
    def sqs_event(
        self,
        bodies: Sequence[str | Mapping[str, Any]],
        message_ids: Sequence[str] | None = None,
        receive_count: int = 1,
    ) -> dict[str, Any]:
        """A Lambda SQS event from the usage queue, one record per body (dicts become JSON)."""
        if message_ids is None:
            message_ids = [str(uuid.uuid4()) for _ in bodies]
        if len(message_ids) != len(bodies):
            raise ValueError("one message id per body")
        now = str(int(time.time() * 1000))
        records = []
        for message_id, body in zip(message_ids, bodies, strict=True):
            text = body if isinstance(body, str) else json.dumps(body)
            records.append(
                {
                    "messageId": message_id,
                    "receiptHandle": f"rh-{message_id}",
                    "body": text,
                    "attributes": {
                        "ApproximateReceiveCount": str(receive_count),
                        "SentTimestamp": now,
                        "SenderId": "AIDAEXAMPLE",
                        "ApproximateFirstReceiveTimestamp": now,
                    },
                    "messageAttributes": {},
                    "md5OfBody": hashlib.md5(text.encode(), usedforsecurity=False).hexdigest(),
                    "eventSource": "aws:sqs",
                    "eventSourceARN": self.queue_arn,
                    "awsRegion": self.aws.region,
                }
            )
        return {"Records": records}

    def dlq_messages(self) -> list[dict[str, Any]]:
        """Every message on the DLQ (received once, kept invisible): body and attributes.

        Each item: {"message_id", "body", "attributes": {name: value}, "json": body or None}.
        For shallow queues only (moto slows down on deep ones).
        """
        sqs = self.aws.client("sqs")
        found: dict[str, dict[str, Any]] = {}
        while True:
            response = sqs.receive_message(
                QueueUrl=self.dlq_url,
                MaxNumberOfMessages=10,
                MessageAttributeNames=["All"],
                VisibilityTimeout=300,
                WaitTimeSeconds=0,
            )
            messages = response.get("Messages", [])
            if not messages:
                break
            for message in messages:
                body = message.get("Body", "")
                try:
                    parsed: Any = json.loads(body)
                except (ValueError, RecursionError):  # a body nested too deeply
                    parsed = None
                found[message["MessageId"]] = {
                    "message_id": message["MessageId"],
                    "body": body,
                    "json": parsed,
                    "attributes": {
                        name: value.get("StringValue", "")
                        for name, value in message.get("MessageAttributes", {}).items()
                    },
                }
        return list(found.values())

    # ----- the session parameter ---------------------------------------------------------
    def stored_session(self) -> dict[str, Any] | None:
        """The parameter's JSON (read WithDecryption), or None when it does not exist."""
        ssm = self.aws.client("ssm")
        try:
            value = ssm.get_parameter(Name=self.parameter, WithDecryption=True)["Parameter"]
        except ssm.exceptions.ParameterNotFound:
            return None
        data: dict[str, Any] = json.loads(value["Value"])
        return data

    def put_session(self, *, expires_at: str | None = None) -> dict[str, Any]:
        """Create a session at the emulator (as the refresher would) and store it.

        expires_at overrides what is stored (e.g. a past time: a stale parameter).
        """
        response = requests.post(
            f"{self.emulator_url}/v2/billing/meter_event_session",
            headers={"Authorization": f"Bearer {self.secret_key}", "Stripe-Version": API_VERSION},
            timeout=10,
        )
        response.raise_for_status()
        session = response.json()
        value = {
            "token": session["authentication_token"],
            "session_id": session["id"],
            "expires_at": expires_at or session["expires_at"],
            "livemode": session["livemode"],
            "key_fingerprint": key_fingerprint(self.secret_key),
        }
        self.aws.client("ssm").put_parameter(
            Name=self.parameter, Value=json.dumps(value), Type="SecureString", Overwrite=True
        )
        return value


@pytest.fixture(scope="session")
def relay_endpoint(
    moto_server: MotoServer, emulator_server: EmulatorServer
) -> Iterator[LazyEndpoint]:
    """The local Lambda endpoint (a subprocess), started when a test first needs it."""
    endpoint = LazyEndpoint(moto_server.endpoint_url, emulator_server.url)
    yield endpoint
    endpoint.stop()


@pytest.fixture
def relay(
    aws: AwsEnv,
    emulator: EmulatorClient,
    emulator_server: EmulatorServer,
    relay_endpoint: LazyEndpoint,
) -> Iterator[Relay]:
    """The queues (usage with a RedrivePolicy to its DLQ), the secret, no parameter yet."""
    reset_powertools_logger()
    sqs = aws.client("sqs")
    dlq_url = sqs.create_queue(
        QueueName=DEAD_LETTER_QUEUE, Attributes={"MessageRetentionPeriod": "1209600"}
    )["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    redrive = {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(MAX_RECEIVE_COUNT)}
    usage_url = sqs.create_queue(
        QueueName=USAGE_QUEUE,
        Attributes={"VisibilityTimeout": "360", "RedrivePolicy": json.dumps(redrive)},
    )["QueueUrl"]
    assert dlq_url == queue_url(aws.endpoint_url, DEAD_LETTER_QUEUE)
    aws.client("secretsmanager").create_secret(Name=SECRET_ID, SecretString=SECRET_KEY)
    aws.client("s3").create_bucket(Bucket=LEDGER_BUCKET)
    stack = Relay(
        aws=aws,
        emulator=emulator,
        emulator_url=emulator_server.url,
        endpoint=relay_endpoint,
        queue_url=usage_url,
        queue_arn=queue_arn(USAGE_QUEUE),
        dlq_url=dlq_url,
        dlq_arn=dlq_arn,
    )
    with _heap_of_a_lambda_process():
        yield stack
        stack.close()
    reset_powertools_logger()


@contextmanager
def _heap_of_a_lambda_process() -> Iterator[None]:
    """Leave what this process already holds out of the cyclic collector's passes while the
    test runs its functions, as a Lambda process holds only its function. Late in a session the
    process holds a million objects (moto's server, the emulator, pytest's records): a full
    pass over them holds the GIL for over a second, which stalled a handler past a deadline
    the test asserts it keeps (its reserve for answering is half a second). Frozen objects go
    back to the oldest generation afterwards: nothing is kept from collection for good."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def emf_metrics(output: str) -> dict[str, list[float]]:
    """Every EMF document's metric values in captured stdout, by metric name."""
    found: dict[str, list[float]] = {}
    for line in output.splitlines():
        if not line.startswith("{") or '"_aws"' not in line:
            continue
        document = json.loads(line)
        for directive in document["_aws"]["CloudWatchMetrics"]:
            for metric in directive["Metrics"]:
                values = document[metric["Name"]]
                found.setdefault(metric["Name"], []).extend(
                    values if isinstance(values, list) else [values]
                )
    return found


def emf_sums(output: str) -> Counter[str]:
    """The sum of each EMF metric's values in captured stdout, by metric name."""
    return Counter({name: sum(values) for name, values in emf_metrics(output).items()})
