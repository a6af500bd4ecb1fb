"""Replay against stub SQS clients and stub Stripe APIs: what of a message goes, what stays (each
event that cannot be sent as a letter of its own, as the forwarder writes one), the order of
the writes (a message leaves the DLQ only after its resend and its letters), retries, the
deadline, and a whole queue replayed in parallel under SQS's in-flight limit."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from botocore.exceptions import ClientError

from meter_relay.dead_letter import (
    ATTR_ERROR_CODE,
    ATTR_EVENT_INDEX,
    ATTR_FIRST_SEEN,
    ATTR_IDENTIFIER,
    ATTR_SOURCE_MESSAGE_ID,
)
from meter_relay.dlq.letters import event_letter, rest_letters
from meter_relay.dlq.reading import REDRIVEN_CODE, DlqMessage, read_message
from meter_relay.dlq.replay import (
    NOT_QUEUED,
    OUT_OF_TIME,
    UNANSWERED_IN_TIME,
    QueueResend,
    Replayer,
    SyncResend,
)
from meter_relay.dlq.resend import UsageQueue
from meter_relay.dlq.runs import Action, Outcome, RunSummary, Stop
from meter_relay.dlq.selection import Filters, Fix
from meter_relay.events import Rejection, format_timestamp
from meter_relay.retry import TOOLS_RETRY, RateLimit
from meter_relay.stripe_client import Kind, StripeAnswer
from tests.fakes import (
    MAX_SQS_MESSAGE_BYTES,
    FakeClock,
    FakeSqs,
    SlowApi,
    StubApi,
    StubSqs,
    answer,
    api_messages,
    sends,
    sqs_message,
    sqs_size,
)
from tests.unit.relay.dlq.builders import (
    DLQ_URL,
    MID,
    RULES,
    USAGE_URL,
    api_event,
    as_sqs,
    forwarder_letters,
    reader,
    recent,
)


def queue_replayer(sqs: Any, **options: Any) -> Replayer:
    return Replayer(reader(sqs), QueueResend(UsageQueue(as_sqs(sqs), USAGE_URL)), **options)


def sync_replayer(
    sqs: Any, api: StubApi, clock: FakeClock | None = None, **options: Any
) -> Replayer:
    sleep = clock.sleep if clock else (lambda _: None)
    resend = SyncResend(api, sleep=sleep, jitter=lambda low, high: high, senders=1)
    return Replayer(reader(sqs), resend, **options)


def read_copy(kwargs: dict[str, Any], message_id: str = "copy") -> DlqMessage:
    return read_message(
        sqs_message(kwargs["MessageBody"], message_id, kwargs["MessageAttributes"]), RULES
    )


# ----- letters: what of a message stays ---------------------------------------------------------


def planned(body: dict[str, Any], sent_at: datetime) -> tuple[DlqMessage, list[Any]]:
    message = read_message(sqs_message(json.dumps(body), MID, sent=sent_at), RULES)
    return message, [e.parsed for e in message.events]


def test_a_letter_of_one_event_is_written_as_the_forwarder_writes_it() -> None:
    sent_at = recent(hours=1)
    message, events = planned({"events": [api_event("1")]}, sent_at)
    letter = event_letter(message, events[0], Rejection("no_meter", "HTTP 400 no_meter: no"))
    attributes = {k: v["StringValue"] for k, v in letter.attributes().items()}
    assert attributes == {
        ATTR_ERROR_CODE: "no_meter",
        "ErrorMessage": "HTTP 400 no_meter: no",
        ATTR_SOURCE_MESSAGE_ID: MID,
        ATTR_FIRST_SEEN: format_timestamp(sent_at),
        ATTR_EVENT_INDEX: "0",
        ATTR_IDENTIFIER: f"{MID}-0",
        "EventName": "api_requests",
        # a message SQS moved: an earlier try may have delivered it, whatever Stripe says now
        "OutcomeUnknown": "true",
    }
    body = json.loads(letter.body)
    assert body["identifier"] == f"{MID}-0"  # derived from the original id
    assert body["timestamp"] == format_timestamp(sent_at)  # not the copy's send


def test_a_rest_of_several_events_is_one_message_with_identifiers_and_timestamps_in() -> None:
    sent_at = recent(hours=1)
    message, events = planned(
        {"events": [api_event("1"), api_event("2"), api_event("3", timestamp="x")]}, sent_at
    )
    (letter,) = rest_letters(message, events[1:], Rejection("http_503", "HTTP 503"))
    kept = json.loads(letter.body)["events"]
    assert [(e["identifier"], e["timestamp"]) for e in kept] == [
        (f"{MID}-1", format_timestamp(sent_at)),
        (f"{MID}-2", "x"),  # as given: an event that cannot be sent is kept as it came
    ]
    assert letter.event_index is None  # a whole message: its events are read from the body
    again = read_message(sqs_message(letter.body, "copy", letter.attributes()), RULES)
    assert (again.code, [e.identifier for e in again.events]) == (
        "http_503",
        [f"{MID}-1", f"{MID}-2"],
    )


def large_envelope(count: int = 2500) -> str:
    """An envelope SQS took (about 180 KB) whose events, their identity written in for a
    replay, outgrow one message (about 340 KB)."""
    body = json.dumps({"events": [api_event(str(i + 1)) for i in range(count)]})
    assert len(body) < MAX_SQS_MESSAGE_BYTES
    return body


def test_a_rest_too_large_for_one_letter_is_kept_in_several() -> None:
    message = read_message(sqs_message(large_envelope(), MID, sent=recent(hours=1)), RULES)
    events = [e.parsed for e in message.events]
    letters = rest_letters(message, events, Rejection("http_503", "HTTP 503"))
    assert len(letters) > 1
    assert all(sqs_size(x.body, dict(x.attributes())) <= MAX_SQS_MESSAGE_BYTES for x in letters)
    read = [read_message(sqs_message(x.body, "copy", x.attributes()), RULES) for x in letters]
    assert {r.code for r in read} == {"http_503"}
    assert [e.identifier for r in read for e in r.events] == [e.identifier for e in events]


def test_a_queue_replay_that_outgrows_one_message_sends_several() -> None:
    """Each event written with its identifier and timestamp, a message SQS took can be too
    large to put back whole: it goes as several, none over SQS's limit, every event once."""
    sqs = StubSqs([[sqs_message(large_envelope(), MID, sent=recent(hours=1))]])
    (outcome,) = queue_replayer(sqs).replay(Filters()).outcomes

    assert (outcome.action, outcome.kept_events) == (Action.REPLAYED, [])
    resent = [json.loads(kwargs["MessageBody"])["events"] for kwargs in sends(sqs)]
    assert len(resent) > 1
    assert [e["identifier"] for body in resent for e in body] == [f"{MID}-{i}" for i in range(2500)]
    assert sqs.names()[-1] == "delete"


