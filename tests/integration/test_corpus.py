"""The bad-input corpus (tests/corpus/): every malformed message dead-lettered with its code,
while the good records of the same batch are delivered.

Each corpus file is one raw SQS message body, byte for byte; tests/corpus/EXPECTED.json says
what must become of it: the whole message dead-lettered with one code (its raw body kept), or
per event, in order, a code or delivery. Timestamps relative to now are placeholders in the
files ({{DAYS_AGO:36}}, {{MINUTES_AHEAD:10}}...), replaced when a test reads them.

The whole corpus goes to the forwarder in one SQS batch with good records (single events and
envelopes) through the harness, against moto and the Stripe emulator; each file is also parsed
alone, in process, to check that it gets the same code when nothing else is around it.
"""

from __future__ import annotations

import json
import random
import re
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from devkit.harness import Invocation
from meter_relay.events import ErrorCode, ValidationRules, format_timestamp, parse_message
from tests.plugins.relay import ROOT, Relay, emf_sums

CORPUS = ROOT / "tests" / "corpus"
EXPECTED_FILE = CORPUS / "EXPECTED.json"
FILE_NAME = re.compile(r"^[0-9]{2,3}-[a-z0-9]+(?:-[a-z0-9]+)*\.(?:json|txt)\Z")
MAX_SQS_MESSAGE_BYTES = 256 * 1024
# What SQS accepts in a message body (anything else, SendMessage refuses).
NOT_SQS_TEXT = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
PLACEHOLDER = re.compile(
    r"\{\{(DAYS_AGO|MINUTES_AHEAD|EPOCH_DAYS_AGO|EPOCH_MS_DAYS_AGO):([0-9]+)(?:\|([^}]*))?\}\}"
)
EAST = timezone(timedelta(hours=2))
DERIVED = object()  # EXPECTED.json leaves "identifier" out: <message id>-<index>
# The forwarder's rules when METER_KEYS and VALUE_RULE are not set (as in the relay fixture).
DEFAULT_RULES = ValidationRules.from_settings("{}", "positive_integer")


# ----- reading the corpus -----------------------------------------------------------------------


@dataclass(frozen=True)
class ExpectedEvent:
    index: int
    code: str | None  # None: valid, must be delivered
    param: str | None
    identifier: str | None  # None: unusable, so the dead letter carries no Identifier


@dataclass(frozen=True)
class CorpusMessage:
    name: str
    message_id: str
    body: str  # placeholders replaced
    message_code: str | None  # the whole body is unusable: one dead letter with this code
    events: tuple[ExpectedEvent, ...]

    @property
    def event_count(self) -> int:
        """Events as the forwarder counts them: an unusable body is one."""
        return len(self.events) or 1

    def delivered(self) -> list[str]:
        return [e.identifier for e in self.events if e.code is None and e.identifier is not None]


