"""`make run`: the whole stack on this machine, driven as Lambda's event source mapping would.

Starts moto server and the Stripe emulator (each in its own process), provisions the queues,
dead-letter queue and secret as template.yaml declares them, runs the refresher, produces
usage events (a share of them invalid, single events and envelopes) and drives the forwarder
through the invocation harness: batches of up to BatchSize gathered within the batching
window, a visibility timeout, partial batch responses, redrive to the DLQ after
maxReceiveCount. Some events are rejected by Stripe only later (a customer it does not know):
its error reports reach ErrorReportsFunction as deployed (a signed webhook to a local Function
URL, or the partner bus and the template's rule: devkit.local_error_reports), which writes
their samples into the DLQ. It ends with a report and exits non-zero if any event is
unaccounted for or counted twice, or Stripe's reports and the letters disagree.

Differences from AWS, on purpose: one invocation at a time (the harness runs functions in this
process), and a short retry delay: a message returned in batchItemFailures, or of a failed
invocation, is visible again after `--visibility-timeout` (default 5 s instead of the
template's 360 s) so that retries happen within the run. Messages are received hidden for the
batching window plus the forwarder's Timeout, so none comes back while its batch is at work.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from devkit.emulator.client import DEFAULT_SECRET_KEY, EmulatorClient
from devkit.harness import load_function, load_template
from devkit.lambda_endpoint import LambdaEndpoint
from devkit.local_error_reports import (
    ROUTES,
    WEBHOOK,
    ErrorReportRoutes,
    ErrorReportsSetup,
    Received,
    StripeLetter,
    StripeReports,
    reconcile,
    stripe_letter,
    stripe_reports,
)
from devkit.local_error_reports import provision as provision_error_reports
from devkit.local_ledger import LedgerCheck, UnknownBody, reconcile_run, unknown_bodies
from devkit.local_ledger import provision as provision_ledger
from devkit.moto_server import aws_env
from devkit.throttle_proxy import ThrottleProxy
from meter_relay.dlq import read_message
from meter_relay.events import ValidationRules, derive_identifier, format_timestamp
from meter_relay.producer import UsageProducer
from meter_relay.sqs_batches import in_tens

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_sqs.type_defs import MessageTypeDef

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "template.yaml"
METERS = Path(__file__).resolve().parent / "local_meters.json"
# Names no deployed stack can have (a stack's name holds no "."): see events/env.json.
SESSION_PARAMETER = "/meter-relay.local/stripe/meter-event-session"
SECRET_NAME = "meter-relay.local/stripe-secret-key"  # noqa: S105 (a name, not a secret)
CATALOG_PATH = "/meter-relay.local/stripe/meter-catalog"
KNOWN_CUSTOMERS = [f"cus_{n:04d}" for n in range(50)]  # what the producer bills; Stripe knows
MAX_QUEUE_DEPTH = 300  # moto slows down on deep queues: the producer waits above this
MAX_PAYLOAD_BYTES = 5_500_000  # Lambda's 6 MB invocation payload, with room for the envelope
DELIVERED = "delivered"
REJECTED_LATER = "rejected_by_stripe_later"
# Stripe's code for what REJECTED_LATER produces (a customer it does not know)
REJECTED_LATER_CODE = "meter_event_customer_not_found"


@dataclass
class Options:
    events: int = 20_000
    invalid_share: float = 0.02
    envelope_size: int = 20
    batch_size: int | None = None  # None: the template's default
    window: float | None = None
    visibility_timeout: int = 5
    max_receive_count: int | None = None
    seed: int = 1
    timeout: float = 600.0
    faults: dict[str, Any] = field(default_factory=dict)
    session_ttl: float = 900.0
    refresh_every: float = 300.0
    quiet: bool = False
    # chaos (make chaos): each off by default
    forwarder_process: bool = False  # run the forwarder behind its own endpoint (killable)
    kill_every: int = 0  # kill the forwarder during every Nth invocation
    ssm_throttle_rate: float = 0.0  # share of SSM calls answered ThrottlingException
    # (start, least length) s into the run; Stripe ends every session as it begins
    refresher_outage: tuple[float, float] | None = None
    expire_sessions_at: tuple[float, ...] = ()  # s into the run: Stripe ends every session
    # (start, length, stream requests per second): the account's rate limit, sustained
    rate_limit_phase: tuple[float, float, float] | None = None
    produce_for: float = 0.0  # spread production over this many seconds (0: as fast as it can)
    # how Stripe's error reports reach ErrorReportsFunction: webhook, eventbridge or both
    error_reports: str = WEBHOOK


# ----- processes ------------------------------------------------------------------------------
@contextmanager
def _server_process(
    args: list[str], lifetime: float, env: dict[str, str] | None = None
) -> Iterator[str]:
    """Run `python -m <args>` (a server printing its URL first) and yield that URL.

    Whatever else the server writes reaches this process's stderr (its own stderr is shared,
    its later stdout lines are copied), so a run's output holds every line of it. `env` is
    added to this process's environment for it.
    """
    command = [sys.executable, "-m", *args, "--port", "0", "--lifetime", str(int(lifetime))]
    process = subprocess.Popen(  # noqa: S603 (our own interpreter and modules)
        command,
        stdout=subprocess.PIPE,
        stderr=None,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        url = line.split()[-1] if line else ""
        if not url.startswith("http"):
            raise RuntimeError(f"{args[0]} did not start: {line!r}")
        output = process.stdout
        threading.Thread(
            target=lambda: [sys.stderr.write(rest) for rest in output],
            name=f"{args[0]}-output",
            daemon=True,
        ).start()
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


# ----- provisioning ---------------------------------------------------------------------------
@dataclass
class Stack:
    moto_url: str
    emulator_url: str
    queue_url: str
    queue_arn: str
    dlq_url: str
    env: dict[str, str]
    env_vars: dict[str, dict[str, str]]
    batch_size: int
    window: float
    max_receive_count: int
    function_timeout: float  # the forwarder's Timeout in the template
    error_reports: ErrorReportsSetup


def _parameter_default(template: dict[str, Any], name: str) -> Any:
    return template["Parameters"][name]["Default"]


def provision(moto_url: str, emulator_url: str, options: Options) -> Stack:
    """Create what template.yaml declares for the forwarder, the refresher and the error
    reports function, in moto."""
    template = load_template(TEMPLATE)
    resources = template["Resources"]
    env = aws_env(moto_url)
    sqs = boto3.client("sqs", endpoint_url=moto_url, region_name=env["AWS_DEFAULT_REGION"])
    secrets = boto3.client(
        "secretsmanager", endpoint_url=moto_url, region_name=env["AWS_DEFAULT_REGION"]
    )
    dlq_props = resources["UsageDeadLetterQueue"]["Properties"]
    dlq_url = sqs.create_queue(
        QueueName="meter-relay-local-usage-dlq",
        Attributes={"MessageRetentionPeriod": str(dlq_props["MessageRetentionPeriod"])},
    )["QueueUrl"]
    dlq_arn = _queue_arn(sqs, dlq_url)
    max_receive = options.max_receive_count or int(_parameter_default(template, "MaxReceiveCount"))
    queue_props = resources["UsageQueue"]["Properties"]
    queue_url = sqs.create_queue(
        QueueName="meter-relay-local-usage",
        Attributes={
            "MessageRetentionPeriod": str(queue_props["MessageRetentionPeriod"]),
            "VisibilityTimeout": str(options.visibility_timeout),
            "RedrivePolicy": json.dumps(
                {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": max_receive}
            ),
        },
    )["QueueUrl"]
    secrets.create_secret(Name=SECRET_NAME, SecretString=DEFAULT_SECRET_KEY)
    error_reports = provision_error_reports(
        TEMPLATE, moto_url, env["AWS_DEFAULT_REGION"], options.error_reports
    )
    ledger = provision_ledger(moto_url, env["AWS_DEFAULT_REGION"])
    meter_keys = json.dumps({"search_calls": {"customer_key": "customer", "value_key": "calls"}})
    common = {
        "SESSION_TOKEN_PARAMETER": SESSION_PARAMETER,
        "STRIPE_MODE": "test",
        "METER_CATALOG_PATH": CATALOG_PATH,
    }
    # Margins in proportion when the emulator's sessions live shorter than Stripe's 15 minutes.
    refresh_margin = min(420.0, options.session_ttl / 2)
    env_vars = {
        "Parameters": common,
        "ForwarderFunction": {
            "STRIPE_METER_EVENTS_BASE": emulator_url,
            "DEAD_LETTER_QUEUE_URL": dlq_url,
            "REFRESHER_FUNCTION_NAME": "RefresherFunction",  # served by the local endpoint
            "METER_KEYS": meter_keys,
            "LEDGER_BUCKET": ledger,
        },
        "RefresherFunction": {
            "STRIPE_API_BASE": emulator_url,
            "STRIPE_SECRET_ID": SECRET_NAME,
            "REFRESH_MARGIN_SECONDS": str(refresh_margin),
        },
        "ErrorReportsFunction": {
            **error_reports.env_vars(emulator_url, SECRET_NAME, dlq_url),
            "LEDGER_BUCKET": ledger,  # reported events' bodies, and the samples recorded
            "METER_KEYS": meter_keys,
        },
    }
    return Stack(
        moto_url,
        emulator_url,
        queue_url,
        _queue_arn(sqs, queue_url),
        dlq_url,
        env,
        env_vars,
        options.batch_size or int(_parameter_default(template, "BatchSize")),
        options.window
        if options.window is not None
        else float(_parameter_default(template, "BatchingWindowSeconds")),
        max_receive,
        float(
            resources["ForwarderFunction"]["Properties"].get("Timeout")
            or template["Globals"]["Function"]["Timeout"]
        ),
        error_reports,
    )


def _queue_arn(sqs: SQSClient, url: str) -> str:
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
    return attributes["Attributes"]["QueueArn"]


# ----- production -----------------------------------------------------------------------------
@dataclass
class Expected:
    """What should become of each produced event, by identifier (or message id)."""

    outcomes: dict[str, str] = field(default_factory=dict)  # identifier -> delivered | code
    raw_messages: dict[str, str] = field(default_factory=dict)  # message id -> code
    produced: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


INVALID_KINDS: list[tuple[str, str]] = [
    ("payload_no_customer_defined", "no customer"),
    ("payload_invalid_value", "value 0"),
    ("timestamp_too_far_in_past", "40 days old"),
    ("parameter_unknown", "unknown field"),
    ("no_meter", "no meter at Stripe (refused before sending: the meter catalog)"),
    (REJECTED_LATER, "a customer Stripe does not know (only Stripe can tell)"),
]


def _event(rng: random.Random, now: datetime, with_identifier: bool) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event_name": rng.choice(["api_requests", "search_calls"]),
        "payload": {"stripe_customer_id": f"cus_{rng.randrange(50):04d}"},
        "timestamp": format_timestamp(now - timedelta(seconds=rng.randrange(3600))),
    }
    value = rng.randrange(1, 100)
    if event["event_name"] == "search_calls":
        event["payload"] = {"customer": event["payload"]["stripe_customer_id"], "calls": value}
    else:
        event["payload"]["value"] = str(value)
    if with_identifier:
        event["identifier"] = f"local-{uuid.UUID(int=rng.getrandbits(128)).hex}"
    return event


def _spoil(event: dict[str, Any], kind: str) -> None:
    payload = event["payload"]
    if kind == "payload_no_customer_defined":
        payload.pop("stripe_customer_id", None)
        payload.pop("customer", None)
    elif kind == "payload_invalid_value":
        for key in ("value", "calls"):
            if key in payload:
                payload[key] = "0"
    elif kind == "timestamp_too_far_in_past":
        event["timestamp"] = format_timestamp(datetime.now(UTC) - timedelta(days=40))
    elif kind == "parameter_unknown":
        event["note"] = "not part of the contract"
    elif kind == "no_meter":  # well formed, but Stripe has no meter for it
        event["event_name"] = "unmetered_feature"
        event["payload"] = {"stripe_customer_id": "cus_0001", "value": "1"}
    elif kind == REJECTED_LATER:  # well formed, a meter, but a customer Stripe does not know
        event["event_name"] = "api_requests"
        event["payload"] = {"stripe_customer_id": "cus_unknown_to_stripe", "value": "1"}


def produce(stack: Stack, options: Options, expected: Expected, stop: threading.Event) -> None:
    """Put `options.events` events on the usage queue, keeping the queue shallow."""
    rng = random.Random(options.seed)  # noqa: S311 (test data)
    sqs = boto3.client("sqs", endpoint_url=stack.moto_url, region_name=stack.env["AWS_REGION"])
    # identifiers left out on purpose for half the events: the forwarder derives them
    producer = UsageProducer(
        stack.queue_url, sqs, envelope_size=options.envelope_size, assign_identifiers=False
    )
    now = datetime.now(UTC)
    chunk = max(options.envelope_size * 10, 100)
    remaining = options.events
    chunks = 0
    started = time.monotonic()
    while remaining > 0 and not stop.is_set():
        if options.produce_for:  # keep pace: the share produced follows the share of time
            due = started + options.produce_for * (options.events - remaining) / options.events
            stop.wait(max(0.0, due - time.monotonic()))
        _wait_for_room(sqs, stack.queue_url, stop)
        count = min(chunk, remaining)
        events, kinds = [], []
        for _ in range(count):
            event = _event(rng, now, with_identifier=rng.random() < 0.5)
            kind = DELIVERED
            if rng.random() < options.invalid_share:
                kind = rng.choice(INVALID_KINDS)[0]
                _spoil(event, kind)
            events.append(event)
            kinds.append(kind)
        report = producer.send(events)
        if report.failed:
            raise RuntimeError(f"the producer could not send {report.events_failed} events")
        position = 0
        with expected.lock:
            for message in report.sent:
                for index, event in enumerate(message.events):
                    identifier = event.get("identifier") or derive_identifier(
                        message.message_id, index
                    )
                    expected.outcomes[identifier] = kinds[position]
                    position += 1
            expected.produced += count
        if options.invalid_share and chunks % 10 == 0:  # now and then, a body that is not JSON
            sent = sqs.send_message(QueueUrl=stack.queue_url, MessageBody="{not json")
            with expected.lock:
                expected.raw_messages[sent["MessageId"]] = "message_not_json"
        chunks += 1
        remaining -= count


def _wait_for_room(sqs: SQSClient, queue_url: str, stop: threading.Event) -> None:
    while not stop.is_set() and _depth(sqs, queue_url)[0] > MAX_QUEUE_DEPTH:
        time.sleep(0.2)


def _depth(sqs: SQSClient, queue_url: str) -> tuple[int, int]:
    attributes = sqs.get_queue_attributes(
        QueueUrl=queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return (
        int(attributes["ApproximateNumberOfMessages"]),
        int(attributes["ApproximateNumberOfMessagesNotVisible"]),
    )


# ----- the event source mapping ---------------------------------------------------------------
Invoke = Callable[[dict[str, Any]], dict[str, Any] | None]  # None: the invocation failed


@dataclass
class MappingStats:
    invocations: int = 0
    records: int = 0
    failed_records: int = 0
    errors: int = 0


class EventSourceMapping:
    """Lambda's SQS poller, in miniature: gather a batch, invoke, delete what succeeded.

    Messages are received hidden for as long as gathering and the invocation can take (the
    window plus the forwarder's Timeout, as the template's visibility of 6 x Timeout ensures on
    AWS), so none comes back while its batch is still at work; what is to be retried is then
    made visible again after `visibility` seconds, so that retries happen within a local run.
    """

    def __init__(self, sqs: SQSClient, stack: Stack, invoke: Invoke, visibility: int) -> None:
        self._sqs = sqs
        self._stack = stack
        self._invoke = invoke
        self._visibility = visibility
        self._hold = max(visibility, int(stack.window + stack.function_timeout) + 5)
        self.stats = MappingStats()

    def poll(self) -> int:
        """One batch: returns how many records were handed to the function."""
        messages = self._gather()
        if not messages:
            return 0
        event = {"Records": [self._record(message) for message in messages]}
        result = self._invoke(event)
        self.stats.invocations += 1
        self.stats.records += len(messages)
        if result is None:
            self.stats.errors += 1  # as Lambda: the whole batch becomes visible again later
            self._retry_later(messages)
            return len(messages)
        failed = {f["itemIdentifier"] for f in result.get("batchItemFailures", [])}
        self.stats.failed_records += len(failed)
        done = [m for m in messages if m["MessageId"] not in failed]
        delete_messages(self._sqs, self._stack.queue_url, done)
        self._retry_later([m for m in messages if m["MessageId"] in failed])
        return len(messages)

    def _retry_later(self, messages: list[MessageTypeDef]) -> None:
        for batch in in_tens(messages):
            self._sqs.change_message_visibility_batch(
                QueueUrl=self._stack.queue_url,
                Entries=[
                    {
                        "Id": str(i),
                        "ReceiptHandle": m["ReceiptHandle"],
                        "VisibilityTimeout": self._visibility,
                    }
                    for i, m in enumerate(batch)
                ],
            )

    def _gather(self) -> list[MessageTypeDef]:
        batch: list[MessageTypeDef] = []
        size = 0
        deadline = time.monotonic() + self._stack.window
        while len(batch) < self._stack.batch_size and size < MAX_PAYLOAD_BYTES:
            received = self._sqs.receive_message(
                QueueUrl=self._stack.queue_url,
                MaxNumberOfMessages=min(10, self._stack.batch_size - len(batch)),
                VisibilityTimeout=self._hold,
                AttributeNames=["All"],
                MessageAttributeNames=["All"],
            ).get("Messages", [])
            batch.extend(received)
            size += sum(len(m["Body"]) for m in received)
            if time.monotonic() >= deadline:
                break  # the batching window is over, whether messages still come or not
            if not received:
                time.sleep(0.05)
        return batch

    def _record(self, message: MessageTypeDef) -> dict[str, Any]:
        return {
            "messageId": message["MessageId"],
            "receiptHandle": message["ReceiptHandle"],
            "body": message["Body"],
            "attributes": message.get("Attributes", {}),
            "messageAttributes": message.get("MessageAttributes", {}),
            "md5OfBody": message.get("MD5OfBody", ""),
            "eventSource": "aws:sqs",
            "eventSourceARN": self._stack.queue_arn,
            "awsRegion": self._stack.env["AWS_REGION"],
        }


# ----- accounting -----------------------------------------------------------------------------
@dataclass
class Report:
    produced: int
    delivered: int
    counted_twice: int
    rejected_later: int
    dead_lettered: Counter[str]
    unaccounted: list[str]
    misplaced: list[str]
    seconds: float
    stats: MappingStats
    sent_again: int = 0  # events Stripe received more than once (and counted once)
    duplicate_letters: int = 0
    chaos: dict[str, Any] = field(default_factory=dict)
    # of rejected_later: a letter from Stripe's report in the DLQ, or counted without a sample
    rejected_later_in_dlq: int = 0
    rejected_later_unsampled: int = 0
    stripe_reports: StripeReports | None = None
    ledger: LedgerCheck | None = None  # the reconcile that ends the run
    unknown_bodies: list[UnknownBody] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        reports_ok = self.stripe_reports is None or self.stripe_reports.ok
        ledger_ok = self.ledger is None or self.ledger.ok
        clean = not self.unaccounted and not self.counted_twice and not self.misplaced
        return reports_ok and ledger_ok and clean

    def to_json(self) -> dict[str, Any]:
        return {
            "produced": self.produced,
            "delivered": self.delivered,
            "counted_twice": self.counted_twice,
            "rejected_later": self.rejected_later,
            "dead_lettered": dict(self.dead_lettered),
            "unaccounted": len(self.unaccounted),
            "misplaced": len(self.misplaced),
            "seconds": round(self.seconds, 2),
            "invocations": self.stats.invocations,
            "failed_invocations": self.stats.errors,
            "records_returned_for_retry": self.stats.failed_records,
            "sent_again_deduplicated": self.sent_again,
            "duplicate_dead_letters": self.duplicate_letters,
            "chaos": self.chaos,
            "rejected_later_dead_lettered": self.rejected_later_in_dlq,
            "rejected_later_without_sample": self.rejected_later_unsampled,
            "stripe_error_reports": self.stripe_reports.to_json() if self.stripe_reports else None,
            "reconcile": self.ledger.to_json() if self.ledger else None,
            "unknown_bodies": [vars(unknown) for unknown in self.unknown_bodies],
        }

    def render(self) -> str:
        rate = self.delivered / self.seconds if self.seconds else 0.0
        lines = [
            "",
            "Meter Relay local run",
            f"  produced                  {self.produced:>8}",
            f"  delivered (counted once)  {self.delivered:>8}",
            f"  counted twice             {self.counted_twice:>8}",
            f"  sent again, deduplicated  {self.sent_again:>8}  (retries Stripe recognised)",
            f"  rejected later by Stripe  {self.rejected_later:>8}  (accepted, in error reports)",
            f"    in the DLQ from Stripe  {self.rejected_later_in_dlq:>8}  "
            f"(its reports' samples, with Stripe's code; {self._bodies()})",
            f"    without a sample        {self.rejected_later_unsampled:>8}  "
            "(counted in Stripe's reports, not among their samples)",
            f"  dead-lettered             {sum(self.dead_lettered.values()):>8}",
        ]
        lines += [f"    {code:<27}{n:>5}" for code, n in sorted(self.dead_lettered.items())]
        if self.duplicate_letters:
            lines.append(f"    (and {self.duplicate_letters} repeated letters of these)")
        if self.stripe_reports is not None:
            lines += self.stripe_reports.render()
        if self.ledger is not None:
            lines += self.ledger.render()
        lines += [unknown.render() for unknown in self.unknown_bodies]
        lines += [
            f"  unaccounted               {len(self.unaccounted):>8}",
            f"  in the wrong place        {len(self.misplaced):>8}",
            f"  invocations {self.stats.invocations}, records {self.stats.records}, "
            f"records returned for retry {self.stats.failed_records}, "
            f"failed invocations {self.stats.errors}",
            f"  {self.seconds:.1f} s, {rate:,.0f} events/s delivered",
            *(f"  chaos: {name} {value}" for name, value in self.chaos.items()),
            "  result: " + ("OK" if self.ok else "FAILED"),
        ]
        if self.unaccounted:
            lines.append(f"  first unaccounted: {self.unaccounted[:5]}")
        if self.misplaced:
            lines.append(f"  first misplaced: {self.misplaced[:5]}")
        return "\n".join(lines)

    def _bodies(self) -> str:
        unknown = self.stripe_reports.bodies_unknown if self.stripe_reports else 0
        if not unknown:
            return "bodies known"
        return f"{unknown} bodies unknown: not found in the delivery ledger"


class DeadLetterTally(dict[str, str]):
    """identifier (or message id, for a body with no event) -> error code, of the relay's
    letters; how many letters repeated one already read (a message retried after some of its
    letters were sent); and the letters ErrorReportsFunction wrote from Stripe's reports."""

    def __init__(self) -> None:
        super().__init__()
        self.duplicates = 0
        self.stripe: list[StripeLetter] = []


