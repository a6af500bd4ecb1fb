"""The delivery ledger: every event Stripe accepted, recorded in S3, to answer "what happened to
this event?" and "are Stripe's totals right?".

Each forwarder invocation writes the events it delivered as one Zstandard-compressed JSON Lines
object, `events/dt=YYYY-MM-DD/hour=HH/<invocation request id>.jsonl.zst` (the hour it wrote
them, UTC). A line holds up to 100 events (a stream call's worth) whose meters read the same
payload keys: when they were delivered (`delivered_at`: when the invocation began, before its
calls, so that a Stripe error report on them is always later), the invocation's request id,
those payload keys (where
the customer and the value are), `message_ids` (the SQS message of each event, in order) and
`events`, each event exactly as the stream call sent it (event_name, payload, identifier,
timestamp). The queries unnest the lines into one row per event (ledger_sql.EVENTS_VIEW); read
here, `decode` gives one LedgerLine per event.

A line is its stream call's body as sent, or spliced from the events' texts as the producers
wrote them (the texts the stream calls carried; an event without one is encoded once), and its
message ids are one msgspec encoding: the ledger costs the forwarder no per-event Python. (A
line per event, the format before, repeated its head, 165 of its 395 bytes, and took 4 MB of
lines a 10,000-event batch instead of 2.2.) The write runs beside the dead letters, on a
thread of its own; a failed write is tried again within the deadline, and one that still fails
never fails the delivery: its events are counted (LedgerGap) for an alarm, since Stripe has
them.
"""

from __future__ import annotations

import base64
import json
import os
import re
import time
import zlib
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from itertools import groupby
from operator import attrgetter
from typing import TYPE_CHECKING, Any
from urllib.request import getproxies

import certifi
import msgspec
import urllib3
from botocore.auth import AUTH_TYPE_MAPS
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import BotoCoreError, ClientError
from botocore.utils import percent_encode

from meter_relay.events import (
    MeterEvent,
    MeterKeys,
    ValidationRules,
    compact_json,
    format_timestamp,
)
from meter_relay.observability import logger

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

EVENTS_PREFIX = "events"
SUFFIX = ".jsonl.zst"  # Athena and DuckDB both read Zstandard JSON Lines by this extension
CONTENT_TYPE = "application/zstd"
WRITE_ATTEMPTS = 3
# a kept connection S3 closed while the environment was frozen fails the next PUT: sent again
# once, on a new connection (a PUT of the same key and body may be repeated); no redirects
_ONE_RETRY = urllib3.Retry(total=1, redirect=False)
_S3_ERROR_CODE = re.compile(rb"<Code>([^<]{1,100})</Code>")
EVENTS_PER_LINE = 100  # a stream call's worth
COMPRESS_LEVEL = 1  # the hot path's CPU: level 3 took twice the time here, for no smaller object
# the lines repeat their keys within a few hundred bytes: a hash table of 2^11 entries (level 1's
# is 2^14) finds those matches in a fifth less time, to objects 2-11% smaller (10,000 events)
COMPRESS_HASH_LOG = 11


class StripeEvent(msgspec.Struct):
    """An event as the stream call sent it."""

    event_name: str
    payload: dict[str, str]
    identifier: str
    timestamp: str


class LedgerLine(msgspec.Struct):
    """One delivered event, as the queries see it (a row of ledger_sql.EVENTS_VIEW)."""

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


class DeliveredEvents(msgspec.Struct):
    """A line of the ledger's objects: events delivered by one invocation whose meters read the
    same payload keys, each with the SQS message it came from (`message_ids[i]`: `events[i]`'s)."""

    delivered_at: str
    request_id: str
    customer_key: str
    value_key: str
    message_ids: list[str]
    events: list[StripeEvent]

    def lines(self) -> list[LedgerLine]:
        if len(self.message_ids) != len(self.events):
            raise ValueError("a ledger line's message_ids and events differ in number")
        head = (self.delivered_at, self.request_id, self.customer_key, self.value_key)
        return [
            LedgerLine(*head, message_id, event)
            for message_id, event in zip(self.message_ids, self.events, strict=True)
        ]


def line_of(
    event: MeterEvent | StripeEvent,
    keys: MeterKeys,
    delivered_at: str,
    message_id: str,
    request_id: str,
) -> LedgerLine:
    """A delivered event as the ledger reads back (the writer splices text instead:
    `ledger_text`)."""
    sent = (
        event
        if isinstance(event, StripeEvent)
        else StripeEvent(event.event_name, dict(event.payload), event.identifier, event.timestamp)
    )
    return LedgerLine(delivered_at, request_id, keys.customer_key, keys.value_key, message_id, sent)


