"""The dead-letter model without AWS: reading both kinds of DLQ message, filters, fixes, the
rate limit, and how a scan gives back what it holds (against a stub SQS client).

Letters are built with the forwarder's own code (parse_message, DeadLetter), so these tests
read exactly what the forwarder writes; time is fixed (NOW, SENT), never read.
"""

from __future__ import annotations

import json
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from meter_relay import dlq
from meter_relay.dead_letter import (
    ATTR_ERROR_CODE,
    ATTR_ERROR_PARAM,
    ATTR_EVENT_INDEX,
    ATTR_FIRST_SEEN,
    ATTR_IDENTIFIER,
    ATTR_SOURCE_MESSAGE_ID,
    DeadLetter,
)
from meter_relay.dlq import (
    REDRIVEN_CODE,
    DeadLetterReader,
    DlqMessage,
    Filters,
    Fix,
    RateLimit,
    read_message,
)
from meter_relay.events import (
    Rejection,
    ValidationRules,
    derive_identifier,
    format_timestamp,
    parse_message,
)
from meter_relay.stripe_client import Kind, StripeAnswer

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
SENT = NOW - timedelta(seconds=30)
MID = "3f1c0d8e-1b2a-4c5d-9e8f-0a1b2c3d4e5f"
METER_KEYS = {"search_calls": {"customer_key": "customer", "value_key": "calls"}}
RULES = ValidationRules.from_settings(json.dumps(METER_KEYS), "positive_integer")


def millis(moment: datetime) -> str:
    return str(int(moment.timestamp() * 1000))


def sqs_message(
    body: str,
    message_id: str = "dlq-message-1",
    attributes: dict[str, Any] | None = None,
    sent: datetime = SENT,
    first_receive: datetime | None = None,
) -> Any:
    """A message as ReceiveMessage returns it (AttributeNames/MessageAttributeNames All)."""
    message: dict[str, Any] = {
        "MessageId": message_id,
        "ReceiptHandle": f"rh-{message_id}",
        "Body": body,
        "Attributes": {
            "SentTimestamp": millis(sent),
            "ApproximateReceiveCount": "1",
            "ApproximateFirstReceiveTimestamp": millis(first_receive or sent),
        },
    }
    if attributes:
        message["MessageAttributes"] = attributes
    return message


def forwarder_letters(body: str, message_id: str = MID, sent: datetime = SENT) -> list[DeadLetter]:
    """The dead letters the forwarder writes for one usage-queue message it rejects.

    The same construction as ForwardingProcessor._dead_letters, for rejections found before
    sending (the only kind the stream can give at once).
    """
    parsed = parse_message(body, message_id, sent, RULES, sent + (NOW - SENT))
    seen = format_timestamp(sent)
    if parsed.rejection is not None:
        r = parsed.rejection
        return [DeadLetter(body, r.code, r.message, message_id, seen, param=r.param)]
    return [
        DeadLetter(
            event.dead_letter_body(),
            event.rejection.code,
            event.rejection.message,
            message_id,
            seen,
            event_index=event.index,
            event_name=event.event_name,
            identifier=event.identifier,
            param=event.rejection.param,
        )
        for event in parsed.events
        if event.rejection is not None
    ]


def read_letter(letter: DeadLetter, message_id: str = "dlq-letter") -> DlqMessage:
    return read_message(
        sqs_message(letter.body, message_id, letter.attributes(), sent=NOW),
        RULES,
    )


# ----- reading the forwarder's letters ---------------------------------------------------------


def test_an_event_letter_reads_back_its_reason_identifier_index_and_customer() -> None:
    body = {
        "events": [
            {"event_name": "search_calls", "payload": {"customer": "cus_ok", "calls": "2"}},
            {"event_name": "search_calls", "payload": {"customer": "cus_x", "calls": "0"}},
        ]
    }
    (letter,) = forwarder_letters(json.dumps(body))
    message = read_letter(letter)

    assert message.code == "payload_invalid_value"
    assert "'0'" in message.error_message
    assert message.redriven is False
    assert message.source_message_id == MID
    assert message.first_seen == SENT  # FirstSeen, not when the letter was sent
    assert message.sent_at == NOW
    assert message.attributes[ATTR_EVENT_INDEX] == "1"
    assert message.attributes[ATTR_ERROR_PARAM] == "payload.calls"
    (event,) = message.events
    assert event.index == 1
    assert event.identifier == derive_identifier(MID, 1) == letter.identifier
    assert event.event_name == "search_calls"
    assert event.customer == "cus_x"  # under the meter's customer key (METER_KEYS)
    assert event.raw["identifier"] == event.identifier  # written into the body
    assert message.to_json()["identifiers"] == [event.identifier]


def test_an_event_letter_carries_its_messages_send_time_as_the_default_timestamp() -> None:
    """Else a replay would default it to the letter's own SentTimestamp (the dead-lettering)."""
    payload = {"stripe_customer_id": "cus_a", "value": "0"}
    given = "2026-06-01T11:00:00Z"
    body = {
        "events": [
            {"event_name": "api_requests", "payload": payload},
            {"event_name": "api_requests", "payload": payload, "timestamp": given},
            {"event_name": "api_requests", "payload": payload, "timestamp": None},
        ]
    }
    letters = forwarder_letters(json.dumps(body))
    timestamps = [json.loads(letter.body)["timestamp"] for letter in letters]
    assert timestamps == [format_timestamp(SENT), given, format_timestamp(SENT)]
    assert [read_letter(letter).events[0].raw["timestamp"] for letter in letters] == timestamps


def test_an_event_letter_keeps_the_producers_identifier() -> None:
    body = {
        "event_name": "api_requests",
        "identifier": "order-7",
        "payload": {"stripe_customer_id": "cus_a", "value": "-1"},
    }
    (letter,) = forwarder_letters(json.dumps(body))
    (event,) = read_letter(letter).events
    assert (event.identifier, event.index, event.customer) == ("order-7", 0, "cus_a")