def read_dead_letters(sqs: SQSClient, dlq_url: str) -> DeadLetterTally:
    """The DLQ's letters, consuming it.

    Messages SQS moved after maxReceiveCount carry the producer's body: their events'
    identifiers are derived as the forwarder derives them (meter_relay.dlq.read_message).
    """
    found = DeadLetterTally()
    rules = ValidationRules()
    while True:
        messages = sqs.receive_message(
            QueueUrl=dlq_url,
            MaxNumberOfMessages=10,
            VisibilityTimeout=60,
            AttributeNames=["All"],
            MessageAttributeNames=["All"],
        ).get("Messages", [])
        if not messages:
            return found
        for message in messages:
            reported = stripe_letter(message)
            if reported is not None:
                found.stripe.append(reported)
                continue
            letter = read_message(message, rules)
            keys = {event.identifier or letter.source_message_id for event in letter.events}
            keys = keys or {letter.source_message_id}
            found.duplicates += any(key in found for key in keys)  # a letter read before
            for key in keys:
                found[key] = letter.code
        delete_messages(sqs, dlq_url, messages)


def delete_messages(sqs: SQSClient, queue_url: str, messages: list[MessageTypeDef]) -> None:
    for batch in in_tens(messages):
        sqs.delete_message_batch(
            QueueUrl=queue_url,
            Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(batch)
            ],
        )


