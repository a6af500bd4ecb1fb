"""Dead letters without AWS: their message attributes, their size, and how they are batched."""

from __future__ import annotations

import itertools
import json
import threading
from typing import TYPE_CHECKING, Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meter_relay.dead_letter import (
    ATTR_ERROR_CODE,
    ATTR_ERROR_MESSAGE,
    ATTR_ERROR_PARAM,
    ATTR_EVENT_INDEX,
    ATTR_EVENT_NAME,
    ATTR_FIRST_SEEN,
    ATTR_IDENTIFIER,
    ATTR_SOURCE_MESSAGE_ID,
    MAX_ATTRIBUTE_TEXT,
    MAX_BATCH_BYTES,
    MAX_BATCH_ENTRIES,
    DeadLetter,
    DeadLetterQueue,
    _batches,
)
from meter_relay.sqs_batches import envelopes

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient

KIB = 1024


def letter(body: str = '{"event_name": "api_requests"}', **fields: Any) -> DeadLetter:
    base: dict[str, Any] = {
        "code": "payload_invalid_value",
        "message": "value '0' is not a positive integer",
        "source_message_id": "3f1c0d8e-1b2a-4c5d-9e8f-0a1b2c3d4e5f",
        "first_seen": "2026-06-01T12:00:00.000Z",
    }
    base.update(fields)
    return DeadLetter(body, **base)


def texts(attributes: dict[str, Any]) -> dict[str, str]:
    return {name: value["StringValue"] for name, value in attributes.items()}


# ----- attributes -------------------------------------------------------------------------------


def test_every_attribute_of_an_event_letter() -> None:
    attributes = letter(
        event_index=3,
        event_name="api_requests",
        identifier="3f1c0d8e-1b2a-4c5d-9e8f-0a1b2c3d4e5f-3",
        param="payload.value",
    ).attributes()
    assert attributes == {
        ATTR_ERROR_CODE: {"DataType": "String", "StringValue": "payload_invalid_value"},
        ATTR_ERROR_MESSAGE: {
            "DataType": "String",
            "StringValue": "value '0' is not a positive integer",
        },
        ATTR_ERROR_PARAM: {"DataType": "String", "StringValue": "payload.value"},
        ATTR_SOURCE_MESSAGE_ID: {
            "DataType": "String",
            "StringValue": "3f1c0d8e-1b2a-4c5d-9e8f-0a1b2c3d4e5f",
        },
        ATTR_FIRST_SEEN: {"DataType": "String", "StringValue": "2026-06-01T12:00:00.000Z"},
        ATTR_EVENT_NAME: {"DataType": "String", "StringValue": "api_requests"},
        ATTR_IDENTIFIER: {
            "DataType": "String",
            "StringValue": "3f1c0d8e-1b2a-4c5d-9e8f-0a1b2c3d4e5f-3",
        },
        ATTR_EVENT_INDEX: {"DataType": "Number", "StringValue": "3"},
    }


def test_a_whole_message_letter_has_no_event_attributes() -> None:
    attributes = letter(
        "not json", code="message_not_json", message="body is not JSON"
    ).attributes()
    assert set(attributes) == {
        ATTR_ERROR_CODE,
        ATTR_ERROR_MESSAGE,
        ATTR_SOURCE_MESSAGE_ID,
        ATTR_FIRST_SEEN,
    }


def test_empty_values_are_left_out_since_sqs_refuses_them() -> None:
    attributes = letter(message="", event_name="", identifier="", param="").attributes()
    assert set(attributes) == {ATTR_ERROR_CODE, ATTR_SOURCE_MESSAGE_ID, ATTR_FIRST_SEEN}
    assert all(value["StringValue"] for value in attributes.values())


def test_event_index_zero_is_kept_as_a_number() -> None:
    attributes = letter(event_index=0).attributes()
    assert attributes[ATTR_EVENT_INDEX] == {"DataType": "Number", "StringValue": "0"}