def test_an_event_without_event_name_is_still_an_event_of_its_letter() -> None:
    (letter,) = forwarder_letters(json.dumps({"payload": {"value": "1"}}))
    message = read_letter(letter)
    assert message.code == "parameter_missing"
    (event,) = message.events
    assert (event.identifier, event.event_name) == (derive_identifier(MID, 0), None)


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ("this is not json", "message_not_json"),
        ("[1, 2]", "message_not_contract"),
        ('{"events": []}', "message_not_contract"),
        ('{"events": [{"event_name": "api_requests"}], "meta": 1}', "message_not_contract"),
        ('{"events": "nope"}', "message_not_contract"),
    ],
)
def test_a_message_level_letter_carries_no_event(body: str, code: str) -> None:
    (letter,) = forwarder_letters(body)
    message = read_letter(letter)
    assert (message.code, message.redriven, message.events) == (code, False, [])
    assert message.body == body  # kept exactly as the producer sent it
    assert message.source_message_id == MID


# ----- reading what SQS moved after maxReceiveCount ------------------------------------------


def test_a_redriven_envelope_derives_identifiers_exactly_as_the_forwarder() -> None:
    events = [
        {"event_name": "api_requests", "payload": {"stripe_customer_id": "cus_a", "value": "1"}},
        {
            "event_name": "api_requests",
            "identifier": "producer-1",
            "payload": {"stripe_customer_id": "cus_b", "value": "2"},
        },
        {"event_name": "search_calls", "payload": {"customer": "cus_c", "calls": "3"}},
    ]
    body = json.dumps({"events": events})
    first_receive = SENT + timedelta(seconds=2)
    message = read_message(
        sqs_message(body, MID, sent=SENT, first_receive=first_receive),
        RULES,
    )

    forwarder = parse_message(body, MID, SENT, RULES, NOW)  # what the forwarder derived
    assert [e.identifier for e in message.events] == [e.identifier for e in forwarder.events]
    assert [e.identifier for e in message.events] == [f"{MID}-0", "producer-1", f"{MID}-2"]
    assert [e.index for e in message.events] == [0, 1, 2]
    assert [e.customer for e in message.events] == ["cus_a", "cus_b", "cus_c"]
    assert message.code == REDRIVEN_CODE == "max_receive_count_exceeded"
    assert message.redriven is True
    assert message.attributes == {}
    assert message.source_message_id == MID  # SQS keeps the messageId on that move
    assert message.sent_at == SENT  # the producer's send: the forwarder's default timestamp
    assert message.first_seen == first_receive


def test_a_redriven_single_event_and_a_broken_identifier() -> None:
    single = json.dumps({"event_name": "api_requests", "payload": {}})
    (event,) = read_message(sqs_message(single, MID), RULES).events
    assert (event.identifier, event.index) == (derive_identifier(MID, 0), 0)

    broken = json.dumps({"event_name": "api_requests", "identifier": "x" * 101, "payload": {}})
    (event,) = read_message(sqs_message(broken, MID), RULES).events
    assert event.identifier is None  # the forwarder refuses it too: nothing to derive


def test_a_redriven_body_that_is_not_json_carries_no_event() -> None:
    message = read_message(sqs_message("nope", MID), RULES)
    assert (message.code, message.events) == (REDRIVEN_CODE, [])


def test_a_kept_copy_of_a_redriven_envelope_still_carries_its_events() -> None:
    """What replace() leaves after Stripe refused a redriven envelope: attributes and the
    whole envelope, identifiers written in (the copy has a new messageId)."""
    events = [
        {"event_name": "api_requests", "identifier": f"{MID}-0", "payload": {}},
        {"event_name": "nope", "identifier": f"{MID}-1", "payload": {}},
    ]
    attributes = {
        ATTR_ERROR_CODE: {"DataType": "String", "StringValue": "no_meter"},
        ATTR_SOURCE_MESSAGE_ID: {"DataType": "String", "StringValue": MID},
        ATTR_FIRST_SEEN: {"DataType": "String", "StringValue": format_timestamp(SENT)},
    }
    message = read_message(
        sqs_message(json.dumps({"events": events}), "copy-id", attributes),
        RULES,
    )
    assert message.code == "no_meter"
    assert [e.identifier for e in message.events] == [f"{MID}-0", f"{MID}-1"]


# ----- filters ----------------------------------------------------------------------------------


def dlq_message(
    code: str = "payload_invalid_value",
    event_name: str = "api_requests",
    customer: str = "cus_a",
    first_seen: datetime = SENT,
    message_id: str = "m",
) -> DlqMessage:
    body = {"event_name": event_name, "payload": {"stripe_customer_id": customer}}
    attributes = {
        ATTR_ERROR_CODE: {"DataType": "String", "StringValue": code},
        ATTR_FIRST_SEEN: {"DataType": "String", "StringValue": format_timestamp(first_seen)},
        ATTR_EVENT_INDEX: {"DataType": "Number", "StringValue": "0"},
        ATTR_IDENTIFIER: {"DataType": "String", "StringValue": f"{message_id}-0"},
    }
    return read_message(
        sqs_message(json.dumps(body), message_id, attributes),
        RULES,
    )


def test_filters_match_what_they_name() -> None:
    message = dlq_message()
    assert Filters().matches(message)
    assert Filters(codes={"payload_invalid_value", "x"}).matches(message)
    assert not Filters(codes={"no_meter"}).matches(message)
    assert Filters(event_names={"api_requests"}).matches(message)
    assert not Filters(event_names={"search_calls"}).matches(message)
    assert Filters(customers={"cus_a"}).matches(message)
    assert not Filters(customers={"cus_b"}).matches(message)
    assert Filters(since=SENT, until=SENT).matches(message)  # both bounds inclusive
    assert not Filters(since=SENT + timedelta(seconds=1)).matches(message)
    assert not Filters(until=SENT - timedelta(seconds=1)).matches(message)
    both = Filters(codes={"payload_invalid_value"}, customers={"cus_b"})
    assert not both.matches(message)  # every filter must hold


def test_filters_on_events_never_match_a_message_without_events() -> None:
    (letter,) = forwarder_letters("not json")
    message = read_letter(letter)
    assert Filters(codes={"message_not_json"}).matches(message)
    assert not Filters(event_names={"api_requests"}).matches(message)
    assert not Filters(customers={"cus_a"}).matches(message)