def account(
    expected: Expected,
    emulator: EmulatorClient,
    dead: dict[str, str],
    seconds: float,
    stats: MappingStats,
    *,
    duplicate_letters: int = 0,
    stripe_letters: Sequence[StripeLetter] = (),
    received: Received | None = None,
) -> Report:
    """Where each produced event ended, against what was expected of it.

    An event Stripe rejected later is accounted for by its letter from Stripe's report (found
    by identifier, with Stripe's code) or, when no report names it among its samples, as
    counted without a sample; `received` (what reached ErrorReportsFunction) is held against
    Stripe's totals too, when given. Its place is right when Stripe's code is the one expected:
    meter_event_customer_not_found for REJECTED_LATER, or the code of an event the forwarder
    would have refused but sent (no_meter, when it went on without its meter catalog).
    """
    counts = emulator.identifiers()
    errors = emulator.errors()["data"]
    reported_later = {e["identifier"]: str(e["code"]) for e in errors}
    reports = reconcile(stripe_reports(emulator), errors, stripe_letters, received)
    delivered = counted_twice = rejected_later = sent_again = in_dlq = unsampled = 0
    unaccounted, misplaced = [], []
    codes: Counter[str] = Counter(dead.values())
    for identifier, want in expected.outcomes.items():
        counted = counts.get(identifier, {}).get("counted", 0)
        if counted > 1:
            counted_twice += 1
        sent_again += counts.get(identifier, {}).get("received", 0) > 1
        if counted:
            delivered += 1
            where = DELIVERED
        elif identifier in reported_later:
            code = reports.letter_codes.get(identifier)
            if code is None and identifier in reports.sampled:
                unaccounted.append(f"{identifier} (a sample of Stripe's report, no letter)")
                continue
            rejected_later += 1
            in_dlq += code is not None
            unsampled += code is None
            code = code or reported_later[identifier]
            where = REJECTED_LATER if code == REJECTED_LATER_CODE else code
            if where != want:
                where = f"rejected later by Stripe: {code}"
        elif identifier in dead:
            where = dead[identifier]
        else:
            unaccounted.append(identifier)
            continue
        if where != want:
            misplaced.append(f"{identifier}: expected {want}, found {where}")
    for message_id, want in expected.raw_messages.items():
        if message_id not in dead:
            unaccounted.append(message_id)
        elif dead[message_id] != want:
            misplaced.append(f"{message_id}: expected {want}, found {dead[message_id]}")
    produced = expected.produced + len(expected.raw_messages)
    return Report(
        produced,
        delivered,
        counted_twice,
        rejected_later,
        codes,
        unaccounted,
        misplaced,
        seconds,
        stats,
        sent_again=sent_again,
        duplicate_letters=duplicate_letters,
        rejected_later_in_dlq=in_dlq,
        rejected_later_unsampled=unsampled,
        stripe_reports=reports,
    )