def test_long_texts_are_cut_to_1024_characters() -> None:
    attributes = texts(
        letter(message="m" * 5000, event_name="é" * 1025, identifier="i" * 1024).attributes()
    )
    assert MAX_ATTRIBUTE_TEXT == 1024
    assert attributes[ATTR_ERROR_MESSAGE] == "m" * 1024
    assert attributes[ATTR_EVENT_NAME] == "é" * 1024
    assert attributes[ATTR_IDENTIFIER] == "i" * 1024


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        ("\ud800lone", "\ufffdlone"),  # a lone surrogate, as JSON's "\ud800" escape gives
        ("a\x00b\x1fc", "a\ufffdb\ufffdc"),
        ("tab\tnew\nline\rok", "tab\tnew\nline\rok"),
        ("emoji 😀 日本 é", "emoji 😀 日本 é"),
        ("\ufffe\uffff", "\ufffd\ufffd"),
    ],
)
def test_text_sqs_refuses_is_replaced_in_attributes(text: str, kept: str) -> None:
    dead = letter(event_name=text, param=text, identifier=text)
    attributes = texts(dead.attributes())
    assert attributes[ATTR_EVENT_NAME] == attributes[ATTR_ERROR_PARAM] == kept
    assert attributes[ATTR_IDENTIFIER] == kept
    assert dead.size() > 0  # encodable: it used to raise UnicodeEncodeError


def test_the_size_counts_the_body_and_every_attribute_in_utf8_bytes() -> None:
    dead = letter("é" * 10, event_index=12, event_name="日本")
    attributes = dead.attributes()
    expected = 20 + sum(
        len(name) + len(value["DataType"]) + len(value["StringValue"].encode())
        for name, value in attributes.items()
    )
    assert dead.size() == expected
    assert dead.size() > len(dead.body.encode()) + len("日本".encode())


# ----- batches ----------------------------------------------------------------------------------


def sizes_of(batches: list[list[DeadLetter]]) -> list[int]:
    return [sum(letter.size() for letter in batch) for batch in batches]


def test_no_letters_make_no_batch() -> None:
    assert list(_batches([])) == []


@pytest.mark.parametrize(
    ("count", "expected"), [(1, [1]), (10, [10]), (11, [10, 1]), (25, [10, 10, 5])]
)
def test_a_batch_holds_at_most_ten_letters(count: int, expected: list[int]) -> None:
    letters = [letter(event_index=i) for i in range(count)]
    batches = list(_batches(letters))
    assert MAX_BATCH_ENTRIES == 10
    assert [len(batch) for batch in batches] == expected
    assert [dead for batch in batches for dead in batch] == letters


def test_a_batch_holds_at_most_256_kib() -> None:
    letters = [letter("x" * (60 * KIB), event_index=i) for i in range(9)]
    batches = list(_batches(letters))
    assert MAX_BATCH_BYTES == 256 * KIB
    assert [len(batch) for batch in batches] == [4, 4, 1]
    assert all(size <= MAX_BATCH_BYTES for size in sizes_of(batches))
    assert [dead for batch in batches for dead in batch] == letters


def test_attributes_count_towards_the_256_kib() -> None:
    """Four bodies of exactly 64 KiB fit only without their attributes: three go together."""
    letters = [letter("x" * (64 * KIB), event_index=i) for i in range(4)]
    assert sum(len(dead.body) for dead in letters) == MAX_BATCH_BYTES
    assert [len(batch) for batch in _batches(letters)] == [3, 1]


def test_letters_that_exactly_fill_256_kib_share_a_batch() -> None:
    first = letter("x" * (100 * KIB))
    second = letter("x")
    room = MAX_BATCH_BYTES - first.size() - second.size()
    overhead = letter("").size()  # the attributes
    third = letter("x" * (room - overhead))
    assert first.size() + second.size() + third.size() == MAX_BATCH_BYTES
    assert [len(batch) for batch in _batches([first, second, third])] == [3]
    fourth = letter("x" * (room - overhead + 1))
    assert [len(batch) for batch in _batches([first, second, fourth])] == [2, 1]


def test_a_letter_over_256_kib_goes_alone_and_the_rest_keep_their_order() -> None:
    small = [letter(event_index=i) for i in range(3)]
    huge = letter("x" * (300 * KIB), event_index=99)
    batches = list(_batches([small[0], huge, small[1], small[2]]))
    assert batches == [[small[0]], [huge], [small[1], small[2]]]