class RefusingSqs(StubSqs):
    """Refuses every resend that carries `refused` (an identifier): SQS's answer, each time."""

    def __init__(self, batches: list[list[dict[str, Any]]], refused: str) -> None:
        super().__init__(batches)
        self.refused = refused

    def send_message(self, **kwargs: Any) -> dict[str, Any]:
        if kwargs["QueueUrl"] == USAGE_URL and f'"{self.refused}"' in kwargs["MessageBody"]:
            raise ClientError({"Error": {"Code": "KmsThrottled"}}, "SendMessageBatch")
        return super().send_message(**kwargs)


def test_the_events_the_queue_refused_of_a_message_sent_in_several_stay() -> None:
    """Of a message sent as several, those SQS took are replayed; the others stay, with the
    message's own reason, and the run goes on."""
    sqs = RefusingSqs([[sqs_message(large_envelope(), MID, sent=recent(hours=1))]], f"{MID}-2499")
    summary = queue_replayer(sqs).replay(Filters())
    (outcome,) = summary.outcomes

    taken = [
        e["identifier"] for x in sends(sqs)[:-1] for e in json.loads(x["MessageBody"])["events"]
    ]
    assert (outcome.action, outcome.identifiers) == (Action.PARTLY_REPLAYED, taken)
    kept = [e["identifier"] for e in outcome.kept_events]
    assert taken + kept == [f"{MID}-{i}" for i in range(2500)]
    assert {e["code"] for e in outcome.kept_events} == {"max_receive_count_exceeded"}
    assert outcome.kept_events[0]["detail"].startswith(f"{NOT_QUEUED}: ClientError")
    (letter,) = [x for x in sends(sqs) if x["QueueUrl"] == DLQ_URL]
    again = read_message(
        sqs_message(letter["MessageBody"], "copy", letter["MessageAttributes"]), RULES
    )
    assert [e.identifier for e in again.events] == kept
    assert summary.stopped is None
    assert sqs.names()[-1] == "delete"


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