# ----- the run --------------------------------------------------------------------------------
def run(options: Options) -> Report:
    lifetime = options.timeout + 120
    emulator_args = [
        "devkit.emulator",
        "--meters",
        str(METERS),
        "--seed",
        str(options.seed),
        "--session-ttl",
        str(options.session_ttl),
    ]
    with ExitStack() as stack_scope:
        moto_url = stack_scope.enter_context(_server_process(["devkit.moto_server"], lifetime))
        # the emulator puts Stripe's events on a bus in moto (the eventbridge route)
        emulator_url = stack_scope.enter_context(
            _server_process(emulator_args, lifetime, aws_env(moto_url))
        )
        emulator = EmulatorClient(emulator_url)
        emulator.set_known_customers(*KNOWN_CUSTOMERS)  # any other is rejected later
        if options.faults:
            emulator.configure(faults=options.faults, seed=options.seed)
        saved_env = dict(os.environ)
        os.environ.update(aws_env(moto_url))
        try:
            return _drive(provision(moto_url, emulator_url, options), options, emulator)
        finally:
            os.environ.clear()
            os.environ.update(saved_env)


def _drive(stack: Stack, options: Options, emulator: EmulatorClient) -> Report:
    sqs = boto3.client("sqs", endpoint_url=stack.moto_url, region_name=stack.env["AWS_REGION"])
    with ExitStack() as scope:
        function_env = dict(stack.env)
        proxy = None
        if options.ssm_throttle_rate:
            proxy = scope.enter_context(
                ThrottleProxy(stack.moto_url, options.ssm_throttle_rate, options.seed)
            )
            function_env["AWS_ENDPOINT_URL_SSM"] = proxy.url
        # The refresher runs behind a local Lambda endpoint (its own process): the schedule
        # and the forwarder (when Stripe refuses a token) both reach it through boto3's invoke.
        # ErrorReportsFunction has an endpoint of its own, reached by Stripe's pushes
        # (local_error_reports): an endpoint runs one invocation at a time, and a report that
        # waits for its events' bodies in the ledger must not hold up the refresher that the
        # forwarder, delivering those events, is waiting for (in AWS the two run apart).
        refresher_endpoint = scope.enter_context(
            LambdaEndpoint(TEMPLATE, stack.env_vars, function_env, lifetime=options.timeout + 60)
        )
        reports_endpoint = scope.enter_context(
            LambdaEndpoint(TEMPLATE, stack.env_vars, function_env, lifetime=options.timeout + 60)
        )
        lambda_client = boto3.client(
            "lambda", endpoint_url=refresher_endpoint.url, region_name=stack.env["AWS_REGION"]
        )

        def refresh() -> dict[str, Any]:
            response = lambda_client.invoke(FunctionName="RefresherFunction", Payload=b"{}")
            result: dict[str, Any] = json.loads(response["Payload"].read())
            if response.get("FunctionError"):
                raise RuntimeError(f"the refresher failed: {result}")
            return result

        forwarder_env = {
            **function_env,
            "STREAM_CONCURRENCY": "8",
            "TOKEN_MARGIN_SECONDS": str(min(60.0, options.session_ttl / 4)),
            **refresher_endpoint.client_env,
        }
        if options.forwarder_process:
            runner: ForwarderRunner = KillableForwarder(stack, forwarder_env, options)
        else:
            runner = InProcessForwarder(stack, forwarder_env)
        scope.callback(runner.close)
        chaos = Chaos(options, emulator, proxy)
        reports_client = boto3.client(  # as a Function URL or an event source: no retries
            "lambda",
            endpoint_url=reports_endpoint.url,
            region_name=stack.env["AWS_REGION"],
            config=Config(read_timeout=120, retries={"total_max_attempts": 1}),
        )
        routes = scope.enter_context(
            ErrorReportRoutes(stack.error_reports, emulator, reports_client)
        )
        report = _loop(stack, options, emulator, sqs, runner, refresh, chaos, routes)
        if options.forwarder_process or options.ssm_throttle_rate or options.refresher_outage:
            report.chaos = chaos.summary(runner)
        return report


