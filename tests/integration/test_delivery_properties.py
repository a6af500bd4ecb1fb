"""Properties of chunking, delivery and settling, against the Stripe emulator (and moto).

For generated lists of events (0 to 450, identifiers repeating across the list, a few that
Stripe refuses), delivered through StreamDelivery built as the forwarder builds it:
- no event is lost or sent twice across calls: each event is in exactly one call that Stripe
  accepted, or reported for retry, or rejected;
- every call carries 1 to 100 events;
- the report's positions partition the input (delivered, rejected, retry);
- with faults injected, what is reported for retry was never accepted, or, when Stripe took a
  call and then failed (an ambiguous 500), is deduplicated when it is sent again.
Through the forwarder's handler, for random mixes of single events and envelopes: a message is
in batchItemFailures if and only if one of its events still has to be retried, its invalid
events are dead-lettered only once it has nothing left to retry, and a redelivery settles it;
and when Stripe refuses single events of a call (400), exactly those are dead-lettered, even
when another event of the same message carries the same identifier.

Each example gets its own identifiers (a prefix), so the emulator is not reset between them.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import event as label
from hypothesis import strategies as st

from devkit.harness import Invocation, LambdaContext
from meter_relay.config import ForwarderConfig
from meter_relay.dead_letter import DeadLetterQueue
from meter_relay.delivery import MAX_EVENTS_PER_CALL, DeliveryReport, StreamDelivery
from meter_relay.events import MeterEvent, format_timestamp
from meter_relay.forwarder import Forwarder
from meter_relay.observability import metrics
from meter_relay.session import SessionStore, SessionTokenSource
from meter_relay.stripe_client import Kind, MeterEventStream, StripeAnswer, StripeHttp
from tests.plugins.relay import API_VERSION, Relay

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext as PowertoolsContext

pytestmark = pytest.mark.integration

PROPERTIES = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
MAX_EVENTS = 450
TOO_LONG = 101  # Stripe takes identifiers of up to 100 characters: the stream answers 400
_examples = itertools.count()


def example_prefix(kind: str) -> str:
    """Identifiers unique to one example, so the emulator need not be reset between them."""
    return f"{kind}{next(_examples):04d}-"


# ----- StreamDelivery, built as Forwarder.from_environment builds it --------------------------


def sent(body: bytes) -> list[dict[str, Any]]:
    """The events of a stream call's body, as Stripe reads them."""
    events: list[dict[str, Any]] = json.loads(body)["events"]
    return events


class RecordingStream(MeterEventStream):
    """The stream client, noting each call's identifiers and how Stripe answered."""

    def __init__(self, http: StripeHttp) -> None:
        super().__init__(http)
        self.calls: list[tuple[list[str], Kind]] = []
        self._lock = threading.Lock()

    def post(self, token: str, body: bytes, timeout: float) -> StripeAnswer:
        answer = super().post(token, body, timeout)
        with self._lock:
            self.calls.append(([event["identifier"] for event in sent(body)], answer.kind))
        return answer

    def take(self) -> list[tuple[list[str], Kind]]:
        with self._lock:
            calls, self.calls = self.calls, []
        return calls


class RefusingStream(RecordingStream):
    """As Stripe answers a call holding an event it refuses though the forwarder took it (the
    emulator has no such case): 400 for the whole call, naming that event."""

    MARK = "refused-by-stripe"

    def post(self, token: str, body: bytes, timeout: float) -> StripeAnswer:
        events = sent(body)
        refused = [n for n, e in enumerate(events) if e["payload"].get("region") == self.MARK]
        if not refused:
            return super().post(token, body, timeout)
        error = {
            "type": "invalid_request_error",
            "code": "parameter_invalid",
            "message": f"Invalid events[{refused[0]}].payload.region.",
            "param": f"events[{refused[0]}].payload.region",
        }
        answer = StripeAnswer(
            Kind.REJECTED, 400, error["code"], error["message"], None, {"error": error}
        )
        with self._lock:
            self.calls.append(([event["identifier"] for event in events], answer.kind))
        return answer