def check_kept_letters(sqs: StubSqs, sent_at: datetime) -> None:
    """The two events that cannot be sent are letters as the forwarder writes them."""
    read = [read_copy(kw, f"l{n}") for n, kw in enumerate(sends(sqs)) if kw["QueueUrl"] == DLQ_URL]
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
    (outcome,) = queue_replayer(sqs).replay(Filters()).outcomes

    assert (outcome.action, outcome.code) == (Action.PARTLY_REPLAYED, "payload_invalid_value")
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
    (outcome,) = sync_replayer(sqs, api).replay(Filters()).outcomes

    assert (outcome.action, outcome.code) == (Action.PARTLY_REPLAYED, "payload_invalid_value")
    assert api.sent == [f"{MID}-0", f"{MID}-2"]
    assert len(sends(sqs)) == 2
    check_kept_letters(sqs, sent_at)


def test_nothing_leaves_the_dlq_when_a_letter_cannot_be_written() -> None:
    sqs = StubSqs([[sqs_message(json.dumps(mixed_envelope()), MID, sent=recent(hours=2))]])
    sqs.fail_send_to = DLQ_URL
    (outcome,) = queue_replayer(sqs).replay(Filters()).outcomes
    assert (outcome.action, outcome.code) == (Action.KEPT, "aws_error")
    assert outcome.detail.startswith(
        "2 events were sent via queue; kept whole: LettersNotSent: 2 of 2 letters"
    )
    assert "delete" not in sqs.names()
    assert sqs.released() == [f"rh-{MID}"]  # given back whole, to be replayed again


def test_a_message_sqs_would_not_delete_is_given_back_and_says_what_went() -> None:
    """Stripe counted two events and their letters are in, but the original could not be
    deleted: it is given back (a later run finds them delivered by identifier), and the
    outcome says what was sent."""
    sqs = StubSqs([[sqs_message(json.dumps(mixed_envelope()), MID, sent=recent(hours=2))]])
    sqs.fail_delete = True
    api = StubApi([answer(200), answer(200)])
    (outcome,) = sync_replayer(sqs, api).replay(Filters()).outcomes

    assert (outcome.action, outcome.code) == (Action.KEPT, "aws_error")
    assert outcome.detail.startswith(
        "2 events were sent via sync; kept whole: NotDeleted: ClientError: An error occurred "
        "(InternalError)"
    )
    assert api.sent == [f"{MID}-0", f"{MID}-2"]
    assert sqs.released() == [f"rh-{MID}"]


def test_nothing_leaves_the_dlq_when_the_usage_queue_refuses_the_resend() -> None:
    sqs = StubSqs([[sqs_message(json.dumps(api_event("5")), MID, sent=recent(hours=1))]])
    sqs.fail_send_to = USAGE_URL
    summary = queue_replayer(sqs).replay(Filters())
    (outcome,) = summary.outcomes
    assert (outcome.action, outcome.code) == (Action.KEPT, "aws_error")
    assert "NonExistentQueue" in outcome.detail
    assert summary.unreachable
    assert sqs.names() == ["receive", "receive", "release"]