class ForwarderRunner:
    """How the event source mapping reaches the forwarder."""

    kills = 0

    def invoke(self, event: dict[str, Any]) -> dict[str, Any] | None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class InProcessForwarder(ForwarderRunner):
    """Through the harness, in this process (the default: quick, one warm environment)."""

    def __init__(self, stack: Stack, env: dict[str, str]) -> None:
        self._function = load_function(
            TEMPLATE, "ForwarderFunction", env_vars=stack.env_vars, extra_env=env
        )

    def invoke(self, event: dict[str, Any]) -> dict[str, Any] | None:
        invocation = self._function.invoke(event)
        return invocation.result if invocation.ok and isinstance(invocation.result, dict) else None

    def close(self) -> None:
        self._function.close()


class KillableForwarder(ForwarderRunner):
    """Behind its own Lambda endpoint process, which chaos SIGKILLs in mid-batch: the
    invocation is lost, its messages come back after the visibility timeout, and the next
    invocation starts cold in a new process."""

    def __init__(self, stack: Stack, env: dict[str, str], options: Options) -> None:
        self._endpoint = LambdaEndpoint(
            TEMPLATE, stack.env_vars, env, lifetime=options.timeout + 60
        ).start()
        self._region = stack.env["AWS_REGION"]
        self._kill_every = options.kill_every
        self._rng = random.Random(options.seed)  # noqa: S311 (chaos timing)
        self._invocations = 0
        self._armed = False  # a kill is due, and waits for an invocation slow enough to meet it
        self._client_url = ""
        self._client: Any = None

    def invoke(self, event: dict[str, Any]) -> dict[str, Any] | None:
        self._invocations += 1
        if self._client_url != self._endpoint.url:  # a new process after a kill
            self._client_url = self._endpoint.url
            self._client = boto3.client(
                "lambda",
                endpoint_url=self._client_url,
                region_name=self._region,
                config=Config(read_timeout=120, retries={"total_max_attempts": 1}),
            )
        killer = None
        answered = threading.Event()
        lock = threading.Lock()

        def kill() -> None:  # only while the invocation is still at work
            with lock:
                if not answered.is_set():
                    self._endpoint.kill()

        if self._kill_every and self._invocations % self._kill_every == 0:
            self._armed = True
        if self._armed:  # one that answered first leaves the kill armed for the next one
            killer = threading.Timer(self._rng.uniform(0.005, 0.05), kill)
            killer.start()
        try:
            response = self._client.invoke(
                FunctionName="ForwarderFunction", Payload=json.dumps(event).encode()
            )
            result: dict[str, Any] = json.loads(response["Payload"].read())
            failed = bool(response.get("FunctionError"))
        except (BotoCoreError, ClientError, ValueError):
            result, failed = {}, True
        with lock:
            answered.set()
        if killer is not None:
            killer.cancel()
            killer.join()
            if not self._endpoint.running():
                self._armed = False
                self.kills += 1
                self._endpoint.start()  # a fresh execution environment (a cold start)
                return None
        return None if failed or "batchItemFailures" not in result else result

    def close(self) -> None:
        self._endpoint.stop()


