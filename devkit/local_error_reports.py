"""Stripe's error reports in `make run` and `make chaos`: the loop closed as it is deployed.

Stripe (the emulator) takes the events it will reject later, then reports them per meter and
validation window in thin events, with a few samples. ErrorReportsFunction gets them as
template.yaml wires it, run by the local Lambda endpoint of the run:
- `webhook`: the emulator posts each event, signed, to a local Function URL
  (devkit.function_url), and the function checks the signature with the signing secret it
  reads from Secrets Manager (moto), as StripeWebhookEndpoint deploys it;
- `eventbridge`: the emulator puts each event on a bus in moto as Stripe's partner source does;
  a rule with the template's pattern (StripeErrorReportsRule) sends it to a queue standing for
  its target, and the function is handed each event as Lambda's asynchronous invocation would
  (tried 1 + the template's MaximumRetryAttempts times, then given up: the function's DLQ);
- `both`: the two at once (each Stripe event then arrives twice, and is written once).

At the end of a run, `ErrorReportRoutes.settle` closes the emulator's open windows and waits
until every report has reached the function; `reconcile` then holds the letters the function
wrote against Stripe's reports: every sample has its letter, with Stripe's code; what a report
counts beyond its samples is "reported by Stripe without a sample"; letters + unsampled equal
each report's error_count per code, which equal what Stripe rejected and what the function
counted. Names hold a "." (or a "_" for queues), which no deployed stack's names can.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Self
from urllib.parse import parse_qs, urlsplit

import boto3

from devkit.emulator.client import EmulatorClient
from devkit.function_url import FunctionUrl, invoke_function
from devkit.harness import load_template
from meter_relay.dead_letter import (
    ATTR_ERROR_CODE,
    ATTR_IDENTIFIER,
    ATTR_REPORTED_BY,
    ATTR_STRIPE_EVENT_ID,
    ATTR_VALIDATION_END,
    ATTR_VALIDATION_START,
)
from meter_relay.error_reports import REPORT_TYPES, REPORTED_BY_STRIPE

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_sqs.type_defs import MessageTypeDef

FUNCTION = "ErrorReportsFunction"
TABLE = "meter-relay.local-error-reports"
WEBHOOK_SECRET_NAME = "meter-relay.local/stripe-webhook-signing-secret"  # noqa: S105 (a name)
BUS = "meter-relay.local-stripe-partner-bus"
RULE = "meter-relay.local-stripe-error-reports"
RULE_TARGET_QUEUE = "meter-relay_local-stripe-error-reports-target"
PARTNER_SOURCE = "aws.partner/stripe.com/ed_test_meter_relay_local"
WEBHOOK, EVENTBRIDGE, BOTH = "webhook", "eventbridge", "both"
ROUTES = (WEBHOOK, EVENTBRIDGE, BOTH)
type Route = Literal["webhook", "eventbridge", "both"]
DELIVERY_WAIT_SECONDS = 90.0  # for the emulator's last pushes (each may start the function cold)
DRAIN_SECONDS = 90.0  # for the rule's last events to reach the function
RETRY_DELAY_SECONDS = 1  # Lambda's asynchronous retries wait minutes; a local run cannot


def uses_webhook(route: str) -> bool:
    return route in (WEBHOOK, BOTH)


def uses_eventbridge(route: str) -> bool:
    return route in (EVENTBRIDGE, BOTH)


# ----- provisioning -------------------------------------------------------------------------------
@dataclass(frozen=True)
class ErrorReportsSetup:
    """What was created for the function in moto; the signing secret only the emulator and
    Secrets Manager hold (never logged, never in a variable)."""

    route: str
    moto_url: str
    region: str
    signing_secret: str | None
    target_queue_url: str | None
    max_attempts: int  # 1 + the template's MaximumRetryAttempts (asynchronous invocation)

    def env_vars(self, emulator_url: str, secret_id: str, dlq_url: str) -> dict[str, str]:
        """The function's section of the env-vars document (sam local's format)."""
        return {
            "STRIPE_API_BASE": emulator_url,
            "STRIPE_SECRET_ID": secret_id,
            # as deployed: set only with the webhook endpoint (StripeWebhookEndpoint)
            "STRIPE_WEBHOOK_SECRET_ID": WEBHOOK_SECRET_NAME if uses_webhook(self.route) else "",
            "DEAD_LETTER_QUEUE_URL": dlq_url,
            "ERROR_REPORTS_TABLE": TABLE,
        }


def provision(template_path: Path, moto_url: str, region: str, route: str) -> ErrorReportsSetup:
    """The function's table, and its signing secret or the partner bus with the template's
    rule, in moto."""
    if route not in ROUTES:
        raise ValueError(f"error reports route {route!r}: one of {', '.join(ROUTES)}")
    resources = load_template(template_path)["Resources"]
    session = boto3.session.Session(region_name=region)
    create_table(session.client("dynamodb", endpoint_url=moto_url), resources, TABLE)
    signing_secret = target_url = None
    if uses_webhook(route):
        signing_secret = new_signing_secret()
        session.client("secretsmanager", endpoint_url=moto_url).create_secret(
            Name=WEBHOOK_SECRET_NAME, SecretString=signing_secret
        )
    if uses_eventbridge(route):
        target_url = _partner_bus(session, moto_url, resources["StripeErrorReportsRule"])
    config = resources[FUNCTION]["Properties"]["EventInvokeConfig"]
    return ErrorReportsSetup(
        route,
        moto_url,
        region,
        signing_secret,
        target_url,
        1 + int(config["MaximumRetryAttempts"]),
    )


def create_table(dynamodb: Any, resources: Mapping[str, Any], name: str) -> None:
    """The function's table (Powertools idempotency records) as the template declares it."""
    table = resources["ErrorReportsTable"]["Properties"]
    dynamodb.create_table(
        TableName=name,
        KeySchema=table["KeySchema"],
        AttributeDefinitions=table["AttributeDefinitions"],
        BillingMode=table["BillingMode"],
    )
    dynamodb.update_time_to_live(
        TableName=name, TimeToLiveSpecification=table["TimeToLiveSpecification"]
    )