@dataclass
class Stack:
    relay: Relay
    stream: RecordingStream
    delivery: StreamDelivery
    executor: ThreadPoolExecutor
    forwarder: Forwarder

    def __repr__(self) -> str:
        return f"Stack({type(self.stream).__name__})"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))  # Hypothesis would print every field of a dataclass

    def deliver(self, events: list[MeterEvent]) -> DeliveryReport[int]:
        self.stream.take()  # nothing left over from an example that failed
        return self.delivery.deliver(events, lambda: 300.0)

    def handle(self, sqs_event: dict[str, Any]) -> set[str]:
        """The forwarder's handler, in process: the failed message ids."""
        context = LambdaContext(
            function_name="ForwarderFunction",
            function_version="$LATEST",
            invoked_function_arn="arn:aws:lambda:us-east-1:123456789012:function:forwarder",
            memory_limit_in_mb=512,
            aws_request_id=str(uuid.uuid4()),
            log_group_name="/aws/lambda/forwarder",
            log_stream_name="test",
            deadline=time.monotonic() + 60,
        )
        try:
            response = self.forwarder.handle(sqs_event, cast("PowertoolsContext", context))
        finally:
            metrics.clear_metrics()  # published by the handler's decorator in Lambda
        return {str(item["itemIdentifier"]) for item in response["batchItemFailures"]}


def build_stack(
    relay: Relay, max_attempts: int, stream_type: type[RecordingStream] = RecordingStream
) -> Stack:
    """What Forwarder.from_environment builds, with a recording (or refusing) stream client."""
    config = ForwarderConfig.from_env(
        {
            "STRIPE_MODE": "test",
            "STRIPE_METER_EVENTS_BASE": relay.emulator_url,
            "STRIPE_API_VERSION": API_VERSION,
            "SESSION_TOKEN_PARAMETER": relay.parameter,
            "DEAD_LETTER_QUEUE_URL": relay.dlq_url,
            "STREAM_CONCURRENCY": "4",
            "MAX_ATTEMPTS": str(max_attempts),
            "RETRY_BASE_DELAY_MS": "1",
            "RETRY_MAX_DELAY_MS": "5",
            "REQUEST_TIMEOUT_SECONDS": "5",
        }
    )
    tokens = SessionTokenSource(
        SessionStore(config.session_parameter, relay.aws.client("ssm")),
        None,
        config.token_margin,
        mode=config.mode,
    )
    http = StripeHttp(
        config.meter_events_base, config.api_version, pool_size=config.stream_concurrency
    )
    stream = stream_type(http)
    executor = ThreadPoolExecutor(config.stream_concurrency, thread_name_prefix="stream")
    delivery = StreamDelivery(stream, tokens, config.retry, executor)
    dead_letters = DeadLetterQueue(config.dead_letter_queue_url, relay.aws.client("sqs"))
    forwarder = Forwarder(config, delivery, dead_letters, tokens)
    return Stack(relay, stream, delivery, executor, forwarder)


@pytest.fixture
def stack(relay: Relay, request: pytest.FixtureRequest) -> Iterator[Stack]:
    relay.put_session()
    built = build_stack(relay, getattr(request, "param", 3))
    yield built
    built.executor.shutdown()
    built.stream.http.close()


@pytest.fixture
def refusing_stack(relay: Relay) -> Iterator[Stack]:
    relay.put_session()
    built = build_stack(relay, 3, RefusingStream)
    yield built
    built.executor.shutdown()
    built.stream.http.close()


@dataclass
class Generated:
    events: list[MeterEvent]
    bad: set[int] = field(default_factory=set)  # positions Stripe refuses (400)

    def __repr__(self) -> str:
        ids = Counter(event.identifier for event in self.events)
        return (
            f"Generated({len(self.events)} events, {len(ids)} identifiers,"
            f" most repeated {ids.most_common(1)}, bad at {sorted(self.bad)})"
        )

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))  # Hypothesis would print every field of a dataclass

    def identifier(self, position: int) -> str:
        return self.events[position].identifier

    def good_counts(self, positions: Iterable[int] | None = None) -> Counter[str]:
        chosen = range(len(self.events)) if positions is None else positions
        return Counter(self.identifier(p) for p in chosen if p not in self.bad)