def test_a_dry_run_says_what_would_go_and_what_would_stay() -> None:
    sqs = StubSqs([[sqs_message(json.dumps(mixed_envelope()), MID, sent=recent(hours=2))]])
    (outcome,) = queue_replayer(sqs, dry_run=True).replay(Filters()).outcomes
    assert (outcome.action, outcome.identifiers) == (
        Action.WOULD_REPLAY,
        [f"{MID}-0", f"{MID}-2"],
    )
    assert outcome.detail.startswith("2 events via queue; 2 stay in the DLQ: event 1: ")
    assert sqs.names() == ["receive", "receive", "release"]


def test_a_message_first_seen_a_day_ago_is_replayed_with_a_warning() -> None:
    day_ago = recent(hours=25)
    body = json.dumps(api_event("1"))
    sqs = StubSqs([[sqs_message(body, "old", sent=day_ago, first_receive=day_ago)]])
    (outcome,) = queue_replayer(sqs).replay(Filters()).outcomes
    assert outcome.action is Action.REPLAYED
    (warning,) = outcome.warnings
    assert warning.startswith("first seen more than 24 hours ago")


# ----- sync replay against stubs ----------------------------------------------------------------


def sync_replay(api: StubApi, body: dict[str, Any]) -> tuple[StubSqs, Outcome, list[float]]:
    sqs = StubSqs([[sqs_message(json.dumps(body), MID, sent=datetime.now(UTC))]])
    clock = FakeClock()
    (outcome,) = sync_replayer(sqs, api, clock).replay(Filters()).outcomes
    return sqs, outcome, clock.sleeps


def three_events() -> dict[str, Any]:
    payload = {"stripe_customer_id": "cus_a", "value": "1"}
    return {"events": [{"event_name": "api_requests", "payload": payload}] * 3}


def test_sync_counts_a_duplicate_as_delivered_and_retries_409() -> None:
    api = StubApi([answer(200), answer(400, "duplicate_meter_event"), answer(409), answer(200)])
    sqs, outcome, sleeps = sync_replay(api, three_events())
    assert (outcome.action, outcome.code) == (Action.REPLAYED, None)
    assert api.sent == [f"{MID}-0", f"{MID}-1", f"{MID}-2", f"{MID}-2"]
    assert sleeps == [TOOLS_RETRY.base_delay]  # the jitter's ceiling, after the first attempt
    assert sqs.names() == ["receive", "receive", "delete"]


def test_sync_keeps_only_what_stripe_has_not_counted() -> None:
    api = StubApi([answer(200), *[answer(503)] * TOOLS_RETRY.max_attempts])
    sqs, outcome, sleeps = sync_replay(api, three_events())
    assert (outcome.action, outcome.code) == (Action.PARTLY_REPLAYED, "http_503")
    assert len(sleeps) == TOOLS_RETRY.max_attempts - 1
    assert sqs.names() == ["receive", "receive", "send", "delete"]  # the copy, then the old
    (sent,) = sends(sqs)
    copy = json.loads(sent["MessageBody"])
    assert [e["identifier"] for e in copy["events"]] == [f"{MID}-1", f"{MID}-2"]
    # with what happened last: Stripe kept failing (see the next test)
    assert sent["MessageAttributes"][ATTR_ERROR_CODE]["StringValue"] == "http_503"
    assert sent["MessageAttributes"]["ErrorMessage"]["StringValue"].startswith("sync replay: ")
    assert read_copy(sent).passing  # a redrive takes it by default


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
    attempts = TOOLS_RETRY.max_attempts if rewritten else 1
    sqs, outcome, _ = sync_replay(StubApi([failure] * attempts), three_events())
    assert (outcome.action, outcome.code) == (Action.KEPT, code)
    assert outcome.kept_events[0]["detail"] == failure.error
    if not rewritten:
        assert sqs.names() == ["receive", "receive", "release"]
        return
    assert sqs.names() == ["receive", "receive", "send", "delete"]
    (kept,) = sends(sqs)
    assert kept["MessageAttributes"][ATTR_ERROR_CODE]["StringValue"] == code
    events = json.loads(kept["MessageBody"])["events"]
    assert [e["identifier"] for e in events] == [f"{MID}-{n}" for n in range(3)]