def test_filters_from_the_lambda_input() -> None:
    filters = Filters.from_dict(
        {
            "code": ["a", "b"],
            "event_name": "api_requests",  # a single string is one value
            "customer": ["cus_a"],
            "since": "2026-01-01T00:00:00Z",
            "until": "2026-02-01T00:00:00.000+01:00",
            "max": 5,
        }
    )
    assert filters == Filters(
        {"a", "b"},
        {"api_requests"},
        {"cus_a"},
        datetime(2026, 1, 1, tzinfo=UTC),
        datetime(2026, 1, 31, 23, tzinfo=UTC),
        5,
    )
    assert Filters.from_dict({}) == Filters()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"codes": ["a"]}, "unknown filters"),
        ({"event_names": "x", "limit": 3}, "unknown filters"),
        ({"since": "2026-01-01"}, "since must be an RFC 3339"),
        ({"until": "yesterday"}, "until must be an RFC 3339"),
        ({"since": "2026-13-01T00:00:00Z"}, "since must be an RFC 3339"),
        ({"max": "many"}, "max is a whole number above 0, not 'many'"),
        ({"max": 0}, "max is a whole number above 0, not 0"),
        ({"max": -1}, "max is a whole number above 0, not -1"),
        ({"max": 2.5}, "max is a whole number above 0"),
        ({"max": True}, "max is a whole number above 0"),
    ],
)
def test_filters_refuse_unknown_keys_and_bad_dates(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Filters.from_dict(data)


# ----- fixes ------------------------------------------------------------------------------------


def test_fix_renames_event_names_and_payload_keys_and_remaps_customers() -> None:
    fix = Fix.from_dict(
        {
            "event_names": {"search_call": "search_calls"},
            "payload_keys": {"customer_id": "customer", "n": "calls"},
            "customers": {"cus_old": "cus_new"},
        }
    )
    raw = {
        "event_name": "search_call",
        "identifier": "keep-me",
        "payload": {"customer_id": "cus_old", "n": "3", "region": "eu"},
        "timestamp": "2026-06-01T11:00:00Z",
    }
    fixed = fix.apply(raw, RULES)
    assert fixed == {
        "event_name": "search_calls",
        "identifier": "keep-me",  # never touched
        "payload": {"customer": "cus_new", "calls": "3", "region": "eu"},
        "timestamp": "2026-06-01T11:00:00Z",
    }
    assert raw["event_name"] == "search_call"  # a new dict: the DLQ's copy is unchanged
    assert raw["payload"] == {"customer_id": "cus_old", "n": "3", "region": "eu"}


def test_fix_remaps_customers_only_under_the_meters_customer_key() -> None:
    fix = Fix(customers={"cus_old": "cus_new"})
    api = {"event_name": "api_requests", "payload": {"stripe_customer_id": "cus_old"}}
    assert fix.apply(api, RULES)["payload"] == {"stripe_customer_id": "cus_new"}
    search = {"event_name": "search_calls", "payload": {"customer": "cus_old", "ref": "cus_old"}}
    assert fix.apply(search, RULES)["payload"] == {"customer": "cus_new", "ref": "cus_old"}
    other = {"event_name": "search_calls", "payload": {"stripe_customer_id": "cus_old"}}
    assert fix.apply(other, RULES)["payload"] == {"stripe_customer_id": "cus_old"}


def test_fix_leaves_what_is_not_an_event_alone() -> None:
    fix = Fix(event_names={"a": "b"})
    assert fix.apply("text", RULES) == "text"
    assert fix.apply({"event_name": "c", "payload": "x"}, RULES) == {
        "event_name": "c",
        "payload": "x",
    }
    assert Fix().empty
    assert not fix.empty


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"event_name": {"a": "b"}}, "unknown fix sections"),
        ({"event_names": ["a", "b"]}, "event_names must map"),
        ({"customers": {"cus_a": ""}}, "customers must map"),
        ({"payload_keys": {"a": 1}}, "payload_keys must map"),
    ],
)
def test_fix_refuses_what_it_cannot_apply(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Fix.from_dict(data)


def test_fix_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "fix.json"
    path.write_text(json.dumps({"event_names": {"a": "b"}}))
    assert Fix.from_file(path) == Fix(event_names={"a": "b"})
    path.write_text("[]")
    with pytest.raises(ValueError, match="must hold a JSON object"):
        Fix.from_file(path)
    path.write_text("{")
    with pytest.raises(ValueError, match="cannot read the fix file"):
        Fix.from_file(path)
    with pytest.raises(ValueError, match="cannot read the fix file"):
        Fix.from_file(tmp_path / "missing.json")


# ----- the rate limit ---------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(round(seconds, 6))
        self.now += seconds


def test_rate_limit_spaces_operations(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    monkeypatch.setattr("meter_relay.dlq.time.monotonic", clock.monotonic)
    limit = RateLimit(4, sleep=clock.sleep)
    for _ in range(3):
        limit.wait()
    assert clock.sleeps == [0.25, 0.25]
    clock.now += 10  # idle time is not saved up as a burst
    limit.wait()
    limit.wait()
    assert clock.sleeps == [0.25, 0.25, 0.25]


def test_no_rate_limit_never_sleeps() -> None:
    sleeps: list[float] = []
    limit = RateLimit(None, sleep=sleeps.append)
    for _ in range(5):
        limit.wait()
    assert sleeps == []


# ----- the scan and replace against a stub SQS client ----------------------------------------


class StubSqs:
    """Just enough of an SQS client: batches to receive, and a log of every call."""

    def __init__(self, batches: list[list[dict[str, Any]]]) -> None:
        self.batches = batches
        self.calls: list[tuple[str, Any]] = []
        self.fail_send = False
        self.fail_send_to: str | None = None
        self.send_batches = 0

    def get_queue_attributes(self, **kwargs: Any) -> dict[str, Any]:
        count = len({m["MessageId"] for batch in self.batches for m in batch})
        return {"Attributes": {"ApproximateNumberOfMessages": str(count)}}

    def receive_message(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(("receive", kwargs["VisibilityTimeout"]))
        return {"Messages": self.batches.pop(0)} if self.batches else {}

    def change_message_visibility_batch(self, **kwargs: Any) -> dict[str, Any]:
        assert len(kwargs["Entries"]) <= 10
        assert {e["VisibilityTimeout"] for e in kwargs["Entries"]} == {0}
        self.calls.append(("release", [e["ReceiptHandle"] for e in kwargs["Entries"]]))
        return {"Successful": [], "Failed": []}

    def delete_message(self, **kwargs: Any) -> None:
        self.calls.append(("delete", kwargs["ReceiptHandle"]))

    def send_message(self, **kwargs: Any) -> dict[str, Any]:
        if self.fail_send:
            raise ClientError({"Error": {"Code": "InternalError"}}, "SendMessage")
        if kwargs["QueueUrl"] == self.fail_send_to:
            raise ClientError(
                {"Error": {"Code": "AWS.SimpleQueueService.NonExistentQueue"}}, "Send"
            )
        self.calls.append(("send", kwargs))
        return {"MessageId": f"copy-{len(sends(self))}"}

    def send_message_batch(self, QueueUrl: str, Entries: list[Any]) -> dict[str, Any]:
        """Recorded as one "send" per entry, in order, as send_message records it."""
        assert len(Entries) <= 10
        self.send_batches += 1
        successful = []
        for entry in Entries:
            sent = self.send_message(
                QueueUrl=QueueUrl,
                MessageBody=entry["MessageBody"],
                MessageAttributes=entry["MessageAttributes"],
            )
            successful.append({"Id": entry["Id"], "MessageId": sent["MessageId"]})
        return {"Successful": successful, "Failed": []}

    def released(self) -> list[str]:
        return [h for name, handles in self.calls if name == "release" for h in handles]


def messages(*ids: str) -> list[dict[str, Any]]:
    body = {"event_name": "api_requests", "payload": {"stripe_customer_id": "cus_a"}}
    return [sqs_message(json.dumps(body), i) for i in ids]


DLQ_URL = "https://sqs.example/dlq"
USAGE_URL = "https://sqs.example/usage"


def reader(sqs: StubSqs) -> DeadLetterReader:
    return DeadLetterReader(sqs, DLQ_URL, RULES)  # type: ignore[arg-type]


def test_a_full_scan_gives_back_all_but_what_was_deleted() -> None:
    sqs = StubSqs([messages("a", "b"), messages("c", "a")])  # "a" comes twice
    dlq_reader = reader(sqs)
    seen = []
    with closing(dlq_reader.scan(hold=30)) as scan:
        for message in scan:
            seen.append(message.message_id)
            if message.message_id == "b":
                dlq_reader.delete(message)
    assert seen == ["a", "b", "c"]
    assert ("receive", 30) in sqs.calls
    assert sorted(sqs.released()) == ["rh-a", "rh-c"]  # "a" too, received twice


def test_a_scan_closed_early_gives_back_the_rest_of_its_batch() -> None:
    sqs = StubSqs([messages("a", "b", "c")])
    with closing(reader(sqs).scan()) as scan:
        first = next(scan)
    assert first.message_id == "a"
    assert sorted(sqs.released()) == ["rh-a", "rh-b", "rh-c"]
    assert [c for c in sqs.calls if c[0] == "receive"] == [("receive", dlq.SCAN_HOLD_SECONDS)]


def test_a_scan_interrupted_by_an_error_gives_everything_back() -> None:
    sqs = StubSqs([messages(*(f"m{n}" for n in range(12)))])

    def fail_on_the_second() -> None:
        with closing(reader(sqs).scan()) as scan:
            for message in scan:
                if message.message_id == "m1":
                    raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fail_on_the_second()
    assert sorted(sqs.released()) == sorted(f"rh-m{n}" for n in range(12))
    releases = [c for c in sqs.calls if c[0] == "release"]
    assert [len(c[1]) for c in releases] == [10, 2]  # batches of 10 at most


class FakeQueue:
    """A standard queue on a fake clock: a receive hides what it brings (oldest visible
    first) and gives it a new receipt handle; a handle that is no longer a message's current
    one changes and deletes nothing (SQS may act so on a stale handle)."""

    def __init__(self, clock: FakeClock, count: int, receive_seconds: float = 0.0) -> None:
        self.clock, self.receive_seconds = clock, receive_seconds
        self.visible_at = {f"m{n:02}": 0.0 for n in range(count)}
        self.handles: dict[str, str] = {}
        self.receives = 0
        self.stale = 0

    def get_queue_attributes(self, **kwargs: Any) -> dict[str, Any]:
        visible = sum(1 for at in self.visible_at.values() if at <= self.clock.now)
        return {"Attributes": {"ApproximateNumberOfMessages": str(visible)}}

    def receive_message(self, **kwargs: Any) -> dict[str, Any]:
        self.receives += 1
        assert self.receives < 100, "the scan does not end"
        now = self.clock.now
        taken = [i for i, at in self.visible_at.items() if at <= now][
            : kwargs["MaxNumberOfMessages"]
        ]
        found = []
        for message_id in taken:
            self.visible_at[message_id] = now + kwargs["VisibilityTimeout"]
            self.handles[message_id] = f"{message_id}#{self.receives}"
            found.append(messages(message_id)[0] | {"ReceiptHandle": self.handles[message_id]})
        self.clock.now += self.receive_seconds
        return {"Messages": found}

    def _current(self, handle: str) -> str | None:
        return next(
            (i for i, h in self.handles.items() if h == handle and i in self.visible_at), None
        )

    def change_message_visibility_batch(self, **kwargs: Any) -> dict[str, Any]:
        failed = []
        for entry in kwargs["Entries"]:
            message_id = self._current(entry["ReceiptHandle"])
            if message_id is None:
                failed.append({"Id": entry["Id"]})
            else:
                self.visible_at[message_id] = self.clock.now + entry["VisibilityTimeout"]
        return {"Failed": failed}

    def delete_message(self, **kwargs: Any) -> None:
        message_id = self._current(kwargs["ReceiptHandle"])
        if message_id is None:
            self.stale += 1
        else:
            del self.visible_at[message_id]


def test_a_scan_of_a_queue_it_cannot_read_within_one_hold_ends_after_one_pass() -> None:
    """Receiving 30 messages takes longer than the hold: what the scan saw first would show
    again and keep the receives coming; it is hidden again instead, and the pass ends."""
    clock = FakeClock()
    queue = FakeQueue(clock, 30, receive_seconds=1.0)
    dlq_reader = DeadLetterReader(queue, DLQ_URL, RULES, clock=clock.monotonic)  # type: ignore[arg-type]
    with closing(dlq_reader.scan(hold=2)) as scan:
        seen = [message.message_id for message in scan]
    assert sorted(seen) == sorted(queue.visible_at)  # each once
    assert all(at <= clock.now for at in queue.visible_at.values())  # all given back


class RepeatingSqs(StubSqs):
    """Brings the same messages on every receive, as when holds lapse as fast as it asks."""

    def __init__(self, ids: list[str], count: int) -> None:
        super().__init__([])
        self.ids, self.count, self.receives = ids, count, 0

    def get_queue_attributes(self, **kwargs: Any) -> dict[str, Any]:
        return {"Attributes": {"ApproximateNumberOfMessages": str(self.count)}}

    def receive_message(self, **kwargs: Any) -> dict[str, Any]:
        self.receives += 1
        assert self.receives < 100, "the scan does not end"
        return {"Messages": messages(*self.ids)}


@pytest.mark.parametrize(
    ("count", "receives"),
    [(2, 2), (5, 1 + dlq.SCAN_IDLE_RECEIVES)],  # the count, else a few receives, bound it
    ids=["count-reached", "count-not-reached"],
)
def test_a_scan_ends_when_only_messages_seen_already_come_back(count: int, receives: int) -> None:
    sqs = RepeatingSqs(["a", "b"], count)
    with closing(reader(sqs).scan()) as scan:
        seen = [message.message_id for message in scan]
    assert seen == ["a", "b"]
    assert sqs.receives == receives


def test_a_slow_replay_deletes_with_a_handle_that_is_still_current() -> None:
    """Each message takes 4 s and another reader receives meanwhile: a message whose hold
    lapsed would be taken by it, and the delete's handle would be stale."""
    clock = FakeClock()
    queue = FakeQueue(clock, 12)
    dlq_reader = DeadLetterReader(queue, DLQ_URL, RULES, clock=clock.monotonic)  # type: ignore[arg-type]
    seen = []
    with closing(dlq_reader.scan(hold=10)) as scan:
        for message in scan:
            seen.append(message.message_id)
            clock.now += 4
            queue.receive_message(MaxNumberOfMessages=10, VisibilityTimeout=0)  # someone else
            dlq_reader.delete(message)
    assert sorted(seen) == [f"m{n:02}" for n in range(12)]
    assert queue.stale == 0
    assert queue.visible_at == {}  # every delete took


def recent(**delta: float) -> datetime:
    """A moment that far back from the real now, to whole seconds (as SentTimestamps are)."""
    return (datetime.now(UTC) - timedelta(**delta)).replace(microsecond=0)


def api_event(value: str, **extra: Any) -> dict[str, Any]:
    payload = {"stripe_customer_id": "cus_a", "value": value}
    return {"event_name": "api_requests", "payload": payload, **extra}


def test_settle_puts_the_letters_in_before_the_message_goes() -> None:
    sqs = StubSqs([])
    dlq_reader = reader(sqs)
    sent_at = recent(hours=1)
    envelope = {"events": [api_event("1"), api_event("2", identifier="p-1", timestamp="x")]}
    message = read_message(sqs_message(json.dumps(envelope), MID, sent=sent_at), RULES)
    events = dlq.Replayer(dlq_reader, RULES).prepare(message)
    assert events[1].rejection is not None  # "x" is no timestamp
    letters = [
        dlq.rest_letter(message, events[:1], Rejection("no_meter", "HTTP 400 no_meter: no")),
        dlq.event_letter(message, events[1], events[1].rejection),
    ]
    dlq_reader.settle(message, letters)

    assert [name for name, _ in sqs.calls] == ["send", "send", "delete"]
    rest, bad = (kwargs for name, kwargs in sqs.calls if name == "send")
    attributes = {k: v["StringValue"] for k, v in rest["MessageAttributes"].items()}
    assert attributes == {
        ATTR_ERROR_CODE: "no_meter",
        "ErrorMessage": "HTTP 400 no_meter: no",
        ATTR_SOURCE_MESSAGE_ID: MID,
        ATTR_FIRST_SEEN: format_timestamp(sent_at),
        ATTR_EVENT_INDEX: "0",
        ATTR_IDENTIFIER: f"{MID}-0",
        "EventName": "api_requests",
    }
    body = json.loads(rest["MessageBody"])
    assert body["identifier"] == f"{MID}-0"  # derived from the original id
    assert body["timestamp"] == format_timestamp(sent_at)  # not the copy's send
    assert json.loads(bad["MessageBody"])["timestamp"] == "x"  # as given
    assert bad["MessageAttributes"][ATTR_ERROR_CODE]["StringValue"] == "parameter_invalid"
    again = [
        read_message(sqs_message(kwargs["MessageBody"], "copy", kwargs["MessageAttributes"]), RULES)
        for kwargs in (rest, bad)
    ]
    assert [(m.code, [e.identifier for e in m.events]) for m in again] == [
        ("no_meter", [f"{MID}-0"]),
        ("parameter_invalid", ["p-1"]),
    ]
    assert [e.index for m in again for e in m.events] == [0, 1]


def test_a_rest_of_several_events_is_one_message_with_identifiers_and_timestamps_in() -> None:
    sent_at = recent(hours=1)
    body = json.dumps({"events": [api_event("1"), api_event("2"), api_event("3")]})
    message = read_message(sqs_message(body, MID, sent=sent_at), RULES)
    events = dlq.Replayer(reader(StubSqs([])), RULES).prepare(message)
    letter = dlq.rest_letter(message, events[1:], Rejection("http_503", "HTTP 503"))
    kept = json.loads(letter.body)["events"]
    assert [(e["identifier"], e["timestamp"]) for e in kept] == [
        (f"{MID}-1", format_timestamp(sent_at)),
        (f"{MID}-2", format_timestamp(sent_at)),
    ]
    assert letter.event_index is None  # a whole message: its events are read from the body


def test_settle_deletes_nothing_when_a_letter_cannot_be_sent() -> None:
    sqs = StubSqs([])
    sqs.fail_send = True
    message = dlq_message()
    with pytest.raises(dlq.LettersNotSent, match="1 of 1 letters"):
        reader(sqs).settle(message, [dlq.rest_letter(message, [], Rejection("a", "b"))])
    assert sqs.calls == []


def test_settle_puts_many_letters_in_by_tens() -> None:
    sqs = StubSqs([])
    message = dlq_message()
    letters = [DeadLetter(f'{{"n": {n}}}', "no_meter", "no meter", MID, "") for n in range(25)]
    reader(sqs).settle(message, letters)
    assert sqs.send_batches == 3
    assert sorted(json.loads(kwargs["MessageBody"])["n"] for kwargs in sends(sqs)) == [*range(25)]
    assert [name for name, _ in sqs.calls][-1] == "delete"


def test_a_scan_does_not_take_again_the_copies_it_made() -> None:
    copy = messages("copy-1")
    sqs = StubSqs([messages("a"), copy])
    dlq_reader = reader(sqs)
    seen = []
    with closing(dlq_reader.scan()) as scan:
        for message in scan:
            seen.append(message.message_id)
            if message.message_id == "a":
                letter = DeadLetter(message.body, "no_meter", "no meter", "a", "")
                dlq_reader.settle(message, [letter])
    assert seen == ["a"]
    assert sqs.released() == ["rh-copy-1"]


# ----- valid events of a message go, the others stay, each as its own letter ---------------


def mixed_envelope() -> dict[str, Any]:
    """Values 5, -1, 6, and a 7 from 40 days ago: the second and the last cannot be sent."""
    too_old = format_timestamp(datetime.now(UTC) - timedelta(days=40))
    return {
        "events": [
            api_event("5"),
            api_event("-1"),
            api_event("6"),
            api_event("7", timestamp=too_old),
        ]
    }


def sends(sqs: StubSqs) -> list[dict[str, Any]]:
    return [kwargs for name, kwargs in sqs.calls if name == "send"]


def check_kept_letters(sqs: StubSqs, sent_at: datetime) -> None:
    """The two events that cannot be sent are letters as the forwarder writes them."""
    letters = [kw for kw in sends(sqs) if kw["QueueUrl"] == DLQ_URL]
    read = [
        read_message(sqs_message(kw["MessageBody"], f"l{n}", kw["MessageAttributes"]), RULES)
        for n, kw in enumerate(letters)
    ]
    assert [(m.code, m.attributes[ATTR_EVENT_INDEX]) for m in read] == [
        ("payload_invalid_value", "1"),
        ("timestamp_too_far_in_past", "3"),
    ]
    assert [m.events[0].identifier for m in read] == [f"{MID}-1", f"{MID}-3"]
    assert [m.source_message_id for m in read] == [MID, MID]
    # the time its producer sent it, not the letter's own send
    assert read[0].events[0].raw["timestamp"] == format_timestamp(sent_at)
    writes = [name for name, _ in sqs.calls if name != "receive"]
    assert writes[-2:] == ["send", "delete"]  # the original goes last


def test_queue_replay_sends_the_valid_events_and_keeps_each_other_as_a_letter() -> None:
    sent_at = recent(hours=2)
    sqs = StubSqs([[sqs_message(json.dumps(mixed_envelope()), MID, sent=sent_at)]])
    replayer = dlq.Replayer(reader(sqs), RULES, usage_queue_url=USAGE_URL)
    (outcome,) = replayer.replay(Filters(), "queue").outcomes

    assert (outcome.action, outcome.code) == ("partly_replayed", "payload_invalid_value")
    assert outcome.identifiers == [f"{MID}-0", f"{MID}-2"]
    assert [(e["index"], e["code"]) for e in outcome.kept_events] == [
        (1, "payload_invalid_value"),
        (3, "timestamp_too_far_in_past"),
    ]
    assert "35-day window" in outcome.kept_events[1]["detail"]
    first = sends(sqs)[0]
    assert first["QueueUrl"] == USAGE_URL  # the resend first, then the letters
    resent = json.loads(first["MessageBody"])["events"]
    assert [(e["identifier"], e["payload"]["value"]) for e in resent] == [
        (f"{MID}-0", "5"),
        (f"{MID}-2", "6"),
    ]
    assert {e["timestamp"] for e in resent} == {format_timestamp(sent_at)}
    check_kept_letters(sqs, sent_at)


def test_sync_replay_sends_the_valid_events_and_keeps_each_other_as_a_letter() -> None:
    sent_at = recent(hours=2)
    sqs = StubSqs([[sqs_message(json.dumps(mixed_envelope()), MID, sent=sent_at)]])
    api = StubApi([answer(200), answer(200)])
    replayer = dlq.Replayer(reader(sqs), RULES, api=api)  # type: ignore[arg-type]
    (outcome,) = replayer.replay(Filters(), "sync").outcomes

    assert (outcome.action, outcome.code) == ("partly_replayed", "payload_invalid_value")
    assert api.sent == [f"{MID}-0", f"{MID}-2"]
    assert len(sends(sqs)) == 2
    check_kept_letters(sqs, sent_at)


def test_nothing_leaves_the_dlq_when_a_letter_cannot_be_written() -> None:
    sqs = StubSqs([[sqs_message(json.dumps(mixed_envelope()), MID, sent=recent(hours=2))]])
    sqs.fail_send_to = DLQ_URL
    replayer = dlq.Replayer(reader(sqs), RULES, usage_queue_url=USAGE_URL)
    (outcome,) = replayer.replay(Filters(), "queue").outcomes
    assert (outcome.action, outcome.code) == ("kept", "aws_error")
    assert outcome.detail.startswith(
        "2 events were sent via queue; kept whole: LettersNotSent: 2 of 2 letters"
    )
    assert "delete" not in [name for name, _ in sqs.calls]
    assert sqs.released() == [f"rh-{MID}"]  # given back whole, to be replayed again


def test_a_dry_run_says_what_would_go_and_what_would_stay() -> None:
    sqs = StubSqs([[sqs_message(json.dumps(mixed_envelope()), MID, sent=recent(hours=2))]])
    replayer = dlq.Replayer(reader(sqs), RULES, usage_queue_url=USAGE_URL, dry_run=True)
    (outcome,) = replayer.replay(Filters(), "queue").outcomes
    assert (outcome.action, outcome.identifiers) == ("would_replay", [f"{MID}-0", f"{MID}-2"])
    assert outcome.detail.startswith("2 events via queue; 2 stay in the DLQ: event 1: ")
    assert [name for name, _ in sqs.calls] == ["receive", "receive", "release"]


# ----- sync replay against stubs ----------------------------------------------------------------


class StubApi:
    """create_meter_event answers from a script, in order; every call is logged."""

    def __init__(self, answers: list[StripeAnswer]) -> None:
        self.answers = answers
        self.sent: list[str] = []

    def create_meter_event(self, event: dict[str, Any], timeout: float) -> StripeAnswer:
        self.sent.append(event["identifier"])
        return self.answers.pop(0)


def answer(status: int, code: str | None = None) -> StripeAnswer:
    kind = {200: Kind.OK, 400: Kind.REJECTED, 409: Kind.TRANSIENT, 503: Kind.TRANSIENT}[status]
    return StripeAnswer(kind, status, code, "", body={} if status == 200 else None)


def sync_replay(api: StubApi, body: dict[str, Any]) -> tuple[StubSqs, dlq.Outcome, list[float]]:
    sqs = StubSqs([[sqs_message(json.dumps(body), MID, sent=datetime.now(UTC))]])
    sleeps: list[float] = []
    replayer = dlq.Replayer(reader(sqs), RULES, api=api, sleep=sleeps.append)  # type: ignore[arg-type]
    (outcome,) = replayer.replay(Filters(), "sync").outcomes
    return sqs, outcome, sleeps


def three_events() -> dict[str, Any]:
    payload = {"stripe_customer_id": "cus_a", "value": "1"}
    return {"events": [{"event_name": "api_requests", "payload": payload}] * 3}


def test_sync_counts_a_duplicate_as_delivered_and_retries_409() -> None:
    api = StubApi([answer(200), answer(400, "duplicate_meter_event"), answer(409), answer(200)])
    sqs, outcome, sleeps = sync_replay(api, three_events())
    assert (outcome.action, outcome.code) == ("replayed", None)
    assert api.sent == [f"{MID}-0", f"{MID}-1", f"{MID}-2", f"{MID}-2"]
    assert sleeps == [0.5]
    assert [name for name, _ in sqs.calls] == ["receive", "delete", "receive"]


def test_sync_keeps_only_what_stripe_has_not_counted() -> None:
    api = StubApi([answer(200), *[answer(503)] * dlq.SYNC_ATTEMPTS])
    sqs, outcome, sleeps = sync_replay(api, three_events())
    assert (outcome.action, outcome.code) == ("partly_replayed", "http_503")
    assert len(sleeps) == dlq.SYNC_ATTEMPTS - 1
    names = [name for name, _ in sqs.calls]
    assert names == ["receive", "send", "delete", "receive"]  # the copy first, then the old
    sent = next(kwargs for name, kwargs in sqs.calls if name == "send")
    copy = json.loads(sent["MessageBody"])
    assert [e["identifier"] for e in copy["events"]] == [f"{MID}-1", f"{MID}-2"]
    # with what happened last: Stripe kept failing (see the next test)
    assert sent["MessageAttributes"][ATTR_ERROR_CODE]["StringValue"] == "http_503"
    assert sent["MessageAttributes"]["ErrorMessage"]["StringValue"].startswith("sync replay: ")


@pytest.mark.parametrize(
    ("failure", "code", "rewritten"),
    [
        (StripeAnswer(Kind.RATE_LIMITED, 429, "rate_limit", "slow down"), "rate_limit", True),
        (StripeAnswer(Kind.TRANSIENT, 409, "too_many_concurrent_requests", "busy"), None, True),
        (StripeAnswer(Kind.TRANSIENT, 0, None, "timed out after 10.0s"), "no_answer", True),
        (StripeAnswer(Kind.FAILED, 403, None, "forbidden"), "http_403", False),
        (StripeAnswer(Kind.SESSION_EXPIRED, 401, None, "bad key"), "http_401", False),
    ],
    ids=["429", "409", "timeout", "403", "401"],
)
def test_a_persistent_failure_leaves_the_message_with_what_happened(
    failure: StripeAnswer, code: str | None, rewritten: bool
) -> None:
    """Nothing counted: after 409/429/5xx/no answer (all the attempts) the message is put
    back with that reason; after a 401/403 (the tool's setup, not the message) it stays
    as it was. Either way the outcome reports the failure."""
    code = code or str(failure.code)
    attempts = dlq.SYNC_ATTEMPTS if rewritten else 1
    sqs, outcome, _ = sync_replay(StubApi([failure] * attempts), three_events())
    assert (outcome.action, outcome.code) == ("kept", code)
    assert outcome.kept_events[0]["detail"] == failure.error
    if not rewritten:
        assert [name for name, _ in sqs.calls] == ["receive", "receive", "release"]
        return
    assert [name for name, _ in sqs.calls] == ["receive", "send", "delete", "receive"]
    kept = sends(sqs)[0]
    assert kept["MessageAttributes"][ATTR_ERROR_CODE]["StringValue"] == code
    events = json.loads(kept["MessageBody"])["events"]
    assert [e["identifier"] for e in events] == [f"{MID}-{n}" for n in range(3)]


def test_a_corrected_event_stripe_refuses_is_kept_corrected_with_stripes_code() -> None:
    """The fix applied, Stripe refuses the event still: the letter holds the corrected body
    (a later run starts from it) with Stripe's code, identifier and timestamp unchanged."""
    sent_at = recent(hours=1)
    body = {"event_name": "api_request", "payload": {"customer_id": "cus_a", "value": 2}}
    (letter,) = forwarder_letters(json.dumps(body), sent=sent_at)
    attributes = letter.attributes()
    sqs = StubSqs([[sqs_message(letter.body, "letter-1", attributes, sent=recent(minutes=1))]])
    fix = Fix(
        event_names={"api_request": "api_calls"}, payload_keys={"customer_id": "stripe_customer_id"}
    )
    api = StubApi([answer(400, "no_meter")])
    replayer = dlq.Replayer(reader(sqs), RULES, api=api, fix=fix)  # type: ignore[arg-type]
    (outcome,) = replayer.replay(Filters(), "sync").outcomes

    assert (outcome.action, outcome.code) == ("kept", "no_meter")
    (kept,) = sends(sqs)
    assert json.loads(kept["MessageBody"]) == {
        "event_name": "api_calls",
        "payload": {"stripe_customer_id": "cus_a", "value": "2"},
        "identifier": f"{MID}-0",
        "timestamp": format_timestamp(sent_at),  # the forwarder's, written into the letter
    }
    stored = {k: v["StringValue"] for k, v in kept["MessageAttributes"].items()}
    assert (stored[ATTR_ERROR_CODE], stored["EventName"]) == ("no_meter", "api_calls")
    assert (stored[ATTR_IDENTIFIER], stored[ATTR_SOURCE_MESSAGE_ID]) == (f"{MID}-0", MID)
    assert [name for name, _ in sqs.calls if name != "receive"] == ["send", "delete"]


class SlowApi(StubApi):
    """Each call takes `seconds` of a fake clock (and logs the timeout it was given)."""

    def __init__(self, answers: list[StripeAnswer], clock: FakeClock, seconds: float) -> None:
        super().__init__(answers)
        self.clock, self.seconds = clock, seconds
        self.timeouts: list[float] = []

    def create_meter_event(self, event: dict[str, Any], timeout: float) -> StripeAnswer:
        self.timeouts.append(timeout)
        self.clock.now += min(self.seconds, timeout)
        return super().create_meter_event(event, timeout)


def test_sync_replay_stops_inside_a_message_when_the_time_runs_out() -> None:
    """The deadline is checked before each event and bounds each attempt's timeout; what
    was not sent stays in the DLQ, together, with the message's own reason."""
    clock = FakeClock()
    deadline = clock.now + 20.0
    api = SlowApi([answer(200)] * 6, clock, seconds=5.0)
    six_events = json.dumps({"events": three_events()["events"] * 2})
    sqs = StubSqs([[sqs_message(six_events, MID, sent=datetime.now(UTC)), *messages("next")]])
    replayer = dlq.Replayer(reader(sqs), RULES, api=api, sleep=clock.sleep)  # type: ignore[arg-type]
    summary = replayer.replay(Filters(), "sync", remaining=lambda: deadline - clock.now)

    assert summary.complete is False
    (outcome,) = summary.outcomes  # the next message was not started
    assert outcome.action == "partly_replayed"
    assert outcome.identifiers == [f"{MID}-0", f"{MID}-1", f"{MID}-2"]
    # 20 s left, 5 kept back for the DLQ writes: 10 s (the request timeout), 10, then 5
    assert api.timeouts == [10.0, 10.0, 5.0]
    assert [e["identifier"] for e in outcome.kept_events] == [f"{MID}-{n}" for n in range(3, 6)]
    assert {e["code"] for e in outcome.kept_events} == {REDRIVEN_CODE}
    (kept,) = sends(sqs)
    assert kept["MessageAttributes"][ATTR_ERROR_CODE]["StringValue"] == REDRIVEN_CODE
    rest = json.loads(kept["MessageBody"])["events"]
    assert [e["identifier"] for e in rest] == [f"{MID}-{n}" for n in range(3, 6)]
    assert [name for name, _ in sqs.calls if name != "receive"][-2:] == ["delete", "release"]


def test_no_retry_starts_when_its_wait_would_pass_the_deadline() -> None:
    clock = FakeClock()
    deadline = clock.now + 8.0
    api = SlowApi([answer(503), answer(200)], clock, seconds=1.0)
    sqs = StubSqs([[sqs_message(json.dumps(three_events()), MID, sent=datetime.now(UTC))]])
    limited = StripeAnswer(Kind.RATE_LIMITED, 429, "rate_limit", "slow down", retry_after=3.0)
    api.answers.insert(0, limited)
    replayer = dlq.Replayer(reader(sqs), RULES, api=api, sleep=clock.sleep)  # type: ignore[arg-type]
    summary = replayer.replay(Filters(), "sync", remaining=lambda: deadline - clock.now)

    # 8 s: a 1 s attempt (429, retry after 3 s) leaves 7; 7 - 3 - 5 < 1: no wait, no retry
    assert api.timeouts == [3.0]
    assert clock.sleeps == []
    assert summary.complete is False
    (outcome,) = summary.outcomes
    assert (outcome.action, outcome.identifiers) == ("kept", [])
    assert [name for name, _ in sqs.calls] == ["receive", "release"]  # left as it was


class StubCancelApi:
    """cancel_meter_event answers from a script, in order."""

    def __init__(self, answers: list[StripeAnswer]) -> None:
        self.answers = answers
        self.calls = 0

    def cancel_meter_event(self, event_name: str, identifier: str, timeout: float) -> StripeAnswer:
        self.calls += 1
        return self.answers.pop(0)


def test_cancel_retries_429_and_5xx_before_reporting() -> None:
    limited = StripeAnswer(Kind.RATE_LIMITED, 429, "rate_limit", "slow down", retry_after=2.0)
    done = StripeAnswer(Kind.OK, 200, body={"id": "mtradj_1", "status": "pending"})
    api = StubCancelApi([limited, answer(503), done])
    sleeps: list[float] = []
    audit, complete = dlq.cancel(
        api,  # type: ignore[arg-type]
        [dlq.CancelTarget("evt-1", "api_requests")],
        sleep=sleeps.append,
    )
    assert complete
    assert [(line.status, line.adjustment_id) for line in audit] == [("pending", "mtradj_1")]
    assert api.calls == 3
    assert sleeps[0] == 2.0  # Retry-After honoured


def test_cancel_gives_up_after_the_attempts_and_says_failed() -> None:
    api = StubCancelApi([answer(503)] * dlq.SYNC_ATTEMPTS)
    audit, _ = dlq.cancel(
        api,  # type: ignore[arg-type]
        [dlq.CancelTarget("evt-2", "api_requests")],
        sleep=lambda _: None,
    )
    assert [line.status for line in audit] == ["failed"]
    assert api.calls == dlq.SYNC_ATTEMPTS


def test_choosing_cancel_targets_stops_when_only_the_reserve_is_left() -> None:
    sqs = StubSqs([messages("a", "b"), messages("c")])
    clock = iter([100.0, 100.0, 10.0, 10.0, 10.0])  # seconds left, at each message
    targets, complete = dlq.targets_from_dlq(
        reader(sqs), Filters(), remaining=lambda: next(clock), reserve=50.0
    )
    assert [t.identifier for t in targets] == ["a-0", "b-0"]
    assert complete is False  # the caller is told: it must not answer complete
    assert set(sqs.released()) == {"rh-a", "rh-b", "rh-c"}  # all it received is given back
    unlimited, complete = dlq.targets_from_dlq(
        reader(StubSqs([messages("a", "b"), messages("c")])), Filters()
    )
    assert [t.identifier for t in unlimited] == ["a-0", "b-0", "c-0"]
    assert complete is True


def test_choosing_cancel_targets_continues_past_what_an_earlier_call_handled() -> None:
    def choose(max_count: int, skip: list[str]) -> tuple[list[str], bool]:
        sqs = StubSqs([messages("a", "b", "a"), messages("c", "d")])  # "a" twice: once
        targets, complete = dlq.targets_from_dlq(
            reader(sqs), Filters(max_count=max_count), skip=skip
        )
        return [t.identifier for t in targets], complete

    assert choose(2, []) == (["a-0", "b-0"], False)  # more match than max
    # the handled ones do not count toward max: the next two, then the last one
    assert choose(2, ["a-0", "b-0"]) == (["c-0", "d-0"], True)
    assert choose(1, ["a-0", "b-0"]) == (["c-0"], False)
    assert choose(1, ["a-0", "b-0", "c-0"]) == (["d-0"], True)