@st.composite
def event_lists(draw: st.DrawFn) -> Generated:
    """0 to 450 events; identifiers often repeat across the list; a few too long for Stripe."""
    prefix = example_prefix("d")
    size = draw(st.integers(0, MAX_EVENTS))
    pool = draw(st.sampled_from([size or 1, max(1, size // 2), 5]))  # fewer ids: more repeats
    rng = draw(st.randoms(use_true_random=False))
    bad_share = draw(st.sampled_from([0.0, 0.0, 0.02, 0.1]))
    timestamp = format_timestamp(datetime.now(UTC))
    events: list[MeterEvent] = []
    bad: set[int] = set()
    for position in range(size):
        if rng.random() < bad_share:
            identifier = f"{prefix}bad-{position}-".ljust(TOO_LONG, "x")
            bad.add(position)
        else:
            identifier = f"{prefix}{rng.randrange(pool)}"
        payload = {"stripe_customer_id": "cus_prop", "value": str(rng.randint(1, 9))}
        events.append(MeterEvent("api_requests", payload, identifier, timestamp))
    return Generated(events, bad)


def emulator_counts(relay: Relay, generated: Generated) -> tuple[Counter[str], Counter[str]]:
    """(received, counted) at the emulator, for this example's identifiers."""
    mine = {event.identifier for event in generated.events}
    received: Counter[str] = Counter()
    counted: Counter[str] = Counter()
    for identifier, counts in relay.emulator.identifiers().items():
        if identifier in mine:
            received[identifier] = counts["received"]
            counted[identifier] = counts["counted"]
    return received, counted


def assert_partition(report: DeliveryReport[int], size: int) -> None:
    delivered, rejected, retry = report.delivered, set(report.rejected), report.retry
    assert delivered | rejected | retry == set(range(size))
    assert not delivered & rejected
    assert not delivered & retry
    assert not rejected & retry


def assert_calls_within_limits(calls: list[tuple[list[str], Kind]]) -> None:
    sizes = [len(identifiers) for identifiers, _ in calls]
    assert all(1 <= n <= MAX_EVENTS_PER_CALL for n in sizes), sizes


def accepted_counts(calls: list[tuple[list[str], Kind]]) -> Counter[str]:
    return Counter(i for identifiers, kind in calls if kind is Kind.OK for i in identifiers)


@PROPERTIES
@given(generated=event_lists())
def test_delivery_sends_each_event_once_in_calls_of_at_most_100(
    stack: Stack, generated: Generated
) -> None:
    size = len(generated.events)
    report = stack.deliver(generated.events)
    calls = stack.stream.take()
    label(f"chunks of 100: {-(-size // MAX_EVENTS_PER_CALL)}")
    label(f"rejected by Stripe: {'some' if report.rejected else 'none'}")

    assert_partition(report, size)
    assert report.retry == set()  # no fault, time enough
    assert set(report.rejected) == generated.bad  # the 400s were split down to these alone
    for rejection in report.rejected.values():
        assert rejection.code == "parameter_invalid"
        assert rejection.param is not None
        assert rejection.param.endswith(".identifier")
    assert report.calls.calls == len(calls)
    assert_calls_within_limits(calls)
    if not generated.bad:
        assert len(calls) == -(-size // MAX_EVENTS_PER_CALL)  # nothing split, nothing resent
    # each good event in exactly one call that Stripe accepted: none lost, none sent twice
    assert accepted_counts(calls) == generated.good_counts()

    received, counted = emulator_counts(stack.relay, generated)
    assert received == generated.good_counts()  # a repeated identifier arrives each time...
    assert counted == Counter(set(generated.good_counts()))  # ...and is counted once
    assert relay_counted_twice(stack.relay, generated) == []


def relay_counted_twice(relay: Relay, generated: Generated) -> list[str]:
    mine = {event.identifier for event in generated.events}
    return [i for i in relay.emulator.counted_more_than_once() if i in mine]


@PROPERTIES
@pytest.mark.parametrize("stack", [2], indirect=True)  # a small retry budget
@given(
    generated=event_lists(),
    seed=st.integers(0, 2**16),
    ambiguous=st.booleans(),
)
def test_under_faults_nothing_is_lost_and_a_resend_counts_nothing_twice(
    stack: Stack, generated: Generated, seed: int, ambiguous: bool
) -> None:
    relay = stack.relay
    faults: dict[str, float] = {"error_rate": 0.3, "drop_rate": 0.1}
    if ambiguous:  # Stripe takes the call, then answers 500: the client cannot tell
        faults["error_after_rate"] = 0.1
    relay.emulator.set_faults("stream", seed=seed, **faults)
    try:
        report = stack.deliver(generated.events)
    finally:
        relay.emulator.configure(clear_faults=True)
    calls = stack.stream.take()
    label(f"left to retry: {'some' if report.retry else 'none'}")
    label(f"calls answered other than 200: {sum(kind is not Kind.OK for _, kind in calls) > 0}")

    assert_partition(report, len(generated.events))
    assert_calls_within_limits(calls)
    assert set(report.rejected) <= generated.bad  # only Stripe's own refusals are rejections
    assert generated.bad <= set(report.rejected) | report.retry
    # a delivered event was in exactly one accepted call; a retried one in none
    assert accepted_counts(calls) == generated.good_counts(report.delivered)
    received, counted = emulator_counts(relay, generated)
    delivered_ids = generated.good_counts(report.delivered)
    for identifier in generated.good_counts():
        if ambiguous:  # taken by a call answered 500: received, not yet known delivered
            assert received[identifier] >= delivered_ids[identifier]
        else:  # a fault before processing: what is to retry never reached Stripe
            assert received[identifier] == delivered_ids[identifier]
        assert counted[identifier] == (1 if received[identifier] else 0)

    # the queue sends the rest again (faults over): each identifier ends counted exactly once
    again = sorted(report.retry)
    second = stack.deliver([generated.events[p] for p in again])
    assert second.retry == set()
    assert {again[p] for p in second.rejected} == generated.bad & set(again)
    received, counted = emulator_counts(relay, generated)
    assert counted == Counter(set(generated.good_counts()))
    assert relay_counted_twice(relay, generated) == []
    assert not received.keys() & {generated.identifier(p) for p in generated.bad}


# ----- through the forwarder's handler: failures map to the right messages ---------------------


@dataclass
class Message:
    message_id: str
    body: dict[str, Any]
    valid: list[str]  # identifiers of its valid events
    invalid: list[tuple[int, str]]  # (event index, identifier) of its invalid events

    def __repr__(self) -> str:
        shape = f"envelope of {len(self.body['events'])}" if "events" in self.body else "single"
        invalid = [index for index, _ in self.invalid]
        return f"Message({self.message_id}, {shape}, invalid at {invalid})"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))  # Hypothesis would print every field of a dataclass


@st.composite
def batches(draw: st.DrawFn) -> list[Message]:
    """1 to 20 messages: single events and envelopes of up to 40, some events invalid. Events
    with an identifier are sometimes stamped too: a single one is then in Stripe's form, which
    the forwarder reads in its short path."""
    prefix = example_prefix("h")
    now = format_timestamp(datetime.now(UTC))
    messages: list[Message] = []
    for m in range(draw(st.integers(1, 20))):
        message_id = f"{prefix}m{m}"
        envelope = draw(st.booleans())
        size = draw(st.integers(1, 40)) if envelope else 1
        given_ids = draw(st.booleans())
        stamped = given_ids and draw(st.booleans())
        invalid_at = (
            draw(st.sets(st.integers(0, size - 1), max_size=2))
            if draw(st.integers(0, 3)) == 0
            else set()
        )
        events: list[dict[str, Any]] = []
        valid: list[str] = []
        invalid: list[tuple[int, str]] = []
        for index in range(size):
            identifier = f"{message_id}-given-{index}" if given_ids else f"{message_id}-{index}"
            value = "0" if index in invalid_at else str(index + 1)  # "0": not a positive integer
            event: dict[str, Any] = {
                "event_name": "api_requests",
                "payload": {"stripe_customer_id": "cus_prop", "value": value},
            }
            if given_ids:
                event["identifier"] = identifier
            if stamped:
                event["timestamp"] = now
            events.append(event)
            if index in invalid_at:
                invalid.append((index, identifier))
            else:
                valid.append(identifier)
        body = {"events": events} if envelope else events[0]
        messages.append(Message(message_id, body, valid, invalid))
    return messages


def failed_ids(invocation: Invocation) -> set[str]:
    assert invocation.error is None, invocation.error
    result = invocation.result
    assert isinstance(result, dict)
    assert set(result) == {"batchItemFailures"}
    ids = [item["itemIdentifier"] for item in result["batchItemFailures"]]
    assert len(ids) == len(set(ids))
    return set(ids)


def take_dead_letters(
    relay: Relay,
    code: str | None = "payload_invalid_value",
    bodies: dict[tuple[str, int], Any] | None = None,
    codes: dict[tuple[str, int], str] | None = None,
) -> dict[tuple[str, int], str]:
    """Every letter on the DLQ, removed from it: (SourceMessageId, EventIndex) -> Identifier;
    into `bodies` if given, each letter's body, decoded; each with `code`, or, when `code` is
    None, any code, put into `codes`."""
    sqs = relay.aws.client("sqs")
    found: dict[tuple[str, int], str] = {}
    while True:
        messages = sqs.receive_message(
            QueueUrl=relay.dlq_url, MaxNumberOfMessages=10, MessageAttributeNames=["All"]
        ).get("Messages", [])
        if not messages:
            return found
        for message in messages:
            attributes = {
                name: value.get("StringValue", "")
                for name, value in message.get("MessageAttributes", {}).items()
            }
            key = (attributes["SourceMessageId"], int(attributes["EventIndex"]))
            assert key not in found, f"dead-lettered twice: {key}"
            if code is not None:
                assert attributes["ErrorCode"] == code
            if codes is not None:
                codes[key] = attributes["ErrorCode"]
            found[key] = attributes["Identifier"]
            if bodies is not None:
                bodies[key] = json.loads(message["Body"])
        sqs.delete_message_batch(
            QueueUrl=relay.dlq_url,
            Entries=[
                {"Id": str(n), "ReceiptHandle": message["ReceiptHandle"]}
                for n, message in enumerate(messages)
            ],
        )


@pytest.fixture
def forwarder_relay(relay: Relay) -> Iterator[tuple[Relay, Any]]:
    relay.put_session()
    tuning = {"MAX_ATTEMPTS": "2", "RETRY_BASE_DELAY_MS": "1", "RETRY_MAX_DELAY_MS": "5"}
    with relay.forwarder(extra_env=tuning) as forwarder:
        yield relay, forwarder


@PROPERTIES
@given(messages=batches(), seed=st.integers(0, 2**16))
def test_a_message_fails_if_and_only_if_one_of_its_events_is_left_to_retry(
    forwarder_relay: tuple[Relay, Any], messages: list[Message], seed: int
) -> None:
    relay, forwarder = forwarder_relay
    take_dead_letters(relay)  # an earlier example's, had it failed before reading them
    bodies = [json.dumps(m.body) for m in messages]
    ids = [m.message_id for m in messages]
    # faults enough that, with two attempts, some calls of a batch fail and others go through
    relay.emulator.set_faults("stream", seed=seed, error_rate=0.45, drop_rate=0.15)
    try:
        first = relay.sqs_event(bodies, ids)
        failed = failed_ids(forwarder.invoke(first))
    finally:
        relay.emulator.configure(clear_faults=True)

    # Faults strike before Stripe processes a call: an event left to retry was never received.
    mine = {i for m in messages for i in m.valid}
    received = {i for i, c in relay.emulator.identifiers().items() if i in mine and c["received"]}
    share = "none" if not failed else "all" if len(failed) == len(messages) else "some"
    label(f"failed messages: {share}")
    for m in messages:
        left_to_retry = [i for i in m.valid if i not in received]
        assert (m.message_id in failed) == bool(left_to_retry), (m.message_id, left_to_retry)
    # invalid events are dead-lettered only for messages with nothing left to retry
    letters = take_dead_letters(relay)
    assert letters == {
        (m.message_id, index): identifier
        for m in messages
        if m.message_id not in failed
        for index, identifier in m.invalid
    }

    # SQS delivers the failed messages again; with Stripe well, everything settles once
    retried = [m for m in messages if m.message_id in failed]
    if retried:
        again = relay.sqs_event(
            [json.dumps(m.body) for m in retried], [m.message_id for m in retried], receive_count=2
        )
        assert failed_ids(forwarder.invoke(again)) == set()
    counted = {i: c["counted"] for i, c in relay.emulator.identifiers().items() if i in mine}
    assert counted == dict.fromkeys(mine, 1)
    later = take_dead_letters(relay)
    assert not later.keys() & letters.keys(), "dead-lettered again on redelivery"
    letters.update(later)
    assert letters == {
        (m.message_id, index): identifier for m in messages for index, identifier in m.invalid
    }


# ----- Stripe's own refusals: dead-lettered for exactly the events it refused -------------------


@st.composite
def refusal_batches(draw: st.DrawFn) -> list[tuple[str, Any, list[dict[str, Any]], set[int]]]:
    """Envelopes whose events repeat identifiers (a producer's mistake), and single events in
    Stripe's form (read by the forwarder's short path), some refused by Stripe: (message id,
    body, events, indexes refused)."""
    prefix = example_prefix("r")
    now = format_timestamp(datetime.now(UTC))
    batch = []
    for m in range(draw(st.integers(1, 6))):
        single = draw(st.booleans())
        size = 1 if single else draw(st.integers(1, 30))
        pool = draw(st.integers(1, size))
        refused = draw(st.sets(st.integers(0, size - 1), max_size=3))
        events = []
        for index in range(size):
            payload = {"stripe_customer_id": "cus_prop", "value": "1"}
            if index in refused:
                payload["region"] = RefusingStream.MARK
            identifier = f"{prefix}m{m}-{draw(st.integers(0, pool - 1))}"
            event = {"event_name": "api_requests", "payload": payload, "identifier": identifier}
            if single:
                event["timestamp"] = now
            events.append(event)
        body = events[0] if single else {"events": events}
        batch.append((f"{prefix}m{m}", body, events, refused))
    return batch


def expected_fates(events: list[dict[str, Any]], refused: set[int]) -> dict[int, str]:
    """Each event's fate in a message whose events may repeat identifiers: the first event of
    an identifier, and any later one just like it, is sent (delivered, or refused by Stripe:
    `parameter_invalid`); a later one with other contents is `duplicate_identifier_in_batch`,
    since Stripe would count only the first."""
    first: dict[str, int] = {}
    fates = {}
    for index, event in enumerate(events):
        earlier = first.setdefault(event["identifier"], index)
        if earlier != index and (earlier in refused) != (index in refused):
            fates[index] = "duplicate_identifier_in_batch"
        else:
            fates[index] = "parameter_invalid" if index in refused else "delivered"
    return fates


@PROPERTIES
@given(batch=refusal_batches())
def test_stripes_refusals_are_dead_lettered_for_exactly_the_events_refused(
    refusing_stack: Stack, batch: list[tuple[str, Any, list[dict[str, Any]], set[int]]]
) -> None:
    relay = refusing_stack.relay
    take_dead_letters(relay, None)
    sqs_event = relay.sqs_event([body for _, body, _, _ in batch], [mid for mid, *_ in batch])
    assert refusing_stack.handle(sqs_event) == set()

    bodies: dict[tuple[str, int], Any] = {}
    codes: dict[tuple[str, int], str] = {}
    letters = take_dead_letters(relay, None, bodies, codes)
    fates = {mid: expected_fates(events, refused) for mid, _, events, refused in batch}
    assert codes == {
        (mid, index): fate
        for mid, message_fates in fates.items()
        for index, fate in message_fates.items()
        if fate != "delivered"
    }
    assert letters == {
        (mid, index): events[index]["identifier"]
        for mid, _, events, _ in batch
        for index in range(len(events))
        if (mid, index) in codes
    }
    # a letter holds the event as it was sent (an envelope's, with the timestamp it was given)
    for mid, body, events, _ in batch:
        for index in range(len(events)):
            if (mid, index) not in bodies:
                continue
            letter = bodies[(mid, index)]
            if "events" in body:
                assert set(letter) - set(events[index]) == {"timestamp"}
                letter = {key: value for key, value in letter.items() if key != "timestamp"}
            assert letter == events[index]
    # every other event delivered, even one that shares its identifier with a refused one
    mine = {e["identifier"] for _, _, events, _ in batch for e in events}
    counted = {i for i, c in relay.emulator.identifiers().items() if i in mine and c["counted"]}
    assert counted == {
        events[index]["identifier"]
        for mid, _, events, _ in batch
        for index in range(len(events))
        if fates[mid][index] == "delivered"
    }