def test_a_corrected_event_stripe_refuses_is_kept_corrected_with_stripes_code() -> None:
    """The fix applied, Stripe refuses the event still: the letter holds the corrected body
    (a later run starts from it) with Stripe's code, identifier and timestamp unchanged."""
    sent_at = recent(hours=1)
    body = {"event_name": "api_request", "payload": {"customer_id": "cus_a", "value": 2}}
    (letter,) = forwarder_letters(json.dumps(body), sent=sent_at)
    sqs = StubSqs(
        [[sqs_message(letter.body, "letter-1", letter.attributes(), sent=recent(minutes=1))]]
    )
    fix = Fix(
        event_names={"api_request": "api_calls"}, payload_keys={"customer_id": "stripe_customer_id"}
    )
    api = StubApi([answer(400, "no_meter")])
    (outcome,) = sync_replayer(sqs, api, fix=fix).replay(Filters()).outcomes

    assert (outcome.action, outcome.code) == (Action.KEPT, "no_meter")
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
    assert [name for name in sqs.names() if name != "receive"] == ["send", "delete"]


def test_sync_replay_stops_inside_a_message_when_the_time_runs_out() -> None:
    """The deadline is checked before each event and bounds each attempt's timeout; what
    was not sent stays in the DLQ, together, with the message's own reason."""
    clock = FakeClock()
    deadline = clock.now + 20.0
    api = SlowApi([answer(200)] * 6, clock, seconds=5.0)
    six_events = json.dumps({"events": three_events()["events"] * 2})
    sqs = StubSqs([[sqs_message(six_events, MID, sent=datetime.now(UTC)), *api_messages("next")]])
    summary = sync_replayer(sqs, api, clock).replay(
        Filters(), remaining=lambda: deadline - clock.now
    )

    assert (summary.complete, summary.stopped) == (False, Stop.TIME)
    first, following = summary.outcomes
    assert first.action is Action.PARTLY_REPLAYED
    assert first.identifiers == [f"{MID}-0", f"{MID}-1", f"{MID}-2"]
    # 20 s left, 5 kept back for the DLQ writes: 10 s (the request timeout), 10, then 5
    assert api.timeouts == [10.0, 10.0, 5.0]
    assert [e["identifier"] for e in first.kept_events] == [f"{MID}-{n}" for n in range(3, 6)]
    assert {e["code"] for e in first.kept_events} == {REDRIVEN_CODE}
    (kept,) = sends(sqs)
    assert kept["MessageAttributes"][ATTR_ERROR_CODE]["StringValue"] == REDRIVEN_CODE
    rest = json.loads(kept["MessageBody"])["events"]
    assert [e["identifier"] for e in rest] == [f"{MID}-{n}" for n in range(3, 6)]
    # the next message had no time at all: it stays as it was, given back
    assert (following.action, following.identifiers) == (Action.KEPT, [])
    assert sqs.names()[-2:] == ["delete", "release"]
    assert sqs.released() == ["rh-next"]


