"""How the forwarder reads a batch's records (forwarder.Batch.read_into), without the network:
a run that takes what the delivery would be handed."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest

from meter_relay import forwarder
from meter_relay.events import Judge, MeterEvent, ValidationRules, format_timestamp
from meter_relay.forwarder import Batch
from meter_relay.ledger import encode_message_ids as ledger_encode

NOW = datetime(2026, 12, 7, 12, tzinfo=UTC)


class TakenRun:
    """What a DeliveryRun is handed: each event and its tag, in order."""

    def __init__(self) -> None:
        self.events: list[MeterEvent] = []
        self.tags: list[tuple[int, int]] = []

    def add(self, event: MeterEvent, tag: tuple[int, int]) -> int:
        self.events.append(event)
        self.tags.append(tag)
        return len(self.events) - 1

    def extend(self, events: Sequence[MeterEvent], tags: Iterable[tuple[int, int]]) -> None:
        self.events.extend(events)
        self.tags.extend(tags)


def records(count: int, prefix: str = "e") -> list[dict[str, Any]]:
    body = {
        "event_name": "api_requests",
        "payload": {"stripe_customer_id": "cus_1", "value": "1"},
        "timestamp": format_timestamp(NOW),
    }
    return [
        {"messageId": f"m-{n}", "body": json.dumps({**body, "identifier": f"{prefix}{n}"})}
        for n in range(count)
    ]


def read(batch_records: list[dict[str, Any]], encode_ids: bool = False) -> tuple[Batch, TakenRun]:
    batch, run = Batch(batch_records, Judge(ValidationRules(), NOW), encode_ids), TakenRun()
    batch.read_into(run)  # type: ignore[arg-type]
    return batch, run


def test_single_event_records_are_tagged_with_their_message_across_runs() -> None:
    batch, run = read(records(250))
    assert run.tags == [(m, 0) for m in range(250)]
    assert [event.identifier for event in run.events] == [f"e{n}" for n in range(250)]
    assert batch.message_ids == [f"m-{n}" for n in range(250)]
    assert batch.received == 250


def test_the_tags_of_single_event_messages_are_made_once_per_environment() -> None:
    """10,000 tag tuples made and freed with every batch cost 1-1.5 ms: the next batch takes
    the same ones."""
    _, first = read(records(150))
    _, second = read(records(150, prefix="f"))
    assert all(a is b for a, b in zip(first.tags, second.tags, strict=True))


def test_a_record_without_a_body_is_read_on_its_own() -> None:
    batch_records = records(3)
    del batch_records[1]["body"]
    batch, run = read(batch_records)
    assert run.tags == [(0, 0), (2, 0)]
    assert batch.read_in_full[1].rejection is not None


def test_the_identifier_table_goes_once_the_batch_is_read() -> None:
    batch, _ = read(records(3))
    batch.judge.forget_identifiers()
    again = batch.judge.read_singles([records(1)[0]["body"]], ["m-again"])
    assert again.usual  # e0 is no longer a duplicate to judge against


def test_the_texts_of_a_batch_whose_every_record_was_usual_are_its_bodies() -> None:
    """The ledger takes them instead of reading every event again after its call."""
    usual = records(150)
    batch, run = read(usual)
    assert batch.usual_texts == [record["body"] for record in usual]
    assert batch.usual_texts == [event.source for event in run.events]
    spaced = records(150)
    spaced[120]["body"] = " " + spaced[120]["body"]  # read on its own: sent as it was judged
    assert read(spaced)[0].usual_texts is None


def test_with_the_ledger_the_message_ids_are_encoded_a_lines_worth_at_a_time() -> None:
    batch, _ = read(records(250), encode_ids=True)
    assert batch.encoded_ids == [
        json.dumps(
            [f"m-{n}" for n in range(start, min(start + 100, 250))], separators=(",", ":")
        ).encode()
        for start in (0, 100, 200)
    ]


def test_the_message_ids_are_not_encoded_once_a_record_is_not_one_event(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An envelope's events share its message id: the ledger's lines cannot take the ids as
    read, so the records after its part are not encoded (a part's ids are encoded before it is
    read)."""
    batch_records = records(250)
    envelope = {"events": [json.loads(batch_records[5]["body"])]}
    batch_records[5] = {"messageId": "m-5", "body": json.dumps(envelope)}
    encoded: list[Sequence[str]] = []

    def encode_message_ids(ids: Sequence[str]) -> list[bytes]:
        encoded.append(ids)
        return ledger_encode(ids)

    monkeypatch.setattr(forwarder, "encode_message_ids", encode_message_ids)

    batch, run = read(batch_records, encode_ids=True)

    assert batch.envelopes == {5: 1}
    assert len(run.events) == 250
    assert batch.encoded_ids is None
    assert encoded == [[f"m-{n}" for n in range(100)]]  # the first part only