_ENCODER = msgspec.json.Encoder()
_LINES = msgspec.json.Decoder(DeliveredEvents)


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
    calls: Sequence[tuple[range, bytes]] | None = None,
    encoded_ids: Sequence[bytes] | None = None,
) -> bytes:
    """The JSON Lines of events delivered, each with the SQS message id it came from: a line
    is up to EVENTS_PER_LINE events whose meters read the same payload keys, spliced from their
    head (the same for all the invocation's events of those meters), one encoding of their
    message ids and their texts as sent, joined (C loops: no Python per event). A text that
    breaks a line (a producer's pretty-printed JSON) is encoded compactly instead.

    `calls`: the stream calls' positions and bodies (DeliveryReport.delivered_bodies), when
    they cover the events in order: a call's body, `{"events":[...]}`, is the end of its line
    as it is, and the events' texts are not joined again, 2.2 MB a 10,000-event batch read back
    from memory once the calls are done (the handler's step 0.8 ms instead of 1.1).

    `event_names`: the events' names when known (more will do: Judge.event_names). Taking the
    names from the events was the ledger's dearest step in the forwarder (2 ms of 4.4 for
    10,000 events: every event and its name's string, untouched since they were sent); when
    their meters share their payload keys, as they usually do, no event is read for its head.
    `texts`: the events' texts as sent, when known without reading them (each record's body,
    for a batch of single events that were all usual: 0.7 ms of the ledger's 2 on the
    handler's thread, 10,000 events read again after their calls).
    `encoded_ids`: `message_ids` encoded EVENTS_PER_LINE at a time (encode_message_ids), when
    they were encoded while the batch was read and its ids were in the CPU's cache (for 10,000
    ids, this step 0.55 ms less and the reading 0.38 ms more: about 0.2 ms less in all)."""
    if len(message_ids) != len(events):
        raise ValueError("an event without its message id, or a message id without its event")
    if texts is not None and len(texts) != len(events):
        raise ValueError("an event without its text, or a text without its event")
    at = format_timestamp(delivered_at)
    heads = _heads(at, request_id, rules, event_names or ())
    shared = _shared(heads)
    if shared is None:
        # each event's head by its own name (no names given, or their meters' keys differ)
        heads = _heads(at, request_id, rules, set(map(_NAME, events)))
        shared = _shared(heads)
    ids = _Ids(message_ids, encoded_ids)
    if calls is not None and shared is not None and _in_order(calls, len(events)):
        return _lines_of_calls(events, ids, shared, texts, calls)
    if texts is None:
        texts = _texts(events)
    parts: list[bytes] = []
    for head, start, stop in _runs(events, heads, shared):
        parts += _text_line(head, ids.of(start, stop), texts, events, start, stop)
    return b"".join(parts)


_NAME, _SOURCE = attrgetter("event_name"), attrgetter("source")


def _shared(heads: dict[str, bytes]) -> bytes | None:
    """The one head of all the events' meters (None: their payload keys differ, or none)."""
    distinct = set(heads.values())
    return distinct.pop() if len(distinct) == 1 else None


def _runs(
    events: Sequence[MeterEvent], heads: dict[str, bytes], shared: bytes | None
) -> Iterator[tuple[bytes, int, int]]:
    """Each line's head and the positions of its events: runs of events of the same head, of
    EVENTS_PER_LINE at most."""
    if shared is not None:  # one set of payload keys, the usual batch
        for start, stop in _spans(0, len(events)):
            yield shared, start, stop
        return
    start = 0
    for head, run in groupby(map(heads.__getitem__, map(_NAME, events))):
        stop = start + sum(1 for _ in run)
        for first, last in _spans(start, stop):
            yield head, first, last
        start = stop


def _spans(start: int, stop: int) -> Iterator[tuple[int, int]]:
    """Positions `start` to `stop` in spans of EVENTS_PER_LINE at most: a line's events."""
    for first in range(start, stop, EVENTS_PER_LINE):
        yield first, min(first + EVENTS_PER_LINE, stop)


def _in_order(calls: Sequence[tuple[range, bytes]], count: int) -> bool:
    """Whether the calls' positions are 0 to `count`, one after the other."""
    at = 0
    for part, _ in calls:
        if part.start != at:
            return False
        at = part.stop
    return at == count