def test_a_large_letter_after_a_full_count_starts_a_new_batch() -> None:
    letters = [letter(event_index=i) for i in range(10)] + [letter("x" * (200 * KIB))]
    assert [len(batch) for batch in _batches(letters)] == [10, 1]


# ----- sending within the time left --------------------------------------------------------------


class HangingSqs:
    """SendMessageBatch that answers at once, except for batches holding a 'hang' letter."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.sent: list[str] = []

    def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, Any]]) -> dict[str, Any]:
        if any("hang" in entry["MessageBody"] for entry in Entries):
            self.release.wait(timeout=30)
        self.sent.extend(entry["MessageBody"] for entry in Entries)
        return {"Successful": [{"Id": entry["Id"]} for entry in Entries], "Failed": []}


def test_letters_not_sent_within_the_time_left_are_reported_unsent() -> None:
    sqs = HangingSqs()
    queue = DeadLetterQueue("https://sqs.example/dlq", cast("SQSClient", sqs))
    quick = [letter(f'{{"n": {i}}}') for i in range(25)]
    slow = [letter('{"hang": 1}')]
    try:
        unsent = queue.send([*quick, *slow], time_left=lambda: 0.5)
    finally:
        sqs.release.set()
    # the batch holding the hanging letter was not confirmed in time: its letters come back
    # unsent (so their messages are retried); every other batch went through
    assert slow[0] in unsent
    assert all(one not in unsent for one in quick[:20])
    assert len(unsent) <= MAX_BATCH_ENTRIES


def test_without_a_time_limit_every_letter_is_sent() -> None:
    sqs = HangingSqs()
    queue = DeadLetterQueue("https://sqs.example/dlq", cast("SQSClient", sqs))
    letters = [letter(f'{{"n": {i}}}') for i in range(35)]
    assert queue.send(letters) == []
    assert sorted(sqs.sent) == sorted(one.body for one in letters)


def test_batches_not_started_in_time_are_never_sent() -> None:
    sqs = HangingSqs()
    queue = DeadLetterQueue("https://sqs.example/dlq", cast("SQSClient", sqs))
    hanging = [letter('{"hang": 1}') for _ in range(4 * MAX_BATCH_ENTRIES)]  # every sender busy
    waiting = [letter(f'{{"n": {i}}}') for i in range(30)]
    unsent = queue.send([*hanging, *waiting], time_left=lambda: 0.3)
    sqs.release.set()
    queue._senders.shutdown(wait=True)  # whatever was started has finished now
    assert unsent == [*hanging, *waiting]
    # the senders were busy, so the other batches had not started: cancelled, never sent
    assert not any('"n"' in body for body in sqs.sent)


def test_no_time_left_sends_nothing() -> None:
    sqs = HangingSqs()
    queue = DeadLetterQueue("https://sqs.example/dlq", cast("SQSClient", sqs))
    letters = [letter(f'{{"n": {i}}}') for i in range(5)]
    assert queue.send(letters, time_left=lambda: -1.0) == letters
    assert sqs.sent == []


# ----- envelopes: events written back as messages SQS takes -------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    texts=st.lists(st.integers(min_value=1, max_value=120), min_size=1, max_size=60),
    room=st.integers(min_value=40, max_value=800),
)
def test_envelopes_keep_every_event_once_in_order_within_the_room(
    texts: list[int], room: int
) -> None:
    """Each run's body is its one event's text, or an envelope of at most `room` bytes (one
    event larger than that goes alone); together, the runs are the events in order."""
    events = [{"n": n, "pad": "é" * size} for n, size in enumerate(texts)]
    runs = list(envelopes(events, json.dumps, room))
    assert [e for run, _ in runs for e in run] == events
    for run, body in runs:
        if len(run) == 1:
            assert body == json.dumps(run[0])
        else:
            assert len(body.encode()) <= room
            assert json.loads(body) == {"events": run}
    for (run, _), (after, _) in itertools.pairwise(runs):  # none could take the next's first
        joined = '{"events":[' + ",".join(json.dumps(e) for e in [*run, after[0]]) + "]}"
        assert len(joined.encode()) > room