OUTAGE_MIN_ANSWERS = 2  # the outage lasts until the forwarder has answered this many batches


class Chaos:
    """The timeline of a chaos run: sessions ended by Stripe, a refresher outage, a phase of
    sustained rate limiting (the stream takes so many requests a second, 429 beyond).

    The outage is tied to what the forwarder does, not only to the clock: it begins by ending
    every session (so nothing can heal until it is over) and lasts its length and at least
    until the forwarder has answered OUTAGE_MIN_ANSWERS batches, so it bites however slowly
    this machine runs the loop. The phase of rate limiting waits for the outage to be over (no
    stream call is made without a session, so a limit then would meet nothing), and lasts its
    length from when it began.
    """

    def __init__(self, options: Options, emulator: EmulatorClient, proxy: Any) -> None:
        self._options = options
        self._emulator = emulator
        self._proxy = proxy
        self._expiries = sorted(options.expire_sessions_at)
        self.sessions_ended = 0
        self._outage_began: float | None = None
        self._answers_before_outage = 0
        self.outage_seconds: float | None = None  # how long it lasted, once over
        self.batches_answered_in_outage = 0
        self._rate_limited: bool | None = None  # None: not yet; True: in the phase; False: over
        self.rate_limit_began: float | None = None  # s into the run

    def tick(self, elapsed: float, stats: MappingStats) -> None:
        while self._expiries and elapsed >= self._expiries[0]:
            self._expiries.pop(0)
            self.sessions_ended += self._emulator.expire_sessions()
        self._outage_tick(elapsed, stats)  # first: a limit due now waits for an outage due now
        self._rate_limit_tick(elapsed)

    def _rate_limit_tick(self, elapsed: float) -> None:
        phase = self._options.rate_limit_phase
        if phase is None:
            return
        start, length, rate = phase
        if self._rate_limited is None and elapsed >= start and not self.in_outage():
            self._emulator.configure(rate_limits={"stream": {"rate": rate, "burst": rate}})
            self._rate_limited = True
            self.rate_limit_began = elapsed
        elif self._rate_limited and elapsed >= (self.rate_limit_began or start) + length:
            self._emulator.configure(rate_limits={"stream": None})
            self._rate_limited = False

    def _outage_tick(self, elapsed: float, stats: MappingStats) -> None:
        window = self._options.refresher_outage
        if window is None or self.outage_seconds is not None:
            return
        answers = stats.invocations - stats.errors
        if self._outage_began is None:
            if elapsed >= window[0]:
                self._outage_began = elapsed
                self._answers_before_outage = answers
                self._emulator.set_faults("session", error_rate=1.0)  # nobody gets a session
                self.sessions_ended += self._emulator.expire_sessions()
            return
        self.batches_answered_in_outage = answers - self._answers_before_outage
        if (
            elapsed >= self._outage_began + window[1]
            and self.batches_answered_in_outage >= OUTAGE_MIN_ANSWERS
        ):
            self._emulator.set_faults("session", error_rate=0.0)
            self.outage_seconds = elapsed - self._outage_began

    def in_outage(self) -> bool:
        return self._outage_began is not None and self.outage_seconds is None

    def summary(self, runner: ForwarderRunner) -> dict[str, Any]:
        return {
            "forwarder_kills": runner.kills,
            "sessions_ended_by_stripe": self.sessions_ended,
            "refresher_outage": self._options.refresher_outage,
            "refresher_outage_seconds": self.outage_seconds,
            "batches_answered_in_outage": self.batches_answered_in_outage,
            "rate_limit_phase": self._options.rate_limit_phase,
            "rate_limit_began": self.rate_limit_began,
            "stream_calls_answered_429": self._emulator.stats()["requests"]
            .get("stream", {})
            .get("429", 0),
            "ssm_calls_throttled": self._proxy.stats["throttled"] if self._proxy else 0,
            "ssm_calls_passed": self._proxy.stats["passed"] if self._proxy else 0,
        }