_BODY_START = b'{"events":['


def _lines_of_calls(
    events: Sequence[MeterEvent],
    message_ids: _Ids,
    head: bytes,
    texts: Sequence[str] | None,
    calls: Sequence[tuple[range, bytes]],
) -> bytes:
    """A line per call, its body spliced in as it was sent (but for a body holding a line
    break: its events' texts, a pretty-printed one encoded compactly)."""
    parts: list[bytes | memoryview] = []
    for part, body in calls:
        ids = message_ids.of(part.start, part.stop)
        if body.startswith(_BODY_START) and b"\n" not in body and b"\r" not in body:
            parts += (head, ids, b",", memoryview(body)[1:], b"\n")  # "events":[...]}
        else:
            if texts is None:
                texts = _texts(events)
            parts += _text_line(head, ids, texts, events, part.start, part.stop)
    return b"".join(parts)


def _message_ids(message_ids: Sequence[str]) -> bytes:
    try:
        return _ENCODER.encode(message_ids)
    except UnicodeEncodeError:  # a lone surrogate: json's \u escape
        return json.dumps(list(message_ids)).encode()


def encode_message_ids(message_ids: Sequence[str]) -> list[bytes]:
    """Message ids as a line holds them, EVENTS_PER_LINE at a time (ledger_text's
    `encoded_ids`, a batch's records read EVENTS_PER_LINE at a time)."""
    return [_message_ids(message_ids[start:stop]) for start, stop in _spans(0, len(message_ids))]