def new_signing_secret() -> str:
    """A webhook endpoint's signing secret, as Stripe makes them (whsec_...)."""
    return "whsec_" + secrets.token_hex(24)


def _partner_bus(session: boto3.session.Session, moto_url: str, rule: dict[str, Any]) -> str:
    """The bus, the template's rule on it, and a queue standing for the rule's target (moto
    cannot invoke a function): the URL of that queue."""
    events = session.client("events", endpoint_url=moto_url)
    sqs = session.client("sqs", endpoint_url=moto_url)
    events.create_event_bus(Name=BUS)
    queue_url = sqs.create_queue(QueueName=RULE_TARGET_QUEUE)["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])
    properties = rule["Properties"]
    events.put_rule(
        Name=RULE,
        EventBusName=BUS,
        EventPattern=json.dumps(properties["EventPattern"]),
        State=properties["State"],
    )
    events.put_targets(
        Rule=RULE,
        EventBusName=BUS,
        Targets=[{"Id": FUNCTION, "Arn": queue_arn["Attributes"]["QueueArn"]}],
    )
    return queue_url


# ----- delivery -----------------------------------------------------------------------------------
@dataclass
class Received:
    """What reached the function: its outcome per Stripe event, and what it never got."""

    route: str
    outcomes: dict[str, dict[str, Any]] = field(default_factory=dict)  # Stripe event id ->
    refused: int = 0  # answers that asked the sender to try again (non-2xx, a failed run)
    given_up: list[str] = field(default_factory=list)  # deliveries that failed for good
    pushes: Counter[str] = field(default_factory=Counter)  # the emulator's, by status
    duplicates: int = 0  # deliveries of an event processed already: nothing written again

    def take(self, outcome: Any) -> None:
        """A function's answer: an outcome of a Stripe event (processed or a duplicate)."""
        if isinstance(outcome, dict) and outcome.get("event_id") and "counts" in outcome:
            self.outcomes.setdefault(str(outcome["event_id"]), outcome)
            self.duplicates += outcome.get("status") == "duplicate"

    def counted(self) -> Counter[str]:
        """The function's counts per code (its StripeRejectedEventsByCode), once per event."""
        total: Counter[str] = Counter()
        for outcome in self.outcomes.values():
            total.update({str(c): int(n) for c, n in (outcome.get("counts") or {}).items()})
        return total


class RuleTarget:
    """The rule's target: each event the rule put in the stand-in queue is handed to the
    function, tried `max_attempts` times in all before it is given up, as Lambda invokes a
    function asynchronously (then the template sends it to StripeEventsUndeliveredQueue)."""

    def __init__(
        self,
        sqs: SQSClient,
        queue_url: str,
        invoke: Callable[[dict[str, Any]], tuple[Any, bool]],
        max_attempts: int,
        received: Received,
        lock: threading.Lock,
    ) -> None:
        self._sqs = sqs
        self._queue_url = queue_url
        self._invoke = invoke
        self._max_attempts = max_attempts
        self._received = received
        self._lock = lock
        self._tries: Counter[str] = Counter()
        self._stop = threading.Event()
        self._busy = False
        self._thread = threading.Thread(target=self._run, name="rule-target", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def _run(self) -> None:
        while not self._stop.is_set():
            messages = self._sqs.receive_message(
                QueueUrl=self._queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1
            ).get("Messages", [])
            self._busy = bool(messages)
            for message in messages:
                self._hand_over(message)
            self._busy = False

    def _hand_over(self, message: MessageTypeDef) -> None:
        event = json.loads(message["Body"])
        result, failed = self._invoke(event)
        handle = message["ReceiptHandle"]
        with self._lock:
            if not failed:
                self._received.take(result)
            else:
                self._received.refused += 1
                self._tries[message["MessageId"]] += 1
                if self._tries[message["MessageId"]] < self._max_attempts:
                    self._sqs.change_message_visibility(
                        QueueUrl=self._queue_url,
                        ReceiptHandle=handle,
                        VisibilityTimeout=RETRY_DELAY_SECONDS,
                    )
                    return
                self._received.given_up.append(str(event.get("detail", {}).get("id", "?")))
        self._sqs.delete_message(QueueUrl=self._queue_url, ReceiptHandle=handle)

    def drained(self) -> bool:
        """Nothing left in the queue, visible or not, and no event being handed over."""
        attributes = self._sqs.get_queue_attributes(
            QueueUrl=self._queue_url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        waiting = sum(int(v) for v in attributes.values())
        return waiting == 0 and not self._busy


class ErrorReportRoutes:
    """The emulator's event destinations, wired to the function: `with ErrorReportRoutes(...)`.

    `lambda_client` reaches the local Lambda endpoint that runs the function.
    """

    def __init__(self, setup: ErrorReportsSetup, emulator: EmulatorClient, lambda_client: Any):
        self.setup = setup
        self._emulator = emulator
        self._lock = threading.Lock()
        self.received = Received(setup.route)
        self._url: FunctionUrl | None = None
        self._target: RuleTarget | None = None

        def invoke(event: dict[str, Any]) -> tuple[Any, bool]:
            return invoke_function(lambda_client, FUNCTION, event)

        self._invoke = invoke
        if uses_webhook(setup.route):
            self._url = FunctionUrl(lambda_client, FUNCTION)
        if uses_eventbridge(setup.route):
            assert setup.target_queue_url is not None
            sqs = boto3.session.Session(region_name=setup.region).client(
                "sqs", endpoint_url=setup.moto_url
            )
            self._target = RuleTarget(
                sqs, setup.target_queue_url, invoke, setup.max_attempts, self.received, self._lock
            )

    def __enter__(self) -> Self:
        if self._url is not None:
            self._url.__enter__()
            assert self.setup.signing_secret is not None
            self._emulator.set_webhooks((self._url.url, self.setup.signing_secret))
        if self._target is not None:
            self._target.start()
            self._emulator.set_eventbridge(
                BUS,
                endpoint_url=self.setup.moto_url,
                region=self.setup.region,
                source=PARTNER_SOURCE,
            )
        return self

    def __exit__(self, *exc: object) -> None:
        self._emulator.configure(webhooks=[], eventbridge=None)
        if self._target is not None:
            self._target.stop()
        if self._url is not None:
            self._url.__exit__()

    def settle(self) -> Received:
        """Close the emulator's open validation windows (their reports are created and
        pushed), wait until every push is delivered or failed for good and every event on
        the bus has reached the function; what the function received."""
        self._emulator.close_error_windows()
        # a push still pending at the end is counted by collect(): the function did not get it
        with contextlib.suppress(TimeoutError):
            self._emulator.wait_for_deliveries(DELIVERY_WAIT_SECONDS)
        deadline = time.monotonic() + DRAIN_SECONDS
        while self._target is not None and not self._target.drained():
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)
        return self.collect()

    def collect(self) -> Received:
        """What the function received: its answers, and the emulator's pushes by status."""
        pushes = self._emulator.deliveries()["data"]
        with self._lock:
            received = Received(
                self.received.route,
                dict(self.received.outcomes),
                self.received.refused,
                list(self.received.given_up),
                Counter(str(p["status"]) for p in pushes),
                self.received.duplicates,
            )
        for answer in self._url.answers() if self._url is not None else []:
            if 200 <= answer.status < 300:
                received.take(answer.json())
            else:
                received.refused += 1
        failed = [p["event"] for p in pushes if p["status"] != "delivered"]
        received.given_up += [f"{event} (push not delivered)" for event in failed]
        return received


# ----- letters and reports ------------------------------------------------------------------------
@dataclass(frozen=True)
class StripeLetter:
    """A letter ErrorReportsFunction wrote: one sample of one Stripe report."""

    identifier: str
    code: str
    stripe_event: str
    body_known: bool
    validation_start: str = ""
    validation_end: str = ""


def stripe_letter(message: MessageTypeDef) -> StripeLetter | None:
    """The letter as one of Stripe's reports' samples; None for any other letter."""
    attributes = {
        name: value.get("StringValue", "")
        for name, value in message.get("MessageAttributes", {}).items()
    }
    if ATTR_REPORTED_BY not in attributes:
        return None
    return StripeLetter(
        identifier=attributes.get(ATTR_IDENTIFIER, ""),
        code=attributes.get(ATTR_ERROR_CODE, ""),
        stripe_event=attributes.get(ATTR_STRIPE_EVENT_ID, ""),
        body_known=attributes[ATTR_REPORTED_BY] == REPORTED_BY_STRIPE,
        validation_start=attributes.get(ATTR_VALIDATION_START, ""),
        validation_end=attributes.get(ATTR_VALIDATION_END, ""),
    )


def stripe_reports(emulator: EmulatorClient) -> list[dict[str, Any]]:
    """Every error report Stripe created (GET /v2/core/events, page by page, with data)."""
    found: list[dict[str, Any]] = []
    page = emulator.list_events(types=list(REPORT_TYPES), limit=100)
    while True:
        found += page["data"]
        following = page.get("next_page_url")
        if not following:
            return found
        token = parse_qs(urlsplit(following).query)["page"][0]
        page = emulator.list_events(page=token)


def _samples(report: Mapping[str, Any]) -> Iterable[tuple[str, int, list[str]]]:
    """(code, error_count, sampled identifiers) per error type of a report."""
    for error_type in report["data"]["reason"]["error_types"]:
        identifiers = [s["request"]["identifier"] for s in error_type["sample_errors"]]
        yield error_type["code"], int(error_type["error_count"]), identifiers


@dataclass
class StripeReports:
    """Stripe's error reports held against the letters in the DLQ and the function's counts."""

    reports: int
    totals: Counter[str]  # the reports' error_count, per code: Stripe's totals
    rejected: Counter[str]  # what Stripe rejected, per code (its errors, the emulator's own)
    letters: Counter[str]  # letters of a sample, per code
    unsampled: Counter[str]  # counted by a report beyond its samples, per code
    missing: list[str]  # samples with no letter
    repeated_letters: int  # letters of a sample written again (or of no sample)
    bodies_unknown: int
    letter_codes: dict[str, str]  # identifier -> Stripe's code, from the letters
    sampled: set[str]  # identifiers a report names as a sample
    received: Received | None = None  # None: the function's side was not watched

    @property
    def function_counted(self) -> Counter[str]:
        return self.received.counted() if self.received is not None else Counter()

    @property
    def problems(self) -> list[str]:
        found = []
        if self.missing:
            found.append(f"{len(self.missing)} samples of Stripe's reports have no letter")
        for code in sorted(set(self.totals) | set(self.letters) | set(self.unsampled)):
            if self.letters[code] + self.unsampled[code] != self.totals[code]:
                found.append(
                    f"{code}: {self.letters[code]} letters + {self.unsampled[code]} without a "
                    f"sample, Stripe's reports count {self.totals[code]}"
                )
        if +self.rejected != +self.totals:
            found.append(
                f"Stripe rejected {dict(self.rejected)}, its reports count {dict(self.totals)}"
            )
        if self.received is not None:
            if +self.function_counted != +self.totals:
                found.append(
                    f"the function counted {dict(self.function_counted)} of Stripe's "
                    f"{dict(self.totals)}"
                )
            if self.received.given_up:
                found.append(f"never reached the function: {self.received.given_up[:5]}")
        return found

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        received = self.received
        return {
            "route": received.route if received else None,
            "reports": self.reports,
            "processed_by_function": len(received.outcomes) if received else None,
            "stripe_totals": dict(self.totals),
            "stripe_rejected": dict(self.rejected),
            "letters": dict(self.letters),
            "without_sample": dict(self.unsampled),
            "function_counted": dict(self.function_counted) if received else None,
            "missing_letters": len(self.missing),
            "repeated_letters": self.repeated_letters,
            "bodies_unknown": self.bodies_unknown,
            "deliveries": dict(received.pushes) if received else {},
            "answers_to_retry": received.refused if received else 0,
            "duplicate_deliveries": received.duplicates if received else 0,
            "ok": self.ok,
        }

    def render(self) -> list[str]:
        """The report's lines about Stripe's reports."""
        received = self.received
        how = (
            f"{received.route}; {len(received.outcomes)} processed by the function"
            if received is not None
            else "the function's side not watched"
        )
        lines = [f"  Stripe's error reports    {self.reports:>8}  ({how})"]
        for code in sorted(set(self.totals) | set(self.rejected)):
            # rejections, not events: an event sent twice (a retry) is rejected twice
            line = (
                f"    {code}: {self.totals[code]} rejections counted = {self.letters[code]} "
                f"with a letter + {self.unsampled[code]} without a sample"
            )
            if received is not None:
                line += f"; the function counted {self.function_counted[code]}"
            lines.append(line + f"; Stripe rejected {self.rejected[code]}")
        if received is not None:
            pushes = ", ".join(f"{n} {status}" for status, n in sorted(received.pushes.items()))
            lines.append(
                f"    Stripe's pushes: {pushes or 'none'}; {received.refused} answered "
                f"'try again' (retried); {received.duplicates} repeated (written once)"
            )
        if self.repeated_letters:
            lines.append(f"    (and {self.repeated_letters} repeated letters of these)")
        lines += [f"    problem: {problem}" for problem in self.problems]
        if self.missing:
            lines.append(f"    first samples without a letter: {self.missing[:5]}")
        return lines


def reconcile(
    reports: Sequence[Mapping[str, Any]],
    rejected: Iterable[Mapping[str, Any]],
    letters: Sequence[StripeLetter],
    received: Received | None,
) -> StripeReports:
    """Stripe's reports against the letters: each sample has its letter (same Stripe event,
    identifier and code); the rest of each report's count is without a sample."""
    totals: Counter[str] = Counter()
    unsampled: Counter[str] = Counter()
    samples: Counter[tuple[str, str, str]] = Counter()
    for report in reports:
        for code, count, identifiers in _samples(report):
            totals[code] += count
            unsampled[code] += count - len(identifiers)
            samples.update((report["id"], identifier, code) for identifier in identifiers)
    written = Counter((x.stripe_event, x.identifier, x.code) for x in letters)
    matched = samples & written
    missing = samples - matched
    return StripeReports(
        reports=len(reports),
        totals=totals,
        rejected=Counter(str(error["code"]) for error in rejected),
        letters=_by_code(matched),
        unsampled=unsampled,
        missing=sorted(f"{event}: {identifier} ({code})" for event, identifier, code in missing),
        repeated_letters=sum((written - matched).values()),
        bodies_unknown=sum(1 for x in letters if not x.body_known),
        letter_codes={x.identifier: x.code for x in letters},
        sampled={identifier for _, identifier, _ in samples},
        received=received,
    )


def _by_code(keys: Counter[tuple[str, str, str]]) -> Counter[str]:
    found: Counter[str] = Counter()
    for (_, _, code), n in keys.items():
        found[code] += n
    return found
