"""Cancel against stubs: retries, the deadline, and choosing targets from the DLQ: exactly the
events every filter chooses (an envelope SQS moved whole holds other customers' usage too),
each once, continuing past what an earlier call handled."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from meter_relay.dead_letter import (
    ATTR_ERROR_CODE,
    ATTR_ERROR_MESSAGE,
    ATTR_EVENT_INDEX,
    ATTR_IDENTIFIER,
    ATTR_OUTCOME_UNKNOWN,
)
from meter_relay.dlq.cancel import (
    AuditStatus,
    CancelTarget,
    cancel,
    targets_from_dlq,
    targets_from_file,
)
from meter_relay.dlq.letters import rest_letters
from meter_relay.dlq.reading import SYNC_REPLAY_PREFIX, read_message
from meter_relay.dlq.selection import Filters
from meter_relay.events import Rejection
from meter_relay.retry import TOOLS_RETRY, RateLimit
from meter_relay.stripe_client import Kind, StripeAnswer
from tests.fakes import FakeClock, StubCancelApi, StubSqs, answer, api_messages, sqs_message
from tests.unit.relay.dlq.builders import MID, RULES, api_event, reader

if TYPE_CHECKING:
    from mypy_boto3_sqs.type_defs import MessageTypeDef


def test_cancel_retries_429_and_5xx_before_reporting() -> None:
    limited = StripeAnswer(Kind.RATE_LIMITED, 429, "rate_limit", "slow down", retry_after=2.0)
    done = StripeAnswer(Kind.OK, 200, body={"id": "mtradj_1", "status": "pending"})
    api = StubCancelApi([limited, answer(503), done])
    sleeps: list[float] = []
    audit, complete = cancel(
        api,
        [CancelTarget("evt-1", "api_requests")],
        sleep=sleeps.append,
        jitter=lambda low, high: 0.0,
    )
    assert complete
    assert [(line.status, line.adjustment_id) for line in audit] == [
        (AuditStatus.PENDING, "mtradj_1")
    ]
    assert api.calls == 3
    assert sleeps[0] == 2.0  # Retry-After honoured


def test_a_cancels_attempts_share_its_idempotency_key_and_nothing_else_does() -> None:
    """A retry after a lost answer gets Stripe's first answer; another event's cancel, or
    another run's (an identifier Stripe counted again after 24 hours), is a cancel of its own."""
    done = StripeAnswer(Kind.OK, 200, body={"id": "mtradj_1", "status": "pending"})
    api = StubCancelApi([answer(503), done, done, done])
    targets = [CancelTarget("evt-1", "api_requests"), CancelTarget("evt-2", "api_requests")]
    cancel(api, targets, sleep=lambda _: None, jitter=lambda low, high: 0.0)
    first, retried, other = api.keys
    assert first == retried != other
    assert first is not None
    assert first.startswith("meter-relay-cancel-")
    cancel(api, targets[:1], sleep=lambda _: None)
    assert api.keys[-1] not in (first, other)


def test_cancel_gives_up_after_the_attempts_and_says_failed() -> None:
    api = StubCancelApi([answer(503)] * TOOLS_RETRY.max_attempts)
    audit, _ = cancel(api, [CancelTarget("evt-2", "api_requests")], sleep=lambda _: None)
    assert [line.status for line in audit] == [AuditStatus.FAILED]
    assert api.calls == TOOLS_RETRY.max_attempts


def test_a_rate_slower_than_the_time_left_stops_the_cancels_in_time() -> None:
    """At 1 cancel in 20 s with 30 s left, the second would start past the deadline (the
    function killed mid-run, its audit never returned): the run stops after the first."""
    clock = FakeClock()
    done = StripeAnswer(Kind.OK, 200, body={"id": "mtradj_1", "status": "pending"})
    api = StubCancelApi([done, done])
    deadline = clock.monotonic() + 30
    audit, complete = cancel(
        api,
        [CancelTarget("r-1", "api_requests"), CancelTarget("r-2", "api_requests")],
        rate=RateLimit(0.05, sleep=clock.sleep, clock=clock.monotonic),
        remaining=lambda: deadline - clock.monotonic(),
    )
    assert (api.cancelled, complete) == (["r-1"], False)
    assert [line.identifier for line in audit] == ["r-1"]
    assert clock.sleeps == []  # no wait begun that could not end in time