def _loop(
    stack: Stack,
    options: Options,
    emulator: EmulatorClient,
    sqs: SQSClient,
    runner: ForwarderRunner,
    refresh: Callable[[], dict[str, Any]],
    chaos: Chaos,
    routes: ErrorReportRoutes,
) -> Report:
    _say(options, f"session ready: {refresh()}")
    began = datetime.now(UTC)
    expected = Expected()
    stop = threading.Event()
    failures: list[BaseException] = []

    def producer() -> None:
        try:
            produce(stack, options, expected, stop)
        except BaseException as error:  # reported by the main thread
            failures.append(error)

    mapping = EventSourceMapping(sqs, stack, runner.invoke, options.visibility_timeout)
    started = time.monotonic()
    thread = threading.Thread(target=producer, name="producer", daemon=True)
    thread.start()
    last_refresh = last_progress = started
    try:
        while time.monotonic() - started < options.timeout:
            handed = mapping.poll()
            now = time.monotonic()
            chaos.tick(now - started, mapping.stats)
            every = min(options.refresh_every, options.session_ttl / 3)
            if now - last_refresh >= every and not chaos.in_outage():
                with contextlib.suppress(RuntimeError):  # a failed run: the next one retries
                    refresh()  # the schedule (every 5 minutes in the template)
                last_refresh = now
            if now - last_progress >= 2:
                _progress(options, expected, mapping, sqs, stack, now - started)
                last_progress = now
            if failures:
                raise RuntimeError(f"the producer failed: {failures[0]}")
            if not thread.is_alive() and handed == 0 and sum(_depth(sqs, stack.queue_url)) == 0:
                break
        else:
            _say(options, "timed out before the queue drained")
    finally:
        stop.set()
        thread.join(timeout=30)
    seconds = time.monotonic() - started
    _say(options, "closing Stripe's validation windows; waiting for its error reports")
    received = routes.settle()
    dead = read_dead_letters(sqs, stack.dlq_url)
    report = account(
        expected,
        emulator,
        dead,
        seconds,
        mapping.stats,
        duplicate_letters=dead.duplicates,
        stripe_letters=dead.stripe,
        received=received,
    )
    _say(options, "reconciling the delivery ledger with Stripe's meter event summaries")
    region = stack.env["AWS_REGION"]
    report.ledger = reconcile_run(
        stack.moto_url, region, stack.emulator_url, began, datetime.now(UTC), KNOWN_CUSTOMERS
    )
    report.unknown_bodies = unknown_bodies(stack.moto_url, region, emulator, dead.stripe, began)
    return report