def rfc3339(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def substitute(text: str, now: datetime) -> str:
    """Replace the placeholders of a corpus file with times relative to `now` (UTC)."""

    def replace(match: re.Match[str]) -> str:
        kind, amount, fmt = match.group(1), int(match.group(2)), match.group(3)
        if kind == "MINUTES_AHEAD":
            moment = now + timedelta(minutes=amount)
        else:
            moment = now - timedelta(days=amount)
        if kind == "EPOCH_DAYS_AGO":
            return str(int(moment.timestamp()))
        if kind == "EPOCH_MS_DAYS_AGO":
            return str(int(moment.timestamp() * 1000))
        return moment.strftime(fmt) if fmt else rfc3339(moment)

    return PLACEHOLDER.sub(replace, text)


def message_id_of(name: str) -> str:
    """A stable, SQS-like message id per corpus file."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"meter-relay/tests/corpus/{name}"))


@cache
def expected_document() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(EXPECTED_FILE.read_text(encoding="utf-8"))
    return document


def corpus_files() -> list[Path]:
    return sorted(p for p in CORPUS.iterdir() if p.is_file() and FILE_NAME.match(p.name))


def raw_text(path: Path) -> str:
    """The file as SQS would carry it: exact bytes, UTF-8 (no newline translation)."""
    return path.read_bytes().decode("utf-8")


def load_message(path: Path, now: datetime) -> CorpusMessage:
    spec = expected_document()["files"][path.name]
    message_id = message_id_of(path.name)
    body = substitute(raw_text(path), now)
    if "message" in spec:
        return CorpusMessage(path.name, message_id, body, spec["message"], ())
    events: list[ExpectedEvent] = []
    for entry in spec["events"]:
        for _ in range(entry.get("repeat", 1)):
            index = len(events)
            given = entry.get("identifier", DERIVED)
            identifier = f"{message_id}-{index}" if given is DERIVED else given
            code = None if entry.get("deliver") else entry["code"]
            events.append(ExpectedEvent(index, code, entry.get("param"), identifier))
    return CorpusMessage(path.name, message_id, body, None, tuple(events))


def load_corpus(now: datetime) -> list[CorpusMessage]:
    return [load_message(path, now) for path in corpus_files()]


# ----- the corpus itself ------------------------------------------------------------------------


def test_the_corpus_is_complete_and_every_file_is_a_body_sqs_can_carry() -> None:
    files = corpus_files()
    listed = set(expected_document()["files"])
    others = {
        p.name for p in CORPUS.iterdir() if not p.name.startswith(".") and p.name != "EXPECTED.json"
    }
    assert len(files) >= 40
    assert {p.name for p in files} == others, "a corpus file is misnamed"
    assert listed == others, "EXPECTED.json and the corpus files disagree"
    assert len({p.name.split("-")[0] for p in files}) == len(files), "numbers repeat"
    now = datetime.now(UTC)
    for path in files:
        text = raw_text(path)  # UTF-8, or it raises
        body = substitute(text, now)
        assert "{{" not in body, f"{path.name}: an unknown placeholder"
        assert NOT_SQS_TEXT.search(body) is None, f"{path.name}: SQS would refuse this body"
        assert len(body.encode()) <= MAX_SQS_MESSAGE_BYTES, path.name


def test_the_corpus_reaches_every_error_code_and_each_kind_of_fault() -> None:
    corpus = load_corpus(datetime.now(UTC))
    codes = {m.message_code for m in corpus} | {e.code for m in corpus for e in m.events}
    # a gateway's 413 is a matter of the path to Stripe, not of any body; no_meter and
    # archived_meter of the account's meters (test_meter_catalog.py)
    of_bodies = {code.value for code in ErrorCode} - {
        ErrorCode.REQUEST_TOO_LARGE,
        ErrorCode.NO_METER,
        ErrorCode.ARCHIVED_METER,
    }
    assert codes - {None} == of_bodies
    envelopes_with_valid_and_invalid = [
        m for m in corpus if any(e.code is None for e in m.events) and any(e.code for e in m.events)
    ]
    assert len(envelopes_with_valid_and_invalid) >= 3
    sizes = [len(m.body.encode()) for m in corpus]
    assert max(sizes) >= 240_000  # near SQS's 256 KiB
    assert min(sizes) == 0  # the empty body


# ----- each file alone, in process --------------------------------------------------------------


@pytest.mark.parametrize("path", corpus_files(), ids=lambda path: path.name)
def test_a_corpus_file_parsed_alone_gets_its_expected_codes(path: Path) -> None:
    now = datetime.now(UTC)
    message = load_message(path, now)
    parsed = parse_message(message.body, message.message_id, now, DEFAULT_RULES, now)

    if message.message_code is not None:
        assert parsed.rejection is not None, "the body was expected to be unusable"
        assert parsed.rejection.code == message.message_code, parsed.rejection
        assert parsed.rejection.message
        assert parsed.events == []
        return
    assert parsed.rejection is None, parsed.rejection
    assert len(parsed.events) == len(message.events)
    for got, want in zip(parsed.events, message.events, strict=True):
        assert got.index == want.index
        assert got.identifier == want.identifier
        if want.code is None:
            assert got.rejection is None, (want.index, got.rejection)
            assert got.event is not None
            assert got.event.identifier == want.identifier
            continue
        assert got.event is None
        assert got.rejection is not None, f"event {want.index} was expected to be rejected"
        assert got.rejection.code == want.code, (want.index, got.rejection)
        if want.param is not None:
            assert got.rejection.param == want.param, (want.index, got.rejection)
        assert got.rejection.message


# ----- the whole corpus in one batch, with good records ----------------------------------------


def api_event(identifier: str | None, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "event_name": "api_requests",
        "payload": {"stripe_customer_id": "cus_good", "value": "1"},
    }
    if identifier is not None:
        body["identifier"] = identifier
    body.update(fields)
    return body


def good_records(now: datetime) -> list[tuple[str, str, list[str]]]:
    """(message id, body, identifiers it must deliver): the valid traffic around the corpus."""
    records: list[tuple[str, dict[str, Any] | str, list[str]]] = [
        (
            "good-given",
            api_event("good-1", payload={"stripe_customer_id": "cus_a", "value": "3"}),
            ["good-1"],
        ),
        (
            "good-derived",
            api_event(None, payload={"stripe_customer_id": "cus_b", "value": 7}),
            ["good-derived-0"],
        ),
        (
            "good-epoch",
            api_event("good-epoch", timestamp=int(now.timestamp()) - 3600),
            ["good-epoch"],
        ),
        (
            "good-offset",
            api_event(
                "good-offset",
                timestamp=(now - timedelta(hours=2)).astimezone(EAST).isoformat("T", "seconds"),
            ),
            ["good-offset"],
        ),
        (
            "good-34-days",
            api_event("good-34-days", timestamp=rfc3339(now - timedelta(days=34))),
            ["good-34-days"],
        ),
        (
            "good-4-minutes-ahead",
            api_event("good-ahead", timestamp=rfc3339(now + timedelta(minutes=4))),
            ["good-ahead"],
        ),
        ("good-100-char-identifier", api_event("g" * 100), ["g" * 100]),
        (
            "good-unicode",
            json.dumps(
                api_event(
                    "good-unicode", payload={"stripe_customer_id": "cus_ünïcødé", "value": "2"}
                ),
                ensure_ascii=False,
            ),
            ["good-unicode"],
        ),
        (
            "good-envelope-small",
            {"events": [api_event(f"good-env-{n}") for n in range(3)]},
            [f"good-env-{n}" for n in range(3)],
        ),
        (
            "good-envelope-150",
            {
                "events": [
                    api_event(None, payload={"stripe_customer_id": "cus_c", "value": n + 1})
                    for n in range(150)
                ]
            },
            [f"good-envelope-150-{n}" for n in range(150)],
        ),
    ]
    return [
        (mid, body if isinstance(body, str) else json.dumps(body), ids)
        for mid, body, ids in records
    ]


def batch_failures(invocation: Invocation) -> list[str]:
    assert invocation.error is None, invocation.error
    result = invocation.result
    assert isinstance(result, dict)
    assert set(result) == {"batchItemFailures"}
    return [item["itemIdentifier"] for item in result["batchItemFailures"]]


def sqs_text(value: str) -> str:
    return NOT_SQS_TEXT.sub("\ufffd", value)


def canonical(document: Any) -> str:
    """A comparable text of a JSON document (NaN compares equal to itself here)."""
    return json.dumps(document, sort_keys=True)


def expected_letter_body(message: CorpusMessage, event: ExpectedEvent, sent: str) -> str:
    """The dead letter of a rejected event: the event as sent, its identifier written in, and
    the message's send time as its timestamp when it had none."""
    raw = json.loads(message.body)
    entry = raw["events"][event.index] if isinstance(raw, dict) and "events" in raw else raw
    if isinstance(entry, dict) and event.identifier is not None:
        entry = {**entry, "identifier": event.identifier}
        if entry.get("timestamp") is None:
            entry["timestamp"] = sent
    return canonical(entry)


@pytest.mark.integration
def test_the_whole_corpus_in_one_batch_is_dead_lettered_while_good_records_are_delivered(
    relay: Relay, capfd: pytest.CaptureFixture[str]
) -> None:
    now = datetime.now(UTC)
    corpus = load_corpus(now)
    good = good_records(now)
    records = [(m.message_id, m.body) for m in corpus] + [(mid, body) for mid, body, _ in good]
    random.Random(5).shuffle(records)  # good and bad records interleaved
    sqs_event = relay.sqs_event([body for _, body in records], [mid for mid, _ in records])
    relay.put_session()
    capfd.readouterr()
    with relay.forwarder() as forwarder:
        invocation = forwarder.invoke(sqs_event)
    metrics = emf_sums(capfd.readouterr().out)

    # nothing goes back to the queue: every record is settled in this invocation
    assert batch_failures(invocation) == []

    # every valid event, good record or inside a mixed envelope, counted once at Stripe (an
    # event sent twice, the same both times, is received twice and counted once)
    must_deliver = [i for _, _, ids in good for i in ids] + [
        i for m in corpus for i in m.delivered()
    ]
    identifiers = relay.emulator.identifiers()
    assert {k: v["counted"] for k, v in identifiers.items()} == dict.fromkeys(must_deliver, 1)
    assert {k: v["received"] for k, v in identifiers.items()} == Counter(must_deliver)
    assert relay.emulator.counted_more_than_once() == []
    assert relay.emulator.errors()["total"] == 0  # nothing invalid slipped through to Stripe
    assert {e["status"] for e in relay.emulator.requests(endpoint="stream")} == {200}

    # every corpus message dead-lettered with its codes, once
    by_id = {m.message_id: m for m in corpus}
    letters: dict[tuple[str, int | None], dict[str, Any]] = {}
    for letter in relay.dlq_messages():
        attributes = letter["attributes"]
        index = int(attributes["EventIndex"]) if "EventIndex" in attributes else None
        key = (attributes["SourceMessageId"], index)
        assert key not in letters, f"dead-lettered twice: {key}"
        letters[key] = letter
    expected_codes: dict[tuple[str, int | None], str] = {}
    for m in corpus:
        if m.message_code is not None:
            expected_codes[(m.message_id, None)] = m.message_code
        for e in m.events:
            if e.code is not None:
                expected_codes[(m.message_id, e.index)] = e.code
    got_codes = {key: letter["attributes"]["ErrorCode"] for key, letter in letters.items()}
    mismatched = {
        (by_id[key[0]].name if key[0] in by_id else key[0], key[1]): (
            expected_codes.get(key),
            got_codes.get(key),
        )
        for key in expected_codes.keys() | got_codes.keys()
        if expected_codes.get(key) != got_codes.get(key)
    }
    assert mismatched == {}

    sent = {
        record["messageId"]: format_timestamp(
            datetime.fromtimestamp(int(record["attributes"]["SentTimestamp"]) / 1000, UTC)
        )
        for record in sqs_event["Records"]
    }
    for (message_id, index), letter in letters.items():
        message = by_id[message_id]
        attributes = letter["attributes"]
        assert attributes["ErrorMessage"], message.name
        if index is None:  # the body was unusable: kept exactly as it came
            assert letter["body"] == message.body, message.name
            assert "Identifier" not in attributes
            continue
        event = message.events[index]
        assert attributes.get("Identifier") == event.identifier, (message.name, index)
        if event.param is not None:
            assert attributes.get("ErrorParam") == event.param, (message.name, index)
        body = json.loads(letter["body"])
        expected = expected_letter_body(message, event, sent[message_id])
        assert canonical(body) == expected, (message.name, index)
        name = body.get("event_name") if isinstance(body, dict) else None
        if isinstance(name, str) and name:  # odd characters made safe for SQS, not dropped
            assert attributes.get("EventName") == sqs_text(name)[:1024], (message.name, index)

    # nothing lost: every event of the batch ended delivered or dead-lettered, in one place
    received = sum(m.event_count for m in corpus) + sum(len(ids) for _, _, ids in good)
    assert received == len(must_deliver) + len(letters)
    assert metrics["EventsReceived"] == received
    assert metrics["EventsDelivered"] == len(must_deliver)
    assert metrics["EventsDeadLettered"] == len(letters)
    assert metrics["EventsRetried"] == 0