def test_no_retry_starts_when_its_wait_would_pass_the_deadline() -> None:
    clock = FakeClock()
    deadline = clock.now + 8.0
    limited = StripeAnswer(Kind.RATE_LIMITED, 429, "rate_limit", "slow down", retry_after=3.0)
    api = SlowApi([limited, answer(200)], clock, seconds=1.0)
    sqs = StubSqs([[sqs_message(json.dumps(three_events()), MID, sent=datetime.now(UTC))]])
    resend = SyncResend(api, sleep=clock.sleep, jitter=lambda low, high: 0.0, senders=1)
    summary = Replayer(reader(sqs), resend).replay(
        Filters(), remaining=lambda: deadline - clock.now
    )

    # 8 s: a 1 s attempt (429, retry after 3 s) leaves 7; 7 - 3 - 5 < 1: no wait, no retry
    assert api.timeouts == [3.0]
    assert clock.sleeps == []
    assert summary.complete is False
    (outcome,) = summary.outcomes
    assert (outcome.action, outcome.identifiers) == (Action.KEPT, [])
    assert sqs.names() == ["receive", "receive", "release"]  # left as it was


def test_an_event_sent_without_an_answer_before_the_deadline_is_not_called_unsent() -> None:
    """The call went out and timed out, and no time is left to retry: Stripe may have it. Its
    letter says no_answer (a reason a later replay warns about past 24 hours), not the
    message's old reason with "not sent"."""
    clock = FakeClock()
    deadline = clock.now + 8.0
    silent = StripeAnswer(Kind.TRANSIENT, 0, None, "read timed out")
    api = SlowApi([silent, answer(200)], clock, seconds=5.0)
    sqs = StubSqs([[sqs_message(json.dumps(three_events()), MID, sent=datetime.now(UTC))]])
    resend = SyncResend(api, sleep=clock.sleep, jitter=lambda low, high: 0.0, senders=1)
    summary = Replayer(reader(sqs), resend).replay(
        Filters(), remaining=lambda: deadline - clock.now
    )

    assert api.timeouts == [3.0]  # one attempt: 8 s less the 5 kept back for the DLQ
    assert summary.stopped is Stop.TIME  # the next run (the function's next call) sends it
    (outcome,) = summary.outcomes
    assert [(e["code"], e["detail"]) for e in outcome.kept_events] == [
        ("no_answer", UNANSWERED_IN_TIME),  # the one that went out
        ("no_answer", OUT_OF_TIME),  # those after it never did
        ("no_answer", OUT_OF_TIME),
    ]
    (kept,) = sends(sqs)
    assert kept["MessageAttributes"][ATTR_ERROR_CODE]["StringValue"] == "no_answer"


# ----- a whole queue -------------------------------------------------------------------------


def fake_dlq(limit: int) -> FakeSqs:
    sqs = FakeSqs(in_flight_limit=limit)
    sqs.create_queue(DLQ_URL)
    sqs.create_queue(USAGE_URL)
    return sqs


def test_a_rate_slower_than_the_time_left_stops_the_pass_before_its_wait() -> None:
    """At 1 message in 20 s with 15 s left, the second message's turn comes past the deadline
    (the function would be killed in its wait, answering nothing): the pass stops for time
    after the first, and sleeps no wait that could not end in time."""
    clock = FakeClock()
    deadline = clock.monotonic() + 15
    bodies = [json.dumps(api_event(str(n + 1), identifier=f"r-{n}")) for n in range(2)]
    sqs = StubSqs([[sqs_message(b, f"m{n}", sent=recent(hours=1)) for n, b in enumerate(bodies)]])
    replayer = queue_replayer(sqs, rate=RateLimit(0.05, sleep=clock.sleep, clock=clock.monotonic))
    summary = replayer.replay(Filters(), remaining=lambda: deadline - clock.monotonic())
    assert [o.message_id for o in summary.outcomes if o.action is Action.REPLAYED] == ["m0"]
    assert summary.stopped is Stop.TIME
    assert clock.sleeps == []


