"""The delivery ledger: every event Stripe accepted, recorded in S3, to answer "what happened to
this event?" and "are Stripe's totals right?".

Each forwarder invocation writes the events it delivered as one Zstandard-compressed JSON Lines
object, `events/dt=YYYY-MM-DD/hour=HH/<invocation request id>.jsonl.zst` (the hour it delivered
them, UTC), one line per event: when it was delivered, the invocation's request id, the payload
keys of its meter (where the customer and the value are), the SQS message it came from, and the
event itself exactly as the stream call sent it (`event`: event_name, payload, identifier,
timestamp). The queries read the customer and the value out of the payload by those keys.

The line is spliced from the event's text as the producer wrote it (the text the stream call
carried; an event without one is encoded once): the ledger then costs the forwarder no per-event
encoding, and Zstandard at level 1 compresses it in a sixth of gzip's time, to a smaller object.
The write runs beside the dead letters, on a thread of its own; a failed write is tried again
within the deadline, and one that still fails never fails the delivery: its events are counted
(LedgerGap) for an alarm, since Stripe has them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from operator import attrgetter
from typing import TYPE_CHECKING

import msgspec
from botocore.exceptions import BotoCoreError, ClientError

from meter_relay.events import MeterEvent, MeterKeys, ValidationRules, format_timestamp
from meter_relay.observability import logger

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

EVENTS_PREFIX = "events"
SUFFIX = ".jsonl.zst"  # Athena and DuckDB both read Zstandard JSON Lines by this extension
CONTENT_TYPE = "application/zstd"
WRITE_ATTEMPTS = 3
COMPRESS_LEVEL = 1  # the hot path's CPU: level 3 took twice the time here, for no smaller object
# a line repeats its head within a few hundred bytes: a hash table of 2^11 entries (level 1's is
# 2^14) finds those matches in a fifth less time, to objects 2-11% smaller (10,000 events)
COMPRESS_HASH_LOG = 11


class StripeEvent(msgspec.Struct):
    """An event as the stream call sent it."""

    event_name: str
    payload: dict[str, str]
    identifier: str
    timestamp: str


class LedgerLine(msgspec.Struct):
    """One delivered event, as the ledger's JSON Lines (and the Athena/DuckDB table) hold it."""

    delivered_at: str
    request_id: str
    customer_key: str
    value_key: str
    message_id: str
    event: StripeEvent

    @property
    def identifier(self) -> str:
        return self.event.identifier

    @property
    def event_name(self) -> str:
        return self.event.event_name

    @property
    def timestamp(self) -> str:
        return self.event.timestamp

    @property
    def customer(self) -> str:
        return self.event.payload.get(self.customer_key, "")

    @property
    def value(self) -> str:
        return self.event.payload.get(self.value_key, "")


def line_of(
    event: MeterEvent | StripeEvent,
    keys: MeterKeys,
    delivered_at: str,
    message_id: str,
    request_id: str,
) -> LedgerLine:
    """A ledger line built as an object (the writer splices text instead: `ledger_text`)."""
    sent = (
        event
        if isinstance(event, StripeEvent)
        else StripeEvent(event.event_name, dict(event.payload), event.identifier, event.timestamp)
    )
    return LedgerLine(delivered_at, request_id, keys.customer_key, keys.value_key, message_id, sent)


_ENCODER = msgspec.json.Encoder()
_LINES = msgspec.json.Decoder(LedgerLine)


def object_key(prefix: str, delivered_at: datetime, request_id: str) -> str:
    """Where an invocation's events go: partitioned by the UTC date and hour of delivery."""
    day, hour = delivered_at.strftime("%Y-%m-%d"), delivered_at.strftime("%H")
    base = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
    return f"{base}{EVENTS_PREFIX}/dt={day}/hour={hour}/{request_id}{SUFFIX}"


def ledger_text(
    events: Sequence[MeterEvent],
    message_ids: Sequence[str],
    rules: ValidationRules,
    delivered_at: datetime,
    request_id: str,
    event_names: Collection[str] | None = None,
    texts: Sequence[str] | None = None,
) -> bytes:
    """The JSON Lines of events delivered, each with the SQS message id it came from: a line is
    its meter's head (the same for all its events of the invocation), the message id, and the
    event's text as sent, spliced by C loops alone (slices, map, join: no Python per event). If
    a text breaks a line (a producer's pretty-printed JSON), or a message id is not SQS's
    letters, digits and hyphens, each line is built in Python.

    `event_names`: the events' names when known (more will do: Judge.event_names). Taking the
    names from the events was the ledger's dearest step in the forwarder (2 ms of 4.4 for
    10,000 events: every event and its name's string, untouched since they were sent); when
    their meters share their payload keys, as they usually do, no event is read for its head.
    `texts`: the events' texts as sent, when known without reading them (each record's body,
    for a batch of single events that were all usual: 0.7 ms of the ledger's 2 on the
    handler's thread, 10,000 events read again after their calls)."""
    if len(message_ids) != len(events):
        raise ValueError("an event without its message id, or a message id without its event")
    at = format_timestamp(delivered_at)
    heads = _heads(at, request_id, rules, event_names or ())
    shared = set(heads.values())
    if len(shared) != 1:
        # each event's head by its own name (no names given, or their meters' keys differ)
        heads = _heads(at, request_id, rules, set(map(_NAME, events)))
        shared = set(heads.values())
    if texts is None:
        texts = _texts(events)
    elif len(texts) != len(events):
        raise ValueError("an event without its text, or a text without its event")
    if _one_line("".join(texts)) and _plain("".join(message_ids)):
        count = len(events)
        # a line's five parts, laid into one list by slice assignment and joined: joining
        # a list takes two fifths of the time of joining the same parts from an iterator
        parts = [_EVENT] * (5 * count)
        parts[0::5] = (
            [shared.pop()] * count  # one set of payload keys, the usual batch
            if len(shared) == 1
            else list(map(heads.__getitem__, map(_NAME, events)))
        )
        parts[1::5] = message_ids
        parts[3::5] = texts
        parts[4::5] = [_END] * count
        # backslashreplace: a lone surrogate (only ever inside a JSON string) becomes its \u
        # escape
        return "".join(parts).encode("utf-8", "backslashreplace")
    return _lines_one_by_one(events, message_ids, heads)