def _progress(
    options: Options,
    expected: Expected,
    mapping: EventSourceMapping,
    sqs: SQSClient,
    stack: Stack,
    elapsed: float,
) -> None:
    visible, in_flight = _depth(sqs, stack.queue_url)
    _say(
        options,
        f"{elapsed:6.1f}s  "
        f"produced {expected.produced:>7}/{options.events}  "
        f"records handled {mapping.stats.records:>6}  "
        f"invocations {mapping.stats.invocations:>4}  "
        f"queue {visible} visible, {in_flight} in flight",
    )


def _say(options: Options, text: str) -> None:
    if not options.quiet:
        print(text, flush=True)


def publish(report: Report, *, as_json: bool) -> int:
    """Print the report (its JSON last, when asked); the exit status says whether it is OK."""
    print(report.render())
    if as_json:
        print(json.dumps(report.to_json()))
    return 0 if report.ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000, help="events to produce")
    parser.add_argument(
        "--invalid-share", type=float, default=0.02, help="share of invalid events (0 to 1)"
    )
    parser.add_argument(
        "--envelope-size",
        type=int,
        default=20,
        help="events per SQS message (1: single-event messages)",
    )
    parser.add_argument("--batch-size", type=int, help="records per invocation (template default)")
    parser.add_argument("--window", type=float, help="batching window, s (template default)")
    parser.add_argument(
        "--visibility-timeout",
        type=int,
        default=5,
        help="s before a message to retry is visible again",
    )
    parser.add_argument("--max-receive-count", type=int, help="redrive after this many receives")
    parser.add_argument(
        "--faults",
        type=json.loads,
        default={},
        help='emulator faults as JSON, e.g. \'{"stream": {"error_rate": 0.05}}\'',
    )
    parser.add_argument("--session-ttl", type=float, default=900.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=600.0, help="give up after this long")
    parser.add_argument(
        "--error-reports",
        choices=ROUTES,
        default=WEBHOOK,
        help="how Stripe's error reports reach ErrorReportsFunction (default webhook)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON too")
    args = parser.parse_args(argv)
    options = Options(
        events=args.events,
        invalid_share=args.invalid_share,
        envelope_size=args.envelope_size,
        batch_size=args.batch_size,
        window=args.window,
        visibility_timeout=args.visibility_timeout,
        max_receive_count=args.max_receive_count,
        seed=args.seed,
        timeout=args.timeout,
        faults=args.faults,
        session_ttl=args.session_ttl,
        error_reports=args.error_reports,
    )
    return publish(run(options), as_json=args.json)


if __name__ == "__main__":
    sys.exit(main())