def test_a_dry_run_sends_nothing_and_names_what_is_past_the_window() -> None:
    from datetime import UTC, datetime, timedelta

    old = CancelTarget("old", "api_requests", datetime.now(UTC) - timedelta(hours=25))
    audit, complete = cancel(None, [CancelTarget("new", "api_requests"), old])
    assert complete
    assert [(a.identifier, a.status) for a in audit] == [
        ("new", AuditStatus.WOULD_CANCEL),
        ("old", AuditStatus.PAST_CANCEL_WINDOW),
    ]


def test_identifiers_from_a_file_each_once(tmp_path: Path) -> None:
    path = tmp_path / "ids.txt"
    path.write_text("a\n\n b \na\nc\n")
    assert [t.identifier for t in targets_from_file(path, "api_requests")] == ["a", "b", "c"]
    path.write_bytes("\ufeffa\r\nb\r\n".encode())  # an Excel export: a BOM, CRLF
    assert [t.identifier for t in targets_from_file(path, "api_requests")] == ["a", "b"]


def test_choosing_cancel_targets_stops_when_only_the_reserve_is_left() -> None:
    sqs = StubSqs([api_messages("a", "b"), api_messages("c")])
    clock = iter([100.0, 100.0, 10.0, 10.0, 10.0])  # seconds left, at each message
    chosen = targets_from_dlq(reader(sqs), Filters(), remaining=lambda: next(clock), reserve=50.0)
    targets, complete = chosen.targets, chosen.complete
    assert [t.identifier for t in targets] == ["a-0", "b-0"]
    assert complete is False  # the caller is told: it must not answer complete
    assert set(sqs.released()) == {"rh-a", "rh-b", "rh-c"}  # all it received is given back
    unlimited = targets_from_dlq(
        reader(StubSqs([api_messages("a", "b"), api_messages("c")])), Filters()
    )
    assert [t.identifier for t in unlimited.targets] == ["a-0", "b-0", "c-0"]
    assert unlimited.complete is True


def test_choosing_cancel_targets_continues_past_what_an_earlier_call_handled() -> None:
    def choose(max_count: int, skip: list[str]) -> tuple[list[str], bool]:
        sqs = StubSqs([api_messages("a", "b", "a"), api_messages("c", "d")])  # "a" twice: once
        chosen = targets_from_dlq(reader(sqs), Filters(max_count=max_count), skip=skip)
        return [t.identifier for t in chosen.targets], chosen.complete

    assert choose(2, []) == (["a-0", "b-0"], False)  # more match than max
    # the handled ones do not count toward max: the next two, then the last one
    assert choose(2, ["a-0", "b-0"]) == (["c-0", "d-0"], True)
    assert choose(1, ["a-0", "b-0"]) == (["c-0"], False)
    assert choose(1, ["a-0", "b-0", "c-0"]) == (["d-0"], True)


def test_a_mixed_envelope_gives_exactly_the_events_every_filter_chooses() -> None:
    """The envelope SQS moved holds cus_a's and cus_b's events of two meters: cancelling
    cus_a's api_requests must leave cus_b's and cus_a's other meter alone."""
    events = [
        {"event_name": "api_requests", "payload": {"stripe_customer_id": "cus_a", "value": "1"}},
        {"event_name": "api_requests", "payload": {"stripe_customer_id": "cus_b", "value": "1"}},
        {"event_name": "search_calls", "payload": {"customer": "cus_a", "calls": "1"}},
        {
            "event_name": "api_requests",
            "identifier": "given-3",
            "payload": {"stripe_customer_id": "cus_a", "value": "2"},
        },
    ]
    body = json.dumps({"events": events})

    def chosen(filters: Filters) -> list[tuple[str, str, str | None]]:
        sqs = StubSqs([[sqs_message(body, MID)]])
        chosen = targets_from_dlq(reader(sqs), filters)
        assert chosen.complete
        return [(t.identifier, t.event_name, t.customer) for t in chosen.targets]

    assert chosen(Filters(customers={"cus_a"}, event_names={"api_requests"})) == [
        (f"{MID}-0", "api_requests", "cus_a"),
        ("given-3", "api_requests", "cus_a"),
    ]
    assert chosen(Filters(customers={"cus_b"})) == [(f"{MID}-1", "api_requests", "cus_b")]
    assert chosen(Filters(event_names={"search_calls"})) == [(f"{MID}-2", "search_calls", "cus_a")]
    assert len(chosen(Filters())) == 4  # no event filter: the whole message