def test_a_queue_larger_than_the_in_flight_limit_is_replayed_whole() -> None:
    """Half the queue matches the filters; the rest stays held until the pass may hold no
    more, then goes back. The reader of old held all it read: at the limit its receives
    came back empty and it replayed 49 of these 60, answering complete."""
    sqs = fake_dlq(limit=50)
    for n in range(120):
        name = "api_requests" if n % 2 else "search_calls"
        event = {"event_name": name, "identifier": f"e-{n}", "payload": {"stripe_customer_id": "c"}}
        sqs.put(DLQ_URL, json.dumps(event | {"payload": {"stripe_customer_id": "c", "value": "1"}}))
    replayer = Replayer(reader(sqs, max_held=40), QueueResend(UsageQueue(as_sqs(sqs), USAGE_URL)))
    summary = replayer.replay(Filters(event_names={"api_requests"}))

    assert summary.counts() == {"replayed": 60}
    assert summary.complete is True
    assert summary.not_selected == {"max_receive_count_exceeded": 60}
    assert (summary.scan.seen, summary.scan.depth) == (120, 120)
    assert sqs.empty_at_limit == 0
    assert sqs.peak_in_flight <= 40
    replayed = sorted(json.loads(b)["identifier"] for b in sqs.bodies(USAGE_URL))
    assert replayed == sorted(f"e-{n}" for n in range(1, 120, 2))
    assert len(sqs.bodies(DLQ_URL)) == 60
    assert sqs.in_flight(DLQ_URL) == 0


def test_a_window_is_sent_in_batches_and_deleted_in_batches() -> None:
    sqs = fake_dlq(limit=1_000)
    for n in range(250):
        sqs.put(DLQ_URL, json.dumps(api_event("1", identifier=f"w-{n}", timestamp=None)))
    summary = Replayer(reader(sqs), QueueResend(UsageQueue(as_sqs(sqs), USAGE_URL))).replay(
        Filters()
    )
    assert summary.counts() == {"replayed": 250}
    assert sqs.calls["SendMessageBatch"] == 25
    assert sqs.calls["DeleteMessageBatch"] == 25
    assert "SendMessage" not in sqs.calls
    assert len(sqs.bodies(USAGE_URL)) == 250


def test_skip_leaves_the_messages_an_earlier_call_handled() -> None:
    sqs = StubSqs([api_messages("a", "b", "c")])
    summary: RunSummary = queue_replayer(sqs, dry_run=True).replay(Filters(), skip=frozenset({"b"}))
    assert [o.message_id for o in summary.outcomes] == ["a", "c"]


def test_a_letter_the_tools_write_keeps_to_sqss_ten_attributes() -> None:
    """The most a tool's letter can carry: one written for an event of a Stripe report's letter
    (its marks kept) whose sync replay got no answer (OutcomeUnknown kept), refused this time
    for a field (ErrorParam). SQS refuses a message of more than ten."""
    body = json.dumps(
        {**api_event("1"), "identifier": "rep-1", "timestamp": "2026-12-08T00:00:00Z"}
    )
    text = {"DataType": "String", "StringValue": ""}
    attributes = {
        "ErrorCode": {**text, "StringValue": "no_answer"},
        "ErrorMessage": {**text, "StringValue": "sync replay: timed out after 10.0s"},
        "EventIndex": {"DataType": "Number", "StringValue": "0"},
        "FirstSeen": {**text, "StringValue": "2026-12-08T00:00:01.000Z"},
        "EventName": {**text, "StringValue": "api_requests"},
        "Identifier": {**text, "StringValue": "rep-1"},
        "ReportedBy": {**text, "StringValue": "stripe"},
        "ValidationEnd": {**text, "StringValue": "2026-12-08T00:00:10.000Z"},
        "OutcomeUnknown": {**text, "StringValue": "true"},
    }
    message = read_message(sqs_message(body, "letter-of-a-letter", attributes), RULES)
    assert message.may_be_counted
    refusal = Rejection("payload_invalid_value", "HTTP 400: value", param="payload.value")
    written = event_letter(message, message.events[0].parsed, refusal).attributes()
    assert {"ReportedBy", "ValidationEnd", "OutcomeUnknown", "ErrorParam"} <= set(written)
    assert len(written) <= 10