class _Ids:
    """A line's message ids, encoded: taken from `encoded` (encode_message_ids of all the ids)
    when the line's events are one of its spans, else encoded here."""

    def __init__(self, message_ids: Sequence[str], encoded: Sequence[bytes] | None) -> None:
        self.message_ids = message_ids
        spans = -(-len(message_ids) // EVENTS_PER_LINE)
        self.encoded = encoded if encoded is not None and len(encoded) == spans else None

    def of(self, start: int, stop: int) -> bytes:
        span = start % EVENTS_PER_LINE == 0 and stop == min(
            start + EVENTS_PER_LINE, len(self.message_ids)
        )
        if self.encoded is not None and span:
            return self.encoded[start // EVENTS_PER_LINE]
        return _message_ids(self.message_ids[start:stop])


def _text_line(
    head: bytes,
    ids: bytes,
    texts: Sequence[str],
    events: Sequence[MeterEvent],
    start: int,
    stop: int,
) -> tuple[bytes, ...]:
    """The parts of the line of events[start:stop] spliced from their texts."""
    return (head, ids, b',"events":[', _events_text(texts, events, start, stop), b"]}\n")


def _events_text(
    texts: Sequence[str], events: Sequence[MeterEvent], start: int, stop: int
) -> bytes:
    """The texts of events[start:stop], comma-separated, as UTF-8 (backslashreplace: a lone
    surrogate, only ever inside a JSON string, becomes its \\u escape)."""
    joined = ",".join(texts[start:stop])
    if not _one_line(joined):
        joined = ",".join(
            text if _one_line(text) else event.stripe_text()
            for text, event in zip(texts[start:stop], events[start:stop], strict=True)
        )
    return joined.encode("utf-8", "backslashreplace")


def _texts(events: Sequence[MeterEvent]) -> list[str]:
    """Each event's text as its stream call sent it (`MeterEvent.sent_text`, as
    events.stream_body takes it); when none kept one (an envelope's events, when their calls'
    bodies cannot be spliced), msgspec's encoding of them all in one C call, the same texts."""
    texts = list(map(_SOURCE, events))
    if None not in texts:
        return texts
    if texts.count(None) == len(texts):
        try:
            return _ENCODER.encode_lines(events).decode().split("\n")[:-1]
        except UnicodeEncodeError:
            pass  # a lone surrogate: that event's text is json's
    return [event.sent_text() for event in events]


def _heads(
    at: str, request_id: str, rules: ValidationRules, names: Collection[str]
) -> dict[str, bytes]:
    """Each event name's head: a line's fields up to its message ids."""
    return {name: _head(at, request_id, rules.keys_for(name)) for name in names}


def _head(at: str, request_id: str, keys: MeterKeys) -> bytes:
    fields = {
        "delivered_at": at,
        "request_id": request_id,
        "customer_key": keys.customer_key,
        "value_key": keys.value_key,
    }
    return _ENCODER.encode(fields)[:-1] + b',"message_ids":'


def _one_line(text: str) -> bool:
    return "\n" not in text and "\r" not in text


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
    items = list(lines)
    try:
        return compress(_ENCODER.encode_lines(items))
    except UnicodeEncodeError:  # a lone surrogate: json's \u escape, as the forwarder writes it
        text = "".join(compact_json(msgspec.to_builtins(item)) + "\n" for item in items)
        return compress(text.encode())


def delivered_events(lines: Iterable[LedgerLine]) -> list[DeliveredEvents]:
    """Delivered events built as objects, in the forwarder's lines (what the other writers put
    in the `events` table: tests, local tools)."""
    grouped: list[DeliveredEvents] = []
    for head, run in groupby(lines, _LINE_HEAD):
        events = list(run)
        for first, last in _spans(0, len(events)):
            part = events[first:last]
            ids, sent = [line.message_id for line in part], [line.event for line in part]
            grouped.append(DeliveredEvents(*head, ids, sent))
    return grouped


def encode_events(lines: Iterable[LedgerLine]) -> bytes:
    """Delivered events built as objects, as one compressed object of the forwarder's lines."""
    return encode(delivered_events(lines))


_LINE_HEAD = attrgetter("delivered_at", "request_id", "customer_key", "value_key")


def decode(data: bytes) -> list[LedgerLine]:
    """An object of the forwarder's, one LedgerLine per event."""
    text = decompress(data)
    return [event for line in text.splitlines() if line.strip() for event in _line(line).lines()]


def _line(line: bytes) -> DeliveredEvents:
    try:
        return _LINES.decode(line)
    except msgspec.DecodeError:
        if not _SURROGATE_ESCAPE.search(line):
            raise
    # a lone surrogate's escape (a producer's, sent to Stripe as it was), which msgspec refuses
    # and json reads
    return msgspec.convert(json.loads(line), DeliveredEvents)


# the escape of a UTF-16 surrogate: one of a pair (a character beyond U+FFFF), or a lone one
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_ESCAPES = re.compile(
    rb"(\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2})"  # a pair
    rb"|(\\u[dD][89a-fA-F][0-9a-fA-F]{2})"  # a lone surrogate
    rb"|\\.",  # any other escape, an escaped backslash among them
    re.DOTALL,
)


def _pair_or_replacement(match: re.Match[bytes]) -> bytes:
    return b"\\ufffd" if match[2] else match[0]


def without_lone_surrogates(data: bytes) -> bytes:
    """An object as DuckDB can read it: each lone surrogate's escape made U+FFFD's. The ledger
    keeps an event as Stripe received it, lone surrogate and all (JSON allows its escape, and a
    producer may send one); DuckDB, like msgspec, refuses the whole object for it. Objects
    without one (nearly all) are returned as they are."""
    text = decompress(data)
    if not _SURROGATE_ESCAPE.search(text):
        return data
    readable = _ESCAPES.sub(_pair_or_replacement, text)
    return data if readable == text else compress(readable)


class LedgerWriter:
    """Puts an invocation's ledger object in S3 on a thread of its own (`start`), and `wait`s
    for it within the time the invocation has left.

    The PUT is signed by botocore's own SigV4 signer for S3 (the one PutObject uses; the content
    type and the body's CRC32 signed, which S3 checks the object against) and sent through a
    urllib3 pool of its own, verifying TLS as botocore does, to the bucket's URL as the S3 client
    addresses it (found once). botocore's PutObject took nearly twice its CPU in the forwarder
    (about 5,500 Python calls a request, its code out of the CPU's cache since the last batch),
    and a presigned URL, the way before, half of it again: building it is an operation call
    without the sending. A signed PUT that fails for any reason is made again at once by
    PutObject, with botocore's retries: a refused PUT costs a request, never an object. The
    writer keeps to PutObject from then on, unless S3 answered that it was busy or failing
    (SignedPutRefused.busy), which says nothing against the signed PUT. With a proxy
    configured, which botocore would use, every PUT is PutObject."""

    def __init__(
        self,
        bucket: str,
        prefix: str,
        s3: S3Client,
        credentials: Credentials | None,
        *,
        http: urllib3.PoolManager | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self._s3 = s3
        self._credentials = credentials  # the S3 client's: its session's
        self._http = http if http is not None else _s3_pool()
        self._sleep = sleep
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="ledger")
        self._bucket_url: str | None = None
        self.signed = not getproxies()  # until a signed PUT fails

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
        checksum = base64.b64encode(zlib.crc32(body).to_bytes(4, "big")).decode()
        error: Exception | None = None
        for attempt in range(WRITE_ATTEMPTS):
            if time_left() <= 0:
                break
            try:
                self._put(key, body, checksum, time_left())
                return
            except (BotoCoreError, ClientError) as failure:
                error = failure
                self._sleep(min(0.2 * 2**attempt, max(0.0, time_left())))
        raise LedgerGap(
            f"the ledger object {key} was not written: "
            f"{type(error).__name__ if error else 'no time left'}"
        )

    def _put(self, key: str, body: bytes, checksum: str, seconds: float) -> None:
        if self.signed:
            try:
                self._put_signed(key, body, checksum, seconds)
                return
            except (BotoCoreError, urllib3.exceptions.HTTPError, SignedPutRefused) as failure:
                busy = isinstance(failure, SignedPutRefused) and failure.busy
                self.signed = busy
                logger.warning(
                    "ledger: a signed PUT failed; PutObject "
                    + ("for this object" if busy else "from now on"),
                    extra={"key": key, "why": f"{type(failure).__name__}: {failure}"},
                )
        self._s3.put_object(
            Bucket=self.bucket,
            Key=key,
            Body=body,
            ContentType=CONTENT_TYPE,
            ChecksumCRC32=checksum,
        )

    def object_url(self, key: str) -> str:
        """Where PutObject would put `key`: the bucket's URL as the S3 client addresses it
        (regional and virtual-hosted on AWS; botocore's choice on a custom endpoint), found once
        from a URL the client presigns, and the key encoded as botocore encodes it."""
        if self._bucket_url is None:
            probe = self._s3.generate_presigned_url(
                "put_object", Params={"Bucket": self.bucket, "Key": _PROBE}, ExpiresIn=1
            )
            url = probe.partition("?")[0]
            if not url.endswith("/" + _PROBE):
                raise SignedPutRefused(f"no object URL from the S3 client: {url}")
            self._bucket_url = url[: -len(_PROBE)]
        return self._bucket_url + str(percent_encode(key, safe="/~"))

    def signed_headers(self, url: str, checksum: str) -> dict[str, str]:
        """A PUT's headers signed by botocore's SigV4 signer for S3 (the one PutObject uses),
        the body unsigned (UNSIGNED-PAYLOAD, as the client's config has it): its CRC32 is."""
        request = AWSRequest(
            "PUT", url, headers={"Content-Type": CONTENT_TYPE, "x-amz-checksum-crc32": checksum}
        )
        request.context["client_config"] = self._s3.meta.config
        credentials = self._credentials.get_frozen_credentials() if self._credentials else None
        signer: Any = AUTH_TYPE_MAPS["s3v4"]  # CRT's when installed, as botocore chooses
        signer(credentials, "s3", self._s3.meta.region_name).add_auth(request)
        return dict(request.headers.items())

    def _put_signed(self, key: str, body: bytes, checksum: str, seconds: float) -> None:
        url = self.object_url(key)
        answer = self._http.request(
            "PUT",
            url,
            body=body,
            headers=self.signed_headers(url, checksum),
            timeout=urllib3.Timeout(connect=5.0, read=max(0.1, seconds)),
            retries=_ONE_RETRY,
        )
        if answer.status != 200:
            found = _S3_ERROR_CODE.search(answer.data)
            code = found.group(1).decode() if found else answer.reason
            busy = answer.status >= 500 or code == "RequestTimeout"
            raise SignedPutRefused(f"{answer.status} {code}", busy=busy)


_PROBE = "probe"


def _s3_pool() -> urllib3.PoolManager:
    """TLS verified against the certificates botocore would use: AWS_CA_BUNDLE, else certifi's."""
    return urllib3.PoolManager(
        maxsize=1, ca_certs=os.environ.get("AWS_CA_BUNDLE") or certifi.where()
    )


class SignedPutRefused(Exception):
    """A signed PUT could not be made, or S3 did not take it (its status and error code).
    `busy`: S3 was busy or failed (5xx, or the request's body came too slowly), which says
    nothing against the signed PUT: the next object is signed again."""

    def __init__(self, why: str, *, busy: bool = False) -> None:
        super().__init__(why)
        self.busy = busy


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