def _letter(
    code: str, identifier: str, value: str = "1", reason: str = "", **more: str
) -> dict[str, Any]:
    """A one-event letter with the given code (and reason, and further attributes), as
    ReceiveMessage returns it."""
    body = {
        "event_name": "api_requests",
        "identifier": identifier,
        "payload": {"stripe_customer_id": "cus_z", "value": value},
    }
    attributes = {
        ATTR_ERROR_CODE: {"DataType": "String", "StringValue": code},
        ATTR_EVENT_INDEX: {"DataType": "Number", "StringValue": "0"},
        ATTR_IDENTIFIER: {"DataType": "String", "StringValue": identifier},
    }
    if reason:
        attributes[ATTR_ERROR_MESSAGE] = {"DataType": "String", "StringValue": reason}
    for name, text in more.items():
        attributes[name] = {"DataType": "String", "StringValue": text}
    letter: dict[str, Any] = sqs_message(
        json.dumps(body), f"letter-{identifier}-{code}", attributes
    )
    return letter


def test_only_letters_whose_events_may_have_reached_stripe_are_chosen() -> None:
    """A letter the forwarder wrote for an event it never sent (refused before sending, or a
    second event of a batch under a delivered identifier) holds nothing Stripe counted, and a
    cancel by its identifier would cancel the other event, the delivered one. Letters SQS
    moved after maxReceiveCount, and those of a 5xx or no answer, may hold counted events."""
    sqs = StubSqs(
        [
            [
                _letter("duplicate_identifier_in_batch", "dup-2", value="2"),
                _letter("payload_invalid_value", "bad-now"),
                _letter("http_503", "maybe-1"),
                _letter("no_answer", "maybe-2"),
                sqs_message(json.dumps(api_event("3", "cus_z")), "redriven"),
                # a sync replay of a moved message met 429s: Stripe's code replaced "moved"
                _letter(
                    "rate_limit",
                    "maybe-3",
                    reason=f"{SYNC_REPLAY_PREFIX}HTTP 429",
                    **{ATTR_OUTCOME_UNKNOWN: "true"},
                ),
                _letter("rate_limit", "refused-429"),  # the forwarder's own: never counted
                # a sync replay of a duplicate's letter (its identifier kept) met 429s
                _letter("rate_limit", "dup-3", reason=f"{SYNC_REPLAY_PREFIX}HTTP 429"),
            ]
        ]
    )
    chosen = targets_from_dlq(reader(sqs), Filters(customers={"cus_z"}))
    assert [t.identifier for t in chosen.targets] == [
        "maybe-1",
        "maybe-2",
        "redriven-0",
        "maybe-3",
    ]
    assert chosen.never_sent == {
        "duplicate_identifier_in_batch": 1,
        "payload_invalid_value": 1,
        "rate_limit": 2,
    }
    assert chosen.complete


def test_a_letter_written_for_events_stripe_may_have_counted_says_so_whatever_its_reason() -> None:
    """A sync replay that keeps a moved message's events after 429s writes them under Stripe's
    code: the letter still says Stripe may have counted them, and cancel may take them back.
    One written for a refused event's letter does not."""
    moved = read_message(sqs_message(json.dumps(api_event("3", "cus_z")), "moved"), RULES)
    refused = read_message(
        cast("MessageTypeDef", _letter("duplicate_identifier_in_batch", "dup-1")), RULES
    )
    after_429 = Rejection("rate_limit", f"{SYNC_REPLAY_PREFIX}HTTP 429")
    for message, counted in ((moved, True), (refused, False)):
        (letter,) = rest_letters(message, [e.parsed for e in message.events], after_429)
        written = read_message(
            sqs_message(letter.body, f"{message.message_id}-rest", letter.attributes()), RULES
        )
        assert (written.code, written.may_be_counted) == ("rate_limit", counted)