_NAME, _SOURCE = attrgetter("event_name"), attrgetter("source")
_EVENT, _END = '","event":', "}\n"


def _texts(events: Sequence[MeterEvent]) -> list[str]:
    """Each event's text as its stream call sent it (`MeterEvent.sent_text`, as
    events.stream_body takes it: with the ledger on, an envelope's events keep the text their
    call encoded); when none kept one, msgspec's encoding of them all in one C call, the same
    texts."""
    texts = list(map(_SOURCE, events))
    if None not in texts:
        return texts
    if texts.count(None) == len(texts):
        try:
            return _ENCODER.encode_lines(events).decode().split("\n")[:-1]
        except UnicodeEncodeError:
            pass  # a lone surrogate: that event's text is json's
    return [event.sent_text() for event in events]


def _lines_one_by_one(
    events: Sequence[MeterEvent], message_ids: Sequence[str], heads: dict[str, str]
) -> bytes:
    lines = []
    for event, message_id in zip(events, message_ids, strict=True):
        text = event.source
        if text is None or not _one_line(text):
            text = event.stripe_text()
        escaped = message_id if _plain(message_id) else json.dumps(message_id)[1:-1]
        lines.append(f'{heads[event.event_name]}{escaped}","event":{text}}}\n')
    return "".join(lines).encode("utf-8", "backslashreplace")


def _heads(
    at: str, request_id: str, rules: ValidationRules, names: Collection[str]
) -> dict[str, str]:
    """Each event name's head."""
    return {name: _head(at, request_id, rules.keys_for(name)) for name in names}


def _head(at: str, request_id: str, keys: MeterKeys) -> str:
    fields = {
        "delivered_at": at,
        "request_id": request_id,
        "customer_key": keys.customer_key,
        "value_key": keys.value_key,
    }
    return _ENCODER.encode(fields).decode()[:-1] + ',"message_id":"'


def _one_line(text: str) -> bool:
    return "\n" not in text and "\r" not in text


_PLAIN = bytes(c for c in range(0x20, 0x7F) if c not in b'"\\')


def _plain(text: str) -> bool:
    """Whether text goes into a JSON string as it is: printable ASCII, no quote, no backslash
    (every byte deleted by `translate`, in C: a third of `isprintable`'s time)."""
    return text.isascii() and not text.encode("ascii").translate(None, _PLAIN)


def compress(data: bytes) -> bytes:
    # imported on first use, on the ledger's thread: the forwarder's cold start does not pay it
    import zstandard

    parameters = zstandard.ZstdCompressionParameters.from_level(
        COMPRESS_LEVEL, hash_log=COMPRESS_HASH_LOG
    )
    return zstandard.ZstdCompressor(compression_params=parameters).compress(data)


def decompress(data: bytes) -> bytes:
    import zstandard

    return zstandard.ZstdDecompressor().decompressobj().decompress(data)


def encode(lines: Iterable[msgspec.Struct]) -> bytes:
    """Lines built as objects, as one compressed object (what the other writers put)."""
    return compress(_ENCODER.encode_lines(list(lines)))


def decode(data: bytes) -> list[LedgerLine]:
    text = decompress(data)
    return [_LINES.decode(line) for line in text.splitlines() if line.strip()]


class LedgerWriter:
    """Puts an invocation's ledger object in S3 on a thread of its own (`start`), and `wait`s
    for it within the time the invocation has left."""

    def __init__(
        self,
        bucket: str,
        prefix: str,
        s3: S3Client,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self._s3 = s3
        self._sleep = sleep
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="ledger")

    def start(
        self,
        text: bytes,
        delivered_at: datetime,
        request_id: str,
        time_left: Callable[[], float],
    ) -> Future[None] | None:
        """Compress and write `text` (ledger_text's) on the ledger's thread; None: nothing."""
        if not text:
            return None
        key = object_key(self.prefix, delivered_at, request_id)
        return self._worker.submit(self._write, key, text, time_left)

    def _write(self, key: str, text: bytes, time_left: Callable[[], float]) -> None:
        body = compress(text)
        error: Exception | None = None
        for attempt in range(WRITE_ATTEMPTS):
            if time_left() <= 0:
                break
            try:
                self._s3.put_object(
                    Bucket=self.bucket, Key=key, Body=body, ContentType=CONTENT_TYPE
                )
                return
            except (BotoCoreError, ClientError) as failure:
                error = failure
                self._sleep(min(0.2 * 2**attempt, max(0.0, time_left())))
        raise LedgerGap(
            f"the ledger object {key} was not written: "
            f"{type(error).__name__ if error else 'no time left'}"
        )


class LedgerGap(Exception):
    """An invocation's delivered events are not in the ledger (Stripe has them)."""


def wait(future: Future[None] | None, events: int, time_left: float) -> int:
    """The number of delivered events the ledger lacks after waiting at most `time_left`
    seconds (0 when written): logged, never raised."""
    if future is None:
        return 0
    try:
        future.result(timeout=max(0.0, time_left))
    except TimeoutError:
        logger.error("ledger gap: the write outlasted the invocation", extra={"events": events})
        return events
    except LedgerGap as gap:
        logger.error("ledger gap: %s", gap, extra={"events": events})
        return events
    return 0
